//! Background work on timers: missed reboots, expiring exclusions, key
//! last-use times, limiter memory, event retention and compliance snapshots.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Timestamp;
use crate::events::EventRecord;
use crate::relay::Relay;
use crate::store::{Batch, Table};

const TICK: Duration = Duration::from_secs(15);

/// Runs until `stop` turns true.
pub async fn run(relay: Arc<Relay>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    let mut snapshot =
        tokio::time::interval(Duration::from_secs(relay.config.compliance.interval_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    snapshot.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    snapshot.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => housekeeping(&relay),
            _ = snapshot.tick() => {
                if let Err(err) = relay.take_snapshot().await {
                    tracing::error!(error = %err, "scheduled compliance snapshot failed");
                }
            }
        }
    }
    if let Err(err) = relay.persist_last_used() {
        tracing::warn!(error = %err, "could not record key last-use times at shutdown");
    }
}

type Step<'a> = dyn Fn() -> Result<(), crate::error::RelayError> + 'a;

fn housekeeping(relay: &Relay) {
    let steps: [(&str, &Step<'_>); 6] = [
        ("missed reboots", &|| relay.sweep_missed_reboots().map(drop)),
        ("exclusion expiry", &|| relay.refresh_exclusions()),
        ("key last use", &|| relay.persist_last_used()),
        ("event retention", &|| prune_events(relay).map(drop)),
        ("snapshot retention", &|| relay.prune_snapshots().map(drop)),
        ("audit retention", &|| relay.prune_audit().map(drop)),
    ];
    for (name, step) in steps {
        if let Err(err) = step() {
            tracing::warn!(task = name, error = %err, "housekeeping step failed");
        }
    }
    relay
        .key_limiter
        .shed_idle(|id| relay.auth.key(id).is_some_and(|k| k.revoked_at.is_none()));
    relay.failures.shed_idle();
}

/// Drops events past retention or past the maximum count, oldest first,
/// counting what went.
///
/// # Errors
/// A storage failure.
pub fn prune_events(relay: &Relay) -> Result<usize, crate::error::RelayError> {
    let cfg = &relay.config.events;
    let cutoff = relay
        .clock
        .now()
        .plus_seconds(-cfg.retention_days * Timestamp::SECONDS_PER_DAY);
    let count = relay.store.len(Table::Events) as u64;
    let over = count.saturating_sub(cfg.max_events) as usize;
    let mut writer = relay.store.writer();
    // Retention never takes an event a webhook still has to deliver; the
    // outbox applies its own retention to those and counts what it drops.
    let needed = crate::webhooks::oldest_needed_sequence(writer.store())?;
    let oldest = writer
        .store()
        .scan_from::<EventRecord>(Table::Events, &[], over.max(1000))?;
    let mut batch = Batch::new();
    let mut pruned = 0;
    for (i, (key, event)) in oldest.into_iter().enumerate() {
        let waiting = needed.is_some_and(|n| event.sequence >= n);
        if i < over || (event.occurred_at < cutoff && !waiting) {
            batch.delete(Table::Events, key);
            pruned += 1;
        } else {
            break;
        }
    }
    if pruned > 0 {
        writer.apply(batch)?;
        relay
            .metrics
            .events_pruned
            .fetch_add(pruned as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(pruned, "events pruned by retention");
    }
    Ok(pruned)
}
