//! The store: fleet state in sled, values postcard-encoded behind a version
//! byte, written in atomic batches by one writer at a time and acknowledged
//! only after group commit has fsynced them.
//!
//! sled types never leave this module. Callers read with typed getters and
//! scans, and write by filling a [`Batch`] and applying it through the
//! [`Writer`] lock, which also numbers the events the batch records.

mod backup;
mod durability;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

pub use backup::{
    restore_backup, verify_backup, BackupError, BackupHeader, BackupSummary, FORMAT_VERSION,
};
pub use durability::{Durability, NotDurable};

use crate::clock::Timestamp;
use crate::events::{EventRecord, EventType};
use crate::ids::EventId;

/// The layout version of every record written by this release.
pub const RECORD_VERSION: u8 = 1;

const META_LAST_SEQUENCE: &[u8] = b"last_event_sequence";

/// The named trees of the store. Each holds one kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Meta,
    Devices,
    Machines,
    AgentTokens,
    UpdateSets,
    UpdateSetRefs,
    Updates,
    UpdateRefs,
    Results,
    Users,
    Keys,
    KeyHashes,
    Exclusions,
    ExclusionKeys,
    Reboots,
    DeviceReboots,
    Snapshots,
    SnapshotBodies,
    Events,
    CvesSeen,
    Kev,
    Presence,
    Discovered,
    Webhooks,
    WebhookCursors,
    WebhookRetries,
    Deliveries,
    Catalog,
    Audit,
}

impl Table {
    const ALL: &'static [Table] = &[
        Table::Meta,
        Table::Devices,
        Table::Machines,
        Table::AgentTokens,
        Table::UpdateSets,
        Table::UpdateSetRefs,
        Table::Updates,
        Table::UpdateRefs,
        Table::Results,
        Table::Users,
        Table::Keys,
        Table::KeyHashes,
        Table::Exclusions,
        Table::ExclusionKeys,
        Table::Reboots,
        Table::DeviceReboots,
        Table::Snapshots,
        Table::SnapshotBodies,
        Table::Events,
        Table::CvesSeen,
        Table::Kev,
        Table::Presence,
        Table::Discovered,
        Table::Webhooks,
        Table::WebhookCursors,
        Table::WebhookRetries,
        Table::Deliveries,
        Table::Catalog,
        Table::Audit,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Devices => "devices",
            Table::Machines => "machines",
            Table::AgentTokens => "agent_tokens",
            Table::UpdateSets => "update_sets",
            Table::UpdateSetRefs => "update_set_refs",
            Table::Updates => "updates",
            Table::UpdateRefs => "update_refs",
            Table::Results => "results",
            Table::Users => "users",
            Table::Keys => "keys",
            Table::KeyHashes => "key_hashes",
            Table::Exclusions => "exclusions",
            Table::ExclusionKeys => "exclusion_keys",
            Table::Reboots => "reboots",
            Table::DeviceReboots => "device_reboots",
            Table::Snapshots => "snapshots",
            Table::SnapshotBodies => "snapshot_bodies",
            Table::Events => "events",
            Table::CvesSeen => "cves_seen",
            Table::Kev => "kev",
            Table::Presence => "presence",
            Table::Discovered => "discovered",
            Table::Webhooks => "webhooks",
            Table::WebhookCursors => "webhook_cursors",
            Table::WebhookRetries => "webhook_retries",
            Table::Deliveries => "deliveries",
            Table::Catalog => "catalog",
            Table::Audit => "audit",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store at {path}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("store operation failed")]
    Sled(#[from] sled::Error),
    #[error("a stored {table} record is corrupt or from an unknown release")]
    Decode { table: &'static str },
    #[error("the write was not made durable")]
    NotDurable(#[from] NotDurable),
}

/// Encodes a record: the version byte, then postcard.
pub fn encode<V: Serialize>(value: &V) -> Vec<u8> {
    let out = vec![RECORD_VERSION];
    // postcard only fails on types serde cannot describe (maps with
    // non-string keys are fine); our records are plain structs.
    match postcard::to_extend(value, out) {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::error!(error = %err, "record encoding failed");
            vec![RECORD_VERSION]
        }
    }
}

fn decode<V: DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<V, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|_| StoreError::Decode {
                table: table.name(),
            })
        }
        _ => Err(StoreError::Decode {
            table: table.name(),
        }),
    }
}

/// The open store.
pub struct Store {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    path: PathBuf,
    durability: Durability,
    durable_acks: bool,
    writer: Mutex<WriterState>,
    /// The sequence of the last event applied, for the webhook outbox.
    last_event: watch::Sender<u64>,
}

struct WriterState {
    next_sequence: u64,
}

/// Settings the store needs from the relay's config.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub cache_capacity_bytes: u64,
    pub flush_every_ms: u64,
    pub durable_acks: bool,
}

impl Store {
    /// Opens (or creates) the store at `options.path`.
    ///
    /// # Errors
    /// The directory cannot be created, sled cannot open it (another
    /// process holds it, or it is damaged), or the event log is unreadable.
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        create_private_dir(&options.path)?;
        let db = sled::Config::new()
            .path(&options.path)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(Some(options.flush_every_ms))
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|source| StoreError::Open {
                path: options.path.clone(),
                source,
            })?;
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let durability = Durability::start(db.clone(), options.path.clone());
        let store = Self {
            db,
            trees,
            path: options.path.clone(),
            durability,
            durable_acks: options.durable_acks,
            writer: Mutex::new(WriterState { next_sequence: 1 }),
            last_event: watch::Sender::new(0),
        };
        let recorded: u64 = store.get(Table::Meta, META_LAST_SEQUENCE)?.unwrap_or(0);
        let last = store.last_event_sequence()?.unwrap_or(0).max(recorded);
        store.lock_writer_state().next_sequence = last + 1;
        store.last_event.send_replace(last);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table as usize]
    }

    fn lock_writer_state(&self) -> MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the single-writer lock. Reads made while holding it see every
    /// earlier write, and no other write can slip in before `apply`.
    pub fn writer(&self) -> Writer<'_> {
        Writer {
            store: self,
            state: self.lock_writer_state(),
        }
    }

    /// Waits until every write applied so far is on disk (group commit).
    /// With `durable_acks` off, returns at once.
    ///
    /// # Errors
    /// The flush or fsync failed.
    pub async fn durable(&self) -> Result<(), StoreError> {
        if self.durable_acks {
            self.durability.sync().await?;
        }
        Ok(())
    }

    /// Flushes and fsyncs regardless of `durable_acks` (shutdown, CLI).
    ///
    /// # Errors
    /// The flush or fsync failed.
    pub async fn sync_now(&self) -> Result<(), StoreError> {
        self.durability.sync().await?;
        Ok(())
    }

    /// The sequence of the last event applied (0 before the first).
    pub fn last_event_sequence_applied(&self) -> u64 {
        *self.last_event.borrow()
    }

    /// A receiver that sees the last applied event sequence change.
    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.last_event.subscribe()
    }

    pub fn flushes(&self) -> u64 {
        self.durability.flushes()
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    // --- reads ---

    /// One record by key.
    ///
    /// # Errors
    /// A storage failure, or a record that cannot be decoded.
    pub fn get<V: DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<V>, StoreError> {
        match self.tree(table).get(key)? {
            Some(bytes) => decode(table, &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn contains(&self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.tree(table).contains_key(key)?)
    }

    pub fn len(&self, table: Table) -> usize {
        self.tree(table).len()
    }

    pub fn is_empty(&self, table: Table) -> bool {
        self.tree(table).is_empty()
    }

    /// Every record of a table, in key order.
    ///
    /// # Errors
    /// The first storage or decoding failure met.
    pub fn scan<V: DeserializeOwned>(&self, table: Table) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        self.scan_from(table, &[], usize::MAX)
    }

    /// Up to `limit` records with keys strictly after `after` (all when empty).
    ///
    /// # Errors
    /// The first storage or decoding failure met.
    pub fn scan_from<V: DeserializeOwned>(
        &self,
        table: Table,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        let mut out = Vec::new();
        let range = self.tree(table).range(after.to_vec()..);
        for item in range {
            let (key, value) = item?;
            if !after.is_empty() && key.as_ref() == after {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push((key.to_vec(), decode(table, &value)?));
        }
        Ok(out)
    }

    /// Records in reverse key order, for newest-first lists.
    ///
    /// # Errors
    /// The first storage or decoding failure met.
    pub fn scan_rev_before<V: DeserializeOwned>(
        &self,
        table: Table,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        let tree = self.tree(table);
        let iter = match before {
            Some(b) => tree.range(..b.to_vec()),
            None => tree.iter(),
        };
        let mut out = Vec::new();
        for item in iter.rev().take(limit) {
            let (key, value) = item?;
            out.push((key.to_vec(), decode(table, &value)?));
        }
        Ok(out)
    }

    /// Up to `limit` records whose keys start with `prefix`, in key order,
    /// strictly after `after` when given.
    ///
    /// # Errors
    /// The first storage or decoding failure met.
    pub fn scan_prefix<V: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        let tree = self.tree(table);
        let mut out = Vec::new();
        let iter = match after {
            Some(a) => tree.range(a.to_vec()..),
            None => tree.scan_prefix(prefix),
        };
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| key.as_ref() == a) {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push((key.to_vec(), decode(table, &value)?));
        }
        Ok(out)
    }

    /// Up to `limit` records whose keys start with `prefix`, newest (highest
    /// key) first, strictly before `before` when given.
    ///
    /// # Errors
    /// The first storage or decoding failure met.
    pub fn scan_prefix_rev<V: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        let tree = self.tree(table);
        let iter = match before {
            Some(b) => tree.range(prefix.to_vec()..b.to_vec()),
            None => tree.scan_prefix(prefix),
        };
        let mut out = Vec::new();
        for item in iter.rev() {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            if out.len() >= limit {
                break;
            }
            out.push((key.to_vec(), decode(table, &value)?));
        }
        Ok(out)
    }

    /// How many keys start with `prefix`.
    pub fn count_prefix(&self, table: Table, prefix: &[u8]) -> usize {
        self.tree(table).scan_prefix(prefix).keys().count()
    }

    /// Keys starting with `prefix`, in order, at most `limit`.
    ///
    /// # Errors
    /// A storage failure.
    pub fn keys_with_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tree(table)
            .scan_prefix(prefix)
            .keys()
            .take(limit)
            .map(|k| k.map(|k| k.to_vec()).map_err(StoreError::from))
            .collect()
    }

    /// Keys only, in order, for pruning.
    ///
    /// # Errors
    /// A storage failure.
    pub fn keys(&self, table: Table) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tree(table)
            .iter()
            .keys()
            .map(|k| k.map(|k| k.to_vec()).map_err(StoreError::from))
            .collect()
    }

    fn last_event_sequence(&self) -> Result<Option<u64>, StoreError> {
        let last = self.tree(Table::Events).last()?;
        Ok(last.and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }
}

fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

impl Drop for Store {
    fn drop(&mut self) {
        self.durability.close();
    }
}

/// The writer lock; see [`Store::writer`].
pub struct Writer<'a> {
    store: &'a Store,
    state: MutexGuard<'a, WriterState>,
}

impl Writer<'_> {
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Applies a batch atomically: all of it lands or none does. Events in
    /// the batch get consecutive sequence numbers.
    ///
    /// # Errors
    /// A storage failure; nothing was written.
    pub fn apply(&mut self, batch: Batch) -> Result<Vec<EventRecord>, StoreError> {
        let mut ops = batch.ops;
        let mut events = Vec::with_capacity(batch.events.len());
        let mut sequence = self.state.next_sequence;
        for (event_type, occurred_at, data) in batch.events {
            let record = EventRecord {
                event_id: EventId::generate(),
                sequence,
                event_type,
                occurred_at,
                data: data.to_string(),
            };
            ops.push((
                Table::Events,
                sequence.to_be_bytes().to_vec(),
                Some(encode(&record)),
            ));
            events.push(record);
            sequence += 1;
        }
        if !events.is_empty() {
            // Kept apart from the event log so that pruning every event
            // never lets sequence numbers (and webhook cursors) restart.
            ops.push((
                Table::Meta,
                META_LAST_SEQUENCE.to_vec(),
                Some(encode(&(sequence - 1))),
            ));
        }

        if !ops.is_empty() {
            self.apply_ops(&ops)?;
        }
        self.state.next_sequence = sequence;
        if !events.is_empty() {
            self.store.last_event.send_replace(sequence - 1);
        }
        Ok(events)
    }

    fn apply_ops(&self, ops: &[Op]) -> Result<(), StoreError> {
        use sled::Transactional;
        // A transaction costs per tree it spans: span only the touched ones.
        let mut slot = [usize::MAX; Table::ALL.len()];
        let mut trees: Vec<sled::Tree> = Vec::new();
        for (table, _, _) in ops {
            if slot[*table as usize] == usize::MAX {
                slot[*table as usize] = trees.len();
                trees.push(self.store.tree(*table).clone());
            }
        }
        trees
            .as_slice()
            .transaction(|view| {
                for (table, key, value) in ops {
                    let tree = &view[slot[*table as usize]];
                    match value {
                        Some(v) => {
                            tree.insert(key.as_slice(), v.as_slice())?;
                        }
                        None => {
                            tree.remove(key.as_slice())?;
                        }
                    }
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|err| match err {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Sled(sled::Error::ReportableBug("transaction aborted".into()))
                }
            })
    }
}

/// One write: a key of a table set to a value, or removed (`None`).
type Op = (Table, Vec<u8>, Option<Vec<u8>>);

/// Writes to apply together. Built freely, applied by a [`Writer`].
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
    events: Vec<(EventType, Timestamp, serde_json::Value)>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put<V: Serialize>(&mut self, table: Table, key: impl Into<Vec<u8>>, value: &V) {
        self.ops.push((table, key.into(), Some(encode(value))));
    }

    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push((table, key.into(), None));
    }

    /// Records an event in the same atomic step as the batch's writes.
    pub fn event(&mut self, event_type: EventType, at: Timestamp, data: serde_json::Value) {
        self.events.push((event_type, at, data));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn temp_store(dir: &Path) -> Store {
        Store::open(&StoreOptions {
            path: dir.join("store"),
            cache_capacity_bytes: 4 << 20,
            flush_every_ms: 500,
            durable_acks: true,
        })
        .expect("a fresh store opens")
    }

    #[test]
    fn records_carry_a_version_byte() {
        let bytes = encode(&("hello".to_string(), 7u32));
        assert_eq!(bytes[0], RECORD_VERSION);
        let back: (String, u32) = decode(Table::Meta, &bytes).expect("decodes");
        assert_eq!(back, ("hello".to_string(), 7));
        let mut future = bytes.clone();
        future[0] = 99;
        assert!(decode::<(String, u32)>(Table::Meta, &future).is_err());
    }

    #[tokio::test]
    async fn a_batch_lands_whole_and_events_are_numbered_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = temp_store(dir.path());
            let mut batch = Batch::new();
            batch.put(Table::Meta, b"a".to_vec(), &1u32);
            batch.put(Table::Meta, b"b".to_vec(), &2u32);
            batch.event(EventType::WebhookTest, Timestamp(10), serde_json::json!({}));
            batch.event(EventType::WebhookTest, Timestamp(11), serde_json::json!({}));
            let events = store.writer().apply(batch).expect("applies");
            assert_eq!(
                events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
                [1, 2]
            );
            store.durable().await.expect("durable");
        }
        let store = temp_store(dir.path());
        assert_eq!(store.get::<u32>(Table::Meta, b"b").expect("read"), Some(2));
        let mut batch = Batch::new();
        batch.event(EventType::WebhookTest, Timestamp(12), serde_json::json!({}));
        let events = store.writer().apply(batch).expect("applies");
        assert_eq!(events[0].sequence, 3);
    }

    #[tokio::test]
    async fn concurrent_waiters_share_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(temp_store(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut batch = Batch::new();
                batch.put(Table::Meta, i.to_be_bytes().to_vec(), &i);
                store.writer().apply(batch).expect("applies");
                store.durable().await.expect("durable");
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert!(store.flushes() >= 1);
        assert!(store.flushes() <= 64);
    }
}
