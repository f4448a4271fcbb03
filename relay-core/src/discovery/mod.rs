//! Discovery: the relay advertises itself over mDNS (`_pprelay._tcp`) and
//! listens for agents (`_ppagent._tcp`) on the configured interfaces only.
//!
//! Policy: mDNS is a hint, never an identity.
//!
//! - An announcement never creates, renames or marks online a device. A
//!   device exists because it enrolled with the site token, and is online
//!   because it checks in with its agent token.
//! - An announcement carrying the id of an enrolled device is matched to it
//!   only when it comes from the address that device's check-ins come from
//!   (or one it reports). Then the device's `seen_via` gains `mdns` and its
//!   goodbye can mark it offline sooner. Any other claim is logged and
//!   ignored.
//! - An announcement matching no enrolled device is listed in
//!   `GET /api/discovered` and raises `device.discovered` once.
//! - Every input is bounded: names, addresses and TXT records are cut to
//!   DNS-SD's limits, the queue between the mDNS thread and the handler
//!   drops (and counts) what it cannot hold, the discovered list has a
//!   ceiling, and an entry seen again is rewritten at most once a minute
//!   unless it changed.
//! - With no config file mDNS is off; the appliance's config turns it on
//!   for every non-loopback interface that is up.

mod mdns;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use mdns::{DiscoveryError, MdnsDiscovery};

use crate::clock::Timestamp;
use crate::devices::DeviceRecord;
use crate::error::RelayResult;
use crate::events::EventType;
use crate::ids::DeviceId;
use crate::presence::PresenceRecord;
use crate::relay::Relay;
use crate::store::{Batch, Table};

/// The relay's service type.
pub const RELAY_SERVICE: &str = "_pprelay._tcp.local.";
/// The agents' service type.
pub const AGENT_SERVICE: &str = "_ppagent._tcp.local.";
/// The agent protocol version the relay speaks (TXT `proto`).
pub const PROTOCOL_VERSION: &str = "1";

/// A DNS label, and so an instance name, is at most 63 bytes.
pub const MAX_INSTANCE_BYTES: usize = 63;
/// RFC 6763 §6.2: a TXT record should stay within 1300 bytes.
pub const MAX_TXT_BYTES: usize = 1300;
const MAX_TXT_KEYS: usize = 32;
const MAX_ADDRESSES: usize = 16;
const MAX_HOSTNAME_BYTES: usize = 255;
/// An unchanged discovered entry is rewritten at most this often.
const REFRESH_EVERY_S: i64 = 60;
/// Rejected claims remembered (to log each once) before the set is reset.
const MAX_REMEMBERED_CLAIMS: usize = 4096;
/// Unmatched claims kept per enrolled device until its next check-in.
const MAX_PENDING_PER_DEVICE: usize = 4;

/// The relay's TXT record: `relay_id`, `proto`, `tls`, and the SHA-256
/// fingerprint of its certificate (`tls_sha256`) when TLS is on.
pub fn relay_txt(relay_id: &str, tls_fingerprint: Option<&str>) -> Vec<(String, String)> {
    let mut txt = vec![
        ("relay_id".to_string(), relay_id.to_string()),
        ("proto".to_string(), PROTOCOL_VERSION.to_string()),
        (
            "tls".to_string(),
            if tls_fingerprint.is_some() { "1" } else { "0" }.to_string(),
        ),
    ];
    if let Some(fp) = tls_fingerprint {
        txt.push(("tls_sha256".to_string(), fp.to_string()));
    }
    txt
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An agent's announcement, bounded and typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// The instance label (the full name without the service type).
    pub instance: String,
    pub hostname: String,
    /// Addresses as announced, IPv6 link-local ones with their scope.
    pub addresses: Vec<(IpAddr, String)>,
    pub port: u16,
    /// TXT keys in announced order, cut to [`MAX_TXT_BYTES`] in total.
    pub txt: Vec<(String, String)>,
}

/// Why an announcement was refused before handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementError {
    #[error("the instance name is longer than 63 bytes")]
    InstanceTooLong,
    #[error("the announcement is not of the agent service type")]
    WrongService,
    #[error("the announcement has no address")]
    NoAddress,
}

impl Announcement {
    /// Builds a bounded announcement from its parts.
    ///
    /// # Errors
    /// A name longer than DNS-SD allows, another service type, or no
    /// address at all.
    pub fn try_new(
        fullname: &str,
        hostname: &str,
        addresses: Vec<(IpAddr, String)>,
        port: u16,
        txt: Vec<(String, String)>,
    ) -> Result<Self, AnnouncementError> {
        let instance = instance_of(fullname)?;
        if addresses.is_empty() {
            return Err(AnnouncementError::NoAddress);
        }
        let mut addresses = addresses;
        addresses.sort();
        addresses.dedup();
        addresses.truncate(MAX_ADDRESSES);
        Ok(Self {
            instance: instance.to_string(),
            hostname: truncate_utf8(hostname, MAX_HOSTNAME_BYTES).to_string(),
            addresses,
            port,
            txt: bound_txt(txt),
        })
    }

    pub fn txt_value(&self, key: &str) -> Option<&str> {
        self.txt
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn claimed_device(&self) -> Option<DeviceId> {
        self.txt_value("device_id")?.parse().ok()
    }
}

fn instance_of(fullname: &str) -> Result<&str, AnnouncementError> {
    let suffix = format!(".{AGENT_SERVICE}");
    let lower = fullname.to_ascii_lowercase();
    if !lower.ends_with(&suffix) {
        return Err(AnnouncementError::WrongService);
    }
    let instance = &fullname[..fullname.len() - suffix.len()];
    if instance.is_empty() || instance.len() > MAX_INSTANCE_BYTES {
        return Err(AnnouncementError::InstanceTooLong);
    }
    Ok(instance)
}

/// Keeps TXT entries in order while they fit: at most 32 keys, each key
/// and value within one 255-byte string, 1300 bytes in all.
fn bound_txt(txt: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut total = 0;
    let mut out = Vec::new();
    for (key, value) in txt {
        let size = 1 + key.len() + 1 + value.len();
        if out.len() == MAX_TXT_KEYS || size > 256 || total + size > MAX_TXT_BYTES {
            continue;
        }
        total += size;
        out.push((key, value));
    }
    out
}

/// An agent heard over mDNS that matches no enrolled device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiscoveredRecord {
    pub instance: String,
    pub hostname: String,
    pub addresses: Vec<String>,
    pub txt: BTreeMap<String, String>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// A page of `GET /api/discovered`.
#[derive(Debug)]
pub struct DiscoveredPage {
    pub items: Vec<DiscoveredRecord>,
    pub total: usize,
    pub next: Option<String>,
}

/// Counters for `/metrics` and `/api/relay`.
#[derive(Default)]
pub struct DiscoveryMetrics {
    pub announcements: AtomicU64,
    pub dropped: AtomicU64,
    pub refused: AtomicU64,
    pub claims_ignored: AtomicU64,
    pub discovered_full: AtomicU64,
}

impl DiscoveryMetrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the handler remembers between announcements, all bounded.
#[derive(Default)]
struct Memory {
    /// Instances matched to an enrolled device (for goodbyes). At most one
    /// per device: a device's new instance replaces its old one.
    matched: HashMap<String, DeviceId>,
    by_device: HashMap<DeviceId, String>,
    /// Discovered entries: instance → (last write, fingerprint of content).
    written: HashMap<String, (Timestamp, u64)>,
    /// Claims already logged.
    refused_claims: HashSet<(String, DeviceId)>,
    /// Claims for enrolled devices that did not match their address yet,
    /// a few per device.
    pending: HashMap<DeviceId, Vec<Announcement>>,
}

/// The discovery state the relay holds.
#[derive(Default)]
pub struct DiscoveryState {
    memory: Mutex<Memory>,
    pub metrics: DiscoveryMetrics,
}

impl DiscoveryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Instances matched to enrolled devices right now.
    pub fn matched_count(&self) -> usize {
        self.lock().matched.len()
    }
}

fn fingerprint(a: &Announcement) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hostname.hash(&mut h);
    a.addresses.hash(&mut h);
    a.txt.hash(&mut h);
    h.finish()
}

/// Whether the announcement comes from an address the device is known by.
fn address_matches(
    a: &Announcement,
    device: &DeviceRecord,
    presence: Option<&PresenceRecord>,
) -> bool {
    let peer = presence.and_then(|p| p.peer);
    a.addresses.iter().any(|(ip, _)| {
        Some(*ip) == peer
            || device
                .ip_addresses
                .iter()
                .any(|d| d.parse::<IpAddr>().is_ok_and(|d| d == *ip))
    })
}

impl Relay {
    /// Handles one agent announcement (see the module's policy).
    ///
    /// # Errors
    /// A storage failure.
    pub fn on_announcement(&self, a: &Announcement) -> RelayResult<()> {
        DiscoveryMetrics::count(&self.discovery.metrics.announcements);
        if let Some(id) = a.claimed_device() {
            if let Some(device) = self
                .store
                .get::<DeviceRecord>(Table::Devices, &id.to_bytes())?
            {
                return self.on_claim(a, device);
            }
        }
        self.remember_discovered(a)
    }

    fn on_claim(&self, a: &Announcement, device: DeviceRecord) -> RelayResult<()> {
        let id = device.device_id;
        let presence = self.presence(id)?;
        if !address_matches(a, &device, presence.as_ref()) {
            let mut memory = self.discovery.lock();
            // Kept until the device's next check-in: the announcement may
            // simply have come first (a new agent, a changed address).
            let pending = memory.pending.entry(id).or_default();
            pending.retain(|p| p.instance != a.instance);
            if pending.len() >= MAX_PENDING_PER_DEVICE {
                pending.remove(0);
            }
            pending.push(a.clone());
            if presence.and_then(|p| p.peer).is_none() {
                tracing::debug!(device_id = %id, instance = %a.instance,
                    "announcement waits for the device's first check-in");
                return Ok(());
            }
            if memory.refused_claims.len() >= MAX_REMEMBERED_CLAIMS {
                memory.refused_claims.clear();
            }
            if memory.refused_claims.insert((a.instance.clone(), id)) {
                DiscoveryMetrics::count(&self.discovery.metrics.claims_ignored);
                let addresses: Vec<&str> = a.addresses.iter().map(|(_, s)| s.as_str()).collect();
                tracing::warn!(device_id = %id, instance = %a.instance, ?addresses,
                    "mDNS announcement claims an enrolled device from another address; ignored");
            }
            return Ok(());
        }

        {
            let mut memory = self.discovery.lock();
            if let Some(old) = memory.by_device.insert(id, a.instance.clone()) {
                if old != a.instance {
                    memory.matched.remove(&old);
                }
            }
            memory.matched.insert(a.instance.clone(), id);
            if let Some(pending) = memory.pending.get_mut(&id) {
                pending.retain(|p| p.instance != a.instance);
                if pending.is_empty() {
                    memory.pending.remove(&id);
                }
            }
        }
        if !device.seen_via_mdns {
            self.mark_seen_via_mdns(id)?;
        }
        Ok(())
    }

    /// After a check-in: looks again at the announcements for this device
    /// that did not match its address (it may have just changed).
    ///
    /// # Errors
    /// A storage failure.
    pub fn recheck_claims(&self, id: DeviceId) -> RelayResult<()> {
        let Some(pending) = self.discovery.lock().pending.remove(&id) else {
            return Ok(());
        };
        let Some(device) = self
            .store
            .get::<DeviceRecord>(Table::Devices, &id.to_bytes())?
        else {
            return Ok(());
        };
        for a in pending {
            self.on_claim(&a, device.clone())?;
        }
        Ok(())
    }

    /// Sets `seen_via_mdns` under the writer lock (nothing else changes).
    fn mark_seen_via_mdns(&self, id: DeviceId) -> RelayResult<()> {
        let mut writer = self.store.writer();
        let key = id.to_bytes();
        let Some(mut device) = writer.store().get::<DeviceRecord>(Table::Devices, &key)? else {
            return Ok(());
        };
        device.seen_via_mdns = true;
        let mut batch = Batch::new();
        batch.put(Table::Devices, key.to_vec(), &device);
        writer.apply(batch)?;
        tracing::info!(device_id = %id, "device matched to its mDNS announcement");
        Ok(())
    }

    fn remember_discovered(&self, a: &Announcement) -> RelayResult<()> {
        let now = self.clock.now();
        let print = fingerprint(a);
        let key = a.instance.as_bytes();
        {
            let memory = self.discovery.lock();
            if let Some((at, old)) = memory.written.get(&a.instance) {
                if *old == print && now.seconds_since(*at) < REFRESH_EVERY_S {
                    return Ok(());
                }
            }
        }

        let mut writer = self.store.writer();
        let existing: Option<DiscoveredRecord> = writer.store().get(Table::Discovered, key)?;
        if existing.is_none()
            && writer.store().len(Table::Discovered) >= self.config.discovery.max_discovered
        {
            DiscoveryMetrics::count(&self.discovery.metrics.discovered_full);
            return Ok(());
        }
        let record = DiscoveredRecord {
            instance: a.instance.clone(),
            hostname: a.hostname.clone(),
            addresses: a.addresses.iter().map(|(_, s)| s.clone()).collect(),
            txt: a.txt.iter().cloned().collect(),
            first_seen: existing.as_ref().map_or(now, |e| e.first_seen),
            last_seen: now,
        };
        let mut batch = Batch::new();
        batch.put(Table::Discovered, key.to_vec(), &record);
        if existing.is_none() {
            let data = serde_json::json!({
                "instance": record.instance,
                "hostname": record.hostname,
                "addresses": record.addresses,
            });
            batch.event(EventType::DeviceDiscovered, now, data);
        }
        writer.apply(batch)?;
        drop(writer);

        let mut memory = self.discovery.lock();
        if memory.written.len() >= self.config.discovery.max_discovered {
            memory.written.clear();
        }
        memory.written.insert(a.instance.clone(), (now, print));
        if existing.is_none() {
            tracing::info!(instance = %a.instance, hostname = %a.hostname, "unknown agent discovered");
        }
        Ok(())
    }

    /// An mDNS goodbye (or expiry) for an agent instance: if it is matched
    /// to a device, the device goes offline unless a check-in follows
    /// within the grace period.
    pub fn on_goodbye(&self, fullname: &str) {
        let Ok(instance) = instance_of(fullname) else {
            return;
        };
        let device = {
            let mut memory = self.discovery.lock();
            let device = memory.matched.remove(instance);
            if let Some(id) = device {
                memory.by_device.remove(&id);
            }
            device
        };
        if let Some(id) = device {
            tracing::debug!(device_id = %id, instance, "mDNS goodbye");
            self.goodbyes.record(id, self.clock.now());
        }
    }

    /// A page of discovered agents, in instance-name order.
    ///
    /// # Errors
    /// A storage failure.
    pub fn discovered_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> RelayResult<DiscoveredPage> {
        let after = after.map(str::as_bytes).unwrap_or_default();
        let mut rows =
            self.store
                .scan_from::<DiscoveredRecord>(Table::Discovered, after, limit + 1)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let items: Vec<DiscoveredRecord> = rows.into_iter().map(|(_, r)| r).collect();
        let next = if more {
            items.last().map(|r| r.instance.clone())
        } else {
            None
        };
        Ok(DiscoveredPage {
            total: self.store.len(Table::Discovered),
            items,
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(instance: &str, txt: Vec<(String, String)>) -> Result<Announcement, AnnouncementError> {
        Announcement::try_new(
            &format!("{instance}.{AGENT_SERVICE}"),
            "host.local.",
            vec![("10.0.0.5".parse().expect("ip"), "10.0.0.5".into())],
            8080,
            txt,
        )
    }

    #[test]
    fn the_relay_txt_carries_the_contract_keys() {
        let txt = relay_txt("rly_1", None);
        assert_eq!(
            txt,
            [
                ("relay_id".to_string(), "rly_1".to_string()),
                ("proto".to_string(), "1".to_string()),
                ("tls".to_string(), "0".to_string()),
            ]
        );
        let txt = relay_txt("rly_1", Some("ab12"));
        assert!(txt.contains(&("tls".into(), "1".into())));
        assert!(txt.contains(&("tls_sha256".into(), "ab12".into())));
    }

    #[test]
    fn instance_names_past_the_dns_label_limit_are_refused() {
        assert!(ann(&"a".repeat(63), vec![]).is_ok());
        assert_eq!(
            ann(&"a".repeat(64), vec![]).expect_err("too long"),
            AnnouncementError::InstanceTooLong
        );
        let wrong = Announcement::try_new(
            "x._other._tcp.local.",
            "h",
            vec![("10.0.0.5".parse().expect("ip"), "10.0.0.5".into())],
            1,
            vec![],
        );
        assert_eq!(
            wrong.expect_err("wrong type"),
            AnnouncementError::WrongService
        );
    }

    #[test]
    fn txt_records_are_cut_to_the_size_limit_in_order() {
        let big: Vec<(String, String)> = (0..10)
            .map(|i| (format!("k{i}"), "x".repeat(200)))
            .collect();
        let a = ann("agent", big).expect("valid");
        let total: usize = a.txt.iter().map(|(k, v)| 2 + k.len() + v.len()).sum();
        assert!(total <= MAX_TXT_BYTES);
        assert_eq!(a.txt.len(), 6);
        assert_eq!(a.txt[0].0, "k0");
        let oversized = ann("agent", vec![("k".into(), "x".repeat(300))]).expect("valid");
        assert!(oversized.txt.is_empty());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("ééé", 3), "é");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }
}
