//! Time: whole UTC seconds, RFC 3339 on the wire, and an injectable clock.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Seconds since the Unix epoch, UTC. Rendered as `2026-04-26T09:14:22Z`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// Why a time string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("a time needs an offset such as Z or +01:00")]
    MissingOffset,
    #[error("not an RFC 3339 date-time")]
    Malformed,
    #[error("the time falls outside the years 0001 to 9999 in UTC")]
    OutOfRange,
}

impl Timestamp {
    pub const SECONDS_PER_DAY: i64 = 86_400;

    /// Parses RFC 3339 with any offset and fractional seconds, converting to
    /// UTC and truncating to whole seconds. A time without an offset is
    /// refused.
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let trimmed = text.trim();
        match OffsetDateTime::parse(trimmed, &Rfc3339) {
            // 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z
            Ok(t) if (-62_135_596_800..=253_402_300_799).contains(&t.unix_timestamp()) => {
                Ok(Self(t.unix_timestamp()))
            }
            Ok(_) => Err(TimeError::OutOfRange),
            Err(_) if looks_like_local_time(trimmed) => Err(TimeError::MissingOffset),
            Err(_) => Err(TimeError::Malformed),
        }
    }

    pub fn unix(&self) -> i64 {
        self.0
    }

    pub fn plus_seconds(&self, seconds: i64) -> Self {
        Self(self.0.saturating_add(seconds))
    }

    pub fn seconds_since(&self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// `YYYY-MM-DD`, for human-readable details.
    pub fn date(&self) -> String {
        let full = self.to_string();
        full.get(..10).unwrap_or(&full).to_string()
    }
}

fn looks_like_local_time(text: &str) -> bool {
    let with_z = format!("{text}Z");
    OffsetDateTime::parse(&with_z, &Rfc3339).is_ok()
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OffsetDateTime::from_unix_timestamp(self.0) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            Err(_) => write!(f, "@{}", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Timestamp::parse(&text).map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(d).map(Timestamp)
        }
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .description(Some("RFC 3339 in UTC, whole seconds"))
            .examples(["2026-04-26T09:14:22Z"])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Timestamp")
    }
}

/// The source of "now". Production reads the system clock; tests set it.
#[derive(Clone)]
pub struct Clock {
    fixed: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Self {
        Self { fixed: None }
    }

    /// A clock that stands still at `at` until moved with [`Clock::advance`].
    pub fn manual(at: Timestamp) -> Self {
        Self {
            fixed: Some(Arc::new(AtomicI64::new(at.0))),
        }
    }

    pub fn now(&self) -> Timestamp {
        match &self.fixed {
            Some(t) => Timestamp(t.load(Ordering::Relaxed)),
            None => Timestamp(OffsetDateTime::now_utc().unix_timestamp()),
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance(&self, seconds: i64) {
        if let Some(t) = &self.fixed {
            t.fetch_add(seconds, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fixed {
            Some(_) => write!(f, "Clock::manual({})", self.now()),
            None => write!(f, "Clock::system"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_converted_to_utc_and_fractions_truncated() {
        let t = Timestamp::parse("2026-04-26T10:14:22.987+01:00").expect("valid time");
        assert_eq!(t.to_string(), "2026-04-26T09:14:22Z");
        let z = Timestamp::parse("2026-04-26t09:14:22z").expect("lower-case t and z are RFC 3339");
        assert_eq!(z, t);
    }

    #[test]
    fn a_time_without_offset_is_refused() {
        assert_eq!(
            Timestamp::parse("2026-04-26T09:14:22"),
            Err(TimeError::MissingOffset)
        );
        assert_eq!(Timestamp::parse("yesterday"), Err(TimeError::Malformed));
        assert_eq!(
            Timestamp::parse("2026-02-30T00:00:00Z"),
            Err(TimeError::Malformed)
        );
        assert_eq!(
            Timestamp::parse("0000-01-01T00:00:00+23:59"),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(
            Timestamp::parse("9999-12-31T23:59:59-23:59"),
            Err(TimeError::OutOfRange)
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(Timestamp(1_000));
        assert_eq!(clock.now(), Timestamp(1_000));
        clock.advance(60);
        assert_eq!(clock.now(), Timestamp(1_060));
    }
}
