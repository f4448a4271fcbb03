//! The HTTP edge: the product's REST API under `/api`, the agent protocol
//! under `/agent/v1`, and the operational endpoints.
//!
//! | route | purpose |
//! | --- | --- |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | liveness, readiness, Prometheus |
//! | `GET /api/openapi.json` | the OpenAPI 3.1 description of all of these |
//! | `GET /api/relay` | relay id, version, uptime, event log depth, webhook outbox |
//! | `GET /api/devices`, `GET /api/devices/:id` | the fleet |
//! | `GET /api/discovered` | agents heard over mDNS that match no enrolled device |
//! | `GET /api/vulnerabilities` | CVEs open on the fleet |
//! | `GET/POST /api/compliance/snapshot`, `GET /api/compliance/snapshots[/:id]` | compliance |
//! | `GET /api/reboot-management`, `POST/DELETE /api/reboot-management/:id/schedule` | reboots |
//! | `GET/POST /api/patch-exclusions`, `GET/DELETE /api/patch-exclusions/:id` | exclusions |
//! | `GET/POST /api/keys`, `DELETE /api/keys/:id` | API keys |
//! | `GET/POST /api/users`, `POST /api/users/:id/disable` | users |
//! | `GET/POST /api/webhooks`, `GET/PATCH/DELETE /api/webhooks/:id` | webhooks |
//! | `POST /api/webhooks/:id/rotate-secret`, `POST /api/webhooks/:id/test` | secret rotation, test event |
//! | `GET /api/webhooks/:id/deliveries` | a webhook's deliveries and attempts |
//! | `POST /api/bundles`, `GET /api/bundles/export` | courier bundles in and out (admin) |
//! | `GET /api/audit` | the audit trail of changes (admin) |
//! | `POST /api/assessments` | offline assessment of a Windows machine (systeminfo or JSON) |
//! | `POST /agent/v1/enroll`, `POST /agent/v1/checkin` | agents |

mod accounts;
mod agent;
pub(crate) mod assessments;
pub mod audit;
mod bundles;
mod compliance;
mod devices;
mod discovered;
mod exclusions;
mod extract;
#[cfg(test)]
mod fuzz;
mod middleware;
pub mod openapi;
mod ops;
pub mod problem;
mod reboots;
mod vulns;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

pub use bundles::{courier_error, export_response, read_bundle};
pub use extract::{Cursor, JsonBody, Params, RawId};
pub use problem::{ApiError, ApiResult};

use crate::relay::Relay;

pub type AppState = Arc<Relay>;

/// The whole public router.
pub fn router(relay: Arc<Relay>) -> Router {
    let api = Router::new()
        .route("/relay", get(ops::relay_info))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/devices", get(devices::devices_list))
        .route("/devices/{device_id}", get(devices::devices_get))
        .route("/discovered", get(discovered::discovered_list))
        .route("/vulnerabilities", get(vulns::vulnerabilities_list))
        .route(
            "/compliance/snapshot",
            get(compliance::snapshot_latest).post(compliance::snapshot_take),
        )
        .route("/compliance/snapshots", get(compliance::snapshots_list))
        .route(
            "/compliance/snapshots/{snapshot_id}",
            get(compliance::snapshots_get),
        )
        .route("/reboot-management", get(reboots::reboots_list))
        .route(
            "/reboot-management/{device_id}/schedule",
            post(reboots::reboots_schedule).delete(reboots::reboots_cancel),
        )
        .route(
            "/patch-exclusions",
            get(exclusions::exclusions_list).post(exclusions::exclusions_create),
        )
        .route(
            "/patch-exclusions/{exclusion_id}",
            get(exclusions::exclusions_get).delete(exclusions::exclusions_delete),
        )
        .route(
            "/keys",
            get(accounts::keys_list).post(accounts::keys_create),
        )
        .route("/keys/{key_id}", delete(accounts::keys_revoke))
        .route(
            "/users",
            get(accounts::users_list).post(accounts::users_create),
        )
        .route("/users/{user_id}/disable", post(accounts::users_disable))
        .route(
            "/webhooks",
            get(webhooks::webhooks_list).post(webhooks::webhooks_create),
        )
        .route(
            "/webhooks/{webhook_id}",
            get(webhooks::webhooks_get)
                .patch(webhooks::webhooks_update)
                .delete(webhooks::webhooks_delete),
        )
        .route(
            "/webhooks/{webhook_id}/rotate-secret",
            post(webhooks::webhooks_rotate_secret),
        )
        .route("/webhooks/{webhook_id}/test", post(webhooks::webhooks_test))
        .route(
            "/webhooks/{webhook_id}/deliveries",
            get(webhooks::webhooks_deliveries),
        )
        .route("/bundles", post(bundles::bundles_import))
        .route("/bundles/export", get(bundles::bundles_export))
        .route("/audit", get(audit::audit_list))
        .route("/assessments", post(assessments::assessments_create))
        .fallback(middleware::not_found)
        .layer(axum::middleware::from_fn_with_state(
            relay.clone(),
            audit::audit_api,
        ))
        .layer(axum::middleware::from_fn_with_state(
            relay.clone(),
            middleware::require_key,
        ))
        .layer(DefaultBodyLimit::max(relay.config.server.api_body_limit))
        .layer(axum::Extension(extract::BodyLimit(
            relay.config.server.api_body_limit,
        )));

    let agent = Router::new()
        .route("/enroll", post(agent::enroll))
        .route("/checkin", post(agent::checkin))
        .fallback(middleware::not_found)
        .layer(axum::middleware::from_fn_with_state(
            relay.clone(),
            middleware::require_ready,
        ))
        .layer(DefaultBodyLimit::max(relay.config.server.agent_body_limit))
        .layer(axum::Extension(extract::BodyLimit(
            relay.config.server.agent_body_limit,
        )));

    let timeout = Duration::from_secs(relay.config.server.request_timeout_s);
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .nest("/api", api)
        .nest("/agent/v1", agent)
        .fallback(middleware::not_found)
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::map_response(middleware::problemize))
        .layer(axum::middleware::from_fn_with_state(
            relay.clone(),
            middleware::trace_request,
        ))
        .with_state(relay)
}
