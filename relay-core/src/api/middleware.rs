//! Request plumbing: request ids and the per-request log line, readiness,
//! authentication with rate limits, and the layer that turns the
//! framework's bare errors into problem+json.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::{problem_response, ApiError, PROBLEM_JSON};
use super::AppState;
use crate::auth::{bearer, AuthError};
use crate::limits::Decision;
use crate::relay::{Lifecycle, Metrics};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client address (unspecified when the transport does not say).
pub fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Gives each request an id (returned in `x-request-id`) and logs one line
/// per request at debug; server errors at error.
pub async fn trace_request(
    State(relay): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = format!("req_{}", ulid::Ulid::new());
    req.extensions_mut()
        .insert(super::audit::RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let span = tracing::debug_span!("request", request_id = %id);
    let mut response = {
        let _enter = span.enter();
        next.run(req).await
    };
    let status = response.status();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    Metrics::bump(&relay.metrics.requests);
    if status.is_server_error() {
        Metrics::bump(&relay.metrics.responses_5xx);
        tracing::error!(request_id = %id, %method, %path, status = status.as_u16(), elapsed_ms, "request failed");
    } else {
        if status.is_client_error() {
            Metrics::bump(&relay.metrics.responses_4xx);
        }
        tracing::debug!(request_id = %id, %method, %path, status = status.as_u16(), elapsed_ms, "request");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// 503 while the relay is starting or stopping.
pub async fn require_ready(State(relay): State<AppState>, req: Request, next: Next) -> Response {
    if relay.lifecycle() != Lifecycle::Ready {
        return ApiError::Unavailable.into_response();
    }
    next.run(req).await
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Authenticates the `ppk_` key, applies its rate limit, and hands the
/// [`crate::auth::Principal`] to the handler.
pub async fn require_key(State(relay): State<AppState>, mut req: Request, next: Next) -> Response {
    if relay.lifecycle() != Lifecycle::Ready {
        return ApiError::Unavailable.into_response();
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let presented = match header {
        Some(h) => bearer(Some(h)).or(Some("")),
        None => None,
    };
    let principal = match relay.auth.authenticate(presented, relay.clock.now()) {
        Ok(p) => p,
        Err(err) => return auth_failure(&relay, client_ip(&req), err),
    };

    let decision = relay.key_limiter.check(
        principal.key_id,
        principal.rate_limit,
        is_write(req.method()),
    );
    if !decision.allowed {
        Metrics::bump(&relay.metrics.rate_limited);
        let retry_after_s = decision.retry_after_s;
        let detail = format!("rate limit exceeded for this key; retry in {retry_after_s} s");
        let mut response = ApiError::RateLimited {
            retry_after_s,
            detail,
        }
        .into_response();
        rate_headers(&mut response, decision);
        return response;
    }
    req.extensions_mut().insert(principal);
    let mut response = next.run(req).await;
    rate_headers(&mut response, decision);
    response
}

fn auth_failure(relay: &AppState, ip: IpAddr, err: AuthError) -> Response {
    Metrics::bump(&relay.metrics.auth_failures);
    if let Some(retry_after_s) = relay.failures.record_failure(ip) {
        Metrics::bump(&relay.metrics.rate_limited);
        let detail = "too many failed authentications from this address".to_string();
        return ApiError::RateLimited {
            retry_after_s,
            detail,
        }
        .into_response();
    }
    tracing::debug!(%ip, reason = %err, "authentication failed");
    ApiError::Unauthorized(err.to_string()).into_response()
}

fn rate_headers(response: &mut Response, d: Decision) {
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(d.reset_s));
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Rewrites error responses the framework made itself (405, 408, 413, …)
/// into problem+json, keeping their headers (such as `Allow`).
pub async fn problemize(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            "this route does not take that method; the Allow header lists those it takes"
                .to_string()
        }
        StatusCode::REQUEST_TIMEOUT => "the request took too long".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_string(),
        other => other.canonical_reason().unwrap_or("error").to_string(),
    };
    let (parts, _) = response.into_parts();
    let mut rebuilt = problem_response(status, detail, None);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}

/// A panic is a bug: log it and answer 500 without details.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    tracing::error!("a request handler panicked");
    ApiError::Internal.into_response()
}
