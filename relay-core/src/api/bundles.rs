//! Courier bundles (admin only).
//!
//! | route | purpose |
//! | --- | --- |
//! | `POST /api/bundles` | apply a signed inbound bundle (`application/octet-stream`) |
//! | `GET /api/bundles/export` | the signed outbound bundle of what the MSP has not confirmed |

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::courier::{CourierError, ImportReport};
use crate::error::RelayError;

fn require_admin(who: &Principal) -> ApiResult<()> {
    if who.allows(Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "courier bundles need the admin role".into(),
        ))
    }
}

/// Maps a courier refusal: 413 for size, 422 naming the problem otherwise.
pub fn courier_error(err: CourierError) -> ApiError {
    match err.too_large() {
        Some(limit) => ApiError::PayloadTooLarge(usize::try_from(limit).unwrap_or(usize::MAX)),
        None => ApiError::from(RelayError::from(err)),
    }
}

/// How much of an oversized body is read and thrown away before the 413,
/// so that a client still sending gets the answer instead of a reset.
const DRAIN_BYTES: u64 = 64 << 20;

/// Reads a whole binary body up to `limit` bytes: 413 past it.
///
/// # Errors
/// 413 past the limit, 400 when the body cannot be read.
pub async fn read_bundle(request: Request, limit: u64) -> ApiResult<Vec<u8>> {
    use http_body_util::BodyExt;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut over = declared.is_some_and(|n| n > limit);
    let mut body = request.into_body();
    let mut out = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if !over && seen > limit {
            over = true;
            out = Vec::new();
        }
        if over {
            if seen > limit.saturating_add(DRAIN_BYTES) {
                break;
            }
        } else {
            out.extend_from_slice(&data);
        }
    }
    if over {
        return Err(ApiError::PayloadTooLarge(
            usize::try_from(limit).unwrap_or(usize::MAX),
        ));
    }
    Ok(out)
}

fn is_octet_stream(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"))
}

/// `POST /api/bundles` answer, as the OpenAPI document describes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct BundleApplied {
    /// The version of the bundle just applied.
    bundle_version: u64,
    /// What changed: `kev_entries`, `catalog`, `exclusions_created`,
    /// `exclusions_deleted`, `reboots_scheduled`, `reboots_cancelled`,
    /// `keys_revoked`, `export_confirmed`.
    applied: std::collections::BTreeMap<String, Option<u64>>,
}

#[utoipa::path(post, path = "/api/bundles", tag = "courier",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A signed inbound courier bundle (see docs/courier.md)"),
    responses(
        (status = 200, description = "The bundle was applied, all of it", body = BundleApplied),
        (status = 403, response = super::openapi::Forbidden),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn bundles_import(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    request: Request,
) -> ApiResult<Json<ImportReport>> {
    require_admin(&who)?;
    if !is_octet_stream(&request) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = read_bundle(request, relay.config.courier.max_bundle_bytes).await?;
    // In its own task: should the request time out (a full catalog on a
    // slow board), the import still finishes or refuses as a whole, and a
    // retry learns which from the version it reports.
    let importer = relay.clone();
    let report =
        tokio::spawn(async move { importer.import_bundle(bytes, Some(who.user_id)).await })
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(courier_error)?;
    Ok(Json(report))
}

#[utoipa::path(get, path = "/api/bundles/export", tag = "courier",
    responses(
        (status = 200, description = "The signed outbound bundle of what the MSP has not confirmed", content(
            (Vec<u8> = "application/octet-stream"),
        )),
        (status = 403, response = super::openapi::Forbidden),
    ),
    security(("api_key" = [])))]
pub async fn bundles_export(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Response> {
    require_admin(&who)?;
    export_response(relay).await
}

/// The export as an `application/octet-stream` download, shared with the
/// control socket.
///
/// # Errors
/// A storage failure.
pub async fn export_response(relay: AppState) -> ApiResult<Response> {
    let (bytes, summary) = tokio::task::spawn_blocking(move || relay.export_bundle())
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(courier_error)?;
    let name = format!(
        "attachment; filename=\"courier-{}-{}.tar\"",
        summary.relay_id, summary.export_version
    );
    let mut response = Body::from(bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&summary.export_version.to_string()) {
        headers.insert("X-Patchpilot-Export-Version", v);
    }
    Ok(response)
}
