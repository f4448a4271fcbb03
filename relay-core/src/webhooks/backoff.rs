//! Retry timing: exponential backoff with jitter, and `Retry-After`.

use std::time::Duration;

use rand::Rng;
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// The longest `Retry-After` the relay honours; a longer one is shortened
/// so that a misconfigured receiver cannot park a delivery for ever.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// The delay before retry number `failures` (1 after the first failure):
/// `base · 2^(failures-1)`, capped at `cap`, then ±20 % jitter.
pub fn delay(failures: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let nominal = nominal(failures, base, cap);
    let factor = rng.gen_range(0.8..=1.2);
    nominal.mul_f64(factor)
}

/// The delay before jitter.
pub fn nominal(failures: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(cap)
}

/// Parses `Retry-After`: whole seconds, or an HTTP date (RFC 9110's
/// IMF-fixdate, which RFC 2822 parsing accepts) relative to `now_unix`.
pub fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
        Duration::from_secs(at.unix_timestamp().saturating_sub(now_unix).max(0) as u64)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const BASE: Duration = Duration::from_secs(10);
    const CAP: Duration = Duration::from_secs(3600);

    #[test]
    fn backoff_doubles_from_ten_seconds_and_caps_at_an_hour() {
        let secs: Vec<u64> = (1..=11).map(|n| nominal(n, BASE, CAP).as_secs()).collect();
        assert_eq!(
            secs,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(nominal(u32::MAX, BASE, CAP), CAP);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_varies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for failures in 1..=40 {
            for _ in 0..50 {
                let d = delay(failures, BASE, CAP, &mut rng);
                let n = nominal(failures, BASE, CAP);
                assert!(d >= n.mul_f64(0.8) && d <= n.mul_f64(1.2), "{d:?} vs {n:?}");
                seen.insert(d.as_millis());
            }
        }
        assert!(seen.len() > 100, "jitter must spread retries");
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = 1_445_412_480; // 2015-10-21T07:28:00Z
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
    }
}
