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

pub async fn keys_create(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(body): JsonBody<NewKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    require_admin(&who)?;
    let created = relay.create_key(body, who.user_id).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

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

pub async fn users_create(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    JsonBody(body): JsonBody<NewUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    require_admin(&who)?;
    let user = relay.create_user(body).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub async fn users_disable(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<Json<UserView>> {
    require_admin(&who)?;
    let id: UserId = path_id(&id, "user")?;
    Ok(Json(relay.disable_user(id).await?))
}
