//! Talking to systemd: readiness, the watchdog and the stop notice.
//!
//! Every call is a no-op when the relay is not started by systemd
//! (`NOTIFY_SOCKET` unset), so the same binary runs by hand and in tests.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

/// READY=1: the listeners are bound and the store is open.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// STOPPING=1: the relay has begun its shutdown.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining requests"),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// Answers the watchdog at half its period until `stop` turns true. Runs
/// on the runtime, so a wedged runtime stops the pings and systemd restarts
/// the relay.
pub fn spawn_watchdog(mut stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 2).max(Duration::from_millis(100));
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
                _ = stop.changed() => return,
            }
        }
    }))
}
