//! RFC 3339 helpers: the agent protocol uses UTC, `Z`, whole seconds.

use anyhow::Context as _;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime};

/// The current UTC time truncated to whole seconds.
pub fn now_utc() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .expect("zero nanoseconds is always a valid value")
}

/// Formats `t` (converted to UTC, truncated to whole seconds) as RFC 3339 with `Z`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("zero nanoseconds is always a valid value");
    t.format(&Rfc3339)
        .expect("a UTC time with a four-digit year always formats as RFC 3339")
}

/// `rfc3339(now_utc())`.
pub fn now_rfc3339() -> String {
    rfc3339(now_utc())
}

/// Parses an RFC 3339 timestamp (any offset).
pub fn parse_rfc3339(s: &str) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).with_context(|| format!("not an RFC 3339 time: {s:?}"))
}

/// Converts a catalog `DatePosted` (`YYYYMMDD`) to `YYYY-MM-DDT00:00:00Z`.
pub fn date_posted_to_rfc3339(yyyymmdd: u32) -> Option<String> {
    let year = i32::try_from(yyyymmdd / 10_000).ok()?;
    let month = Month::try_from(u8::try_from(yyyymmdd / 100 % 100).ok()?).ok()?;
    let day = u8::try_from(yyyymmdd % 100).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    Some(rfc3339(date.midnight().assume_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_whole_seconds_with_z() {
        let s = now_rfc3339();
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(s.len(), "2024-01-09T00:00:00Z".len(), "{s}");
    }

    #[test]
    fn converts_date_posted() {
        assert_eq!(
            date_posted_to_rfc3339(20240109).as_deref(),
            Some("2024-01-09T00:00:00Z")
        );
        assert_eq!(date_posted_to_rfc3339(20241332), None);
        assert_eq!(date_posted_to_rfc3339(0), None);
    }

    #[test]
    fn parses_offsets() -> anyhow::Result<()> {
        let t = parse_rfc3339("2024-01-09T01:00:00+01:00")?;
        assert_eq!(rfc3339(t), "2024-01-09T00:00:00Z");
        Ok(())
    }
}
