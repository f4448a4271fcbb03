//! A minimal in-process relay (loopback only) for the simulator's own tests.
//! It implements just enough of the agent protocol to exercise the agents:
//! enrollment, bearer checks, exclusions, due reboots and 429s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::timefmt::{now_utc, rfc3339};

pub const ENROLLMENT_TOKEN: &str = "enroll-me";

/// What the mock saw of one check-in.
#[derive(Debug, Clone, Default)]
pub struct SeenCheckin {
    pub available: Vec<String>,
    pub installed_results: Vec<String>,
    pub failed_results: Vec<String>,
    pub reboot_result: Option<(String, String)>,
    pub reboot_pending: bool,
    /// KBs excluded in the answer to this check-in.
    pub excluded_after: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Device {
    pub machine_id: String,
    pub token: String,
    pub checkins: Vec<SeenCheckin>,
    pub reboots_issued: Vec<String>,
}

#[derive(Debug, Default)]
pub struct MockState {
    pub devices: HashMap<String, Device>,
    by_machine: HashMap<String, String>,
    tokens: HashMap<String, String>,
    throttled: std::collections::HashSet<String>,
}

pub type Shared = Arc<Mutex<MockState>>;

/// Starts the mock on 127.0.0.1 (ephemeral port); returns its URL and state.
pub async fn start() -> anyhow::Result<(String, Shared)> {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/agent/v1/enroll", post(enroll))
        .route("/agent/v1/checkin", post(checkin))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, state))
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({"type": "about:blank", "status": status.as_u16(), "detail": detail});
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn enroll(State(state): State<Shared>, Json(body): Json<Value>) -> Response {
    if body["enrollment_token"] != ENROLLMENT_TOKEN {
        return problem(StatusCode::UNAUTHORIZED, "bad enrollment token");
    }
    let Some(machine_id) = body["machine_id"].as_str() else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "machine_id");
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let n = s.devices.len();
    let device_id = s
        .by_machine
        .entry(machine_id.to_owned())
        .or_insert_with(|| format!("dev_{n:06}"))
        .clone();
    let token = format!("ppa_{device_id}_{}", s.tokens.len());
    s.tokens.insert(token.clone(), device_id.clone());
    let device = s.devices.entry(device_id.clone()).or_default();
    device.machine_id = machine_id.to_owned();
    device.token = token.clone();
    let answer = json!({"device_id": device_id, "agent_token": token});
    (StatusCode::CREATED, Json(answer)).into_response()
}

#[derive(Deserialize)]
struct IdOnly {
    update_id: String,
    #[serde(default)]
    result: Option<String>,
}

#[derive(Deserialize)]
struct RebootSeen {
    schedule_id: String,
    result: String,
}

/// The parts of a check-in body the mock looks at (the rest is skipped).
#[derive(Deserialize)]
struct CheckinBody {
    available_updates: Vec<IdOnly>,
    results: Vec<IdOnly>,
    reboot_result: Option<RebootSeen>,
    reboot_pending: bool,
}

fn seen(body: CheckinBody) -> SeenCheckin {
    let results = |want: &str| -> Vec<String> {
        let hits = body
            .results
            .iter()
            .filter(|r| r.result.as_deref() == Some(want));
        hits.map(|r| r.update_id.clone()).collect()
    };
    SeenCheckin {
        installed_results: results("installed"),
        failed_results: results("failed"),
        available: body
            .available_updates
            .into_iter()
            .map(|u| u.update_id)
            .collect(),
        reboot_result: body.reboot_result.map(|r| (r.schedule_id, r.result)),
        reboot_pending: body.reboot_pending,
        excluded_after: Vec::new(),
    }
}

async fn checkin(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<CheckinBody>,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(device_id) = s.tokens.get(bearer).cloned() else {
        return problem(StatusCode::UNAUTHORIZED, "bad agent token");
    };
    let number: usize = device_id[4..].parse().unwrap_or_default();
    // Devices 0, 5, 10, ... get one 429 on their first check-in.
    if number % 5 == 0 && s.throttled.insert(device_id.clone()) {
        drop(s);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            "slow down",
        )
            .into_response();
    }
    let mut seen = seen(body);
    // Even devices: their newest available KB is excluded.
    let exclusions: Vec<Value> = seen
        .available
        .first()
        .filter(|_| number % 2 == 0)
        .map(|kb| json!({"kind": "kb", "value": kb}))
        .into_iter()
        .collect();
    seen.excluded_after = exclusions
        .iter()
        .filter_map(|e| e["value"].as_str().map(str::to_owned))
        .collect();
    let device = s.devices.entry(device_id.clone()).or_default();
    let reboot = seen.reboot_pending.then(|| {
        let id = format!("rs_{device_id}_{}", device.reboots_issued.len());
        device.reboots_issued.push(id.clone());
        json!({"schedule_id": id, "at": rfc3339(now_utc() - time::Duration::seconds(1)),
               "message": "patch reboot", "force": false})
    });
    device.checkins.push(seen);
    Json(json!({"next_checkin_s": 1, "exclusions": exclusions, "reboot": reboot})).into_response()
}
