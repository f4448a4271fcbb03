//! API keys and users (admin only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::json;

use super::extract::{path_id, JsonBody};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::accounts::{CreatedKey, NewKey, NewUser, UserView};
use crate::auth::{Principal, Role};
use crate::ids::{KeyId, UserId};

fn require_admin(who: &Principal) -> ApiResult<()> {
    if who.allows(Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "managing keys and users needs the admin role".into(),
        ))
    }
}

#[utoipa::path(get, path = "/api/keys", tag = "accounts",
    responses(
        (status = 200, description = "Every key, never a secret", body = super::openapi::KeyList),
        (status = 403, response = super::openapi::Forbidden),
    ),
    security(("api_key" = [])))]
pub async fn keys_list(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<serde_json::Value>> {
    require_admin(&who)?;
    let keys = relay.keys();
    Ok(Json(
        json!({"keys": keys, "total": keys.len(), "next_cursor": null}),
    ))
}

#[utoipa::path(post, path = "/api/keys", tag = "accounts",
    request_body = crate::accounts::NewKey,
    responses(
        (status = 201, description = "The key; `key` is shown this once", body = crate::accounts::CreatedKey),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn keys_create(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(body): JsonBody<NewKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    require_admin(&who)?;
    let created = relay.create_key(body, who.user_id).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(delete, path = "/api/keys/{key_id}", tag = "accounts",
    params(("key_id" = crate::ids::KeyId, Path, description = "A `key_` id")),
    responses(
        (status = 204, description = "The key is revoked"),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn keys_revoke(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<StatusCode> {
    require_admin(&who)?;
    let id: KeyId = path_id(&id, "key")?;
    relay.revoke_key(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/users", tag = "accounts",
    responses(
        (status = 200, description = "Every user", body = super::openapi::UserList),
        (status = 403, response = super::openapi::Forbidden),
    ),
    security(("api_key" = [])))]
pub async fn users_list(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<serde_json::Value>> {
    require_admin(&who)?;
    let users = relay.users();
    Ok(Json(
        json!({"users": users, "total": users.len(), "next_cursor": null}),
    ))
}

#[utoipa::path(post, path = "/api/users", tag = "accounts",
    request_body = crate::accounts::NewUser,
    responses(
        (status = 201, description = "The user", body = crate::accounts::UserView),
        (status = 403, response = super::openapi::Forbidden),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn users_create(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(body): JsonBody<NewUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    require_admin(&who)?;
    let user = relay.create_user(body).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(post, path = "/api/users/{user_id}/disable", tag = "accounts",
    params(("user_id" = crate::ids::UserId, Path, description = "A `usr_` id")),
    responses(
        (status = 200, description = "The user, disabled with every one of its keys", body = crate::accounts::UserView),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn users_disable(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<Json<UserView>> {
    require_admin(&who)?;
    let id: UserId = path_id(&id, "user")?;
    Ok(Json(relay.disable_user(id).await?))
}
