//! Errors at the HTTP edge, rendered as RFC 9457 problem+json. The whole
//! error-to-status mapping is the one `match` in [`ApiError::status`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{FieldError, RelayError};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    PayloadTooLarge(usize),
    UnsupportedMediaType,
    Invalid(Vec<FieldError>),
    RateLimited { retry_after_s: u64, detail: String },
    Unavailable,
    Internal,
}

/// An RFC 9457 problem: every error the relay answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    kind: String,
    /// The status's reason phrase.
    title: &'a str,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong, for a human.
    detail: String,
    /// With 422: each invalid field.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::BadRequest(d)
            | ApiError::Unauthorized(d)
            | ApiError::Forbidden(d)
            | ApiError::NotFound(d)
            | ApiError::Conflict(d) => d.clone(),
            ApiError::PayloadTooLarge(limit) => {
                format!("the request body is larger than {limit} bytes")
            }
            ApiError::UnsupportedMediaType => {
                "send the body with a Content-Type this route takes: application/json \
                 (POST /api/assessments also takes text/plain, POST /api/bundles \
                 application/octet-stream)"
                    .into()
            }
            ApiError::Invalid(errors) => match errors.first() {
                Some(e) => format!("{}: {}", e.field, e.message),
                None => "the request has invalid values".into(),
            },
            ApiError::RateLimited { detail, .. } => detail.clone(),
            ApiError::Unavailable => "the relay is starting or shutting down; retry shortly".into(),
            ApiError::Internal => {
                "the relay failed to handle the request; it has been logged".into()
            }
        }
    }
}

/// A problem+json response for any status, used by handlers and by the
/// layer that rewrites bare framework errors (404, 405, 408, 413).
pub fn problem_response(
    status: StatusCode,
    detail: String,
    errors: Option<&[FieldError]>,
) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let slug = title.to_ascii_lowercase().replace(' ', "-");
    let body = Problem {
        kind: format!("https://docs.patchpilot.example/problems/{slug}"),
        title,
        status: status.as_u16(),
        detail,
        errors,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let errors = match &self {
            ApiError::Invalid(e) => Some(e.as_slice()),
            _ => None,
        };
        let mut response = problem_response(status, self.detail(), errors);
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            ApiError::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5u64));
            }
            _ => {}
        }
        response
    }
}

impl From<RelayError> for ApiError {
    fn from(err: RelayError) -> Self {
        match err {
            RelayError::NotFound(what) => ApiError::NotFound(format!("no such {what}")),
            RelayError::Conflict { detail } => ApiError::Conflict(detail),
            RelayError::Invalid(errors) => ApiError::Invalid(errors),
            RelayError::Forbidden(d) => ApiError::Forbidden(d),
            RelayError::Unauthorized(d) => ApiError::Unauthorized(d),
            RelayError::Unavailable => ApiError::Unavailable,
            RelayError::Store(source) => {
                tracing::error!(error = %source, cause = ?std::error::Error::source(&source), "store failure");
                ApiError::Internal
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
