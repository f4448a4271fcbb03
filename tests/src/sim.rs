//! Continuous fleet runs: every agent checks in on its own schedule until it
//! has done `checkins` check-ins, the duration has passed, or a stop is
//! signalled.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::ProgressBar;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::agent::{Agent, Behaviour};
use crate::client::{CallError, RelayClient};
use crate::fleet::Fleet;
use crate::stats::Stats;

/// When each agent checks in and when the run ends.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop each agent after this many check-in attempts.
    pub checkins: Option<u32>,
    /// Stop everything after this long.
    pub duration: Option<Duration>,
    /// Fixed interval between check-ins; `None` honours `next_checkin_s`.
    pub interval: Option<Duration>,
    /// Upper bound of any wait between check-ins (so tests run fast).
    pub max_interval: Duration,
    /// Used to re-enroll an agent whose token is rejected (401).
    pub enrollment_token: String,
}

impl RunOptions {
    /// The fixed interval; else `next_checkin_s` (at least 1 s) after a
    /// success and `max_interval` after a failure; never above `max_interval`.
    fn wait_after(&self, agent: &Agent, ok: bool) -> Duration {
        let wanted = match (self.interval, ok) {
            (Some(fixed), _) => fixed,
            (None, true) => {
                let next = agent.last_response().map_or(0, |r| r.next_checkin_s);
                Duration::from_secs(next.max(1))
            }
            (None, false) => self.max_interval,
        };
        wanted.min(self.max_interval)
    }
}

/// Everything an agent task needs.
#[derive(Clone)]
struct Shared {
    client: RelayClient,
    behaviour: Behaviour,
    stats: Arc<Stats>,
    options: Arc<RunOptions>,
    deadline: Option<Instant>,
    stop: watch::Receiver<bool>,
    progress: ProgressBar,
}

/// Runs all agents of `fleet` until done. `stop` ending or turning `true`
/// stops the run early; `progress` is advanced per check-in attempt.
pub async fn run(
    fleet: &mut Fleet,
    client: &RelayClient,
    options: RunOptions,
    stop: watch::Receiver<bool>,
    progress: ProgressBar,
) -> anyhow::Result<()> {
    let shared = Shared {
        client: client.clone(),
        behaviour: fleet.behaviour().clone(),
        stats: Arc::clone(fleet.stats()),
        deadline: options.duration.map(|d| Instant::now() + d),
        options: Arc::new(options),
        stop,
        progress,
    };
    let mut tasks = JoinSet::new();
    for agent in fleet.take_agents() {
        tasks.spawn(run_agent(agent, shared.clone()));
    }
    let mut agents = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        agents.push(joined.context("an agent task panicked")?);
    }
    fleet.restore_agents(agents);
    Ok(())
}

async fn run_agent(mut agent: Agent, mut s: Shared) -> Agent {
    let first = s
        .options
        .interval
        .unwrap_or(s.options.max_interval)
        .min(s.options.max_interval);
    if !pause(first.mul_f64(agent.jitter_fraction()), &mut s).await {
        return agent;
    }
    let mut attempts = 0u32;
    loop {
        if needs_enrollment(&agent) {
            let _ = agent
                .enroll(&s.client, &s.options.enrollment_token, &s.stats)
                .await;
        }
        let result = agent.checkin(&s.client, &s.behaviour, &s.stats).await;
        attempts += 1;
        s.progress.inc(1);
        if let Err(CallError::Status { status: 401, .. }) = result {
            agent.set_agent_token(None);
        }
        let done = s.options.checkins.is_some_and(|n| attempts >= n);
        let wait = s.options.wait_after(&agent, result.is_ok());
        if done || !pause(wait, &mut s).await {
            return agent;
        }
    }
}

fn needs_enrollment(agent: &Agent) -> bool {
    agent.agent_token().is_none()
}

/// Sleeps `wait`; false if the run must end (stop signalled or deadline hit).
async fn pause(wait: Duration, s: &mut Shared) -> bool {
    let wake = Instant::now() + wait;
    let past_deadline = s.deadline.is_some_and(|d| wake >= d);
    let until = match s.deadline {
        Some(d) if past_deadline => d,
        _ => wake,
    };
    if *s.stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(until) => !past_deadline,
        _ = stopped(&mut s.stop) => false,
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            // Sender gone without a stop: never signal.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::Profile;
    use crate::protocol::OsFamily;

    fn profile() -> Profile {
        Profile {
            source: "t".into(),
            host_name: "vm".into(),
            os_family: OsFamily::Linux,
            os_name: "Debian GNU/Linux 12 (bookworm)".into(),
            os_version: "12".into(),
            os_build: None,
            arch: "x86_64".into(),
            product: None,
            installed_kbs: vec![],
            installed_packages: vec![],
            updates: vec![],
            supersedes: vec![],
        }
    }

    #[tokio::test]
    async fn stops_after_checkins_even_without_relay() -> anyhow::Result<()> {
        let client = RelayClient::new("http://127.0.0.1:1", 2)?;
        let mut fleet = Fleet::new(&[profile()], 3, 5)?;
        let (_tx, rx) = watch::channel(false);
        let options = RunOptions {
            checkins: Some(2),
            duration: None,
            interval: Some(Duration::from_millis(10)),
            max_interval: Duration::from_millis(10),
            enrollment_token: "t".into(),
        };
        run(&mut fleet, &client, options, rx, ProgressBar::hidden()).await?;
        let s = fleet.summary();
        assert_eq!(s.checkin_errors, 6);
        assert_eq!(s.enroll_errors, 6);
        assert_eq!(fleet.agents().len(), 3);
        Ok(())
    }

    #[tokio::test]
    async fn stop_signal_and_deadline_end_the_run() -> anyhow::Result<()> {
        let client = RelayClient::new("http://127.0.0.1:1", 2)?;
        let mut fleet = Fleet::new(&[profile()], 2, 5)?;
        let (tx, rx) = watch::channel(false);
        let options = RunOptions {
            checkins: None,
            duration: Some(Duration::from_secs(30)),
            interval: Some(Duration::from_millis(20)),
            max_interval: Duration::from_secs(1),
            enrollment_token: "t".into(),
        };
        let started = Instant::now();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tx.send(true);
        });
        run(&mut fleet, &client, options, rx, ProgressBar::hidden()).await?;
        stopper.await?;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(fleet.summary().checkin_errors >= 2);
        Ok(())
    }
}
