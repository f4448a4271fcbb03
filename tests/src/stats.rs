//! Fleet-wide counters, shared by all agent tasks.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Counters updated concurrently by the agents.
#[derive(Debug, Default)]
pub struct Stats {
    enrolled: AtomicU64,
    enroll_errors: AtomicU64,
    checkins_ok: AtomicU64,
    checkin_errors: AtomicU64,
    installs_ok: AtomicU64,
    installs_failed: AtomicU64,
    reboots_completed: AtomicU64,
    reboots_failed: AtomicU64,
    retries_429: AtomicU64,
    errors: Mutex<Errors>,
}

/// Error counts and the first message seen per key.
#[derive(Debug, Default)]
struct Errors {
    counts: BTreeMap<String, u64>,
    examples: BTreeMap<String, String>,
}

/// Longest example message kept per error key.
const MAX_EXAMPLE: usize = 300;

/// Which counter to bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Enrolled,
    CheckinOk,
    InstallOk,
    InstallFailed,
    RebootCompleted,
    RebootFailed,
    Retry429,
}

/// What failed, for [`Stats::error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Enroll,
    Checkin,
}

impl Stats {
    /// Counts one event.
    pub fn count(&self, event: Event) {
        let counter = match event {
            Event::Enrolled => &self.enrolled,
            Event::CheckinOk => &self.checkins_ok,
            Event::InstallOk => &self.installs_ok,
            Event::InstallFailed => &self.installs_failed,
            Event::RebootCompleted => &self.reboots_completed,
            Event::RebootFailed => &self.reboots_failed,
            Event::Retry429 => &self.retries_429,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed call under `label` (the HTTP status or the error
    /// kind); the first `detail` per phase and label is kept as an example.
    pub fn error(&self, phase: Phase, label: &str, detail: &str) {
        let counter = match phase {
            Phase::Enroll => &self.enroll_errors,
            Phase::Checkin => &self.checkin_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let key = match phase {
            Phase::Enroll => format!("enroll {label}"),
            Phase::Checkin => format!("checkin {label}"),
        };
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if !errors.examples.contains_key(&key) {
            let example: String = detail.chars().take(MAX_EXAMPLE).collect();
            errors.examples.insert(key.clone(), example);
        }
        *errors.counts.entry(key).or_default() += 1;
    }

    /// Check-ins that succeeded so far.
    pub fn checkins_ok(&self) -> u64 {
        self.checkins_ok.load(Ordering::Relaxed)
    }

    /// A snapshot of all counters.
    pub fn summary(&self, agents: usize) -> Summary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        Summary {
            agents,
            enrolled: get(&self.enrolled),
            enroll_errors: get(&self.enroll_errors),
            checkins_ok: get(&self.checkins_ok),
            checkin_errors: get(&self.checkin_errors),
            installs_ok: get(&self.installs_ok),
            installs_failed: get(&self.installs_failed),
            reboots_completed: get(&self.reboots_completed),
            reboots_failed: get(&self.reboots_failed),
            retries_429: get(&self.retries_429),
            errors_by_status: errors.counts.clone(),
            error_examples: errors.examples.clone(),
        }
    }
}

/// End-of-run numbers. `errors_by_status` keys look like `checkin 429`,
/// `enroll 401`, `checkin transport`, `checkin decode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub agents: usize,
    pub enrolled: u64,
    pub enroll_errors: u64,
    pub checkins_ok: u64,
    pub checkin_errors: u64,
    /// Install results generated (reported in the following check-in).
    pub installs_ok: u64,
    pub installs_failed: u64,
    pub reboots_completed: u64,
    pub reboots_failed: u64,
    /// Requests retried after a 429.
    pub retries_429: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    /// The first error message per `errors_by_status` key.
    pub error_examples: BTreeMap<String, String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "agents:            {}", self.agents)?;
        writeln!(
            f,
            "enrolled:          {} ({} errors)",
            self.enrolled, self.enroll_errors
        )?;
        writeln!(
            f,
            "check-ins ok:      {} ({} errors)",
            self.checkins_ok, self.checkin_errors
        )?;
        writeln!(
            f,
            "installs:          {} ok, {} failed",
            self.installs_ok, self.installs_failed
        )?;
        writeln!(
            f,
            "reboots:           {} completed, {} failed",
            self.reboots_completed, self.reboots_failed
        )?;
        writeln!(f, "429 retries:       {}", self.retries_429)?;
        if self.errors_by_status.is_empty() {
            writeln!(f, "errors by status:  none")?;
        } else {
            writeln!(f, "errors by status:")?;
            for (status, n) in &self.errors_by_status {
                let example = self.error_examples.get(status).map_or("", String::as_str);
                writeln!(f, "  {status:<22} {n:>8}  e.g. {example}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_summarises() {
        let stats = Stats::default();
        stats.count(Event::Enrolled);
        stats.count(Event::CheckinOk);
        stats.count(Event::CheckinOk);
        stats.error(Phase::Checkin, "429", "HTTP 429: first");
        stats.error(Phase::Checkin, "429", "HTTP 429: second");
        stats.error(Phase::Enroll, "transport", "connect: refused");
        let s = stats.summary(3);
        assert_eq!((s.agents, s.enrolled, s.checkins_ok), (3, 1, 2));
        assert_eq!((s.enroll_errors, s.checkin_errors), (1, 2));
        assert_eq!(s.errors_by_status.get("checkin 429"), Some(&2));
        assert_eq!(s.error_examples["checkin 429"], "HTTP 429: first");
        assert!(s.to_string().contains("enroll transport"));
    }
}
