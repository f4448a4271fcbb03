//! Property tests of every body the relay parses: the API request bodies,
//! the agent's enroll and check-in bodies, the config TOML, cursors and
//! timestamps. Properties: nothing panics; bytes that are not JSON are 400,
//! JSON of the wrong shape is 422 naming the field; a well-formed body
//! parses to exactly what was sent; through the real router no body ever
//! earns a 5xx and every refusal is problem+json.
//!
//! Case counts are bounded so that the whole module runs in well under a
//! minute; `PROPTEST_CASES` raises them for a longer run.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::extract::{parse_json, Cursor};
use super::problem::ApiError;
use crate::accounts::{NewKey, NewUser};
use crate::agents::{CheckinRequest, EnrollRequest};
use crate::clock::{TimeError, Timestamp};
use crate::exclusions::NewExclusion;
use crate::reboots::NewSchedule;
use crate::relay::{Lifecycle, Relay};
use crate::webhooks::{NewWebhook, WebhookChanges};

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(interesting_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings that trip parsers: empty, huge, control characters, ids, times.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        Just(String::new()),
        Just("x".repeat(5000)),
        Just("\u{0}\u{1b}[31m\u{202e}".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("dev_01HXYZ8K3M4N5P6Q7R8S9T0VWX".to_string()),
        Just("usr_01HXYZ8K3M4N5P6Q7R8S9T0VWX".to_string()),
        Just("9999-12-31T23:59:59Z".to_string()),
        Just("0000-01-01T00:00:00+23:59".to_string()),
        Just("2026-02-30T10:00:00Z".to_string()),
        Just("KB5034441".to_string()),
        Just("http://127.0.0.1:9/x".to_string()),
        Just("*".to_string()),
        Just("admin".to_string()),
    ]
}

/// Numbers at the edges of every integer type the bodies use.
fn edge_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1)),
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(1e308)),
        Just(json!(-0.5)),
        Just(json!(i32::MAX)),
        (-100_000i64..100_000).prop_map(Value::from),
    ]
}

/// An object with the body's real field names, each set to a plausible,
/// edge or nonsense value, some left out, sometimes an unknown one added.
fn near_body(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        3 => interesting_string().prop_map(Value::String),
        2 => edge_number(),
        1 => any_json(),
    ];
    (
        prop::collection::vec((any::<bool>(), value), fields.len()),
        prop::option::of(("[a-z_]{1,8}", any_json())),
    )
        .prop_map(move |(picks, extra)| {
            let mut map = serde_json::Map::new();
            for (name, (keep, v)) in fields.iter().zip(picks) {
                if keep {
                    map.insert((*name).to_string(), v);
                }
            }
            if let Some((k, v)) = extra {
                map.insert(k, v);
            }
            Value::Object(map)
        })
}

/// Parsing bytes into `T` never panics and fails only as 400 or 422.
fn parse_is_classified<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse_json::<T>(bytes) {
        Ok(_) | Err(ApiError::BadRequest(_)) | Err(ApiError::Invalid(_)) => Ok(()),
        Err(other) => Err(TestCaseError::fail(format!(
            "unexpected error class {other:?}"
        ))),
    }
}

fn assert_classes<T: DeserializeOwned>(value: &Value, bytes: &[u8]) -> Result<(), TestCaseError> {
    parse_is_classified::<T>(bytes)?;
    // Not UTF-8 / not JSON at all: always 400.
    let mut broken = serde_json::to_vec(value).expect("a value serialises");
    broken.push(b'}');
    prop_assert!(matches!(
        parse_json::<T>(&broken),
        Err(ApiError::BadRequest(_))
    ));
    let mut latin1 = serde_json::to_vec(value).expect("a value serialises");
    latin1.insert(0, 0xff);
    prop_assert!(matches!(
        parse_json::<T>(&latin1),
        Err(ApiError::BadRequest(_))
    ));
    Ok(())
}

macro_rules! body_props {
    ($name:ident, $ty:ty, $fields:expr) => {
        proptest! {
            #![proptest_config(cases(256))]
            #[test]
            fn $name(value in near_body($fields), noise in prop::collection::vec(any::<u8>(), 0..64)) {
                let bytes = serde_json::to_vec(&value).expect("a value serialises");
                assert_classes::<$ty>(&value, &bytes)?;
                parse_is_classified::<$ty>(&noise)?;
                // A well-formed object whose field has the wrong JSON type is
                // 422 and names that field.
                for field in $fields {
                    let wrong = json!({ *field: {"nested": [1, 2, 3]} });
                    let bytes = serde_json::to_vec(&wrong).expect("a value serialises");
                    match parse_json::<$ty>(&bytes) {
                        Err(ApiError::Invalid(errors)) => {
                            prop_assert!(errors[0].field.starts_with(field), "{errors:?}");
                        }
                        other => prop_assert!(false, "{field}: expected 422, got {other:?}"),
                    }
                }
            }
        }
    };
}

body_props!(
    new_key_bodies,
    NewKey,
    &[
        "name",
        "user_id",
        "expires_in_days",
        "expires_at",
        "rate_limit"
    ]
);
body_props!(new_user_bodies, NewUser, &["name", "role"]);
body_props!(
    new_exclusion_bodies,
    NewExclusion,
    &["kind", "value", "os_family", "reason", "expires_at"]
);
body_props!(
    new_schedule_bodies,
    NewSchedule,
    &["at", "message", "force"]
);
body_props!(
    new_webhook_bodies,
    NewWebhook,
    &["url", "events", "description"]
);
body_props!(
    webhook_change_bodies,
    WebhookChanges,
    &["url", "events", "description", "status"]
);
body_props!(
    rotate_bodies,
    super::webhooks::RotateBody,
    &["grace_period_s"]
);
body_props!(
    enroll_bodies,
    EnrollRequest,
    &[
        "enrollment_token",
        "machine_id",
        "hostname",
        "os_family",
        "os_name",
        "os_version",
        "agent_version"
    ]
);
body_props!(
    checkin_bodies,
    CheckinRequest,
    &[
        "hostname",
        "os_family",
        "os_name",
        "os_version",
        "agent_version",
        "ip_addresses",
        "reboot_pending",
        "reboot_pending_since",
        "available_updates",
        "results",
        "reboot_result",
        "os_build",
        "installed_kbs"
    ]
);
body_props!(
    bootstrap_bodies,
    crate::control::Bootstrap,
    &["name", "expires_in_days"]
);

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

proptest! {
    #![proptest_config(cases(256))]

    /// Well-formed bodies parse to exactly what was sent.
    #[test]
    fn well_formed_bodies_round_trip(
        name in text(),
        days in prop::option::of(any::<i64>()),
        at in prop::option::of(text()),
        force in any::<bool>(),
        events in prop::collection::vec(text(), 0..4),
        read in any::<u32>(),
    ) {
        let key: NewKey = parse_json(&serde_json::to_vec(&json!({
            "name": name, "expires_in_days": days, "expires_at": at,
            "rate_limit": {"read_per_minute": read},
        })).expect("serialises")).expect("a well-formed key body parses");
        prop_assert_eq!(&key.name, &name);
        prop_assert_eq!(key.expires_in_days, days);
        prop_assert_eq!(&key.expires_at, &at);
        prop_assert_eq!(key.user_id, None);
        let limit = key.rate_limit.expect("a rate limit");
        prop_assert_eq!(limit.read_per_minute, read);
        prop_assert_eq!(limit.write_burst, crate::config::RateLimit::default().write_burst);

        let schedule: NewSchedule = parse_json(&serde_json::to_vec(&json!({
            "at": name, "force": force,
        })).expect("serialises")).expect("a well-formed schedule parses");
        prop_assert_eq!(&schedule.at, &name);
        prop_assert_eq!(schedule.force, force);
        prop_assert_eq!(schedule.message, "");

        let hook: NewWebhook = parse_json(&serde_json::to_vec(&json!({
            "url": name, "events": events,
        })).expect("serialises")).expect("a well-formed webhook parses");
        prop_assert_eq!(&hook.events, &events);
        prop_assert_eq!(&hook.url, &name);

        let changes: WebhookChanges = parse_json(&serde_json::to_vec(&json!({
            "status": at,
        })).expect("serialises")).expect("a well-formed change parses");
        prop_assert_eq!(&changes.status, &at);
        prop_assert!(changes.url.is_none() && changes.events.is_none());

        let exclusion: NewExclusion = parse_json(&serde_json::to_vec(&json!({
            "kind": "kb", "value": name, "expires_at": at,
        })).expect("serialises")).expect("a well-formed exclusion parses");
        prop_assert_eq!(&exclusion.value, &name);
        prop_assert_eq!(&exclusion.expires_at, &at);
        prop_assert_eq!(exclusion.reason, "");
    }

    /// Cursors: any text decodes without panicking, and what the relay
    /// hands out decodes to the position it encoded.
    #[test]
    fn cursors_round_trip_and_never_panic(position in ".{0,64}", junk in ".{0,64}") {
        prop_assert_eq!(Cursor::decode(&Cursor::encode(&position)), Some(position));
        let _ = Cursor::decode(&junk);
        let params = super::extract::Params(vec![("cursor".into(), junk)]);
        match params.cursor(|c| c.parse::<crate::ids::DeviceId>().ok()) {
            Ok(_) | Err(ApiError::BadRequest(_)) => {}
            Err(other) => prop_assert!(false, "cursor gave {other:?}"),
        }
    }

    /// `limit`: whole numbers outside 1..=500 are 422, anything else not a
    /// number is 400.
    #[test]
    fn limits_are_classified(value in prop_oneof![any::<i64>().prop_map(|v| v.to_string()), ".{0,12}"]) {
        let params = super::extract::Params(vec![("limit".into(), value.clone())]);
        match (params.limit(), value.trim().parse::<i64>()) {
            (Ok(n), Ok(v)) => prop_assert!((1..=500).contains(&v) && n as i64 == v),
            (Err(ApiError::Invalid(_)), Ok(v)) => prop_assert!(!(1..=500).contains(&v)),
            (Err(ApiError::BadRequest(_)), Err(_)) => {}
            (other, parsed) => prop_assert!(false, "{value:?}: {other:?} / {parsed:?}"),
        }
    }

    /// Timestamps: every second of years 1 to 9999 prints and parses back;
    /// any text parses or gives one of the three errors, never a panic.
    #[test]
    fn timestamps_round_trip_and_never_panic(
        seconds in -62_135_596_800i64..=253_402_300_799,
        junk in ".{0,40}",
        offset_h in -23i32..=23,
    ) {
        let t = Timestamp(seconds);
        prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        let json = serde_json::to_string(&t).expect("serialises");
        prop_assert_eq!(serde_json::from_str::<Timestamp>(&json).expect("parses"), t);
        let _ = Timestamp::parse(&junk);
        // The same instant in another offset is the same timestamp.
        let shifted = time::OffsetDateTime::from_unix_timestamp(seconds)
            .expect("in range")
            .to_offset(time::UtcOffset::from_hms(offset_h as i8, 0, 0).expect("an offset"));
        if let Ok(text) = shifted.format(&time::format_description::well_known::Rfc3339) {
            match Timestamp::parse(&text) {
                Ok(back) => prop_assert_eq!(back, t),
                // A local year past 9999 or before 1 is refused as such.
                Err(e) => prop_assert_eq!(e, TimeError::OutOfRange),
            }
        }
        prop_assert_eq!(
            Timestamp::parse(t.to_string().trim_end_matches('Z')),
            Err(TimeError::MissingOffset)
        );
    }
}

// --- Config TOML ----------------------------------------------------------

/// A TOML document made of the config's real sections and keys, with values
/// of every TOML type.
fn config_toml() -> impl Strategy<Value = String> {
    let sections = [
        (
            "server",
            &[
                "http_listen",
                "api_body_limit",
                "agent_body_limit",
                "request_timeout_s",
                "metrics_require_key",
            ][..],
        ),
        (
            "store",
            &[
                "data_dir",
                "cache_capacity_mib",
                "durable_acks",
                "flush_every_ms",
            ][..],
        ),
        (
            "limits",
            &[
                "read_per_minute",
                "read_burst",
                "write_per_minute",
                "write_burst",
                "auth_failures_per_minute",
                "max_tracked",
            ][..],
        ),
        (
            "webhooks",
            &["retry_base_s", "retry_cap_s", "timeout_s", "allow_hosts"][..],
        ),
        ("discovery", &["interfaces", "enabled"][..]),
        (
            "compliance",
            &["critical_max_age_days", "checkin_max_age_days"][..],
        ),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0u32..100_000).prop_map(|v| v.to_string()),
        any::<bool>().prop_map(|v| v.to_string()),
        "[a-z0-9 ./:]{0,12}".prop_map(|s| format!("{s:?}")),
        Just("[\"eth0\", 1]".to_string()),
        Just("1e400".to_string()),
        Just("{ a = 1 }".to_string()),
    ];
    prop::collection::vec((0..sections.len(), 0usize..8, value), 0..12).prop_map(move |picks| {
        let mut out = String::new();
        for (s, k, v) in picks {
            let (section, keys) = sections[s];
            let key = keys.get(k).copied().unwrap_or("no_such_key");
            out.push_str(&format!("[{section}]\n{key} = {v}\n"));
        }
        out
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Any TOML (or not-TOML) text parses or fails with a message; what
    /// parses is validated without panicking; the default config survives
    /// a round trip through TOML.
    #[test]
    fn config_toml_never_panics(text in config_toml(), junk in ".{0,80}") {
        for source in [&text, &junk] {
            if let Ok(config) = toml::from_str::<crate::RelayConfig>(source) {
                if let Err(e) = config.validate() {
                    prop_assert!(!e.key.is_empty());
                }
            }
        }
    }
}

#[test]
fn the_default_config_round_trips_through_toml() {
    let config = crate::RelayConfig::default();
    let text = toml::to_string(&config).expect("the config serialises to TOML");
    let back: crate::RelayConfig = toml::from_str(&text).expect("and parses back");
    assert_eq!(
        serde_json::to_value(&back).expect("serialises"),
        serde_json::to_value(&config).expect("serialises")
    );
    back.validate().expect("the default is valid");
}

// --- Through the real router ----------------------------------------------

struct Harness {
    _dir: tempfile::TempDir,
    relay: Arc<Relay>,
    app: axum::Router,
    key: String,
    device: String,
    agent_token: String,
    enrollment: String,
    runtime: tokio::runtime::Runtime,
}

fn harness() -> Harness {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::RelayConfig::default();
    config.store.data_dir = dir.path().to_path_buf();
    config.store.durable_acks = false;
    config.limits.write_per_minute = 1_000_000;
    config.limits.write_burst = 100_000;
    config.limits.read_per_minute = 1_000_000;
    config.limits.read_burst = 100_000;
    let relay = Relay::open(config, crate::clock::Clock::system()).expect("the relay opens");
    relay.set_lifecycle(Lifecycle::Ready);
    let (key, enrollment) = runtime.block_on(async {
        let created = crate::control::bootstrap_admin(
            &relay,
            crate::control::Bootstrap {
                name: "root".into(),
                expires_in_days: 30,
            },
        )
        .await
        .expect("the first admin");
        let enrollment = relay
            .rotate_enrollment_token()
            .await
            .expect("an enrollment token");
        (
            created["key"]["key"].as_str().expect("a key").to_string(),
            enrollment.expose().to_string(),
        )
    });
    let app = super::router(relay.clone());
    let mut h = Harness {
        _dir: dir,
        relay,
        app,
        key,
        device: String::new(),
        agent_token: String::new(),
        enrollment,
        runtime,
    };
    let enroll = json!({
        "enrollment_token": h.enrollment, "machine_id": "m-1", "hostname": "host-1",
        "os_family": "linux", "os_name": "Ubuntu", "os_version": "24.04", "agent_version": "1.0.0",
    });
    let (status, body) = h.send(Method::POST, "/agent/v1/enroll", None, &enroll);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    h.device = body["device_id"].as_str().expect("a device id").to_string();
    h.agent_token = body["agent_token"].as_str().expect("a token").to_string();
    h
}

impl Harness {
    fn send(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).expect("serialises");
        self.send_bytes(method, uri, auth, bytes)
    }

    fn send_bytes(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        bytes: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        let req = req.body(Body::from(bytes)).expect("a request");
        self.runtime.block_on(async {
            let response = self.app.clone().oneshot(req).await.expect("an answer");
            let status = response.status();
            let problem = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_client_error() || status.is_server_error() {
                assert!(problem, "{status} without problem+json: {body}");
            }
            (status, body)
        })
    }
}

/// Every body-taking route with arbitrary near-valid bodies: no 5xx, and
/// the status is one the route documents.
#[test]
fn no_body_earns_a_server_error_through_the_router() {
    let h = harness();
    let webhook = h.send(
        Method::POST,
        "/api/webhooks",
        Some(&h.key),
        &json!({"url": "http://127.0.0.1:9/x", "events": ["*"]}),
    );
    assert_eq!(webhook.0, StatusCode::CREATED, "{}", webhook.1);
    let webhook_id = webhook.1["webhook_id"].as_str().expect("an id").to_string();
    let routes: Vec<(Method, String, Option<String>, &'static [&'static str])> = vec![
        (
            Method::POST,
            "/api/keys".into(),
            Some(h.key.clone()),
            &[
                "name",
                "user_id",
                "expires_in_days",
                "expires_at",
                "rate_limit",
            ],
        ),
        (
            Method::POST,
            "/api/users".into(),
            Some(h.key.clone()),
            &["name", "role"],
        ),
        (
            Method::POST,
            "/api/patch-exclusions".into(),
            Some(h.key.clone()),
            &["kind", "value", "os_family", "reason", "expires_at"],
        ),
        (
            Method::POST,
            format!("/api/reboot-management/{}/schedule", h.device),
            Some(h.key.clone()),
            &["at", "message", "force"],
        ),
        (
            Method::POST,
            "/api/webhooks".into(),
            Some(h.key.clone()),
            &["url", "events", "description"],
        ),
        (
            Method::PATCH,
            format!("/api/webhooks/{webhook_id}"),
            Some(h.key.clone()),
            &["url", "events", "description", "status"],
        ),
        (
            Method::POST,
            format!("/api/webhooks/{webhook_id}/rotate-secret"),
            Some(h.key.clone()),
            &["grace_period_s"],
        ),
        (
            Method::POST,
            "/agent/v1/enroll".into(),
            None,
            &[
                "enrollment_token",
                "machine_id",
                "hostname",
                "os_family",
                "os_name",
                "os_version",
                "agent_version",
            ],
        ),
        (
            Method::POST,
            "/agent/v1/checkin".into(),
            Some(h.agent_token.clone()),
            &[
                "hostname",
                "os_family",
                "os_name",
                "os_version",
                "agent_version",
                "ip_addresses",
                "reboot_pending",
                "reboot_pending_since",
                "available_updates",
                "results",
                "reboot_result",
                "os_build",
                "installed_kbs",
            ],
        ),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(cases(128));
    for (method, uri, auth, fields) in routes {
        runner
            .run(&near_body(fields), |body| {
                let (status, answer) = h.send(method.clone(), &uri, auth.as_deref(), &body);
                prop_assert!(
                    !status.is_server_error(),
                    "{method} {uri} {body} -> {status} {answer}"
                );
                prop_assert!(
                    [200, 201, 400, 401, 404, 409, 413, 415, 422].contains(&status.as_u16()),
                    "{method} {uri} {body} -> {status} {answer}"
                );
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(h.relay.lifecycle() == Lifecycle::Ready);
}

/// Check-ins built from the real field types with values at the edges.
fn checkin_body() -> impl Strategy<Value = Value> {
    let update = (
        interesting_string(),
        prop::option::of(interesting_string()),
        interesting_string(),
        prop::sample::select(vec!["critical", "important", "moderate", "low", "unknown", "bogus"]),
        prop::collection::vec((interesting_string(), prop::option::of(edge_number())), 0..3),
        prop::option::of(interesting_string()),
    )
        .prop_map(|(id, kb, title, severity, cves, released)| {
            json!({"update_id": id, "kb": kb, "title": title, "severity": severity,
                   "cves": cves.into_iter().map(|(id, cvss)| json!({"id": id, "cvss": cvss})).collect::<Vec<_>>(),
                   "released_at": released})
        });
    let result = (
        interesting_string(),
        prop::sample::select(vec!["installed", "failed", "x"]),
        interesting_string(),
    )
        .prop_map(|(id, r, at)| json!({"update_id": id, "result": r, "at": at}));
    (
        prop::sample::select(vec!["windows", "macos", "linux", "beos"]),
        interesting_string(),
        prop::collection::vec(update, 0..4),
        prop::collection::vec(result, 0..3),
        prop::collection::vec(interesting_string(), 0..3),
        any::<bool>(),
        prop::option::of(interesting_string()),
    )
        .prop_map(|(family, host, updates, results, kbs, pending, since)| {
            json!({"hostname": host, "os_family": family, "os_name": "OS", "os_version": "1",
                   "agent_version": "1.0.0", "ip_addresses": ["127.0.0.1"], "reboot_pending": pending,
                   "reboot_pending_since": since, "available_updates": updates, "results": results,
                   "installed_kbs": kbs})
        })
}

#[test]
fn check_ins_with_edge_values_are_stored_or_refused_never_fail() {
    let h = harness();
    let mut runner = proptest::test_runner::TestRunner::new(cases(128));
    runner
        .run(&checkin_body(), |body| {
            let (status, answer) = h.send(
                Method::POST,
                "/agent/v1/checkin",
                Some(&h.agent_token),
                &body,
            );
            prop_assert!(
                status == StatusCode::OK || status == StatusCode::UNPROCESSABLE_ENTITY,
                "{body} -> {status} {answer}"
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Raw bytes of every kind on both agent routes and an API route.
    let mut runner = proptest::test_runner::TestRunner::new(cases(128));
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            for (uri, auth) in [
                ("/agent/v1/checkin", Some(h.agent_token.as_str())),
                ("/agent/v1/enroll", None),
                ("/api/patch-exclusions", Some(h.key.as_str())),
            ] {
                let (status, answer) = h.send_bytes(Method::POST, uri, auth, bytes.clone());
                prop_assert!(
                    [400, 401, 422].contains(&status.as_u16()),
                    "{uri} {bytes:?} -> {status} {answer}"
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

// --- Regressions found by schemathesis --------------------------------------

/// `min_cvss=10.000000000000002` was accepted: it was range-checked after
/// rounding to an f32, where it is 10.0.
#[test]
fn min_cvss_is_range_checked_before_rounding() {
    let h = harness();
    for (query, expected) in [
        ("min_cvss=10.000000000000002", StatusCode::BAD_REQUEST),
        ("min_cvss=-0.0000000000000001", StatusCode::BAD_REQUEST),
        ("min_cvss=10", StatusCode::OK),
        ("min_cvss=0", StatusCode::OK),
    ] {
        let (status, body) = h.send_bytes(
            Method::GET,
            &format!("/api/vulnerabilities?{query}"),
            Some(&h.key),
            Vec::new(),
        );
        assert_eq!(status, expected, "{query}: {body}");
    }
}
