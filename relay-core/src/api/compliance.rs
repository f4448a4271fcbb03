//! Compliance snapshots, as JSON or CSV.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::extract::{path_id, Cursor, Params};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::compliance::{to_csv, Snapshot};
use crate::ids::SnapshotId;

fn wants_csv(params: &Params, req: &Request) -> Result<bool, ApiError> {
    match params.get("format") {
        Some("csv") => return Ok(true),
        Some("json") => return Ok(false),
        Some(_) => return Err(ApiError::BadRequest("format must be json or csv".into())),
        None => {}
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(accept.split(',').any(|a| {
        a.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"))
    }))
}

fn render(snapshot: &Snapshot, csv: bool) -> Response {
    if csv {
        let disposition = format!(
            "attachment; filename=\"compliance-{}.csv\"",
            snapshot.snapshot_id
        );
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, disposition),
            ],
            to_csv(snapshot),
        )
            .into_response()
    } else {
        Json(snapshot).into_response()
    }
}

#[utoipa::path(get, path = "/api/compliance/snapshot", tag = "compliance",
    params(("format" = Option<String>, Query, description = "`json` or `csv`; without it the `Accept` header decides", pattern = "^(json|csv)$")),
    responses(
        (status = 200, description = "The latest snapshot (taken now when there is none)", content(
            (crate::compliance::Snapshot = "application/json"),
            (String = "text/csv"),
        )),
    ),
    security(("api_key" = [])))]
pub async fn snapshot_latest(
    State(relay): State<AppState>,
    params: Params,
    req: Request,
) -> ApiResult<Response> {
    let csv = wants_csv(&params, &req)?;
    let snapshot = match relay.latest_snapshot()? {
        Some(s) => s,
        None => relay.take_snapshot().await?,
    };
    Ok(render(&snapshot, csv))
}

#[utoipa::path(post, path = "/api/compliance/snapshot", tag = "compliance",
    responses(
        (status = 201, description = "A snapshot taken now", body = crate::compliance::Snapshot),
        (status = 403, response = super::openapi::Forbidden),
    ),
    security(("api_key" = [])))]
pub async fn snapshot_take(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Response> {
    if !who.allows(Role::Operator) {
        return Err(ApiError::Forbidden(
            "taking a snapshot needs the operator role".into(),
        ));
    }
    let snapshot = relay.take_snapshot().await?;
    Ok((StatusCode::CREATED, Json(snapshot)).into_response())
}

#[utoipa::path(get, path = "/api/compliance/snapshots", tag = "compliance",
    params(super::openapi::Paging),
    responses(
        (status = 200, description = "Snapshots, newest first, without their device rows", body = super::openapi::SnapshotList),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn snapshots_list(
    State(relay): State<AppState>,
    params: Params,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = params.limit()?;
    let before = params.cursor(|c| c.parse::<SnapshotId>().ok())?;
    let (rows, total) = relay.snapshot_page(before, limit + 1)?;
    let more = rows.len() > limit;
    let rows: Vec<_> = rows.into_iter().take(limit).collect();
    let next = if more {
        rows.last()
            .map(|r| Cursor::encode(&r.snapshot_id.to_string()))
    } else {
        None
    };
    Ok(Json(
        json!({"snapshots": rows, "total": total, "next_cursor": next}),
    ))
}

#[utoipa::path(get, path = "/api/compliance/snapshots/{snapshot_id}", tag = "compliance",
    params(("snapshot_id" = crate::ids::SnapshotId, Path, description = "A `snap_` id"), ("format" = Option<String>, Query, description = "`json` or `csv`; without it the `Accept` header decides", pattern = "^(json|csv)$")),
    responses(
        (status = 200, description = "The snapshot", content(
            (crate::compliance::Snapshot = "application/json"),
            (String = "text/csv"),
        )),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("api_key" = [])))]
pub async fn snapshots_get(
    State(relay): State<AppState>,
    crate::api::RawId(id): crate::api::RawId,
    params: Params,
    req: Request,
) -> ApiResult<Response> {
    let id: SnapshotId = path_id(&id, "snapshot")?;
    let csv = wants_csv(&params, &req)?;
    let snapshot = relay
        .snapshot(id)?
        .ok_or_else(|| ApiError::NotFound("no such snapshot".into()))?;
    Ok(render(&snapshot, csv))
}
