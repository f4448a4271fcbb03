//! `POST /api/assessments`: the offline assessment of a machine with no
//! agent, from its `systeminfo` text or `{os_build, installed_kbs}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;

use super::extract::{parse_json, BodyLimit};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::catalog::systeminfo::{decode_text, parse_systeminfo};
use crate::catalog::{parse_os_build, Arch, AssessError, AssessmentQuery};
use crate::error::FieldError;

/// The JSON form. `os_name` (to tell servers from clients on shared
/// builds such as 17763) and `arch` are optional extras.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssessmentBody {
    /// A Windows build: `19045`, `"10.0.19045"` or `"10.0.19045.4291"`.
    #[schema(value_type = String)]
    os_build: serde_json::Value,
    /// Installed KBs (`KB5034441` or `5034441`), at most 5000.
    #[serde(default)]
    #[schema(max_items = 5000)]
    installed_kbs: Vec<String>,
    /// The OS name, to tell servers from clients on shared builds.
    #[serde(default)]
    os_name: Option<String>,
    /// `x64` (default), `x86` or `arm64`.
    #[serde(default)]
    arch: Option<String>,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(vec![FieldError::new(field, message)])
}

fn query_from_json(bytes: &[u8]) -> Result<(AssessmentQuery, serde_json::Value), ApiError> {
    let body: AssessmentBody = parse_json(bytes)?;
    let build = match &body.os_build {
        serde_json::Value::String(s) => parse_os_build(s),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            "os_build",
            "a Windows build such as 19045 or \"10.0.19045\"",
        )
    })?;
    let arch = match body.arch.as_deref() {
        None => Arch::X64,
        Some(a) => Arch::from_system_type(a).ok_or_else(|| invalid("arch", "x64, x86 or arm64"))?,
    };
    if body.installed_kbs.len() > 5000 {
        return Err(invalid("installed_kbs", "at most 5000 KBs"));
    }
    let server = body
        .os_name
        .as_deref()
        .is_some_and(crate::catalog::products::is_server_name);
    let query = AssessmentQuery {
        build,
        arch,
        server,
        installed_kbs: body.installed_kbs,
    };
    Ok((query, serde_json::Value::Null))
}

fn query_from_text(bytes: &[u8]) -> Result<(AssessmentQuery, serde_json::Value), ApiError> {
    let text = decode_text(bytes);
    let info = parse_systeminfo(&text).map_err(|e| invalid("systeminfo", e.to_string()))?;
    let source = serde_json::json!({
        "host_name": info.host_name,
        "os_name": info.os_name,
        "os_version": info.os_version,
        "install_date": info.install_date,
        "language": info.language,
    });
    Ok((
        AssessmentQuery {
            build: info.build,
            arch: info.arch,
            server: info.server,
            installed_kbs: info.hotfixes,
        },
        source,
    ))
}

#[utoipa::path(post, path = "/api/assessments", tag = "airgap",
    request_body(
        description = "The text Windows' `systeminfo` prints (any common language, CRLF or LF), or JSON",
        content(
            (String = "text/plain"),
            (AssessmentBody = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "Missing updates and open CVEs", body = super::openapi::AssessmentAnswer),
        (status = 403, response = super::openapi::Forbidden),
        (status = 409, response = super::openapi::Conflict),
    ),
    security(("api_key" = [])))]
pub async fn assessments_create(
    State(relay): State<AppState>,
    Extension(who): Extension<Principal>,
    req: Request,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if !who.allows(Role::Operator) {
        return Err(ApiError::Forbidden(
            "assessing a machine needs the operator role".into(),
        ));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map_or(relay.config.server.api_body_limit, |l| l.0);
    let bytes = Bytes::from_request(req, &relay)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadRequest("the request body could not be read".into())
            }
        })?;
    let body = assess_body(&relay, content_type.as_deref(), &bytes).await?;
    Ok((StatusCode::OK, Json(body)))
}

/// The assessment of a request body (`text/plain` systeminfo or JSON), for
/// the API and the control socket.
///
/// # Errors
/// 415 for another content type, 409 with no catalog, 422 for what cannot be read.
pub async fn assess_body(
    relay: &AppState,
    content_type: Option<&str>,
    bytes: &[u8],
) -> ApiResult<serde_json::Value> {
    let essence = content_type
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let json = match essence.as_str() {
        "application/json" => true,
        "text/plain" => false,
        _ => return Err(ApiError::UnsupportedMediaType),
    };
    let Some(catalog) = relay.catalog() else {
        return Err(ApiError::Conflict(
            "no update catalog is loaded: import a WES-NG definitions.zip first \
             (patchpilot-relay import-catalog)"
                .into(),
        ));
    };
    let (query, source) = if json {
        query_from_json(bytes)?
    } else {
        query_from_text(bytes)?
    };
    let kev = relay
        .kev
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .cves
        .clone();
    let assessment = tokio::task::spawn_blocking(move || catalog.assess(&query, &kev))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|err| match err {
            AssessError::UnknownBuild { .. } => invalid("os_build", err.to_string()),
            AssessError::BadKb(_) => invalid("installed_kbs", err.to_string()),
        })?;
    let mut body = serde_json::to_value(&assessment).map_err(|_| ApiError::Internal)?;
    if let Some(map) = body.as_object_mut() {
        if !source.is_null() {
            map.insert("systeminfo".into(), source);
        }
    }
    Ok(body)
}
