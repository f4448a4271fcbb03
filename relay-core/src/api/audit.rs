//! The layers that write the audit trail around the API and control
//! routers, and `GET /api/audit`.

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Json};
use serde_json::json;

use super::extract::{Cursor, Params};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::audit::{outcome, Actor, AuditFilter, AuditRecord};
use crate::auth::{Principal, Role};
use crate::clock::Timestamp;
use crate::ids::{AuditId, KeyId, UserId};

/// The request id that `trace_request` gave a request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The caller on the control socket, from the socket's peer credentials.
#[derive(Debug, Clone, Copy)]
pub struct ControlPeer {
    pub uid: Option<u32>,
}

/// Responses larger than this are not read for the ids they created (no
/// route that creates something answers with more).
const MAX_SCANNED_RESPONSE: usize = 256 * 1024;

/// Routes that take a `POST` but change nothing (an assessment computes an
/// answer from the body and the catalog).
const READ_ONLY_POSTS: &[&str] = &["/api/assessments", "/assess"];

/// Reads that are recorded anyway: data leaving the box. Paths as the
/// layers see them: the API router is nested, so its `/api` prefix is
/// already stripped, and `/bundles/export` names both the API's export and
/// the control socket's.
const AUDITED_READS: &[&str] = &["/backup", "/bundles/export"];

fn is_change(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Audits every change made with an API key (inside `require_key`, so the
/// caller is known; rate-limited and unauthenticated requests never reach it).
pub async fn audit_api(State(relay): State<AppState>, req: Request, next: Next) -> Response {
    if !is_change(req.method()) && !AUDITED_READS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return next.run(req).await;
    };
    let actor = Actor {
        kind: "api_key".into(),
        user_id: Some(principal.user_id),
        key_id: Some(principal.key_id),
        os_uid: None,
    };
    let source = super::middleware::client_ip(&req).to_string();
    audited(relay, req, next, actor, source).await
}

/// Audits every change made through the CLI, every backup and every
/// export taken.
pub async fn audit_cli(State(relay): State<AppState>, req: Request, next: Next) -> Response {
    if !is_change(req.method()) && !AUDITED_READS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<ControlPeer>>()
        .map(|info| info.0);
    let (uid, source) = match peer {
        Some(peer) => (peer.uid, "control socket".to_string()),
        None => (None, "cli (relay not running)".to_string()),
    };
    let actor = Actor {
        kind: "cli".into(),
        user_id: None,
        key_id: None,
        os_uid: uid,
    };
    audited(relay, req, next, actor, source).await
}

async fn audited(
    relay: AppState,
    req: Request,
    next: Next,
    actor: Actor,
    source: String,
) -> Response {
    // No route matched: nothing can have changed, and the raw path is not
    // worth keeping (it could hold anything a caller typed).
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        return next.run(req).await;
    };
    if READ_ONLY_POSTS.contains(&route.as_str()) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let action = format!("{} {route}", req.method());
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let response = next.run(req).await;
    let status = response.status();
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 401 {
        // Nothing changed, and the request log already has it.
        return response;
    }
    let mut targets: Vec<String> = path
        .split('/')
        .filter(|segment| looks_like_id(segment))
        .map(str::to_string)
        .collect();
    let response = if status.is_success() {
        let (response, created) = created_ids(response).await;
        for id in created {
            if !targets.contains(&id) {
                targets.push(id);
            }
        }
        response
    } else {
        response
    };
    let record = AuditRecord {
        audit_id: AuditId::generate(),
        at: relay.clock.now(),
        actor,
        source,
        action,
        targets,
        status: status.as_u16(),
        outcome: outcome(status.as_u16()).into(),
        request_id,
    };
    if let Err(err) = relay.record_audit(record).await {
        // The change itself is durable; say loudly that its entry is not.
        tracing::error!(error = %err, "cannot write the audit entry");
    }
    response
}

/// `dev_01H…`: a type prefix and a ULID.
fn looks_like_id(segment: &str) -> bool {
    let Some((prefix, ulid)) = segment.split_once('_') else {
        return false;
    };
    (3..=4).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_lowercase())
        && ulid.len() == 26
        && ulid
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// The ids a JSON response names at its top level (`key_id`, `user_id`, …),
/// and the response rebuilt unchanged. Nothing else of the body is kept.
async fn created_ids(response: Response) -> (Response, Vec<String>) {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return (response, Vec::new());
    }
    let (parts, body) = response.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_SCANNED_RESPONSE).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let rebuilt = Response::from_parts(parts, Body::empty());
            return (rebuilt, Vec::new());
        }
    };
    let mut ids = Vec::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&bytes) {
        for (name, value) in map {
            if let (true, serde_json::Value::String(id)) = (name.ends_with("_id"), value) {
                if looks_like_id(&id) {
                    ids.push(id);
                }
            }
        }
    }
    (Response::from_parts(parts, Body::from(bytes)), ids)
}

fn view(r: &AuditRecord) -> serde_json::Value {
    json!({
        "audit_id": r.audit_id,
        "at": r.at,
        "actor": {
            "kind": r.actor.kind,
            "user_id": r.actor.user_id,
            "key_id": r.actor.key_id,
            "os_uid": r.actor.os_uid,
        },
        "source": r.source,
        "action": r.action,
        "targets": r.targets,
        "status": r.status,
        "outcome": r.outcome,
        "request_id": r.request_id,
    })
}

/// `GET /api/audit` (admin): newest first, with `user_id`, `key_id`,
/// `since` and `outcome` filters.
#[utoipa::path(get, path = "/api/audit", tag = "audit",
    params(
        super::openapi::Paging,
        ("user_id" = Option<crate::ids::UserId>, Query, description = "Only changes by this user"),
        ("key_id" = Option<crate::ids::KeyId>, Query, description = "Only changes made with this key"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only changes at or after this time (RFC 3339 with an offset)"),
        ("outcome" = Option<String>, Query, pattern = "^(success|denied|refused)$", description = "Only this outcome"),
    ),
    responses(
        (status = 200, description = "A page of audit entries, newest first", body = super::openapi::AuditList),
        (status = 403, response = super::openapi::Forbidden),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn audit_list(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> ApiResult<Json<serde_json::Value>> {
    if !who.allows(Role::Admin) {
        return Err(ApiError::Forbidden(
            "reading the audit trail needs the admin role".into(),
        ));
    }
    audit_page(&relay, &params).map(Json)
}

/// The page shared by the API and the CLI.
///
/// # Errors
/// 400 for a bad cursor or filter, 422 for a bad limit.
pub fn audit_page(relay: &crate::relay::Relay, params: &Params) -> ApiResult<serde_json::Value> {
    let limit = params.limit()?;
    let before = params.cursor(|c| c.parse::<AuditId>().ok())?;
    let outcome = params.parsed("outcome", "success, denied or refused", |v| {
        matches!(v, "success" | "denied" | "refused").then(|| v.to_string())
    })?;
    // A time without an offset is well-formed but ambiguous: 422, as the
    // contract says for every time; anything else unreadable is 400.
    let since = match params.get("since") {
        None => None,
        Some(v) => match Timestamp::parse(v) {
            Ok(t) => Some(t),
            Err(crate::clock::TimeError::MissingOffset) => {
                return Err(ApiError::Invalid(vec![crate::error::FieldError::new(
                    "since",
                    "a time needs an offset such as Z or +01:00",
                )]))
            }
            Err(_) => {
                return Err(ApiError::BadRequest(
                    "since must be an RFC 3339 time with an offset (encode + as %2B)".into(),
                ))
            }
        },
    };
    let filter = AuditFilter {
        user_id: params.parsed("user_id", "a usr_ id", |v| v.parse::<UserId>().ok())?,
        key_id: params.parsed("key_id", "a key_ id", |v| v.parse::<KeyId>().ok())?,
        since,
        outcome,
    };
    let (rows, total) = relay.audit_page(&filter, before, limit + 1)?;
    let more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    let next = if more {
        rows.last().map(|r| Cursor::encode(&r.audit_id.to_string()))
    } else {
        None
    };
    let items: Vec<_> = rows.iter().map(view).collect();
    Ok(json!({"entries": items, "total": total, "next_cursor": next}))
}

#[cfg(test)]
mod tests {
    use super::looks_like_id;

    #[test]
    fn ids_are_recognised_by_shape() {
        assert!(looks_like_id("key_01HXYZ8K3M4N5P6Q7R8S9T0VWX"));
        assert!(looks_like_id("snap_01HXYZ8K3M4N5P6Q7R8S9T0VWX"));
        assert!(!looks_like_id("keys"));
        assert!(!looks_like_id("ppk_abcdefghijklmnopqrstuvwxyz0123456789"));
        assert!(!looks_like_id("key_01hxyz8k3m4n5p6q7r8s9t0vwx"));
    }
}
