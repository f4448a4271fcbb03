//! Reboot management.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::json;

use super::extract::{path_id, Cursor, JsonBody, Params};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::ids::DeviceId;
use crate::reboots::{NewSchedule, RebootSchedule};

pub fn schedule_json(s: &RebootSchedule) -> serde_json::Value {
    json!({
        "schedule_id": s.schedule_id,
        "device_id": s.device_id,
        "at": s.at,
        "status": s.status,
        "message": s.message,
        "force": s.force,
        "created_at": s.created_at,
        "dispatched_at": s.dispatched_at,
    })
}

fn require_operator(who: &Principal) -> ApiResult<()> {
    if who.allows(Role::Operator) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "managing reboots needs the operator role".into(),
        ))
    }
}

#[utoipa::path(get, path = "/api/reboot-management", tag = "reboots",
    params(super::openapi::Paging),
    responses(
        (status = 200, description = "Devices with a pending or scheduled reboot", body = super::openapi::RebootList),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn reboots_list(
    State(relay): State<AppState>,
    params: Params,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = params.limit()?;
    let after = params.cursor(|c| c.parse::<DeviceId>().ok())?;
    let rows = relay.fleet.reboot_rows();
    let total = rows.len();
    let start = after.map_or(0, |a| rows.partition_point(|r| r.device_id <= a));
    let page: Vec<_> = rows.iter().skip(start).take(limit).collect();
    let mut devices = Vec::with_capacity(page.len());
    for row in &page {
        let scheduled = match row.scheduled {
            Some(_) => relay.open_reboot(row.device_id)?.map(|s| schedule_json(&s)),
            None => None,
        };
        let reason = if row.reboot_pending {
            "updates_installed"
        } else {
            "scheduled"
        };
        devices.push(json!({
            "device_id": row.device_id,
            "hostname": row.hostname,
            "reboot_pending": row.reboot_pending,
            "reboot_pending_since": row.reboot_pending_since,
            "reason": reason,
            "scheduled_reboot": scheduled,
        }));
    }
    let next = (start + page.len() < total)
        .then(|| {
            page.last()
                .map(|r| Cursor::encode(&r.device_id.to_string()))
        })
        .flatten();
    Ok(Json(
        json!({"devices": devices, "total": total, "next_cursor": next}),
    ))
}

#[utoipa::path(post, path = "/api/reboot-management/{device_id}/schedule", tag = "reboots",
    params(("device_id" = crate::ids::DeviceId, Path, description = "A `dev_` id")),
    request_body = crate::reboots::NewSchedule,
    responses(
        (status = 201, description = "The reboot is scheduled", body = super::openapi::RebootScheduleView),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn reboots_schedule(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
    JsonBody(body): JsonBody<NewSchedule>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_operator(&who)?;
    let device: DeviceId = path_id(&id, "device")?;
    let schedule = relay.schedule_reboot(device, body, who.user_id).await?;
    Ok((StatusCode::CREATED, Json(schedule_json(&schedule))))
}

#[utoipa::path(delete, path = "/api/reboot-management/{device_id}/schedule", tag = "reboots",
    params(("device_id" = crate::ids::DeviceId, Path, description = "A `dev_` id")),
    responses(
        (status = 204, description = "The open schedule is cancelled"),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn reboots_cancel(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<StatusCode> {
    require_operator(&who)?;
    let device: DeviceId = path_id(&id, "device")?;
    if relay.fleet.hostname_of(device).is_none() {
        return Err(ApiError::NotFound("no such device".into()));
    }
    relay.cancel_reboot(device).await?;
    Ok(StatusCode::NO_CONTENT)
}
