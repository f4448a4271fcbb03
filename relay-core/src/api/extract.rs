//! Extractors that turn every kind of bad input into the contract's status:
//! 415 without a JSON content type, 413 past the body limit, 400 for bad
//! JSON or query syntax, 422 for well-formed JSON with invalid values.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use super::AppState;
use crate::error::FieldError;

/// The body limit of the router a request came through.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A path id segment. One that cannot even be decoded is not found, like any
/// other malformed id.
pub struct RawId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RawId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| RawId(id))
            .map_err(|_| ApiError::NotFound("no such resource".into()))
    }
}

/// A JSON body, checked as the contract says.
pub struct JsonBody<T>(pub T);

fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_json(content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(state.config.server.api_body_limit, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadRequest("the request body could not be read".into())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON: syntax errors are 400, type errors 422 naming the field.
///
/// # Errors
/// As above.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::BadRequest("the body is not valid UTF-8".into()));
    }
    // Syntax first: a body that is not JSON at all is 400 whatever its shape.
    if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::BadRequest(format!(
            "the body is not valid JSON: {err}"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                ApiError::Invalid(vec![FieldError::new(field, data_message(&inner))])
            }
            _ => ApiError::BadRequest(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|err| ApiError::BadRequest(format!("the body is not valid JSON: {err}")))?;
    Ok(value)
}

/// serde's message without its "at line 1 column 9" tail.
fn data_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Query parameters; unknown ones are ignored.
pub struct Params(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("the query string cannot be parsed".into()))?;
        Ok(Params(pairs))
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`: default 50; not a number → 400; outside 1..=500 → 422.
    ///
    /// # Errors
    /// As above.
    pub fn limit(&self) -> Result<usize, ApiError> {
        let Some(text) = self.get("limit") else {
            return Ok(50);
        };
        let value: i64 = text
            .trim()
            .parse()
            .map_err(|_| ApiError::BadRequest("limit must be a whole number".into()))?;
        if !(1..=500).contains(&value) {
            return Err(ApiError::Invalid(vec![FieldError::new(
                "limit",
                "must be between 1 and 500",
            )]));
        }
        Ok(value as usize)
    }

    /// # Errors
    /// 400 when the value is not `true` or `false`.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{name} must be true or false"
            ))),
        }
    }

    /// A value parsed by `parse`.
    ///
    /// # Errors
    /// 400 naming the parameter and what it takes.
    pub fn parsed<T>(
        &self,
        name: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => parse(v)
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(format!("{name} must be {expected}"))),
        }
    }

    /// The decoded `cursor`.
    ///
    /// # Errors
    /// 400 for a cursor this list did not hand out.
    pub fn cursor<T>(&self, decode: impl Fn(&str) -> Option<T>) -> Result<Option<T>, ApiError> {
        match self.get("cursor") {
            None => Ok(None),
            Some(c) => Cursor::decode(c)
                .and_then(|text| decode(&text))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::BadRequest("the cursor is not valid for this list".into())
                }),
        }
    }
}

/// Opaque cursors: the position, base64url-encoded.
pub struct Cursor;

impl Cursor {
    pub fn encode(position: &str) -> String {
        URL_SAFE_NO_PAD.encode(position.as_bytes())
    }

    pub fn decode(cursor: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?;
        String::from_utf8(bytes).ok()
    }
}

/// A path id; a malformed one is simply not found.
///
/// # Errors
/// 404 when `text` is not an id of this type.
pub fn path_id<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    text.parse()
        .map_err(|_| ApiError::NotFound(format!("no such {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Body {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn json_errors_split_into_syntax_and_values() {
        assert!(matches!(
            parse_json::<Body>(b"{"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"{\"name\": 1}"),
            Err(ApiError::Invalid(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"{\"name\": \"a\"} x"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"\xff\xfe"),
            Err(ApiError::BadRequest(_))
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse_json::<serde_json::Value>(deep.as_bytes()),
            Err(ApiError::BadRequest(_))
        ));
        match parse_json::<Body>(b"{\"name\": \"a\", \"name\": \"b\"}") {
            Err(ApiError::Invalid(e)) => assert!(e[0].message.contains("duplicate")),
            other => panic!("duplicate keys must be 422, got {other:?}"),
        }
    }

    #[test]
    fn content_type_allows_parameters_and_any_case() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }
}
