//! Rate limits with governor: two GCRA buckets per API key (reads, writes)
//! and one per client address for failed authentications.
//!
//! Memory stays bounded: key buckets exist only for keys that authenticated
//! (the store bounds those), and both maps shed idle entries on a timer and
//! stop growing at `max_tracked`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimit;
use crate::ids::KeyId;

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// What the `RateLimit-*` headers report, and `Retry-After` when refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_s: u64,
    pub retry_after_s: u64,
}

struct KeyBuckets {
    limits: RateLimit,
    read: Bucket,
    write: Bucket,
    /// Milliseconds since the limiter started, at this key's last request.
    last_ms: AtomicU64,
}

impl KeyBuckets {
    fn new(limits: RateLimit, now_ms: u64) -> Self {
        Self {
            limits,
            last_ms: AtomicU64::new(now_ms),
            read: RateLimiter::direct(quota(limits.read_per_minute, limits.read_burst))
                .with_middleware::<StateInformationMiddleware>(),
            write: RateLimiter::direct(quota(limits.write_per_minute, limits.write_burst))
                .with_middleware::<StateInformationMiddleware>(),
        }
    }

    /// GCRA refills a bucket completely in `burst` emission intervals; after
    /// that long without a request, both buckets are full and forgettable.
    fn idle(&self, now_ms: u64) -> bool {
        let refill =
            |burst: u32, per_minute: u32| u64::from(burst) * 60_000 / u64::from(per_minute.max(1));
        let full_after = refill(self.limits.read_burst, self.limits.read_per_minute).max(refill(
            self.limits.write_burst,
            self.limits.write_per_minute,
        ));
        now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)) > full_after
    }
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Per-key limits.
pub struct KeyLimiter {
    started: Instant,
    defaults: RateLimit,
    max_tracked: usize,
    buckets: RwLock<HashMap<KeyId, Arc<KeyBuckets>>>,
}

impl KeyLimiter {
    pub fn new(defaults: RateLimit, max_tracked: usize) -> Self {
        Self {
            started: Instant::now(),
            defaults,
            max_tracked,
            buckets: RwLock::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn buckets_for(&self, key: KeyId, own: Option<RateLimit>) -> Arc<KeyBuckets> {
        let limits = own.unwrap_or(self.defaults);
        let now_ms = self.now_ms();
        {
            let map = self.buckets.read().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = map.get(&key).filter(|b| b.limits == limits) {
                b.last_ms.store(now_ms, Ordering::Relaxed);
                return Arc::clone(b);
            }
        }
        let mut map = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(&key) {
            if b.limits == limits {
                b.last_ms.store(now_ms, Ordering::Relaxed);
                return Arc::clone(b);
            }
        }
        if map.len() >= self.max_tracked {
            // Idle buckets are full again and carry no state worth keeping.
            map.retain(|_, b| !b.idle(now_ms));
        }
        if map.len() >= self.max_tracked {
            // Every tracked key is busy: forget the least recently used.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, b)| b.last_ms.load(Ordering::Relaxed))
                .map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let fresh = Arc::new(KeyBuckets::new(limits, now_ms));
        map.insert(key, Arc::clone(&fresh));
        fresh
    }

    /// Takes one request from the key's read or write bucket.
    pub fn check(&self, key: KeyId, own: Option<RateLimit>, write: bool) -> Decision {
        let buckets = self.buckets_for(key, own);
        let (bucket, burst, per_minute) = if write {
            (
                &buckets.write,
                buckets.limits.write_burst,
                buckets.limits.write_per_minute,
            )
        } else {
            (
                &buckets.read,
                buckets.limits.read_burst,
                buckets.limits.read_per_minute,
            )
        };
        let interval_ms = 60_000 / u64::from(per_minute.max(1));
        match bucket.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let missing = u64::from(burst.saturating_sub(remaining));
                Decision {
                    allowed: true,
                    limit: burst,
                    remaining,
                    reset_s: (missing * interval_ms).div_ceil(1000),
                    retry_after_s: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Decision {
                    allowed: false,
                    limit: burst,
                    remaining: 0,
                    reset_s: (u64::from(burst) * interval_ms).div_ceil(1000),
                    retry_after_s: ceil_secs(wait).max(1),
                }
            }
        }
    }

    /// Drops buckets that are full again (idle keys), and those of keys that
    /// no longer exist.
    pub fn shed_idle(&self, live: impl Fn(KeyId) -> bool) {
        let now_ms = self.now_ms();
        let mut map = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, b| live(*id) && !b.idle(now_ms));
        map.shrink_to_fit();
    }

    pub fn tracked(&self) -> usize {
        self.buckets.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Failed authentications per client address.
pub struct FailureLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    per_minute: u32,
    max_tracked: usize,
}

impl FailureLimiter {
    pub fn new(per_minute: u32, max_tracked: usize) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota(per_minute, per_minute)),
            per_minute,
            max_tracked,
        }
    }

    /// Counts one failure from `ip`. `Some(retry_after_s)` once past the limit.
    pub fn record_failure(&self, ip: IpAddr) -> Option<u64> {
        if self.limiter.len() >= self.max_tracked {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Some(ceil_secs(wait).max(1))
            }
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    pub fn shed_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> RateLimit {
        RateLimit {
            read_per_minute: 60,
            read_burst: 3,
            write_per_minute: 60,
            write_burst: 2,
        }
    }

    #[test]
    fn a_key_past_its_burst_is_refused_with_retry_after() {
        let limiter = KeyLimiter::new(small(), 100);
        let key = KeyId::generate();
        let first = limiter.check(key, None, false);
        assert!(first.allowed);
        assert_eq!((first.limit, first.remaining), (3, 2));
        assert!(limiter.check(key, None, false).allowed);
        assert!(limiter.check(key, None, false).allowed);
        let refused = limiter.check(key, None, false);
        assert!(!refused.allowed);
        assert!(refused.retry_after_s >= 1);
        assert!(
            limiter.check(key, None, true).allowed,
            "writes have their own bucket"
        );
    }

    #[test]
    fn one_key_never_slows_another() {
        let limiter = KeyLimiter::new(small(), 100);
        let noisy = KeyId::generate();
        for _ in 0..10 {
            limiter.check(noisy, None, false);
        }
        assert!(limiter.check(KeyId::generate(), None, false).allowed);
    }

    #[test]
    fn tracked_keys_stay_bounded() {
        let limiter = KeyLimiter::new(small(), 50);
        for _ in 0..1000 {
            limiter.check(KeyId::generate(), None, false);
        }
        assert!(limiter.tracked() <= 50, "tracked {}", limiter.tracked());
    }

    #[test]
    fn failures_past_the_limit_are_refused() {
        let limiter = FailureLimiter::new(5, 100);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..5 {
            assert_eq!(limiter.record_failure(ip), None);
        }
        assert!(limiter.record_failure(ip).is_some());
        assert_eq!(
            limiter.record_failure("192.0.2.2".parse().expect("ip")),
            None
        );
    }
}
