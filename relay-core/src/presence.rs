//! Presence: whether each enrolled device is online, stored so that every
//! change emits `device.online` or `device.offline` exactly once.
//!
//! A device goes online with a check-in (in the check-in's own atomic
//! write), and offline when `agents.offline_after_s` passes without one, or
//! sooner when its agent's mDNS goodbye arrives and no check-in follows
//! within `discovery.goodbye_grace_s`. mDNS alone never makes a device
//! online. At start-up the stored state is re-derived: a device stored as
//! online whose last check-in is too old is marked offline (once), and
//! nothing becomes online until its agent checks in again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::Timestamp;
use crate::devices::DeviceRecord;
use crate::error::RelayResult;
use crate::events::EventType;
use crate::ids::DeviceId;
use crate::relay::Relay;
use crate::store::{Batch, Table, Writer};

/// How often the sweeper looks for devices to mark offline.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A device's presence, as stored in [`Table::Presence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    pub online: bool,
    /// When the state last changed.
    pub since: Timestamp,
    /// The address the last check-in came from: what an mDNS announcement
    /// claiming this device must match.
    pub peer: Option<IpAddr>,
}

/// Why a device went offline (the `reason` of `device.offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    Timeout,
    Goodbye,
    Restart,
}

impl OfflineReason {
    fn as_str(self) -> &'static str {
        match self {
            OfflineReason::Timeout => "no_checkin",
            OfflineReason::Goodbye => "mdns_goodbye",
            OfflineReason::Restart => "no_checkin_while_relay_down",
        }
    }
}

/// mDNS goodbyes waiting for their grace period: device → when heard.
#[derive(Default)]
pub struct Goodbyes(Mutex<HashMap<DeviceId, Timestamp>>);

impl Goodbyes {
    pub fn record(&self, device: DeviceId, at: Timestamp) {
        self.lock().insert(device, at);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Timestamp>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the goodbyes whose grace period has ended.
    fn take_due(&self, now: Timestamp, grace_s: i64) -> Vec<(DeviceId, Timestamp)> {
        let mut map = self.lock();
        let due: Vec<_> = map
            .iter()
            .filter(|(_, at)| now.seconds_since(**at) >= grace_s)
            .map(|(id, at)| (*id, *at))
            .collect();
        for (id, _) in &due {
            map.remove(id);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn event_data(device: &DeviceRecord, extra: Option<(&str, &str)>) -> serde_json::Value {
    let mut data = serde_json::json!({
        "device_id": device.device_id,
        "hostname": device.hostname,
        "last_seen": device.last_seen(),
    });
    if let (Some((k, v)), Some(obj)) = (extra, data.as_object_mut()) {
        obj.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    data
}

impl Relay {
    /// Stages what a check-in does to presence: online (with its event) if
    /// the device was not, and the address it came from. Writes nothing
    /// when neither changed. Returns whether the device just came online.
    ///
    /// # Errors
    /// A storage failure.
    pub(crate) fn stage_checkin_presence(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        device: &DeviceRecord,
        peer: Option<IpAddr>,
        now: Timestamp,
    ) -> RelayResult<bool> {
        let key = device.device_id.to_bytes();
        let stored: Option<PresenceRecord> = writer.store().get(Table::Presence, &key)?;
        let was_online = stored.as_ref().is_some_and(|p| p.online);
        let peer = peer.or(stored.as_ref().and_then(|p| p.peer));
        if was_online && stored.as_ref().is_some_and(|p| p.peer == peer) {
            return Ok(false);
        }
        let since = match &stored {
            Some(p) if was_online => p.since,
            _ => now,
        };
        let record = PresenceRecord {
            online: true,
            since,
            peer,
        };
        batch.put(Table::Presence, key.to_vec(), &record);
        if !was_online {
            batch.event(EventType::DeviceOnline, now, event_data(device, None));
        }
        Ok(!was_online)
    }

    /// The stored presence of a device.
    ///
    /// # Errors
    /// A storage failure.
    pub fn presence(&self, device: DeviceId) -> RelayResult<Option<PresenceRecord>> {
        Ok(self.store.get(Table::Presence, &device.to_bytes())?)
    }

    /// Marks a device offline, with its event, unless a check-in newer than
    /// `unless_checkin_since` arrived (checked under the writer lock, so a
    /// racing check-in wins). Returns whether the state changed.
    ///
    /// # Errors
    /// A storage failure.
    pub fn mark_offline(
        &self,
        device_id: DeviceId,
        reason: OfflineReason,
        unless_checkin_since: Timestamp,
    ) -> RelayResult<bool> {
        let now = self.clock.now();
        let key = device_id.to_bytes();
        let mut writer = self.store.writer();
        let Some(device) = writer.store().get::<DeviceRecord>(Table::Devices, &key)? else {
            return Ok(false);
        };
        let stored: Option<PresenceRecord> = writer.store().get(Table::Presence, &key)?;
        let Some(mut record) = stored.filter(|p| p.online) else {
            self.fleet.set_present(device_id, false);
            return Ok(false);
        };
        if device.last_seen() > unless_checkin_since
            || (reason == OfflineReason::Goodbye && device.last_seen() >= unless_checkin_since)
        {
            return Ok(false);
        }
        record.online = false;
        record.since = now;
        let mut batch = Batch::new();
        batch.put(Table::Presence, key.to_vec(), &record);
        let data = event_data(&device, Some(("reason", reason.as_str())));
        batch.event(EventType::DeviceOffline, now, data);
        writer.apply(batch)?;
        self.fleet.set_present(device_id, false);
        tracing::info!(%device_id, reason = reason.as_str(), "device offline");
        Ok(true)
    }

    /// Re-derives presence after a start: loads the stored state into the
    /// fleet index, and marks offline every device stored as online whose
    /// last check-in is older than `offline_after_s`.
    ///
    /// # Errors
    /// A storage failure.
    pub fn rederive_presence(&self) -> RelayResult<usize> {
        let now = self.clock.now();
        let stored = self.store.scan::<PresenceRecord>(Table::Presence)?;
        let mut stale = Vec::new();
        for (key, record) in stored {
            let Ok(bytes) = <[u8; 16]>::try_from(key.as_slice()) else {
                continue;
            };
            let id = DeviceId::from_bytes(bytes);
            if !record.online {
                continue;
            }
            match self.fleet.last_seen_of(id) {
                Some(seen) if self.fleet.is_online(seen, now) => self.fleet.set_present(id, true),
                Some(seen) => stale.push((id, seen)),
                None => {}
            }
        }
        let mut changed = 0;
        for (id, seen) in stale {
            self.fleet.set_present(id, true);
            if self.mark_offline(id, OfflineReason::Restart, seen)? {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// One sweep: time-outs and goodbyes whose grace has ended.
    ///
    /// # Errors
    /// The first storage failure.
    pub fn sweep_presence(&self) -> RelayResult<usize> {
        let now = self.clock.now();
        let mut changed = 0;
        for (id, seen) in self.fleet.present_devices() {
            if !self.fleet.is_online(seen, now)
                && self.mark_offline(id, OfflineReason::Timeout, seen)?
            {
                changed += 1;
            }
        }
        let grace = self.config.discovery.goodbye_grace_s as i64;
        for (id, at) in self.goodbyes.take_due(now, grace) {
            if self.mark_offline(id, OfflineReason::Goodbye, at)? {
                changed += 1;
            }
        }
        Ok(changed)
    }
}

/// Runs the presence sweeper until `stop` turns true, with a last sweep
/// then so that changes already due are recorded before the final flush.
pub async fn run(relay: Arc<Relay>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => sweep(&relay),
        }
    }
    sweep(&relay);
}

fn sweep(relay: &Relay) {
    if let Err(err) = relay.sweep_presence() {
        tracing::warn!(error = %err, "presence sweep failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{CheckinRequest, EnrollRequest};
    use crate::clock::Clock;
    use crate::config::RelayConfig;
    use crate::events::EventRecord;

    fn config(dir: &std::path::Path) -> RelayConfig {
        let mut config = RelayConfig::default();
        config.store.data_dir = dir.to_path_buf();
        config.agents.offline_after_s = 60;
        config.discovery.goodbye_grace_s = 5;
        config
    }

    fn checkin() -> CheckinRequest {
        serde_json::from_value(serde_json::json!({
            "hostname": "PC-1", "os_family": "linux", "os_name": "Debian",
            "os_version": "12", "agent_version": "1"
        }))
        .expect("a minimal check-in")
    }

    async fn enrolled(relay: &Relay) -> DeviceId {
        let token = relay.rotate_enrollment_token().await.expect("token");
        let resp = relay
            .enroll(EnrollRequest {
                enrollment_token: token.expose().to_string(),
                machine_id: "m-1".into(),
                hostname: "PC-1".into(),
                os_family: "linux".into(),
                os_name: "Debian".into(),
                os_version: "12".into(),
                agent_version: "1".into(),
            })
            .await
            .expect("enrolls");
        resp.device_id
    }

    fn presence_events(relay: &Relay) -> Vec<EventType> {
        relay
            .store
            .scan::<EventRecord>(Table::Events)
            .expect("events")
            .into_iter()
            .map(|(_, e)| e.event_type)
            .filter(|t| matches!(t, EventType::DeviceOnline | EventType::DeviceOffline))
            .collect()
    }

    #[tokio::test]
    async fn each_presence_change_emits_one_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::manual(Timestamp(1_800_000_000));
        let relay = Relay::open(config(dir.path()), clock.clone()).expect("opens");
        let id = enrolled(&relay).await;
        assert_eq!(
            relay.fleet.online_count(clock.now()),
            0,
            "enrolled is not online"
        );

        let peer = Some("10.0.0.9".parse().expect("ip"));
        relay
            .checkin_from(id, checkin(), peer)
            .await
            .expect("checkin");
        relay
            .checkin_from(id, checkin(), peer)
            .await
            .expect("checkin");
        assert_eq!(relay.fleet.online_count(clock.now()), 1);
        assert_eq!(relay.presence(id).expect("read").and_then(|p| p.peer), peer);

        clock.advance(30);
        assert_eq!(relay.sweep_presence().expect("sweep"), 0);
        clock.advance(31);
        assert_eq!(relay.sweep_presence().expect("sweep"), 1);
        assert_eq!(relay.sweep_presence().expect("sweep"), 0);
        assert_eq!(relay.fleet.online_count(clock.now()), 0);

        relay
            .checkin_from(id, checkin(), peer)
            .await
            .expect("checkin");
        clock.advance(1);
        relay.goodbyes.record(id, clock.now());
        clock.advance(5);
        assert_eq!(
            relay.sweep_presence().expect("sweep"),
            1,
            "goodbye, no check-in"
        );
        assert_eq!(
            presence_events(&relay),
            [
                EventType::DeviceOnline,
                EventType::DeviceOffline,
                EventType::DeviceOnline,
                EventType::DeviceOffline
            ]
        );
    }

    #[tokio::test]
    async fn a_checkin_after_a_goodbye_keeps_the_device_online() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::manual(Timestamp(1_800_000_000));
        let relay = Relay::open(config(dir.path()), clock.clone()).expect("opens");
        let id = enrolled(&relay).await;
        relay
            .checkin_from(id, checkin(), None)
            .await
            .expect("checkin");
        relay.goodbyes.record(id, clock.now());
        clock.advance(2);
        relay
            .checkin_from(id, checkin(), None)
            .await
            .expect("checkin");
        clock.advance(5);
        assert_eq!(relay.sweep_presence().expect("sweep"), 0);
        assert_eq!(relay.fleet.online_count(clock.now()), 1);
        assert!(relay.goodbyes.is_empty());
    }

    #[tokio::test]
    async fn presence_is_rederived_when_the_relay_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::manual(Timestamp(1_800_000_000));
        let id = {
            let relay = Relay::open(config(dir.path()), clock.clone()).expect("opens");
            let id = enrolled(&relay).await;
            relay
                .checkin_from(id, checkin(), None)
                .await
                .expect("checkin");
            relay.store.sync_now().await.expect("sync");
            id
        };
        clock.advance(10);
        {
            let relay = Relay::open(config(dir.path()), clock.clone()).expect("reopens");
            assert_eq!(relay.fleet.online_count(clock.now()), 1, "still fresh");
            assert_eq!(presence_events(&relay).len(), 1);
            relay.store.sync_now().await.expect("sync");
        }
        clock.advance(120);
        let relay = Relay::open(config(dir.path()), clock.clone()).expect("reopens");
        assert_eq!(relay.fleet.online_count(clock.now()), 0);
        assert_eq!(
            presence_events(&relay),
            [EventType::DeviceOnline, EventType::DeviceOffline]
        );
        assert_eq!(
            relay.presence(id).expect("read").map(|p| p.online),
            Some(false)
        );
        assert_eq!(relay.sweep_presence().expect("sweep"), 0);
    }
}
