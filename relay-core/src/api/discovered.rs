//! `GET /api/discovered`: agents heard over mDNS that match no enrolled
//! device. Listing them changes nothing: a device exists only by enrolling.

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::extract::{Cursor, Params};
use super::problem::ApiResult;
use super::AppState;
use crate::discovery::MAX_INSTANCE_BYTES;

#[utoipa::path(get, path = "/api/discovered", tag = "devices",
    params(super::openapi::Paging),
    responses(
        (status = 200, description = "Agents heard over mDNS that match no enrolled device", body = super::openapi::DiscoveredList),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn discovered_list(
    State(relay): State<AppState>,
    params: Params,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = params.limit()?;
    let after = params
        .cursor(|c| (!c.is_empty() && c.len() <= MAX_INSTANCE_BYTES).then(|| c.to_string()))?;
    let page = relay.discovered_page(after.as_deref(), limit)?;
    Ok(Json(json!({
        "discovered": page.items,
        "total": page.total,
        "next_cursor": page.next.map(|i| Cursor::encode(&i)),
    })))
}
