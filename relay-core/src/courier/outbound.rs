//! Making an outbound bundle: what the MSP has not confirmed yet.
//!
//! Events: for every active webhook, the events after its cursor that it
//! wants and the deliveries waiting for a retry, limited to events after
//! the last confirmed export, each signed with the webhook's secrets at
//! export time exactly as the outbox would sign a live delivery.
//! `bundle.imported` events are left out: the export's own summary reports
//! the inbound version applied, and carrying them would make every
//! confirmation need a further confirmation.
//!
//! State: the latest compliance snapshot, the device inventory and the open
//! vulnerabilities, each only when its SHA-256 differs from what the last
//! confirmed export carried.
//!
//! The events and the state parts are gzipped inside the archive (the
//! vulnerabilities of a 1,000-device fleet are some 17 MB of JSON);
//! `export.json` stays plain so that anyone can read it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format::{BundleBuilder, Kind};
use super::{
    confirmed, export_key, inbound_state, CourierError, ExportRecord, EXPORTS_KEPT,
    KEY_OUT_VERSION, PREFIX_EXPORT,
};
use crate::devices::DeviceFilter;
use crate::events::{EventRecord, EventType};
use crate::relay::Relay;
use crate::store::{Batch, Store, StoreError, Table};
use crate::vulns::VulnFilter;
use crate::webhooks::{key_sequence, RetryEntry, WebhookRecord};

pub const SUMMARY_ENTRY: &str = "export.json";
pub const EVENTS_ENTRY: &str = "events.jsonl.gz";
/// The state parts, by entry name (each gzipped JSON).
pub const PART_NAMES: [&str; 3] = [
    "snapshot.json.gz",
    "inventory.json.gz",
    "vulnerabilities.json.gz",
];
const SCAN_CHUNK: usize = 1000;

/// A state part's entry name and JSON, `None` when there is none.
type StatePart = (&'static str, Option<Vec<u8>>);

/// One undelivered event for one webhook, as it would have gone out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedEvent {
    pub webhook_id: String,
    pub url: String,
    pub event_id: String,
    pub sequence: u64,
    pub event_type: String,
    /// Header name and value pairs, in the order the outbox sends them.
    pub headers: Vec<(String, String)>,
    /// The raw JSON body the signature covers.
    pub body: String,
}

/// `export.json`: what an export holds and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSummary {
    pub relay_id: String,
    pub export_version: u64,
    pub created_at: crate::clock::Timestamp,
    /// Events after this sequence (the last confirmed one) ...
    pub events_after: u64,
    /// ... up to and including this one.
    pub events_through: u64,
    /// Deliveries carried (one event can go to several webhooks).
    pub events: usize,
    /// The state parts carried (entry names).
    pub parts: Vec<String>,
    pub inbound_version_applied: u64,
    pub confirmed_export_version: u64,
}

impl ExportSummary {
    /// Nothing unconfirmed: no events and no changed state.
    pub fn is_empty(&self) -> bool {
        self.events == 0 && self.parts.is_empty()
    }
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .unwrap_or_default()
}

impl Relay {
    /// Writes the next outbound bundle and records what it covered.
    ///
    /// # Errors
    /// A storage failure.
    pub fn export_bundle(&self) -> Result<(Vec<u8>, ExportSummary), CourierError> {
        let key = self.courier_key()?;
        let now = self.clock.now();
        let parts = self.state_parts()?;

        let (summary, events) = {
            let mut writer = self.store.writer();
            let store = writer.store();
            let through = store.last_event_sequence_applied();
            let confirmed = confirmed(store)?;
            let version = store.get::<u64>(Table::Meta, KEY_OUT_VERSION)?.unwrap_or(0) + 1;
            let events = self.undelivered(store, confirmed.export.through, through, now)?;
            let record = ExportRecord {
                version,
                through,
                digests: parts
                    .iter()
                    .map(|(name, bytes)| {
                        (
                            name.to_string(),
                            bytes.as_deref().map(digest).unwrap_or_default(),
                        )
                    })
                    .collect(),
            };
            let carried: Vec<String> = record
                .digests
                .iter()
                .filter(|part| !confirmed.export.digests.contains(part))
                .filter(|(_, d)| !d.is_empty())
                .map(|(name, _)| name.clone())
                .collect();
            let summary = ExportSummary {
                relay_id: self.relay_id.clone(),
                export_version: version,
                created_at: now,
                events_after: confirmed.export.through,
                events_through: through,
                events: events.len(),
                parts: carried,
                inbound_version_applied: inbound_state(store)?.version,
                confirmed_export_version: confirmed.export.version,
            };
            let mut batch = Batch::new();
            batch.put(Table::Meta, KEY_OUT_VERSION.to_vec(), &version);
            batch.put(Table::Meta, export_key(version), &record);
            prune_exports(store, &mut batch)?;
            writer.apply(batch)?;
            (summary, events)
        };

        let mut builder = BundleBuilder::new(
            Kind::Out,
            Some(self.relay_id.clone()),
            summary.export_version,
            now,
        );
        builder.add(
            SUMMARY_ENTRY,
            serde_json::to_vec_pretty(&summary).unwrap_or_default(),
        );
        if !events.is_empty() {
            let mut lines = Vec::new();
            for event in &events {
                lines.extend(serde_json::to_vec(event).unwrap_or_default());
                lines.push(b'\n');
            }
            builder.add(EVENTS_ENTRY, gzip(&lines));
        }
        for (name, bytes) in parts {
            if let Some(bytes) = bytes.filter(|_| summary.parts.iter().any(|p| p == name)) {
                builder.add(name, gzip(&bytes));
            }
        }
        let bytes = builder.finish(&key)?;
        tracing::info!(
            export_version = summary.export_version,
            events = summary.events,
            parts = summary.parts.len(),
            bytes = bytes.len(),
            "courier export written"
        );
        Ok((bytes, summary))
    }

    /// The state parts as JSON, `None` when there is nothing (no snapshot).
    fn state_parts(&self) -> Result<Vec<StatePart>, CourierError> {
        let snapshot = self.latest_snapshot()?;
        let now = self.clock.now();
        let devices = self
            .fleet
            .page(&DeviceFilter::default(), None, usize::MAX, now)
            .devices;
        let vulnerabilities = self
            .vulnerabilities(&VulnFilter::default())?
            .iter()
            .map(|row| self.expand_vulnerability(row))
            .collect::<Result<Vec<_>, _>>()?;
        // Compact: the inventory and vulnerabilities of a large fleet are
        // most of an export's bytes.
        let json = |v: serde_json::Value| serde_json::to_vec(&v).ok();
        Ok(vec![
            (
                PART_NAMES[0],
                snapshot.and_then(|s| json(serde_json::json!(s))),
            ),
            (
                PART_NAMES[1],
                json(serde_json::json!({"devices": devices, "total": devices.len()})),
            ),
            (
                PART_NAMES[2],
                json(
                    serde_json::json!({"vulnerabilities": vulnerabilities, "total": vulnerabilities.len()}),
                ),
            ),
        ])
    }

    /// Every (webhook, event) delivery still owed with a sequence in
    /// `(after, through]`, signed now.
    fn undelivered(
        &self,
        store: &Store,
        after: u64,
        through: u64,
        now: crate::clock::Timestamp,
    ) -> Result<Vec<ExportedEvent>, StoreError> {
        let mut out = Vec::new();
        for (key, webhook) in store.scan::<WebhookRecord>(Table::Webhooks)? {
            if !webhook.is_active() {
                continue;
            }
            let cursor: u64 = store.get(Table::WebhookCursors, &key)?.unwrap_or(0);
            let sequences: Vec<u64> = store
                .scan_prefix::<RetryEntry>(Table::WebhookRetries, &key, None, usize::MAX)?
                .into_iter()
                .filter_map(|(k, _)| key_sequence(&k))
                .filter(|s| *s > after && *s <= through)
                .collect();
            let mut events = Vec::new();
            for seq in &sequences {
                if let Some(e) = store.get::<EventRecord>(Table::Events, &seq.to_be_bytes())? {
                    events.push(e);
                }
            }
            let mut from = cursor.max(after);
            while from < through {
                let rows = store.scan_from::<EventRecord>(
                    Table::Events,
                    &from.to_be_bytes(),
                    SCAN_CHUNK,
                )?;
                let Some((_, last)) = rows.last() else {
                    break;
                };
                from = last.sequence;
                events.extend(
                    rows.into_iter()
                        .map(|(_, e)| e)
                        .filter(|e| e.sequence <= through && webhook.wants(e)),
                );
            }
            events.retain(|e| e.event_type != EventType::BundleImported);
            events.sort_by_key(|e| e.sequence);
            events.dedup_by_key(|e| e.sequence);
            for event in events {
                let signed =
                    crate::webhooks::signed_delivery(&webhook, &event, &self.relay_id, now);
                out.push(ExportedEvent {
                    webhook_id: webhook.webhook_id.to_string(),
                    url: webhook.url.clone(),
                    event_id: event.event_id.to_string(),
                    sequence: event.sequence,
                    event_type: event.event_type.as_str().to_string(),
                    headers: signed
                        .headers
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v))
                        .collect(),
                    body: String::from_utf8_lossy(&signed.body).into_owned(),
                });
            }
        }
        out.sort_by_key(|e| e.sequence);
        Ok(out)
    }
}

/// Keeps the newest [`EXPORTS_KEPT`] unconfirmed export records.
fn prune_exports(store: &Store, batch: &mut Batch) -> Result<(), StoreError> {
    let keys = store.keys_with_prefix(Table::Meta, PREFIX_EXPORT, usize::MAX)?;
    for key in keys
        .iter()
        .take(keys.len().saturating_sub(EXPORTS_KEPT - 1))
    {
        batch.delete(Table::Meta, key.clone());
    }
    Ok(())
}
