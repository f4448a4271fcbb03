//! The relay's domain error: what went wrong, in terms the HTTP edge maps to
//! a status in one place (`api::problem`).

use crate::store::StoreError;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{detail}")]
    Conflict { detail: String },
    #[error("request has invalid fields")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("the relay is starting or shutting down")]
    Unavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RelayError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        RelayError::Invalid(vec![FieldError::new(field, message)])
    }
}

pub type RelayResult<T> = Result<T, RelayError>;

/// Collects field errors while validating a body.
#[derive(Debug, Default)]
pub struct Checks(Vec<FieldError>);

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        // A body with thousands of bad items needs only the first few named.
        if self.0.len() < 20 {
            self.0.push(FieldError::new(field, message));
        }
    }

    pub fn check(&mut self, ok: bool, field: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.fail(field, message);
        }
    }

    /// # Errors
    /// [`RelayError::Invalid`] naming every failed field.
    pub fn finish(self) -> RelayResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RelayError::Invalid(self.0))
        }
    }
}

/// Text a human typed: no control characters, a bounded length.
pub fn check_text(checks: &mut Checks, field: &str, value: &str, min: usize, max: usize) {
    let chars = value.chars().count();
    if chars < min || chars > max {
        checks.fail(field, format!("must be {min} to {max} characters"));
    } else if value.chars().any(char::is_control) {
        checks.fail(field, "must not contain control characters");
    } else if value.chars().any(is_bidi_control) {
        checks.fail(field, "must not contain bidirectional override characters");
    }
}

/// Characters that reorder how text is displayed (the "Trojan Source"
/// set): a name holding one can show as something it is not.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}
