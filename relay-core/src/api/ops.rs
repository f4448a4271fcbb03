//! Operational endpoints: health, readiness, metrics, relay info.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::problem::ApiError;
use super::AppState;
use crate::auth::bearer;
use crate::discovery::DiscoveryMetrics;
use crate::relay::Lifecycle;
use crate::store::Table;

#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process is alive", body = super::openapi::HealthStatus)),
    security(()))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "The relay serves requests", body = super::openapi::HealthStatus),
        (status = 503, response = super::openapi::ServiceUnavailable),
    ),
    security(()))]
pub async fn readyz(State(relay): State<AppState>) -> Response {
    match relay.lifecycle() {
        Lifecycle::Ready => Json(serde_json::json!({"status": "ready"})).into_response(),
        _ => ApiError::Unavailable.into_response(),
    }
}

#[utoipa::path(get, path = "/api/relay", tag = "ops",
    responses((status = 200, description = "Relay id, version, uptime, store and webhook outbox figures", body = super::openapi::RelayInfo)),
    security(("api_key" = [])))]
pub async fn relay_info(State(relay): State<AppState>) -> Json<serde_json::Value> {
    let kev = relay
        .kev
        .read()
        .map(|k| (k.version.clone(), k.cves.len()))
        .unwrap_or_default();
    Json(serde_json::json!({
        "relay_id": relay.relay_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": relay.started.elapsed().as_secs(),
        "devices": relay.fleet.len(),
        "events_recorded": relay.store.len(Table::Events),
        "events_pruned": relay.metrics.events_pruned.load(Ordering::Relaxed),
        "kev_catalog": {"version": kev.0, "entries": kev.1},
        "store_bytes": relay.store.size_on_disk(),
        "update_sets": relay.store.len(Table::UpdateSets),
        "updates_stored": relay.store.len(Table::Updates),
        "webhooks": webhook_info(&relay),
        "tls_sha256": relay.tls_fingerprint(),
    }))
}

fn webhook_info(relay: &crate::relay::Relay) -> serde_json::Value {
    let stats = relay
        .webhooks
        .stats(relay.store.last_event_sequence_applied());
    let c = &relay.webhooks.counters;
    // The uplink as the outbox sees it: down when every webhook's endpoint
    // is unreachable, unknown with no webhook to tell.
    let uplink = match (stats.webhooks, stats.unreachable) {
        (0, _) => "unknown",
        (n, u) if u == n => "down",
        (_, 0) => "up",
        _ => "partial",
    };
    serde_json::json!({
        "count": stats.webhooks,
        "uplink": uplink,
        "endpoints_unreachable": stats.unreachable,
        "outbox_depth": stats.depth,
        "retrying": stats.retrying,
        "delivered": c.delivered.load(Ordering::Relaxed),
        "attempts_failed": c.attempts_failed.load(Ordering::Relaxed),
        "deliveries_failed": c.deliveries_failed.load(Ordering::Relaxed),
        "dropped": {
            "retention": c.dropped_retention.load(Ordering::Relaxed),
            "outbox_full": c.dropped_outbox_full.load(Ordering::Relaxed),
        },
    })
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, response = super::openapi::Unauthorized),
    ),
    security((), ("api_key" = [])))]
pub async fn metrics(State(relay): State<AppState>, req: Request) -> Response {
    if relay.config.server.metrics_require_key {
        let presented = bearer(
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        if let Err(err) = relay.auth.authenticate(presented, relay.clock.now()) {
            return ApiError::Unauthorized(err.to_string()).into_response();
        }
    }
    let m = &relay.metrics;
    let now = relay.clock.now();
    let counters = [
        (
            "patchpilot_http_requests_total",
            "Requests handled.",
            m.requests.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_http_client_errors_total",
            "Requests answered 4xx.",
            m.responses_4xx.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_http_server_errors_total",
            "Requests answered 5xx.",
            m.responses_5xx.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_checkins_total",
            "Agent check-ins stored.",
            m.checkins.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_enrollments_total",
            "Agent enrollments.",
            m.enrollments.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_auth_failures_total",
            "Failed API authentications.",
            m.auth_failures.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_rate_limited_total",
            "Requests refused with 429.",
            m.rate_limited.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_events_pruned_total",
            "Events dropped by retention.",
            m.events_pruned.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_mdns_announcements_total",
            "Agent mDNS announcements handled.",
            DiscoveryMetrics::get(&relay.discovery.metrics.announcements),
        ),
        (
            "patchpilot_mdns_dropped_total",
            "mDNS events dropped because the queue was full.",
            DiscoveryMetrics::get(&relay.discovery.metrics.dropped),
        ),
        (
            "patchpilot_mdns_refused_total",
            "Announcements refused (names past DNS-SD limits, no address).",
            DiscoveryMetrics::get(&relay.discovery.metrics.refused),
        ),
        (
            "patchpilot_mdns_claims_ignored_total",
            "Announcements claiming an enrolled device from another address.",
            DiscoveryMetrics::get(&relay.discovery.metrics.claims_ignored),
        ),
        (
            "patchpilot_mdns_discovered_full_total",
            "Unknown agents not listed because the discovered list was full.",
            DiscoveryMetrics::get(&relay.discovery.metrics.discovered_full),
        ),
        (
            "patchpilot_store_flushes_total",
            "Group-commit fsync rounds.",
            relay.store.flushes(),
        ),
        (
            "patchpilot_webhook_deliveries_succeeded_total",
            "Webhook deliveries answered 2xx.",
            relay.webhooks.counters.delivered.load(Ordering::Relaxed),
        ),
        (
            "patchpilot_webhook_attempts_failed_total",
            "Webhook attempts that failed and were scheduled for a retry.",
            relay
                .webhooks
                .counters
                .attempts_failed
                .load(Ordering::Relaxed),
        ),
        (
            "patchpilot_webhook_deliveries_failed_total",
            "Webhook deliveries failed for good (4xx).",
            relay
                .webhooks
                .counters
                .deliveries_failed
                .load(Ordering::Relaxed),
        ),
        (
            "patchpilot_webhook_deliveries_dropped_retention_total",
            "Undelivered webhook deliveries dropped past the retention.",
            relay
                .webhooks
                .counters
                .dropped_retention
                .load(Ordering::Relaxed),
        ),
        (
            "patchpilot_webhook_deliveries_dropped_outbox_full_total",
            "Undelivered webhook deliveries dropped past the outbox size.",
            relay
                .webhooks
                .counters
                .dropped_outbox_full
                .load(Ordering::Relaxed),
        ),
    ];
    let outbox = relay
        .webhooks
        .stats(relay.store.last_event_sequence_applied());
    let gauges = [
        (
            "patchpilot_devices",
            "Enrolled devices.",
            relay.fleet.len() as u64,
        ),
        (
            "patchpilot_devices_online",
            "Devices online now.",
            relay.fleet.online_count(now) as u64,
        ),
        (
            "patchpilot_events",
            "Events held in the store.",
            relay.store.len(Table::Events) as u64,
        ),
        (
            "patchpilot_store_bytes",
            "Store size on disk.",
            relay.store.size_on_disk(),
        ),
        (
            "patchpilot_rate_limiter_keys",
            "Keys tracked by the rate limiter.",
            relay.key_limiter.tracked() as u64,
        ),
        (
            "patchpilot_auth_failure_addresses",
            "Addresses tracked by the failure limiter.",
            relay.failures.tracked() as u64,
        ),
        (
            "patchpilot_discovered",
            "Unknown agents listed in /api/discovered.",
            relay.store.len(Table::Discovered) as u64,
        ),
        (
            "patchpilot_webhook_outbox_depth",
            "Events waiting for webhook delivery, over all webhooks.",
            outbox.depth,
        ),
        (
            "patchpilot_webhook_endpoints_unreachable",
            "Webhooks whose endpoint cannot be reached now.",
            outbox.unreachable,
        ),
        (
            "patchpilot_uptime_seconds",
            "Seconds since start.",
            relay.started.elapsed().as_secs(),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}
