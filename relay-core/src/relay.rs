//! The relay as one value: config, store, indexes and limiters, opened
//! together and shared by the HTTP edge, the control socket and the
//! background tasks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::auth::{AuthCache, KeyRecord, UserRecord};
use crate::clock::Clock;
use crate::config::RelayConfig;
use crate::devices::{DeviceRecord, FleetIndex, SetHash, UpdateKey};
use crate::exclusions::Exclusion;
use crate::inventory::Update;
use crate::limits::{FailureLimiter, KeyLimiter};
use crate::store::{Store, StoreError, StoreOptions, Table};

const META_RELAY_ID: &[u8] = b"relay_id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lifecycle {
    Starting = 0,
    Ready = 1,
    Stopping = 2,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub checkins: AtomicU64,
    pub enrollments: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub events_pruned: AtomicU64,
}

impl Metrics {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The CISA KEV catalog the relay holds.
#[derive(Debug, Default, Clone)]
pub struct KevCatalog {
    pub version: Option<String>,
    pub cves: HashSet<String>,
}

pub struct Relay {
    pub config: RelayConfig,
    pub clock: Clock,
    pub store: Store,
    pub fleet: FleetIndex,
    pub auth: AuthCache,
    pub key_limiter: KeyLimiter,
    pub failures: FailureLimiter,
    pub kev: RwLock<KevCatalog>,
    pub relay_id: String,
    pub started: Instant,
    pub metrics: Metrics,
    /// mDNS goodbyes waiting for their grace period.
    pub goodbyes: crate::presence::Goodbyes,
    /// What discovery remembers between announcements.
    pub discovery: crate::discovery::DiscoveryState,
    pub webhooks: crate::webhooks::WebhookHub,
    /// The Microsoft update catalog for offline assessment, when imported.
    pub catalog: RwLock<Option<Arc<crate::catalog::Catalog>>>,
    lifecycle: AtomicU8,
    /// SHA-256 of the served TLS certificate, once HTTPS is up.
    tls_fingerprint: std::sync::OnceLock<String>,
}

impl Relay {
    /// Opens the store and rebuilds the in-memory indexes from it.
    ///
    /// # Errors
    /// The store cannot be opened or holds a record that cannot be decoded.
    pub fn open(config: RelayConfig, clock: Clock) -> Result<Arc<Self>, StoreError> {
        let store = Store::open(&StoreOptions {
            path: config.store.data_dir.join("store"),
            cache_capacity_bytes: config.store.cache_capacity_mib * 1024 * 1024,
            flush_every_ms: config.store.flush_every_ms,
            durable_acks: config.store.durable_acks,
        })?;
        let relay_id = relay_id(&store)?;
        let users: Vec<UserRecord> = store
            .scan(Table::Users)?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let keys: Vec<KeyRecord> = store
            .scan(Table::Keys)?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let relay = Self {
            fleet: FleetIndex::new(config.agents.offline_after_s),
            auth: AuthCache::load(users, keys),
            key_limiter: KeyLimiter::new(config.limits.per_key(), config.limits.max_tracked),
            failures: FailureLimiter::new(
                config.limits.auth_failures_per_minute,
                config.limits.max_tracked,
            ),
            kev: RwLock::new(crate::vulns::load_kev(&store)?),
            relay_id,
            started: Instant::now(),
            metrics: Metrics::default(),
            goodbyes: Default::default(),
            discovery: Default::default(),
            webhooks: crate::webhooks::WebhookHub::load(&store)?,
            catalog: RwLock::new(crate::catalog::load_for_relay(&store)?),
            lifecycle: AtomicU8::new(Lifecycle::Starting as u8),
            tls_fingerprint: std::sync::OnceLock::new(),
            config,
            clock,
            store,
        };
        relay.load_fleet()?;
        let offline = relay.rederive_presence().map_err(|err| match err {
            crate::error::RelayError::Store(e) => e,
            other => StoreError::Sled(sled::Error::ReportableBug(other.to_string())),
        })?;
        if offline > 0 {
            tracing::info!(
                devices = offline,
                "devices marked offline: no check-in while the relay was down"
            );
        }
        Ok(Arc::new(relay))
    }

    /// The exclusions in force now, as stored.
    ///
    /// # Errors
    /// A storage failure.
    pub fn stored_active_exclusions(&self) -> Result<Vec<Exclusion>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .store
            .scan::<Exclusion>(Table::Exclusions)?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.is_active(now))
            .collect())
    }

    fn load_fleet(&self) -> Result<(), StoreError> {
        let active = self.stored_active_exclusions()?;
        self.fleet
            .replace_exclusions(&active, &std::collections::HashMap::new());
        for (_, device) in self.store.scan::<DeviceRecord>(Table::Devices)? {
            let updates = match device.update_set {
                Some(hash) if !self.fleet.has_set(&hash) => Some(self.update_set(&hash)?),
                _ => None,
            };
            self.fleet.upsert(&device, updates.as_deref());
        }
        for (_, schedule) in self
            .store
            .scan::<crate::reboots::RebootSchedule>(Table::Reboots)?
        {
            if schedule.status.is_open() {
                self.fleet.set_scheduled(
                    schedule.device_id,
                    Some((schedule.schedule_id, schedule.at)),
                );
            }
        }
        Ok(())
    }

    /// The updates of a stored set (empty if the set is unknown).
    ///
    /// # Errors
    /// A storage or decoding failure.
    pub fn update_set(&self, hash: &SetHash) -> Result<Vec<Update>, StoreError> {
        self.update_set_cached(hash, &mut HashMap::new())
            .map(|updates| updates.iter().map(|u| Update::clone(u)).collect())
    }

    /// [`Relay::update_set`] for bulk work: each update is decoded once per
    /// `cache`, however many sets share it.
    ///
    /// # Errors
    /// A storage or decoding failure.
    pub fn update_set_cached(
        &self,
        hash: &SetHash,
        cache: &mut HashMap<UpdateKey, Arc<Update>>,
    ) -> Result<Vec<Arc<Update>>, StoreError> {
        let keys: Vec<UpdateKey> = self.store.get(Table::UpdateSets, hash)?.unwrap_or_default();
        let mut updates = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(u) = cache.get(&key) {
                updates.push(Arc::clone(u));
                continue;
            }
            if let Some(u) = self.store.get::<Update>(Table::Updates, &key)? {
                let u = Arc::new(u);
                cache.insert(key, Arc::clone(&u));
                updates.push(u);
            }
        }
        Ok(updates)
    }

    pub fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle.load(Ordering::SeqCst) {
            0 => Lifecycle::Starting,
            1 => Lifecycle::Ready,
            _ => Lifecycle::Stopping,
        }
    }

    pub fn set_lifecycle(&self, state: Lifecycle) {
        self.lifecycle.store(state as u8, Ordering::SeqCst);
    }

    /// Records the fingerprint of the certificate HTTPS serves (once).
    pub fn set_tls_fingerprint(&self, fingerprint: String) {
        let _ = self.tls_fingerprint.set(fingerprint);
    }

    /// The served certificate's SHA-256 fingerprint (hex), when HTTPS is on.
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls_fingerprint.get().map(String::as_str)
    }
}

fn relay_id(store: &Store) -> Result<String, StoreError> {
    if let Some(id) = store.get::<String>(Table::Meta, META_RELAY_ID)? {
        return Ok(id);
    }
    let id = format!("rly_{}", crate::ids::next_ulid());
    let mut batch = crate::store::Batch::new();
    batch.put(Table::Meta, META_RELAY_ID.to_vec(), &id);
    store.writer().apply(batch)?;
    Ok(id)
}
