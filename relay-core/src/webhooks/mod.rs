//! Webhooks: customer endpoints that receive the relay's events, signed, in
//! order, at least once, and held while the network is down.
//!
//! A webhook is a record with its URL, event filter and secrets. Nothing is
//! copied per webhook when an event is recorded: each webhook keeps a cursor
//! into the event log (`WebhookCursors`) and a small table of deliveries
//! waiting for a retry (`WebhookRetries`); `Deliveries` keeps the history
//! shown by the API. The delivery loop lives in [`outbox`].
//!
//! Secrets live only in the store (a 0700 directory): the relay needs them
//! to sign. They are returned once, at creation or rotation, never logged,
//! and masked in `Debug`.

pub mod backoff;
pub mod outbox;
pub mod signing;

use serde::{Deserialize, Serialize};

use crate::auth::Secret;
use crate::clock::Timestamp;
use crate::config::WebhooksConfig;
use crate::error::{check_text, Checks, RelayError, RelayResult};
use crate::events::{EventRecord, EventType};
use crate::ids::{DeliveryId, EventId, WebhookId};
use crate::relay::Relay;
use crate::store::{Batch, Table};

pub use outbox::WebhookHub;

pub const SECRET_PREFIX: &str = "whsec_";
const MAX_URL_LEN: usize = 2048;
const DEFAULT_GRACE_S: i64 = 86_400;
const MAX_GRACE_S: i64 = 604_800;
/// Attempts kept in a delivery's history.
const ATTEMPTS_KEPT: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    Active,
    Disabled,
}

/// A webhook as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub webhook_id: WebhookId,
    pub url: String,
    /// Event type names, or `["*"]` for every type.
    pub events: Vec<String>,
    pub description: String,
    pub status: WebhookStatus,
    pub disabled_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    secret: String,
    previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("webhook_id", &self.webhook_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("status", &self.status)
            .field("secret", &"…")
            .finish_non_exhaustive()
    }
}

impl WebhookRecord {
    /// The secrets that sign at `now`: the current one, then the previous
    /// one while its grace period lasts.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        let mut out = vec![self.secret.as_str()];
        if let (Some(old), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at) {
            if now < until {
                out.push(old.as_str());
            }
        }
        out
    }

    /// Whether this webhook receives `event`. A `webhook.test` event goes
    /// only to the webhook it was queued for.
    pub fn wants(&self, event: &EventRecord) -> bool {
        if event.event_type == EventType::WebhookTest {
            let target = serde_json::from_str::<serde_json::Value>(&event.data)
                .ok()
                .and_then(|d| d["webhook_id"].as_str().map(str::to_string));
            return target.as_deref() == Some(self.webhook_id.to_string().as_str());
        }
        self.events
            .iter()
            .any(|e| e == "*" || e == event.event_type.as_str())
    }

    pub fn is_active(&self) -> bool {
        self.status == WebhookStatus::Active
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
    Dropped,
}

impl DeliveryStatus {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "dropped" => Some(Self::Dropped),
            _ => None,
        }
    }
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub delivery_id: DeliveryId,
    pub at: Timestamp,
    pub response_status: Option<u16>,
    pub error: Option<String>,
}

/// The delivery of one event to one webhook, with its recent attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The `dlv_` id of the latest attempt (each attempt has its own).
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub sequence: u64,
    pub event_type: String,
    /// Attempts that reached the endpoint or timed out (connection
    /// failures while the endpoint is unreachable are not counted).
    pub attempt: u32,
    pub status: DeliveryStatus,
    pub response_status: Option<u16>,
    pub error: Option<String>,
    pub attempted_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    pub attempts: Vec<AttemptRecord>,
}

impl DeliveryRecord {
    pub fn new(event: &EventRecord) -> Self {
        Self {
            delivery_id: DeliveryId::generate(),
            event_id: event.event_id,
            sequence: event.sequence,
            event_type: event.event_type.as_str().to_string(),
            attempt: 0,
            status: DeliveryStatus::Pending,
            response_status: None,
            error: None,
            attempted_at: None,
            next_attempt_at: None,
            attempts: Vec::new(),
        }
    }

    pub fn push_attempt(&mut self, attempt: AttemptRecord) {
        self.delivery_id = attempt.delivery_id;
        self.attempted_at = Some(attempt.at);
        self.response_status = attempt.response_status;
        self.error = attempt.error.clone();
        self.attempts.push(attempt);
        if self.attempts.len() > ATTEMPTS_KEPT {
            self.attempts.remove(0);
        }
    }
}

/// A delivery waiting for its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryEntry {
    pub attempt: u32,
    pub next_attempt_at: Timestamp,
}

/// One delivery as it goes on the wire: its headers and raw body. The
/// outbox sends it; courier exports carry it for a later replay.
#[derive(Debug, Clone)]
pub struct SignedDelivery {
    pub delivery_id: DeliveryId,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// Signs `event` for `record` at `now`, exactly as a live delivery is.
pub fn signed_delivery(
    record: &WebhookRecord,
    event: &EventRecord,
    relay_id: &str,
    now: Timestamp,
) -> SignedDelivery {
    let body = serde_json::to_vec(&event.payload(relay_id)).unwrap_or_default();
    let delivery_id = DeliveryId::generate();
    let signature = signing::signature_header(record.signing_secrets(now), now.unix(), &body);
    SignedDelivery {
        delivery_id,
        headers: vec![
            ("Content-Type", "application/json".to_string()),
            ("X-Patchpilot-Event", event.event_type.as_str().to_string()),
            ("X-Patchpilot-Delivery", delivery_id.to_string()),
            ("X-Patchpilot-Signature", signature),
        ],
        body,
    }
}

/// `webhook id ‖ sequence`: the key of deliveries and retries.
pub fn delivery_key(webhook: WebhookId, sequence: u64) -> Vec<u8> {
    let mut key = webhook.to_bytes().to_vec();
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// The sequence at the end of a delivery or retry key.
pub fn key_sequence(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(16..24)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// The oldest event sequence some webhook still has to deliver (its first
/// retry, or the event after its cursor). The event log's retention keeps
/// these: the outbox drops them itself, counting what it drops.
///
/// # Errors
/// A storage failure.
pub fn oldest_needed_sequence(
    store: &crate::store::Store,
) -> Result<Option<u64>, crate::store::StoreError> {
    let mut oldest: Option<u64> = None;
    for (key, cursor) in store.scan::<u64>(Table::WebhookCursors)? {
        let mut needed = cursor.saturating_add(1);
        if let Some((retry, _)) = store
            .scan_prefix::<RetryEntry>(Table::WebhookRetries, &key, None, 1)?
            .into_iter()
            .next()
        {
            needed = needed.min(key_sequence(&retry).unwrap_or(needed));
        }
        oldest = Some(oldest.map_or(needed, |o| o.min(needed)));
    }
    Ok(oldest)
}

/// `POST /api/webhooks` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    #[schema(pattern = "^https?://", min_length = 1, max_length = 2048)]
    pub url: String,
    /// Event type names, or `["*"]` for every type.
    #[schema(min_items = 1)]
    pub events: Vec<String>,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: String,
}

/// `PATCH /api/webhooks/:id` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookChanges {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub status: Option<String>,
}

/// A secret shown once, with the record it belongs to.
pub struct Minted {
    pub record: WebhookRecord,
    pub secret: Secret,
}

/// Checks a destination: http or https, a host, no credentials, and the
/// config's allow and deny lists.
pub fn check_url(checks: &mut Checks, config: &WebhooksConfig, raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > MAX_URL_LEN {
        checks.fail("url", format!("must be 1 to {MAX_URL_LEN} characters"));
        return None;
    }
    let Ok(url) = reqwest::Url::parse(raw) else {
        checks.fail("url", "must be an absolute http or https URL");
        return None;
    };
    if !matches!(url.scheme(), "http" | "https") {
        checks.fail("url", "must use http or https");
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        checks.fail(
            "url",
            "must not carry credentials; sign with the secret instead",
        );
        return None;
    }
    if url.fragment().is_some() {
        checks.fail("url", "must not have a fragment");
        return None;
    }
    let Some(host) = url
        .host_str()
        .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
    else {
        checks.fail("url", "must name a host");
        return None;
    };
    let listed = |list: &[String]| list.iter().any(|p| host_matches(p, &host));
    if !config.allow_hosts.is_empty() && !listed(&config.allow_hosts) {
        checks.fail(
            "url",
            "this host is not in the relay's webhooks.allow_hosts",
        );
        return None;
    }
    if listed(&config.deny_hosts) {
        checks.fail("url", "this host is in the relay's webhooks.deny_hosts");
        return None;
    }
    Some(url.to_string())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_matches(['[', ']']).to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => host == pattern,
    }
}

/// Checks and normalises an event filter: known names or `"*"`, no
/// duplicates kept. `webhook.test` is implied and not subscribable.
pub fn check_events(checks: &mut Checks, events: &[String]) -> Vec<String> {
    if events.is_empty() {
        checks.fail("events", "must name at least one event type, or \"*\"");
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for (i, name) in events.iter().enumerate() {
        let name = name.trim();
        let known = name == "*"
            || serde_json::from_value::<EventType>(serde_json::Value::String(name.into()))
                .is_ok_and(|t| t != EventType::WebhookTest);
        if !known {
            checks.fail(
                format!("events[{i}]"),
                "is not an event type the relay records",
            );
        } else if !out.iter().any(|e| e == name) {
            out.push(name.to_string());
        }
    }
    if out.iter().any(|e| e == "*") {
        out = vec!["*".to_string()];
    }
    out
}

impl Relay {
    fn webhook(&self, id: WebhookId) -> RelayResult<WebhookRecord> {
        self.store
            .get(Table::Webhooks, &id.to_bytes())?
            .ok_or(RelayError::NotFound("webhook"))
    }

    /// One webhook, if it exists.
    ///
    /// # Errors
    /// 404, or a storage failure.
    pub fn webhook_get(&self, id: WebhookId) -> RelayResult<WebhookRecord> {
        self.webhook(id)
    }

    /// Webhooks in id order after `after`, and how many there are.
    ///
    /// # Errors
    /// A storage failure.
    pub fn webhook_page(
        &self,
        after: Option<WebhookId>,
        limit: usize,
    ) -> RelayResult<(Vec<WebhookRecord>, usize)> {
        let after = after.map(|a| a.to_bytes().to_vec()).unwrap_or_default();
        let rows = self
            .store
            .scan_from::<WebhookRecord>(Table::Webhooks, &after, limit)?;
        Ok((
            rows.into_iter().map(|(_, w)| w).collect(),
            self.store.len(Table::Webhooks),
        ))
    }

    /// Creates a webhook that receives events recorded from now on.
    ///
    /// # Errors
    /// 422 for invalid fields or too many webhooks; a storage failure.
    pub async fn create_webhook(&self, req: NewWebhook) -> RelayResult<Minted> {
        let config = &self.config.webhooks;
        let mut checks = Checks::new();
        let url = check_url(&mut checks, config, &req.url);
        let events = check_events(&mut checks, &req.events);
        check_text(&mut checks, "description", &req.description, 0, 500);
        checks.finish()?;
        let url = url.ok_or_else(|| RelayError::invalid("url", "is invalid"))?;

        let now = self.clock.now();
        let secret = Secret::generate(SECRET_PREFIX);
        let record = WebhookRecord {
            webhook_id: WebhookId::generate(),
            url,
            events,
            description: req.description.trim().to_string(),
            status: WebhookStatus::Active,
            disabled_reason: None,
            created_at: now,
            updated_at: now,
            secret: secret.expose().to_string(),
            previous_secret: None,
            previous_secret_expires_at: None,
        };
        {
            let mut writer = self.store.writer();
            if writer.store().len(Table::Webhooks) >= config.max_webhooks {
                return Err(RelayError::invalid(
                    "url",
                    format!("the relay holds at most {} webhooks", config.max_webhooks),
                ));
            }
            let cursor = writer.store().last_event_sequence_applied();
            let mut batch = Batch::new();
            batch.put(
                Table::Webhooks,
                record.webhook_id.to_bytes().to_vec(),
                &record,
            );
            batch.put(
                Table::WebhookCursors,
                record.webhook_id.to_bytes().to_vec(),
                &cursor,
            );
            writer.apply(batch)?;
        }
        self.store.durable().await?;
        tracing::info!(webhook_id = %record.webhook_id, "webhook created");
        self.webhooks.start(record.webhook_id);
        Ok(Minted { record, secret })
    }

    /// Changes a webhook's URL, filter, description or status.
    ///
    /// # Errors
    /// 404, 422 for invalid fields, or a storage failure.
    pub async fn update_webhook(
        &self,
        id: WebhookId,
        changes: WebhookChanges,
    ) -> RelayResult<WebhookRecord> {
        let mut checks = Checks::new();
        let url = changes
            .url
            .as_deref()
            .map(|u| check_url(&mut checks, &self.config.webhooks, u));
        let events = changes
            .events
            .as_deref()
            .map(|e| check_events(&mut checks, e));
        if let Some(d) = &changes.description {
            check_text(&mut checks, "description", d, 0, 500);
        }
        let status = changes.status.as_deref().map(|s| match s {
            "active" => Some(WebhookStatus::Active),
            "disabled" => Some(WebhookStatus::Disabled),
            _ => {
                checks.fail("status", "must be active or disabled");
                None
            }
        });
        checks.finish()?;

        let record = {
            let mut writer = self.store.writer();
            let mut record: WebhookRecord = writer
                .store()
                .get(Table::Webhooks, &id.to_bytes())?
                .ok_or(RelayError::NotFound("webhook"))?;
            if let Some(Some(url)) = url {
                record.url = url;
            }
            if let Some(events) = events {
                record.events = events;
            }
            if let Some(d) = changes.description {
                record.description = d.trim().to_string();
            }
            match status.flatten() {
                Some(WebhookStatus::Active) => {
                    record.status = WebhookStatus::Active;
                    record.disabled_reason = None;
                }
                Some(WebhookStatus::Disabled) => {
                    record.status = WebhookStatus::Disabled;
                    record.disabled_reason = Some("disabled by an administrator".into());
                }
                None => {}
            }
            record.updated_at = self.clock.now();
            let mut batch = Batch::new();
            batch.put(Table::Webhooks, id.to_bytes().to_vec(), &record);
            writer.apply(batch)?;
            record
        };
        self.store.durable().await?;
        tracing::info!(webhook_id = %id, status = ?record.status, "webhook updated");
        self.webhooks.changed(id);
        Ok(record)
    }

    /// Deletes a webhook with its cursor, retries and delivery history.
    ///
    /// # Errors
    /// 404, or a storage failure.
    pub async fn delete_webhook(&self, id: WebhookId) -> RelayResult<()> {
        {
            let mut writer = self.store.writer();
            if !writer.store().contains(Table::Webhooks, &id.to_bytes())? {
                return Err(RelayError::NotFound("webhook"));
            }
            let mut batch = Batch::new();
            batch.delete(Table::Webhooks, id.to_bytes().to_vec());
            batch.delete(Table::WebhookCursors, id.to_bytes().to_vec());
            writer.apply(batch)?;
        }
        self.store.durable().await?;
        self.webhooks.changed(id);
        // History goes in bounded batches so that no single write is huge.
        for table in [Table::WebhookRetries, Table::Deliveries] {
            loop {
                let mut writer = self.store.writer();
                let keys = writer
                    .store()
                    .keys_with_prefix(table, &id.to_bytes(), 1000)?;
                if keys.is_empty() {
                    break;
                }
                let mut batch = Batch::new();
                for key in keys {
                    batch.delete(table, key);
                }
                writer.apply(batch)?;
            }
        }
        tracing::info!(webhook_id = %id, "webhook deleted");
        Ok(())
    }

    /// Replaces the secret; the old one keeps signing for `grace_period_s`.
    ///
    /// # Errors
    /// 404, 422 for a grace period out of range, or a storage failure.
    pub async fn rotate_webhook_secret(
        &self,
        id: WebhookId,
        grace_period_s: Option<i64>,
    ) -> RelayResult<Minted> {
        let grace = grace_period_s.unwrap_or(DEFAULT_GRACE_S);
        if !(0..=MAX_GRACE_S).contains(&grace) {
            return Err(RelayError::invalid(
                "grace_period_s",
                format!("must be between 0 and {MAX_GRACE_S}"),
            ));
        }
        let now = self.clock.now();
        let secret = Secret::generate(SECRET_PREFIX);
        let record = {
            let mut writer = self.store.writer();
            let mut record: WebhookRecord = writer
                .store()
                .get(Table::Webhooks, &id.to_bytes())?
                .ok_or(RelayError::NotFound("webhook"))?;
            let old = std::mem::replace(&mut record.secret, secret.expose().to_string());
            if grace > 0 {
                record.previous_secret = Some(old);
                record.previous_secret_expires_at = Some(now.plus_seconds(grace));
            } else {
                record.previous_secret = None;
                record.previous_secret_expires_at = None;
            }
            record.updated_at = now;
            let mut batch = Batch::new();
            batch.put(Table::Webhooks, id.to_bytes().to_vec(), &record);
            writer.apply(batch)?;
            record
        };
        self.store.durable().await?;
        tracing::info!(webhook_id = %id, grace_period_s = grace, "webhook secret rotated");
        self.webhooks.changed(id);
        Ok(Minted { record, secret })
    }

    /// Records a `webhook.test` event for this webhook alone.
    ///
    /// # Errors
    /// 404, or a storage failure.
    pub async fn queue_webhook_test(&self, id: WebhookId) -> RelayResult<EventRecord> {
        let events = {
            let mut writer = self.store.writer();
            if !writer.store().contains(Table::Webhooks, &id.to_bytes())? {
                return Err(RelayError::NotFound("webhook"));
            }
            let mut batch = Batch::new();
            batch.event(
                EventType::WebhookTest,
                self.clock.now(),
                serde_json::json!({"webhook_id": id, "message": "test event from the PatchPilot relay"}),
            );
            writer.apply(batch)?
        };
        self.store.durable().await?;
        events
            .into_iter()
            .next()
            .ok_or_else(|| RelayError::invalid("webhook_id", "no event was recorded"))
    }

    /// A webhook's deliveries, newest first, before sequence `before`, and
    /// how many there are.
    ///
    /// # Errors
    /// 404, or a storage failure.
    pub fn delivery_page(
        &self,
        id: WebhookId,
        before: Option<u64>,
        status: Option<DeliveryStatus>,
        limit: usize,
    ) -> RelayResult<(Vec<DeliveryRecord>, usize)> {
        self.webhook(id)?;
        let prefix = id.to_bytes();
        let mut out = Vec::new();
        let mut before = before.map(|s| delivery_key(id, s));
        // A status filter may skip many records; read in chunks.
        while out.len() < limit {
            let chunk = self.store.scan_prefix_rev::<DeliveryRecord>(
                Table::Deliveries,
                &prefix,
                before.as_deref(),
                limit.max(100),
            )?;
            let Some((last_key, _)) = chunk.last() else {
                break;
            };
            before = Some(last_key.clone());
            let short = chunk.len() < limit.max(100);
            out.extend(
                chunk
                    .into_iter()
                    .map(|(_, d)| d)
                    .filter(|d| status.is_none_or(|s| d.status == s)),
            );
            if short {
                break;
            }
        }
        out.truncate(limit);
        let total = match status {
            None => self.store.count_prefix(Table::Deliveries, &prefix),
            Some(s) => self
                .store
                .scan_prefix::<DeliveryRecord>(Table::Deliveries, &prefix, None, usize::MAX)?
                .iter()
                .filter(|(_, d)| d.status == s)
                .count(),
        };
        Ok((out, total))
    }
}

#[cfg(test)]
mod tests;
