//! The durable outbox: one delivery loop per webhook.
//!
//! Each loop walks the event log from its webhook's cursor, one attempt in
//! flight at a time, so first attempts go out in event order. A delivery
//! that fails in a retryable way moves to the retry table with its own
//! schedule and stops holding back the events behind it. Cursor, retry and
//! history changes land in one store batch per attempt; they are not waited
//! on with an fsync, since a crash can then only cause a redelivery
//! (at-least-once), never a loss. An event is sent only once it is durable,
//! so a receiver never sees an event that a crash could take back.
//!
//! Waiting for the network: a connection failure marks the endpoint
//! unreachable. The loop then probes it with a bare TCP connect every
//! `probe_interval_s`, spends no attempts and grows no backoff, and resumes
//! the moment a probe connects.
//!
//! # Cancel safety
//! The loops stop when the stop signal turns true, between attempts or by
//! dropping an attempt in flight; either way the store holds a state from
//! which the next start redelivers what was not recorded as done.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch, Notify};

use super::{
    backoff, delivery_key, key_sequence, AttemptRecord, DeliveryRecord, DeliveryStatus, RetryEntry,
    WebhookRecord, WebhookStatus,
};
use crate::clock::Timestamp;
use crate::config::WebhooksConfig;
use crate::events::EventRecord;
use crate::ids::WebhookId;
use crate::relay::Relay;
use crate::store::{Batch, Store, StoreError, Table};

const META_DROPPED: &[u8] = b"webhook_deliveries_dropped";
const READ_AHEAD: usize = 256;
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const RETENTION_EVERY: Duration = Duration::from_secs(60);
const IDLE_WAKE: Duration = Duration::from_secs(60);
/// The most of a response body read (so that the connection can be reused).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Outbox counters for `/api/relay` and `/metrics`.
#[derive(Default)]
pub struct OutboxCounters {
    pub delivered: AtomicU64,
    pub attempts_failed: AtomicU64,
    pub deliveries_failed: AtomicU64,
    pub dropped_retention: AtomicU64,
    pub dropped_outbox_full: AtomicU64,
    pub disabled_by_endpoint: AtomicU64,
}

/// What a running loop publishes about itself.
#[derive(Default)]
struct WorkerHandle {
    notify: Notify,
    cursor: AtomicU64,
    retrying: AtomicU64,
    unreachable: AtomicBool,
}

/// Totals over every webhook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub webhooks: u64,
    pub unreachable: u64,
    /// Events waiting behind cursors plus deliveries waiting for a retry.
    pub depth: u64,
    pub retrying: u64,
}

/// The registry of delivery loops, shared by the API and the loops.
pub struct WebhookHub {
    handles: Mutex<HashMap<WebhookId, Arc<WorkerHandle>>>,
    spawn_tx: mpsc::UnboundedSender<WebhookId>,
    spawn_rx: Mutex<Option<mpsc::UnboundedReceiver<WebhookId>>>,
    pub counters: OutboxCounters,
}

// === impl WorkerHandle ===

impl WorkerHandle {
    fn backlog(&self, last_sequence: u64) -> u64 {
        last_sequence.saturating_sub(self.cursor.load(Ordering::Relaxed))
            + self.retrying.load(Ordering::Relaxed)
    }
}

// === impl WebhookHub ===

impl WebhookHub {
    /// A hub whose drop counters continue from the store's totals.
    ///
    /// # Errors
    /// A storage failure.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let (spawn_tx, spawn_rx) = mpsc::unbounded_channel();
        let (retention, full): (u64, u64) = store.get(Table::Meta, META_DROPPED)?.unwrap_or((0, 0));
        let counters = OutboxCounters::default();
        counters
            .dropped_retention
            .store(retention, Ordering::Relaxed);
        counters.dropped_outbox_full.store(full, Ordering::Relaxed);
        Ok(Self {
            handles: Mutex::new(HashMap::new()),
            spawn_tx,
            spawn_rx: Mutex::new(Some(spawn_rx)),
            counters,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WebhookId, Arc<WorkerHandle>>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, id: WebhookId) -> Arc<WorkerHandle> {
        self.lock().entry(id).or_default().clone()
    }

    /// Asks [`run`] to start a loop for a new webhook.
    pub fn start(&self, id: WebhookId) {
        // The receiver is gone only once the relay is stopping.
        let _ = self.spawn_tx.send(id);
    }

    /// Wakes a webhook's loop after its record changed.
    pub fn changed(&self, id: WebhookId) {
        if let Some(h) = self.lock().get(&id) {
            h.notify.notify_one();
        }
    }

    /// Whether the webhook's endpoint is currently held as unreachable.
    pub fn unreachable(&self, id: WebhookId) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|h| h.unreachable.load(Ordering::Relaxed))
    }

    /// Events waiting for the webhook (queued plus retrying), given the
    /// last event sequence recorded.
    pub fn backlog(&self, id: WebhookId, last_sequence: u64) -> u64 {
        self.lock().get(&id).map_or(0, |h| h.backlog(last_sequence))
    }

    /// Totals, given the last event sequence recorded.
    pub fn stats(&self, last_sequence: u64) -> OutboxStats {
        let handles = self.lock();
        let mut stats = OutboxStats::default();
        for h in handles.values() {
            stats.webhooks += 1;
            stats.unreachable += u64::from(h.unreachable.load(Ordering::Relaxed));
            stats.depth += h.backlog(last_sequence);
            stats.retrying += h.retrying.load(Ordering::Relaxed);
        }
        stats
    }

    fn forget(&self, id: WebhookId) {
        self.lock().remove(&id);
    }
}

/// The one HTTP client of the outbox: the configured timeout, no redirects.
///
/// # Errors
/// The TLS backend cannot be initialised.
pub fn client(config: &WebhooksConfig) -> reqwest::Result<reqwest::Client> {
    let timeout = Duration::from_secs(config.timeout_s);
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("PatchPilot-Relay/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(2)
        .build()
}

/// Runs every webhook's loop until `stop` turns true.
pub async fn run(relay: Arc<Relay>, mut stop: watch::Receiver<bool>) {
    let receiver = relay
        .webhooks
        .spawn_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(mut spawn_rx) = receiver else {
        tracing::error!("the webhook outbox was started twice");
        return;
    };
    let client = match client(&relay.config.webhooks) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the webhook HTTP client; webhooks stay queued");
            return;
        }
    };
    let mut loops = tokio::task::JoinSet::new();
    let worker_stop = stop.clone();
    // A webhook created while this starts is both stored and announced:
    // one loop each, never two.
    let mut started = HashSet::new();
    let mut spawn = |loops: &mut tokio::task::JoinSet<()>, id: WebhookId| {
        if started.insert(id) {
            let worker = Worker::new(relay.clone(), id, client.clone(), worker_stop.clone());
            loops.spawn(worker.run());
        }
    };
    match relay.store.keys(Table::Webhooks) {
        Ok(keys) => {
            for key in keys {
                if let Ok(bytes) = <[u8; 16]>::try_from(key.as_slice()) {
                    spawn(&mut loops, WebhookId::from_bytes(bytes));
                }
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot read the webhooks; none will be delivered")
        }
    }
    tracing::info!(webhooks = loops.len(), "webhook outbox started");
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(id) = spawn_rx.recv() => spawn(&mut loops, id),
            Some(_) = loops.join_next(), if !loops.is_empty() => {}
        }
    }
    while loops.join_next().await.is_some() {}
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Retry later: after `Retry-After` when the endpoint gave one.
    Retry(Option<Duration>),
    /// No connection could be made: hold everything and probe.
    Unreachable,
    Failed,
    Gone,
}

/// Why a wait ended.
enum Woken {
    Stop,
    Changed,
    Other,
}

struct Worker {
    relay: Arc<Relay>,
    id: WebhookId,
    client: reqwest::Client,
    handle: Arc<WorkerHandle>,
    stop: watch::Receiver<bool>,
    events: watch::Receiver<u64>,
    cursor: u64,
    persisted_cursor: u64,
    retries: BTreeMap<u64, RetryEntry>,
    buffer: VecDeque<EventRecord>,
    durable_through: u64,
    unreachable: bool,
    probed_ok: bool,
    last_retention: Option<Instant>,
    rng: StdRng,
}

// === impl Worker ===

impl Worker {
    fn new(
        relay: Arc<Relay>,
        id: WebhookId,
        client: reqwest::Client,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let handle = relay.webhooks.handle(id);
        let events = relay.store.subscribe_events();
        Self {
            relay,
            id,
            client,
            handle,
            stop,
            events,
            cursor: 0,
            persisted_cursor: 0,
            retries: BTreeMap::new(),
            buffer: VecDeque::new(),
            durable_through: 0,
            unreachable: false,
            probed_ok: false,
            last_retention: None,
            rng: StdRng::from_entropy(),
        }
    }

    fn store(&self) -> &Store {
        &self.relay.store
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let key = self.id.to_bytes();
        self.cursor = self.store().get(Table::WebhookCursors, &key)?.unwrap_or(0);
        self.persisted_cursor = self.cursor;
        self.retries = self
            .store()
            .scan_prefix::<RetryEntry>(Table::WebhookRetries, &key, None, usize::MAX)?
            .into_iter()
            .filter_map(|(k, r)| key_sequence(&k).map(|s| (s, r)))
            .collect();
        Ok(())
    }

    async fn run(mut self) {
        if let Err(err) = self.load() {
            tracing::error!(webhook_id = %self.id, error = %err, "cannot load the webhook's outbox");
            return;
        }
        loop {
            if *self.stop.borrow() {
                break;
            }
            let record = match self
                .store()
                .get::<WebhookRecord>(Table::Webhooks, &self.id.to_bytes())
            {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(err) => {
                    tracing::error!(webhook_id = %self.id, error = %err, "cannot read the webhook");
                    if let Woken::Stop = self.wait(Some(Duration::from_secs(5)), false).await {
                        break;
                    }
                    continue;
                }
            };
            if let Err(err) = self.enforce_bounds(&record) {
                tracing::warn!(webhook_id = %self.id, error = %err, "outbox bounds not enforced");
            }
            self.publish();
            if let Woken::Stop = self.step(&record).await {
                break;
            }
        }
        self.persist_cursor();
        self.relay.webhooks.forget(self.id);
    }

    /// One attempt, one probe, or one wait.
    async fn step(&mut self, record: &WebhookRecord) -> Woken {
        if record.status != WebhookStatus::Active {
            return self.wait(Some(IDLE_WAKE), false).await;
        }
        if self.unreachable {
            return self.probe(record).await;
        }
        let now = self.relay.clock.now();
        if let Some(seq) = self.due_retry(now) {
            self.deliver_retry(record, seq).await;
            return Woken::Other;
        }
        match self.next_event(record) {
            Ok(Some(event)) => {
                self.deliver_first(record, event).await;
                return Woken::Other;
            }
            Ok(None) => {}
            Err(err) => {
                tracing::error!(webhook_id = %self.id, error = %err, "cannot read the event log");
                return self.wait(Some(Duration::from_secs(5)), false).await;
            }
        }
        let until = self
            .retries
            .values()
            .map(|r| r.next_attempt_at)
            .min()
            .map(|at| Duration::from_secs(at.seconds_since(now).max(1) as u64));
        self.wait(until.or(Some(IDLE_WAKE)), true).await
    }

    async fn wait(&mut self, at_most: Option<Duration>, on_events: bool) -> Woken {
        self.persist_cursor();
        let sleep = tokio::time::sleep(at_most.unwrap_or(IDLE_WAKE).min(IDLE_WAKE));
        tokio::select! {
            _ = self.stop.changed() => Woken::Stop,
            _ = self.handle.notify.notified() => Woken::Changed,
            _ = self.events.changed(), if on_events => Woken::Other,
            _ = sleep => Woken::Other,
        }
    }

    fn publish(&self) {
        let retrying = self.retries.len() as u64;
        self.handle.cursor.store(self.cursor, Ordering::Relaxed);
        self.handle.retrying.store(retrying, Ordering::Relaxed);
        self.handle
            .unreachable
            .store(self.unreachable, Ordering::Relaxed);
    }

    fn persist_cursor(&mut self) {
        if self.cursor == self.persisted_cursor {
            return;
        }
        let mut writer = self.relay.store.writer();
        if !writer
            .store()
            .contains(Table::Webhooks, &self.id.to_bytes())
            .unwrap_or(false)
        {
            return;
        }
        let mut batch = Batch::new();
        batch.put(
            Table::WebhookCursors,
            self.id.to_bytes().to_vec(),
            &self.cursor,
        );
        match writer.apply(batch) {
            Ok(_) => self.persisted_cursor = self.cursor,
            Err(err) => {
                tracing::warn!(webhook_id = %self.id, error = %err, "cannot record the webhook cursor")
            }
        }
    }

    fn due_retry(&self, now: Timestamp) -> Option<u64> {
        self.retries
            .iter()
            .filter(|(_, r)| r.next_attempt_at <= now)
            .min_by_key(|(seq, r)| (r.next_attempt_at, **seq))
            .map(|(seq, _)| *seq)
    }

    /// The next event after the cursor that this webhook wants; events it
    /// does not want move the cursor on (recorded lazily).
    fn next_event(&mut self, record: &WebhookRecord) -> Result<Option<EventRecord>, StoreError> {
        loop {
            if self.buffer.is_empty() {
                let rows = self.relay.store.scan_from::<EventRecord>(
                    Table::Events,
                    &self.cursor.to_be_bytes(),
                    READ_AHEAD,
                )?;
                if rows.is_empty() {
                    return Ok(None);
                }
                self.buffer.extend(rows.into_iter().map(|(_, e)| e));
            }
            let Some(event) = self.buffer.front() else {
                return Ok(None);
            };
            if event.sequence > self.cursor && record.wants(event) {
                return Ok(Some(event.clone()));
            }
            self.cursor = self.cursor.max(event.sequence);
            self.buffer.pop_front();
        }
    }

    async fn probe(&mut self, record: &WebhookRecord) -> Woken {
        let interval = Duration::from_secs(self.relay.config.webhooks.probe_interval_s);
        match self.wait(Some(interval), false).await {
            Woken::Stop => return Woken::Stop,
            Woken::Changed => {
                // A new URL or a manual reactivation: try again at once.
                self.set_reachable(true);
                return Woken::Changed;
            }
            Woken::Other => {}
        }
        if probe(&record.url).await {
            tracing::info!(webhook_id = %self.id, "webhook endpoint reachable again; resuming deliveries");
            self.set_reachable(true);
        }
        Woken::Other
    }

    fn set_reachable(&mut self, reachable: bool) {
        self.unreachable = !reachable;
        self.probed_ok = reachable;
        self.publish();
    }

    async fn deliver_first(&mut self, record: &WebhookRecord, event: EventRecord) {
        if event.sequence > self.durable_through {
            let through = self.store().last_event_sequence_applied();
            if let Err(err) = self.store().durable().await {
                tracing::error!(error = %err, "events not durable; delivery postponed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
            self.durable_through = through;
        }
        let delivery = self
            .store()
            .get::<DeliveryRecord>(Table::Deliveries, &delivery_key(self.id, event.sequence))
            .ok()
            .flatten()
            .unwrap_or_else(|| DeliveryRecord::new(&event));
        self.deliver(record, &event, delivery, true).await;
    }

    async fn deliver_retry(&mut self, record: &WebhookRecord, seq: u64) {
        let key = delivery_key(self.id, seq);
        let event = self
            .store()
            .get::<EventRecord>(Table::Events, &seq.to_be_bytes())
            .ok()
            .flatten();
        let delivery = self
            .store()
            .get::<DeliveryRecord>(Table::Deliveries, &key)
            .ok()
            .flatten();
        match (event, delivery) {
            (Some(event), Some(delivery)) => self.deliver(record, &event, delivery, false).await,
            (Some(event), None) => {
                let delivery = DeliveryRecord::new(&event);
                self.deliver(record, &event, delivery, false).await;
            }
            (None, delivery) => {
                // The event left the log (its retention) before delivery.
                let mut batch = Batch::new();
                self.retries.remove(&seq);
                batch.delete(Table::WebhookRetries, key.clone());
                if let Some(mut d) = delivery {
                    d.status = DeliveryStatus::Dropped;
                    d.next_attempt_at = None;
                    d.error = Some("dropped: the event left the event log before delivery".into());
                    batch.put(Table::Deliveries, key, &d);
                }
                self.apply_drops(batch, 1, 0, "event left the log before delivery");
            }
        }
    }

    async fn deliver(
        &mut self,
        record: &WebhookRecord,
        event: &EventRecord,
        mut delivery: DeliveryRecord,
        first: bool,
    ) {
        let (attempt, mut outcome) = self.attempt(record, event).await;
        if outcome == Outcome::Unreachable && self.probed_ok {
            // A probe connected but the request did not: count it, so that
            // an endpoint that accepts TCP and nothing else still backs off.
            outcome = Outcome::Retry(None);
        }
        self.probed_ok = false;
        let now = attempt.at;
        let key = delivery_key(self.id, event.sequence);
        let mut batch = Batch::new();
        let counters = &self.relay.webhooks.counters;

        if outcome == Outcome::Unreachable {
            self.unreachable = true;
            self.publish();
            tracing::info!(webhook_id = %self.id, error = attempt.error.as_deref().unwrap_or(""), "webhook endpoint unreachable; holding deliveries");
            delivery.error = attempt.error;
            delivery.next_attempt_at = None;
            batch.put(Table::Deliveries, key, &delivery);
            self.apply(batch);
            return;
        }

        delivery.attempt += 1;
        delivery.push_attempt(attempt);
        match outcome {
            Outcome::Delivered => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                delivery.status = DeliveryStatus::Succeeded;
                delivery.next_attempt_at = None;
            }
            Outcome::Retry(after) => {
                counters.attempts_failed.fetch_add(1, Ordering::Relaxed);
                let cfg = &self.relay.config.webhooks;
                let delay = after.unwrap_or_else(|| {
                    backoff::delay(
                        delivery.attempt,
                        Duration::from_secs(cfg.retry_base_s),
                        Duration::from_secs(cfg.retry_cap_s),
                        &mut self.rng,
                    )
                });
                let next = now.plus_seconds(delay.as_secs_f64().ceil() as i64);
                delivery.status = DeliveryStatus::Pending;
                delivery.next_attempt_at = Some(next);
                let entry = RetryEntry {
                    attempt: delivery.attempt,
                    next_attempt_at: next,
                };
                self.retries.insert(event.sequence, entry);
                batch.put(Table::WebhookRetries, key.clone(), &entry);
                tracing::debug!(webhook_id = %self.id, sequence = event.sequence, attempt = delivery.attempt, retry_in_s = delay.as_secs(), "delivery failed, retry scheduled");
            }
            Outcome::Failed | Outcome::Gone | Outcome::Unreachable => {
                counters.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                delivery.status = DeliveryStatus::Failed;
                delivery.next_attempt_at = None;
                tracing::info!(webhook_id = %self.id, sequence = event.sequence, response_status = delivery.response_status, "webhook delivery failed");
            }
        }
        if !matches!(outcome, Outcome::Retry(_)) && self.retries.remove(&event.sequence).is_some() {
            batch.delete(Table::WebhookRetries, key.clone());
        }
        batch.put(Table::Deliveries, key, &delivery);
        if first {
            self.cursor = self.cursor.max(event.sequence);
            self.buffer.pop_front();
            batch.put(
                Table::WebhookCursors,
                self.id.to_bytes().to_vec(),
                &self.cursor,
            );
        }
        if outcome == Outcome::Gone {
            self.disable(batch, now).await;
        } else if self.apply(batch) && first {
            self.persisted_cursor = self.cursor;
        }
    }

    /// Applies a batch unless the webhook was deleted meanwhile.
    fn apply(&self, batch: Batch) -> bool {
        let mut writer = self.relay.store.writer();
        if !writer
            .store()
            .contains(Table::Webhooks, &self.id.to_bytes())
            .unwrap_or(false)
        {
            return false;
        }
        match writer.apply(batch) {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(webhook_id = %self.id, error = %err, "cannot record a delivery");
                false
            }
        }
    }

    /// 410 Gone: the receiver asked for no more deliveries.
    async fn disable(&mut self, mut batch: Batch, now: Timestamp) {
        {
            let mut writer = self.relay.store.writer();
            let current = writer
                .store()
                .get::<WebhookRecord>(Table::Webhooks, &self.id.to_bytes());
            let Ok(Some(mut record)) = current else {
                return;
            };
            record.status = WebhookStatus::Disabled;
            record.disabled_reason = Some("the endpoint answered 410 Gone".into());
            record.updated_at = now;
            batch.put(Table::Webhooks, self.id.to_bytes().to_vec(), &record);
            if let Err(err) = writer.apply(batch) {
                tracing::error!(webhook_id = %self.id, error = %err, "cannot record that the webhook is disabled");
                return;
            }
        }
        self.persisted_cursor = self.cursor;
        let _ = self.store().durable().await;
        self.relay
            .webhooks
            .counters
            .disabled_by_endpoint
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(webhook_id = %self.id, "webhook disabled: the endpoint answered 410 Gone");
    }

    async fn attempt(
        &self,
        record: &WebhookRecord,
        event: &EventRecord,
    ) -> (AttemptRecord, Outcome) {
        let now = self.relay.clock.now();
        let signed = super::signed_delivery(record, event, &self.relay.relay_id, now);
        let delivery_id = signed.delivery_id;
        let mut request = self.client.post(&record.url);
        for (name, value) in &signed.headers {
            request = request.header(*name, value);
        }
        let sent = request.body(signed.body).send().await;
        let (response_status, error, outcome) = match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| backoff::parse_retry_after(v, now.unix()));
                let mut read = 0;
                while let Ok(Some(chunk)) = response.chunk().await {
                    read += chunk.len();
                    if read > MAX_RESPONSE_BODY {
                        break;
                    }
                }
                let outcome = classify(status, retry_after);
                let error = (outcome != Outcome::Delivered)
                    .then(|| format!("the endpoint answered {status}"));
                (Some(status), error, outcome)
            }
            Err(err) if err.is_connect() => (None, Some(describe(&err)), Outcome::Unreachable),
            Err(err) if err.is_timeout() => (
                None,
                Some(format!(
                    "no answer within {} s",
                    self.relay.config.webhooks.timeout_s
                )),
                Outcome::Retry(None),
            ),
            Err(err) => (None, Some(describe(&err)), Outcome::Retry(None)),
        };
        let attempt = AttemptRecord {
            delivery_id,
            at: now,
            response_status,
            error,
        };
        (attempt, outcome)
    }

    // --- bounds ---

    fn enforce_bounds(&mut self, record: &WebhookRecord) -> Result<(), StoreError> {
        let max = self.relay.config.webhooks.max_outbox;
        let last = self.store().last_event_sequence_applied();
        let backlog = last.saturating_sub(self.cursor) + self.retries.len() as u64;
        if backlog > max {
            self.drop_oldest(record, backlog - max)?;
        }
        if self
            .last_retention
            .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        {
            self.last_retention = Some(Instant::now());
            self.drop_expired(record)?;
            self.prune_history()?;
        }
        Ok(())
    }

    /// Outbox full: drops the oldest waiting deliveries, retries first.
    fn drop_oldest(&mut self, record: &WebhookRecord, excess: u64) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        let mut remaining = excess;
        let mut dropped = 0;
        let oldest: Vec<u64> = self.retries.keys().take(excess as usize).copied().collect();
        for seq in oldest {
            self.drop_retry(&mut batch, seq, "dropped: the outbox was full")?;
            dropped += 1;
            remaining -= 1;
        }
        if remaining > 0 {
            let target = self.cursor + remaining;
            dropped += self.count_wanted(record, self.cursor, |e| e.sequence <= target)?;
            self.cursor = target;
            self.buffer.clear();
            batch.put(
                Table::WebhookCursors,
                self.id.to_bytes().to_vec(),
                &self.cursor,
            );
        }
        self.apply_drops(batch, 0, dropped, "outbox full: oldest deliveries dropped");
        self.persisted_cursor = self.cursor;
        Ok(())
    }

    /// Retention: drops waiting deliveries of events older than it.
    fn drop_expired(&mut self, record: &WebhookRecord) -> Result<(), StoreError> {
        let days = self.relay.config.webhooks.retention_days;
        let cutoff = self
            .relay
            .clock
            .now()
            .plus_seconds(-days * Timestamp::SECONDS_PER_DAY);
        let mut batch = Batch::new();
        let mut dropped = 0;
        let seqs: Vec<u64> = self.retries.keys().copied().collect();
        for seq in seqs {
            let event = self
                .store()
                .get::<EventRecord>(Table::Events, &seq.to_be_bytes())?;
            if event.is_none_or(|e| e.occurred_at < cutoff) {
                self.drop_retry(&mut batch, seq, "dropped: older than the outbox retention")?;
                dropped += 1;
            }
        }
        let mut newest_old = None;
        dropped += self.count_wanted(record, self.cursor, |e| {
            let old = e.occurred_at < cutoff;
            if old {
                newest_old = Some(e.sequence);
            }
            old
        })?;
        if let Some(seq) = newest_old {
            self.cursor = seq;
            self.buffer.clear();
            batch.put(
                Table::WebhookCursors,
                self.id.to_bytes().to_vec(),
                &self.cursor,
            );
        }
        if dropped > 0 || newest_old.is_some() {
            self.apply_drops(
                batch,
                dropped,
                0,
                "outbox retention: old deliveries dropped",
            );
            self.persisted_cursor = self.cursor;
        }
        Ok(())
    }

    fn drop_retry(&mut self, batch: &mut Batch, seq: u64, why: &str) -> Result<(), StoreError> {
        let key = delivery_key(self.id, seq);
        self.retries.remove(&seq);
        batch.delete(Table::WebhookRetries, key.clone());
        if let Some(mut d) = self
            .store()
            .get::<DeliveryRecord>(Table::Deliveries, &key)?
        {
            d.status = DeliveryStatus::Dropped;
            d.next_attempt_at = None;
            d.error = Some(why.to_string());
            batch.put(Table::Deliveries, key, &d);
        }
        Ok(())
    }

    /// Counts the wanted events after `from` while `take` holds.
    fn count_wanted(
        &self,
        record: &WebhookRecord,
        from: u64,
        mut take: impl FnMut(&EventRecord) -> bool,
    ) -> Result<u64, StoreError> {
        let mut count = 0;
        let mut after = from;
        loop {
            let rows =
                self.store()
                    .scan_from::<EventRecord>(Table::Events, &after.to_be_bytes(), 1000)?;
            if rows.is_empty() {
                return Ok(count);
            }
            for (_, event) in rows {
                if !take(&event) {
                    return Ok(count);
                }
                after = event.sequence;
                count += u64::from(record.wants(&event));
            }
        }
    }

    /// Counts drops, records the totals with `batch` and logs them.
    fn apply_drops(&self, batch: Batch, retention: u64, full: u64, message: &'static str) {
        let counters = &self.relay.webhooks.counters;
        let mut writer = self.relay.store.writer();
        counters
            .dropped_retention
            .fetch_add(retention, Ordering::Relaxed);
        counters
            .dropped_outbox_full
            .fetch_add(full, Ordering::Relaxed);
        let totals = (
            counters.dropped_retention.load(Ordering::Relaxed),
            counters.dropped_outbox_full.load(Ordering::Relaxed),
        );
        let mut batch = batch;
        batch.put(Table::Meta, META_DROPPED.to_vec(), &totals);
        if let Err(err) = writer.apply(batch) {
            tracing::error!(webhook_id = %self.id, error = %err, "cannot record dropped deliveries");
        }
        if retention + full > 0 {
            tracing::warn!(webhook_id = %self.id, dropped = retention + full, "{message}");
        }
    }

    /// Keeps the delivery history within retention and `max_outbox` records.
    fn prune_history(&self) -> Result<(), StoreError> {
        let cfg = &self.relay.config.webhooks;
        let cutoff = self
            .relay
            .clock
            .now()
            .plus_seconds(-cfg.retention_days * Timestamp::SECONDS_PER_DAY);
        let prefix = self.id.to_bytes();
        let mut excess = self
            .store()
            .count_prefix(Table::Deliveries, &prefix)
            .saturating_sub(cfg.max_outbox as usize);
        loop {
            let rows = self.store().scan_prefix::<DeliveryRecord>(
                Table::Deliveries,
                &prefix,
                None,
                1000,
            )?;
            let mut batch = Batch::new();
            let mut done = true;
            for (key, d) in &rows {
                let settled = d.status != DeliveryStatus::Pending;
                let old = d.attempted_at.is_none_or(|t| t < cutoff);
                if settled && (excess > 0 || old) {
                    batch.delete(Table::Deliveries, key.clone());
                    excess = excess.saturating_sub(1);
                    done = false;
                } else if !settled {
                    continue;
                } else {
                    done = true;
                    break;
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            self.apply(batch);
            if done || rows.len() < 1000 {
                return Ok(());
            }
        }
    }
}

fn classify(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        429 | 503 => Outcome::Retry(retry_after),
        408 | 300..=399 | 500..=599 => Outcome::Retry(None),
        _ => Outcome::Failed,
    }
}

/// An error's chain without the URL (which may carry a token in its query).
fn describe(err: &reqwest::Error) -> String {
    let mut text = String::from(if err.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    });
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A bare TCP connect to the URL's host and port.
async fn probe(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let target = format!("{host}:{port}");
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target)).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_contracts_outcomes() {
        let after = Some(Duration::from_secs(3));
        assert_eq!(classify(200, None), Outcome::Delivered);
        assert_eq!(classify(204, None), Outcome::Delivered);
        assert_eq!(classify(301, None), Outcome::Retry(None));
        assert_eq!(classify(408, None), Outcome::Retry(None));
        assert_eq!(classify(429, after), Outcome::Retry(after));
        assert_eq!(classify(503, after), Outcome::Retry(after));
        assert_eq!(classify(500, after), Outcome::Retry(None));
        assert_eq!(classify(410, None), Outcome::Gone);
        assert_eq!(classify(400, None), Outcome::Failed);
        assert_eq!(classify(404, None), Outcome::Failed);
    }
}
