//! The agent protocol routes.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;

use super::extract::JsonBody;
use super::problem::ApiResult;
use super::AppState;
use crate::agents::{CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse};
use crate::auth::bearer;

#[utoipa::path(post, path = "/agent/v1/enroll", tag = "agent",
    request_body = crate::agents::EnrollRequest,
    responses(
        (status = 201, description = "The device id and its agent token, shown this once", body = crate::agents::EnrollResponse),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(()))]
pub async fn enroll(
    State(relay): State<AppState>,
    JsonBody(body): JsonBody<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    Ok((StatusCode::CREATED, Json(relay.enroll(body).await?)))
}

#[utoipa::path(post, path = "/agent/v1/checkin", tag = "agent",
    request_body = crate::agents::CheckinRequest,
    responses(
        (status = 200, description = "What the agent should do next", body = crate::agents::CheckinResponse),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("agent_token" = [])))]
pub async fn checkin(
    State(relay): State<AppState>,
    req: Request,
) -> ApiResult<Json<CheckinResponse>> {
    let token = bearer(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let device = relay.agent_device(token)?;
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let JsonBody(body) =
        <JsonBody<CheckinRequest> as axum::extract::FromRequest<AppState>>::from_request(
            req, &relay,
        )
        .await?;
    Ok(Json(relay.checkin_from(device, body, peer).await?))
}
