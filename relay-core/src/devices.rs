//! Devices: the stored record of each enrolled machine, and the in-memory
//! fleet index that answers list queries without touching the store.
//!
//! The index holds what lists filter and sort on (host name, family, last
//! seen, counts) and, per distinct update set, the compact facts the counts
//! are derived from. Update sets are content-addressed, so the thousands of
//! machines that share a patch state share one entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::exclusions::{counts_of, Exclusion};
use crate::ids::{DeviceId, ScheduleId};
use crate::inventory::{fold_case, InstallResult, OsFamily, Update};

/// The SHA-256 of an encoded update list.
pub type SetHash = [u8; 32];

/// The hash of an update list, as stored.
pub fn set_hash(updates: &[Update]) -> SetHash {
    Sha256::digest(crate::store::encode(&updates)).into()
}

/// One update's content address: the first 16 bytes of its SHA-256. Sets
/// store these, so an update shared by a thousand sets is stored once.
pub type UpdateKey = [u8; 16];

pub fn update_key(update: &Update) -> UpdateKey {
    let digest: [u8; 32] = Sha256::digest(crate::store::encode(update)).into();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// An enrolled device, as stored. The update list lives apart, in its
/// content-addressed set, so a check-in that changes nothing but the time
/// rewrites only this small record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: DeviceId,
    pub machine_id: String,
    pub token_hash: [u8; 32],
    pub hostname: String,
    pub os_family: OsFamily,
    pub os_name: String,
    pub os_version: String,
    pub agent_version: String,
    pub ip_addresses: Vec<String>,
    pub enrolled_at: Timestamp,
    pub last_checkin: Option<Timestamp>,
    pub reboot_pending: bool,
    pub reboot_pending_since: Option<Timestamp>,
    pub update_set: Option<SetHash>,
    pub os_build: Option<String>,
    pub installed_kbs: Vec<String>,
    pub seen_via_mdns: bool,
}

impl DeviceRecord {
    /// The last time the relay heard from the device itself.
    pub fn last_seen(&self) -> Timestamp {
        self.last_checkin.unwrap_or(self.enrolled_at)
    }
}

/// Install results kept per device, newest last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecentResults(pub Vec<InstallResult>);

/// One device as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeviceSummary {
    pub device_id: DeviceId,
    pub hostname: String,
    pub os_family: OsFamily,
    pub os_name: String,
    pub status: &'static str,
    pub last_seen: Timestamp,
    pub updates_available: u32,
    pub critical_count: u32,
}

#[derive(Debug, Clone)]
struct Entry {
    hostname: String,
    folded: String,
    os_family: OsFamily,
    os_name: String,
    last_seen: Timestamp,
    set: Option<SetHash>,
    reboot_pending: bool,
    reboot_pending_since: Option<Timestamp>,
    scheduled: Option<(ScheduleId, Timestamp)>,
    /// The presence state (see `presence`): online only while check-ins
    /// arrive, and never on the word of an mDNS announcement.
    present: bool,
}

/// Per OS family, `(updates_available, critical_count)` of one update set.
pub type SetCounts = [(u32, u32); 3];

/// The counts of `updates` under `active` exclusions, for every family.
pub fn set_counts(updates: &[Update], active: &[Exclusion]) -> SetCounts {
    let mut counts = [(0, 0); 3];
    for family in OsFamily::ALL {
        let items = updates
            .iter()
            .map(|u| (u.kb.as_deref(), u.package.as_deref(), u.severity));
        counts[family.index()] = counts_of(items, active, family);
    }
    counts
}

#[derive(Debug)]
struct SetEntry {
    refs: u32,
    counts: SetCounts,
}

/// Filters of `GET /api/devices`.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub online: Option<bool>,
    pub os_family: Option<OsFamily>,
    /// Already case-folded.
    pub hostname_contains: Option<String>,
    pub has_critical: Option<bool>,
}

/// A page of devices.
#[derive(Debug)]
pub struct DevicePage {
    pub devices: Vec<DeviceSummary>,
    pub total: usize,
    pub next: Option<DeviceId>,
}

/// Devices that need a reboot or have one scheduled.
#[derive(Debug, Clone)]
pub struct RebootRow {
    pub device_id: DeviceId,
    pub hostname: String,
    pub reboot_pending: bool,
    pub reboot_pending_since: Option<Timestamp>,
    pub scheduled: Option<ScheduleId>,
}

#[derive(Default)]
struct Inner {
    devices: BTreeMap<DeviceId, Entry>,
    sets: HashMap<SetHash, SetEntry>,
    active: Vec<Exclusion>,
}

/// The in-memory fleet index. Kept in step with the store by the writers.
#[derive(Default)]
pub struct FleetIndex {
    inner: RwLock<Inner>,
    offline_after_s: i64,
}

impl FleetIndex {
    pub fn new(offline_after_s: i64) -> Self {
        Self {
            inner: RwLock::default(),
            offline_after_s,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_online(&self, last_seen: Timestamp, now: Timestamp) -> bool {
        now.seconds_since(last_seen) <= self.offline_after_s
    }

    fn entry_online(&self, e: &Entry, now: Timestamp) -> bool {
        e.present && self.is_online(e.last_seen, now)
    }

    /// Sets the stored presence state of a device.
    pub fn set_present(&self, device: DeviceId, present: bool) {
        if let Some(entry) = self.write().devices.get_mut(&device) {
            entry.present = present;
        }
    }

    /// Devices whose presence says online: `(id, last_seen)`.
    pub fn present_devices(&self) -> Vec<(DeviceId, Timestamp)> {
        self.read()
            .devices
            .iter()
            .filter(|(_, e)| e.present)
            .map(|(id, e)| (*id, e.last_seen))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn online_count(&self, now: Timestamp) -> usize {
        let inner = self.read();
        inner
            .devices
            .values()
            .filter(|e| self.entry_online(e, now))
            .count()
    }

    /// Whether the index knows an update set (so its content need not be
    /// decoded again).
    pub fn has_set(&self, hash: &SetHash) -> bool {
        self.read().sets.contains_key(hash)
    }

    /// Records a device's current state. `updates` is needed only when the
    /// index does not yet know the device's set.
    pub fn upsert(&self, record: &DeviceRecord, updates: Option<&[Update]>) {
        let mut inner = self.write();
        let inner = &mut *inner;
        let previous = inner.devices.get(&record.device_id).cloned();
        if let (Some(hash), Some(updates)) = (record.update_set, updates) {
            if !inner.sets.contains_key(&hash) {
                let counts = set_counts(updates, &inner.active);
                inner.sets.insert(hash, SetEntry { refs: 0, counts });
            }
        }
        let scheduled = previous.as_ref().and_then(|p| p.scheduled);
        let present = previous.as_ref().is_some_and(|p| p.present);
        if previous.as_ref().and_then(|p| p.set) != record.update_set {
            if let Some(hash) = record.update_set {
                if let Some(set) = inner.sets.get_mut(&hash) {
                    set.refs += 1;
                }
            }
            if let Some(old) = previous.and_then(|p| p.set) {
                release(&mut inner.sets, &old);
            }
        }
        inner.devices.insert(
            record.device_id,
            Entry {
                hostname: record.hostname.clone(),
                folded: fold_case(&record.hostname),
                os_family: record.os_family,
                os_name: record.os_name.clone(),
                last_seen: record.last_seen(),
                set: record.update_set,
                reboot_pending: record.reboot_pending,
                reboot_pending_since: record.reboot_pending_since,
                scheduled,
                present,
            },
        );
    }

    /// Sets or clears the device's open reboot schedule.
    pub fn set_scheduled(&self, device: DeviceId, scheduled: Option<(ScheduleId, Timestamp)>) {
        if let Some(entry) = self.write().devices.get_mut(&device) {
            entry.scheduled = scheduled;
        }
    }

    /// Every update set the index holds.
    pub fn set_hashes(&self) -> Vec<SetHash> {
        self.read().sets.keys().copied().collect()
    }

    /// Installs new active exclusions with the counts recomputed under them.
    /// Returns the sets missing from `counts` (added meanwhile): the caller
    /// computes those and calls again.
    pub fn replace_exclusions(
        &self,
        active: &[Exclusion],
        counts: &HashMap<SetHash, SetCounts>,
    ) -> Vec<SetHash> {
        let mut inner = self.write();
        let missing: Vec<SetHash> = inner
            .sets
            .keys()
            .filter(|h| !counts.contains_key(*h))
            .copied()
            .collect();
        if !missing.is_empty() {
            return missing;
        }
        for (hash, set) in inner.sets.iter_mut() {
            if let Some(c) = counts.get(hash) {
                set.counts = *c;
            }
        }
        inner.active = active.to_vec();
        Vec::new()
    }

    pub fn active_exclusions(&self) -> Vec<Exclusion> {
        self.read().active.clone()
    }

    fn summary(&self, inner: &Inner, id: DeviceId, e: &Entry, now: Timestamp) -> DeviceSummary {
        let (available, critical) = e
            .set
            .and_then(|h| inner.sets.get(&h))
            .map_or((0, 0), |s| s.counts[e.os_family.index()]);
        DeviceSummary {
            device_id: id,
            hostname: e.hostname.clone(),
            os_family: e.os_family,
            os_name: e.os_name.clone(),
            status: if self.entry_online(e, now) {
                "online"
            } else {
                "offline"
            },
            last_seen: e.last_seen,
            updates_available: available,
            critical_count: critical,
        }
    }

    pub fn summary_of(&self, id: DeviceId, now: Timestamp) -> Option<DeviceSummary> {
        let inner = self.read();
        let entry = inner.devices.get(&id)?;
        Some(self.summary(&inner, id, entry, now))
    }

    fn matches(&self, inner: &Inner, e: &Entry, f: &DeviceFilter, now: Timestamp) -> bool {
        if f.os_family.is_some_and(|fam| fam != e.os_family) {
            return false;
        }
        if f.online.is_some_and(|on| on != self.entry_online(e, now)) {
            return false;
        }
        if let Some(q) = &f.hostname_contains {
            if !e.folded.contains(q.as_str()) {
                return false;
            }
        }
        if let Some(want) = f.has_critical {
            let critical = e
                .set
                .and_then(|h| inner.sets.get(&h))
                .map_or(0, |s| s.counts[e.os_family.index()].1);
            if want != (critical > 0) {
                return false;
            }
        }
        true
    }

    /// A page in device-id order (which is enrollment order), after `after`.
    pub fn page(
        &self,
        filter: &DeviceFilter,
        after: Option<DeviceId>,
        limit: usize,
        now: Timestamp,
    ) -> DevicePage {
        let inner = self.read();
        let unfiltered = filter.online.is_none()
            && filter.os_family.is_none()
            && filter.hostname_contains.is_none()
            && filter.has_critical.is_none();
        let total = if unfiltered {
            inner.devices.len()
        } else {
            inner
                .devices
                .values()
                .filter(|e| self.matches(&inner, e, filter, now))
                .count()
        };

        let range = match after {
            Some(a) => inner
                .devices
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => inner.devices.range(..),
        };
        let mut devices = Vec::with_capacity(limit.min(total));
        let mut more = false;
        for (id, entry) in range.filter(|(_, e)| self.matches(&inner, e, filter, now)) {
            if devices.len() == limit {
                more = true;
                break;
            }
            devices.push(self.summary(&inner, *id, entry, now));
        }
        let next = if more {
            devices.last().map(|d| d.device_id)
        } else {
            None
        };
        DevicePage {
            devices,
            total,
            next,
        }
    }

    /// Devices with a pending reboot or an open schedule, in id order.
    pub fn reboot_rows(&self) -> Vec<RebootRow> {
        self.read()
            .devices
            .iter()
            .filter(|(_, e)| e.reboot_pending || e.scheduled.is_some())
            .map(|(id, e)| RebootRow {
                device_id: *id,
                hostname: e.hostname.clone(),
                reboot_pending: e.reboot_pending,
                reboot_pending_since: e.reboot_pending_since,
                scheduled: e.scheduled.map(|(s, _)| s),
            })
            .collect()
    }

    /// Every distinct update set with the devices that carry it.
    pub fn devices_by_set(&self) -> HashMap<SetHash, Vec<DeviceId>> {
        let mut out: HashMap<SetHash, Vec<DeviceId>> = HashMap::new();
        for (id, e) in &self.read().devices {
            if let Some(h) = e.set {
                out.entry(h).or_default().push(*id);
            }
        }
        out
    }

    pub fn last_seen_of(&self, id: DeviceId) -> Option<Timestamp> {
        self.read().devices.get(&id).map(|e| e.last_seen)
    }

    pub fn hostname_of(&self, id: DeviceId) -> Option<String> {
        self.read().devices.get(&id).map(|e| e.hostname.clone())
    }

    pub fn ids(&self) -> Vec<DeviceId> {
        self.read().devices.keys().copied().collect()
    }
}

fn release(sets: &mut HashMap<SetHash, SetEntry>, hash: &SetHash) {
    if let Some(set) = sets.get_mut(hash) {
        set.refs = set.refs.saturating_sub(1);
        if set.refs == 0 {
            sets.remove(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Severity;

    fn record(hostname: &str, updates: &[Update]) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::generate(),
            machine_id: hostname.into(),
            token_hash: [0; 32],
            hostname: hostname.into(),
            os_family: OsFamily::Windows,
            os_name: "Windows 11 Pro".into(),
            os_version: "10.0.22631".into(),
            agent_version: "1".into(),
            ip_addresses: vec![],
            enrolled_at: Timestamp(0),
            last_checkin: Some(Timestamp(1000)),
            reboot_pending: false,
            reboot_pending_since: None,
            update_set: (!updates.is_empty()).then(|| set_hash(updates)),
            os_build: None,
            installed_kbs: vec![],
            seen_via_mdns: false,
        }
    }

    fn critical(kb: &str) -> Update {
        Update {
            update_id: kb.into(),
            kb: Some(kb.into()),
            package: None,
            title: kb.into(),
            severity: Severity::Critical,
            cves: vec![],
            released_at: None,
        }
    }

    #[test]
    fn pages_never_repeat_or_skip_while_devices_are_added() {
        let index = FleetIndex::new(900);
        for i in 0..25 {
            index.upsert(&record(&format!("host-{i}"), &[]), Some(&[]));
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = index.page(&DeviceFilter::default(), after, 10, Timestamp(1000));
            seen.extend(page.devices.iter().map(|d| d.device_id));
            index.upsert(&record("late", &[]), Some(&[]));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut dedup = seen.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), seen.len());
        assert!(seen.len() >= 25);
    }

    #[test]
    fn shared_update_sets_are_counted_once_and_released() {
        let index = FleetIndex::new(900);
        let updates = vec![critical("KB1"), critical("KB2")];
        let a = record("a", &updates);
        let b = record("b", &updates);
        index.upsert(&a, Some(&updates));
        index.upsert(&b, Some(&updates));
        assert_eq!(index.read().sets.len(), 1);
        let mut a2 = a.clone();
        a2.update_set = None;
        index.upsert(&a2, None);
        assert_eq!(index.read().sets.len(), 1);
        let mut b2 = b.clone();
        b2.update_set = None;
        index.upsert(&b2, None);
        assert!(index.read().sets.is_empty());
    }

    #[test]
    fn filters_use_unicode_case_folding_and_critical_counts() {
        let index = FleetIndex::new(900);
        let updates = vec![critical("KB1")];
        index.upsert(&record("STRASSE-PC", &updates), Some(&updates));
        index.upsert(&record("other", &[]), Some(&[]));
        for id in index.ids() {
            index.set_present(id, true);
        }
        let filter = DeviceFilter {
            hostname_contains: Some(fold_case("straße")),
            ..Default::default()
        };
        assert_eq!(index.page(&filter, None, 50, Timestamp(1000)).total, 1);
        let filter = DeviceFilter {
            has_critical: Some(true),
            ..Default::default()
        };
        let page = index.page(&filter, None, 50, Timestamp(1000));
        assert_eq!(page.total, 1);
        assert_eq!(page.devices[0].critical_count, 1);
        let filter = DeviceFilter {
            online: Some(false),
            ..Default::default()
        };
        assert_eq!(
            index.page(&filter, None, 50, Timestamp(1000 + 901)).total,
            2
        );
    }
}
