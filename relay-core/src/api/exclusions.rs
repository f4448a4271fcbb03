//! Patch exclusions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::json;

use super::extract::{path_id, Cursor, JsonBody, Params};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::error::RelayError;
use crate::exclusions::{Exclusion, NewExclusion};
use crate::ids::ExclusionId;
use crate::store::Table;

fn view(e: &Exclusion, now: crate::clock::Timestamp) -> serde_json::Value {
    json!({
        "exclusion_id": e.exclusion_id,
        "kind": e.kind,
        "value": e.value,
        "os_family": e.os_family,
        "reason": e.reason,
        "created_at": e.created_at,
        "created_by": e.created_by,
        "expires_at": e.expires_at,
        "active": e.is_active(now),
    })
}

#[utoipa::path(get, path = "/api/patch-exclusions", tag = "exclusions",
    params(super::openapi::Paging),
    responses(
        (status = 200, description = "A page of exclusions", body = super::openapi::ExclusionList),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn exclusions_list(
    State(relay): State<AppState>,
    params: Params,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = params.limit()?;
    let after = params.cursor(|c| c.parse::<ExclusionId>().ok())?;
    let (rows, total) = relay.exclusion_page(after, limit + 1)?;
    let more = rows.len() > limit;
    let now = relay.clock.now();
    let rows: Vec<_> = rows.iter().take(limit).collect();
    let next = if more {
        rows.last()
            .map(|e| Cursor::encode(&e.exclusion_id.to_string()))
    } else {
        None
    };
    let items: Vec<_> = rows.iter().map(|e| view(e, now)).collect();
    Ok(Json(
        json!({"exclusions": items, "total": total, "next_cursor": next}),
    ))
}

#[utoipa::path(get, path = "/api/patch-exclusions/{exclusion_id}", tag = "exclusions",
    params(("exclusion_id" = crate::ids::ExclusionId, Path, description = "An `exc_` id")),
    responses(
        (status = 200, description = "The exclusion", body = super::openapi::ExclusionView),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("api_key" = [])))]
pub async fn exclusions_get(
    State(relay): State<AppState>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<Json<serde_json::Value>> {
    let id: ExclusionId = path_id(&id, "exclusion")?;
    let e: Exclusion = relay
        .store
        .get(Table::Exclusions, &id.to_bytes())
        .map_err(RelayError::from)?
        .ok_or_else(|| ApiError::NotFound("no such exclusion".into()))?;
    Ok(Json(view(&e, relay.clock.now())))
}

#[utoipa::path(post, path = "/api/patch-exclusions", tag = "exclusions",
    request_body = crate::exclusions::NewExclusion,
    responses(
        (status = 201, description = "The exclusion", body = super::openapi::ExclusionView),
        (status = 403, response = super::openapi::Forbidden),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn exclusions_create(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(body): JsonBody<NewExclusion>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if !who.allows(Role::Operator) {
        return Err(ApiError::Forbidden(
            "managing exclusions needs the operator role".into(),
        ));
    }
    let e = relay.create_exclusion(body, who.user_id).await?;
    Ok((StatusCode::CREATED, Json(view(&e, relay.clock.now()))))
}

#[utoipa::path(delete, path = "/api/patch-exclusions/{exclusion_id}", tag = "exclusions",
    params(("exclusion_id" = crate::ids::ExclusionId, Path, description = "An `exc_` id")),
    responses(
        (status = 204, description = "The exclusion is gone"),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("api_key" = [])))]
pub async fn exclusions_delete(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<StatusCode> {
    if !who.allows(Role::Operator) {
        return Err(ApiError::Forbidden(
            "managing exclusions needs the operator role".into(),
        ));
    }
    let id: ExclusionId = path_id(&id, "exclusion")?;
    relay.delete_exclusion(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
