//! Compliance: the policy from config evaluated over every device, kept as
//! snapshots for auditors. A device that was compliant in the previous
//! snapshot and is not in the new one raises `compliance.drift_detected`.
//!
//! A snapshot's device list is stored content-addressed: reasons carry no
//! relative ages, so hourly snapshots of an unchanged fleet share one body.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::config::ComplianceConfig;
use crate::devices::DeviceRecord;
use crate::error::RelayResult;
use crate::events::EventType;
use crate::exclusions::{blocking, Exclusion};
use crate::ids::{DeviceId, SnapshotId};
use crate::inventory::{Severity, Update};
use crate::relay::Relay;
use crate::store::{encode, Batch, Table};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reason {
    pub code: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceCompliance {
    pub device_id: DeviceId,
    pub hostname: String,
    pub compliant: bool,
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    pub total_devices: usize,
    pub compliant: usize,
    pub non_compliant: usize,
    pub compliance_pct: f64,
}

/// The policy a snapshot was taken under, as shown to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Policy {
    pub critical_max_age_days: i64,
    pub checkin_max_age_days: i64,
    pub reboot_max_pending_days: i64,
}

impl From<&ComplianceConfig> for Policy {
    fn from(c: &ComplianceConfig) -> Self {
        Self {
            critical_max_age_days: c.critical_max_age_days,
            checkin_max_age_days: c.checkin_max_age_days,
            reboot_max_pending_days: c.reboot_max_pending_days,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotHeader {
    snapshot_id: SnapshotId,
    taken_at: Timestamp,
    policy: Policy,
    summary: Summary,
    body: [u8; 32],
}

/// A snapshot with its device list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub snapshot_id: SnapshotId,
    pub taken_at: Timestamp,
    pub policy: Policy,
    pub summary: Summary,
    pub devices: Vec<DeviceCompliance>,
}

/// A snapshot in lists: everything but the device rows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotListing {
    pub snapshot_id: SnapshotId,
    pub taken_at: Timestamp,
    pub policy: Policy,
    pub summary: Summary,
}

/// Evaluates the policy for one device.
pub fn evaluate<U: std::borrow::Borrow<Update>>(
    policy: &Policy,
    device: &DeviceRecord,
    updates: &[U],
    active: &[Exclusion],
    now: Timestamp,
) -> Vec<Reason> {
    let mut reasons = update_reasons(policy, device.os_family, updates, active, now);
    reasons.extend(device_reasons(policy, device, now));
    reasons
}

/// The reasons that depend only on the update list (shared by every device
/// with the same list and family).
pub fn update_reasons<U: std::borrow::Borrow<Update>>(
    policy: &Policy,
    family: crate::inventory::OsFamily,
    updates: &[U],
    active: &[Exclusion],
    now: Timestamp,
) -> Vec<Reason> {
    let day = Timestamp::SECONDS_PER_DAY;
    let mut overdue: Vec<&Update> = updates
        .iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|u| u.severity == Severity::Critical)
        .filter(|u| blocking(active, u, family).is_none())
        .filter(|u| {
            u.released_at
                .is_some_and(|r| now.seconds_since(r) > policy.critical_max_age_days * day)
        })
        .collect();
    overdue.sort_by(|a, b| {
        a.released_at
            .cmp(&b.released_at)
            .then(a.update_id.cmp(&b.update_id))
    });
    overdue
        .into_iter()
        .map(|u| {
            let name = u.kb.as_deref().unwrap_or(&u.update_id);
            let released = u.released_at.map(|r| r.date()).unwrap_or_default();
            Reason {
                code: "critical_update_missing".into(),
                detail: format!("{name} (critical) released {released} is not installed"),
            }
        })
        .collect()
}

/// The reasons that depend on the device's own state.
pub fn device_reasons(policy: &Policy, device: &DeviceRecord, now: Timestamp) -> Vec<Reason> {
    let day = Timestamp::SECONDS_PER_DAY;
    let mut reasons = Vec::new();
    let last = device.last_seen();
    if now.seconds_since(last) > policy.checkin_max_age_days * day {
        reasons.push(Reason {
            code: "checkin_overdue".into(),
            detail: format!("last check-in {}", last.date()),
        });
    }
    if let Some(since) = device
        .reboot_pending_since
        .filter(|_| device.reboot_pending)
    {
        if now.seconds_since(since) > policy.reboot_max_pending_days * day {
            reasons.push(Reason {
                code: "reboot_overdue".into(),
                detail: format!("reboot pending since {}", since.date()),
            });
        }
    }
    reasons
}

impl Relay {
    /// The compliance of one device now.
    ///
    /// # Errors
    /// A storage failure.
    pub fn device_compliance(&self, device: &DeviceRecord) -> RelayResult<Vec<Reason>> {
        let updates = match device.update_set {
            Some(h) => self.update_set(&h)?,
            None => Vec::new(),
        };
        let policy = Policy::from(&self.config.compliance);
        Ok(evaluate(
            &policy,
            device,
            &updates,
            &self.fleet.active_exclusions(),
            self.clock.now(),
        ))
    }

    /// Evaluates every device and stores the result as a new snapshot.
    ///
    /// # Errors
    /// A storage failure; no snapshot is stored.
    pub async fn take_snapshot(&self) -> RelayResult<Snapshot> {
        let now = self.clock.now();
        let policy = Policy::from(&self.config.compliance);
        let active = self.fleet.active_exclusions();
        // Update-list reasons are worked out once per (set, family).
        let mut by_set: HashMap<([u8; 32], crate::inventory::OsFamily), Vec<Reason>> =
            HashMap::new();
        let mut cache = HashMap::new();
        let mut devices = Vec::new();
        for (_, device) in self.store.scan::<DeviceRecord>(Table::Devices)? {
            let mut reasons = match device.update_set {
                Some(h) => match by_set.get(&(h, device.os_family)) {
                    Some(r) => r.clone(),
                    None => {
                        let updates = self.update_set_cached(&h, &mut cache)?;
                        let r = update_reasons(&policy, device.os_family, &updates, &active, now);
                        by_set.insert((h, device.os_family), r.clone());
                        r
                    }
                },
                None => Vec::new(),
            };
            reasons.extend(device_reasons(&policy, &device, now));
            devices.push(DeviceCompliance {
                device_id: device.device_id,
                hostname: device.hostname.clone(),
                compliant: reasons.is_empty(),
                reasons,
            });
        }
        let snapshot = self.store_snapshot(policy, devices, now).await?;
        tracing::info!(
            snapshot_id = %snapshot.snapshot_id,
            devices = snapshot.summary.total_devices,
            compliant = snapshot.summary.compliant,
            "compliance snapshot taken"
        );
        Ok(snapshot)
    }

    async fn store_snapshot(
        &self,
        policy: Policy,
        devices: Vec<DeviceCompliance>,
        now: Timestamp,
    ) -> RelayResult<Snapshot> {
        let compliant = devices.iter().filter(|d| d.compliant).count();
        let total = devices.len();
        let summary = Summary {
            total_devices: total,
            compliant,
            non_compliant: total - compliant,
            compliance_pct: if total == 0 {
                100.0
            } else {
                (compliant as f64 * 1000.0 / total as f64).round() / 10.0
            },
        };
        let body: [u8; 32] = Sha256::digest(encode(&devices)).into();
        let header = SnapshotHeader {
            snapshot_id: SnapshotId::generate(),
            taken_at: now,
            policy,
            summary,
            body,
        };

        {
            let mut writer = self.store.writer();
            let previous = self.latest_snapshot()?;
            let mut batch = Batch::new();
            if let Some(prev) = &previous {
                stage_drift(&mut batch, &prev.devices, &devices, now);
            }
            if !writer.store().contains(Table::SnapshotBodies, &body)? {
                batch.put(Table::SnapshotBodies, body.to_vec(), &devices);
            }
            batch.put(
                Table::Snapshots,
                header.snapshot_id.to_bytes().to_vec(),
                &header,
            );
            writer.apply(batch)?;
        }
        self.store.durable().await?;

        Ok(Snapshot {
            snapshot_id: header.snapshot_id,
            taken_at: header.taken_at,
            policy: header.policy,
            summary,
            devices,
        })
    }

    /// The newest snapshot, if any.
    ///
    /// # Errors
    /// A storage failure.
    pub fn latest_snapshot(&self) -> RelayResult<Option<Snapshot>> {
        let newest = self
            .store
            .scan_rev_before::<SnapshotHeader>(Table::Snapshots, None, 1)?;
        match newest.into_iter().next() {
            Some((_, header)) => Ok(Some(self.expand(header)?)),
            None => Ok(None),
        }
    }

    /// One snapshot by id.
    ///
    /// # Errors
    /// A storage failure.
    pub fn snapshot(&self, id: SnapshotId) -> RelayResult<Option<Snapshot>> {
        match self
            .store
            .get::<SnapshotHeader>(Table::Snapshots, &id.to_bytes())?
        {
            Some(h) => Ok(Some(self.expand(h)?)),
            None => Ok(None),
        }
    }

    fn expand(&self, h: SnapshotHeader) -> RelayResult<Snapshot> {
        let devices = self
            .store
            .get(Table::SnapshotBodies, &h.body)?
            .unwrap_or_default();
        Ok(Snapshot {
            snapshot_id: h.snapshot_id,
            taken_at: h.taken_at,
            policy: h.policy,
            summary: h.summary,
            devices,
        })
    }

    /// Snapshots newest first, `limit` of them before `before`.
    ///
    /// # Errors
    /// A storage failure.
    pub fn snapshot_page(
        &self,
        before: Option<SnapshotId>,
        limit: usize,
    ) -> RelayResult<(Vec<SnapshotListing>, usize)> {
        let key = before.map(|b| b.to_bytes());
        let rows = self.store.scan_rev_before::<SnapshotHeader>(
            Table::Snapshots,
            key.as_ref().map(|k| &k[..]),
            limit,
        )?;
        let listings = rows
            .into_iter()
            .map(|(_, h)| SnapshotListing {
                snapshot_id: h.snapshot_id,
                taken_at: h.taken_at,
                policy: h.policy,
                summary: h.summary,
            })
            .collect();
        Ok((listings, self.store.len(Table::Snapshots)))
    }

    /// Drops snapshots past retention and bodies no snapshot uses.
    ///
    /// # Errors
    /// A storage failure.
    pub fn prune_snapshots(&self) -> RelayResult<usize> {
        let cutoff = self.clock.now().plus_seconds(
            -self.config.compliance.snapshot_retention_days * Timestamp::SECONDS_PER_DAY,
        );
        let mut writer = self.store.writer();
        let headers = writer.store().scan::<SnapshotHeader>(Table::Snapshots)?;
        let mut batch = Batch::new();
        let mut kept_bodies = std::collections::HashSet::new();
        let mut pruned = 0;
        for (key, h) in headers {
            if h.taken_at < cutoff {
                batch.delete(Table::Snapshots, key);
                pruned += 1;
            } else {
                kept_bodies.insert(h.body);
            }
        }
        if pruned > 0 {
            for body in writer.store().keys(Table::SnapshotBodies)? {
                if !kept_bodies.iter().any(|k| k[..] == body[..]) {
                    batch.delete(Table::SnapshotBodies, body);
                }
            }
            writer.apply(batch)?;
        }
        Ok(pruned)
    }
}

fn stage_drift(
    batch: &mut Batch,
    before: &[DeviceCompliance],
    after: &[DeviceCompliance],
    now: Timestamp,
) {
    let was_compliant: HashMap<DeviceId, bool> =
        before.iter().map(|d| (d.device_id, d.compliant)).collect();
    for d in after {
        if !d.compliant && was_compliant.get(&d.device_id) == Some(&true) {
            let data = serde_json::json!({
                "device_id": d.device_id,
                "hostname": d.hostname,
                "reasons": d.reasons,
            });
            batch.event(EventType::ComplianceDriftDetected, now, data);
        }
    }
}

/// RFC 4180 CSV of a snapshot's devices, safe to open in a spreadsheet.
pub fn to_csv(snapshot: &Snapshot) -> String {
    let mut out = String::from("device_id,hostname,compliant,reasons\r\n");
    for d in &snapshot.devices {
        let reasons = d
            .reasons
            .iter()
            .map(|r| format!("{}: {}", r.code, r.detail))
            .collect::<Vec<_>>()
            .join("; ");
        let cells = [
            d.device_id.to_string(),
            d.hostname.clone(),
            d.compliant.to_string(),
            reasons,
        ];
        let row: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_cell(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formula_safe() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("=cmd|' /C calc'!A0"), "'=cmd|' /C calc'!A0");
        assert_eq!(csv_cell("-1,2"), "\"'-1,2\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("\tx"), "'\tx");
    }

    #[test]
    fn an_overdue_critical_update_fails_the_policy_unless_excluded() {
        let policy = Policy::from(&ComplianceConfig::default());
        let day = Timestamp::SECONDS_PER_DAY;
        let now = Timestamp(100 * day);
        let device = DeviceRecord {
            device_id: DeviceId::generate(),
            machine_id: "m".into(),
            token_hash: [0; 32],
            hostname: "h".into(),
            os_family: crate::inventory::OsFamily::Windows,
            os_name: "w".into(),
            os_version: "1".into(),
            agent_version: "1".into(),
            ip_addresses: vec![],
            enrolled_at: Timestamp(0),
            last_checkin: Some(now),
            reboot_pending: true,
            reboot_pending_since: Some(Timestamp(now.0 - 2 * day)),
            update_set: None,
            os_build: None,
            installed_kbs: vec![],
            seen_via_mdns: false,
        };
        let update = Update {
            update_id: "KB1".into(),
            kb: Some("KB1".into()),
            package: None,
            title: "t".into(),
            severity: Severity::Critical,
            cves: vec![],
            released_at: Some(Timestamp(now.0 - 15 * day)),
        };
        let reasons = evaluate(&policy, &device, std::slice::from_ref(&update), &[], now);
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].code, "critical_update_missing");
        let exclusion = Exclusion {
            exclusion_id: crate::ids::ExclusionId::generate(),
            kind: crate::exclusions::ExclusionKind::Kb,
            value: "KB1".into(),
            os_family: None,
            reason: String::new(),
            created_at: Timestamp(0),
            created_by: crate::ids::UserId::generate(),
            expires_at: None,
        };
        assert!(evaluate(&policy, &device, &[update], &[exclusion], now).is_empty());
    }
}
