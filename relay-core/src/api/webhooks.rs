//! Webhooks (admin only): create, list, change, delete, rotate the secret,
//! queue a test event, and page through deliveries. A secret appears in a
//! response only when it is created or rotated.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::extract::{parse_json, path_id, Cursor, JsonBody, Params};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::ids::WebhookId;
use crate::relay::Relay;
use crate::webhooks::{DeliveryRecord, DeliveryStatus, NewWebhook, WebhookChanges, WebhookRecord};

fn admin(who: &Principal) -> ApiResult<()> {
    if who.allows(Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "managing webhooks needs the admin role".into(),
        ))
    }
}

fn view(relay: &Relay, w: &WebhookRecord) -> serde_json::Value {
    json!({
        "webhook_id": w.webhook_id,
        "url": w.url,
        "events": w.events,
        "description": w.description,
        "status": w.status,
        "disabled_reason": w.disabled_reason,
        "created_at": w.created_at,
        "updated_at": w.updated_at,
        "previous_secret_expires_at": w.previous_secret_expires_at
            .filter(|t| *t > relay.clock.now()),
        "endpoint_reachable": !relay.webhooks.unreachable(w.webhook_id),
        "backlog": relay
            .webhooks
            .backlog(w.webhook_id, relay.store.last_event_sequence_applied()),
    })
}

fn delivery_view(d: &DeliveryRecord) -> serde_json::Value {
    json!({
        "delivery_id": d.delivery_id,
        "event_id": d.event_id,
        "sequence": d.sequence,
        "type": d.event_type,
        "attempt": d.attempt,
        "status": d.status,
        "response_status": d.response_status,
        "error": d.error,
        "attempted_at": d.attempted_at,
        "next_attempt_at": d.next_attempt_at,
        "attempts": d.attempts.iter().map(|a| json!({
            "delivery_id": a.delivery_id,
            "attempted_at": a.at,
            "response_status": a.response_status,
            "error": a.error,
        })).collect::<Vec<_>>(),
    })
}

#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks",
    params(super::openapi::Paging),
    responses(
        (status = 200, description = "A page of webhooks", body = super::openapi::WebhookList),
        (status = 403, response = super::openapi::Forbidden),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn webhooks_list(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> ApiResult<Json<serde_json::Value>> {
    admin(&who)?;
    let limit = params.limit()?;
    let after = params.cursor(|c| c.parse::<WebhookId>().ok())?;
    let (rows, total) = relay.webhook_page(after, limit + 1)?;
    let next = if rows.len() > limit {
        rows.get(limit - 1)
            .map(|w| Cursor::encode(&w.webhook_id.to_string()))
    } else {
        None
    };
    let items: Vec<_> = rows.iter().take(limit).map(|w| view(&relay, w)).collect();
    Ok(Json(
        json!({"webhooks": items, "total": total, "next_cursor": next}),
    ))
}

#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks",
    request_body = crate::webhooks::NewWebhook,
    responses(
        (status = 201, description = "The webhook; `secret` is shown this once", body = super::openapi::CreatedWebhook),
        (status = 403, response = super::openapi::Forbidden),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn webhooks_create(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(body): JsonBody<NewWebhook>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    admin(&who)?;
    let minted = relay.create_webhook(body).await?;
    let mut out = view(&relay, &minted.record);
    out["secret"] = json!(minted.secret.expose());
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, path = "/api/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = crate::ids::WebhookId, Path, description = "A `whk_` id")),
    responses(
        (status = 200, description = "The webhook", body = super::openapi::WebhookView),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("api_key" = [])))]
pub async fn webhooks_get(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<Json<serde_json::Value>> {
    admin(&who)?;
    let id: WebhookId = path_id(&id, "webhook")?;
    Ok(Json(view(&relay, &relay.webhook_get(id)?)))
}

#[utoipa::path(patch, path = "/api/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = crate::ids::WebhookId, Path, description = "A `whk_` id")),
    request_body = crate::webhooks::WebhookChanges,
    responses(
        (status = 200, description = "The changed webhook", body = super::openapi::WebhookView),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn webhooks_update(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
    JsonBody(body): JsonBody<WebhookChanges>,
) -> ApiResult<Json<serde_json::Value>> {
    admin(&who)?;
    let id: WebhookId = path_id(&id, "webhook")?;
    let record = relay.update_webhook(id, body).await?;
    Ok(Json(view(&relay, &record)))
}

#[utoipa::path(delete, path = "/api/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = crate::ids::WebhookId, Path, description = "A `whk_` id")),
    responses(
        (status = 204, description = "The webhook and its outbox are gone"),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("api_key" = [])))]
pub async fn webhooks_delete(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<StatusCode> {
    admin(&who)?;
    let id: WebhookId = path_id(&id, "webhook")?;
    relay.delete_webhook(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the previous secret stays valid, in seconds.
    #[schema(minimum = 0, maximum = 604_800)]
    grace_period_s: Option<i64>,
}

#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/rotate-secret", tag = "webhooks",
    params(("webhook_id" = crate::ids::WebhookId, Path, description = "A `whk_` id")),
    request_body(content = Option<RotateBody>, description = "Optional; an empty body keeps the default grace period", content_type = "application/json"),
    responses(
        (status = 200, description = "The new secret, shown this once", body = super::openapi::RotatedSecret),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn webhooks_rotate_secret(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    admin(&who)?;
    let id: WebhookId = path_id(&id, "webhook")?;
    // The body is optional; when there is one it must be JSON.
    let grace = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json::<RotateBody>(&body)?.grace_period_s
    };
    let minted = relay.rotate_webhook_secret(id, grace).await?;
    Ok(Json(json!({
        "webhook_id": id,
        "secret": minted.secret.expose(),
        "previous_secret_expires_at": minted.record.previous_secret_expires_at,
    })))
}

#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/test", tag = "webhooks",
    params(("webhook_id" = crate::ids::WebhookId, Path, description = "A `whk_` id")),
    responses(
        (status = 202, description = "A `webhook.test` event is queued for this webhook", body = super::openapi::QueuedTestEvent),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn webhooks_test(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    admin(&who)?;
    let id: WebhookId = path_id(&id, "webhook")?;
    let event = relay.queue_webhook_test(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"event_id": event.event_id, "sequence": event.sequence, "type": "webhook.test"}),
        ),
    ))
}

#[utoipa::path(get, path = "/api/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    params(("webhook_id" = crate::ids::WebhookId, Path, description = "A `whk_` id"), super::openapi::Paging,
        ("status" = Option<crate::webhooks::DeliveryStatus>, Query, description = "Only deliveries in this state"),
    ),
    responses(
        (status = 200, description = "A page of deliveries, newest first", body = super::openapi::DeliveryList),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn webhooks_deliveries(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
    params: Params,
) -> ApiResult<Json<serde_json::Value>> {
    admin(&who)?;
    let id: WebhookId = path_id(&id, "webhook")?;
    let limit = params.limit()?;
    let before = params.cursor(|c| c.parse::<u64>().ok())?;
    let status = params.parsed(
        "status",
        "pending, succeeded, failed or dropped",
        DeliveryStatus::parse,
    )?;
    let (rows, total) = relay.delivery_page(id, before, status, limit + 1)?;
    let next = if rows.len() > limit {
        rows.get(limit - 1)
            .map(|d| Cursor::encode(&d.sequence.to_string()))
    } else {
        None
    };
    let items: Vec<_> = rows.iter().take(limit).map(delivery_view).collect();
    Ok(Json(
        json!({"deliveries": items, "total": total, "next_cursor": next}),
    ))
}
