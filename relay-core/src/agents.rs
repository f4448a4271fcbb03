//! The agent protocol (`/agent/v1`): enrollment with the site token, and
//! check-ins that replace a device's patch state, become durable before they
//! are acknowledged, and carry commands back (exclusions, a due reboot).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::auth::{hash_secret, Secret, AGENT_TOKEN_PREFIX, ENROLLMENT_TOKEN_PREFIX};
use crate::clock::Timestamp;
use crate::devices::{set_hash, update_key, DeviceRecord, RecentResults, SetHash, UpdateKey};
use crate::error::{check_text, Checks, RelayError, RelayResult};
use crate::events::EventType;
use crate::exclusions::ExclusionKind;
use crate::ids::{DeviceId, ScheduleId};
use crate::inventory::{
    normalize_cve, normalize_kb, CveRef, InstallOutcome, InstallResult, OsFamily, Severity, Update,
};
use crate::reboots::{Dispatch, RebootSchedule, RebootStatus};
use crate::relay::{Metrics, Relay};
use crate::store::{Batch, Table, Writer};

const META_ENROLLMENT_HASH: &[u8] = b"enrollment_token_hash";
const MAX_UPDATES: usize = 10_000;
const MAX_RESULTS: usize = 1_000;
const MAX_CVES_PER_UPDATE: usize = 5_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EnrollRequest {
    pub enrollment_token: String,
    #[schema(min_length = 1, max_length = 200)]
    pub machine_id: String,
    #[schema(min_length = 1, max_length = 255)]
    pub hostname: String,
    #[schema(value_type = OsFamily)]
    pub os_family: String,
    #[schema(min_length = 1, max_length = 200)]
    pub os_name: String,
    #[schema(max_length = 100)]
    pub os_version: String,
    #[schema(max_length = 50)]
    pub agent_version: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnrollResponse {
    pub device_id: DeviceId,
    pub agent_token: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WireCve {
    pub id: String,
    pub cvss: Option<f64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WireUpdate {
    pub update_id: String,
    pub kb: Option<String>,
    pub package: Option<String>,
    pub title: String,
    #[schema(value_type = Severity)]
    pub severity: String,
    #[serde(default)]
    pub cves: Vec<WireCve>,
    #[schema(value_type = Option<Timestamp>)]
    pub released_at: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WireResult {
    pub update_id: String,
    #[schema(value_type = InstallOutcome)]
    pub result: String,
    pub error_code: Option<String>,
    #[schema(value_type = Timestamp)]
    pub at: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WireRebootResult {
    #[schema(value_type = ScheduleId)]
    pub schedule_id: String,
    /// `completed` or `failed`.
    pub result: String,
    #[schema(value_type = Timestamp)]
    pub at: String,
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CheckinRequest {
    #[schema(min_length = 1, max_length = 255)]
    pub hostname: String,
    #[schema(value_type = OsFamily)]
    pub os_family: String,
    #[schema(min_length = 1, max_length = 200)]
    pub os_name: String,
    #[schema(max_length = 100)]
    pub os_version: String,
    #[schema(max_length = 50)]
    pub agent_version: String,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    #[serde(default)]
    pub reboot_pending: bool,
    #[schema(value_type = Option<Timestamp>)]
    pub reboot_pending_since: Option<String>,
    #[serde(default)]
    pub available_updates: Vec<WireUpdate>,
    #[serde(default)]
    pub results: Vec<WireResult>,
    pub reboot_result: Option<WireRebootResult>,
    pub os_build: Option<String>,
    #[serde(default)]
    pub installed_kbs: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ExclusionCommand {
    pub kind: ExclusionKind,
    pub value: String,
}

#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RebootCommand {
    pub schedule_id: ScheduleId,
    pub at: Timestamp,
    pub message: String,
    pub force: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckinResponse {
    pub next_checkin_s: u64,
    pub exclusions: Vec<ExclusionCommand>,
    pub reboot: Option<RebootCommand>,
}

/// A check-in after validation: every field typed and bounded.
struct ValidCheckin {
    hostname: String,
    os_family: OsFamily,
    os_name: String,
    os_version: String,
    agent_version: String,
    ip_addresses: Vec<String>,
    reboot_pending: bool,
    reboot_pending_since: Option<Timestamp>,
    updates: Vec<Update>,
    results: Vec<InstallResult>,
    reboot_result: Option<(ScheduleId, bool, Timestamp, Option<String>)>,
    os_build: Option<String>,
    installed_kbs: Vec<String>,
}

fn parse_family(checks: &mut Checks, field: &str, value: &str) -> OsFamily {
    OsFamily::parse(value).unwrap_or_else(|| {
        checks.fail(field, "must be windows, macos or linux");
        OsFamily::Linux
    })
}

fn parse_time(checks: &mut Checks, field: &str, value: &str) -> Timestamp {
    Timestamp::parse(value).unwrap_or_else(|err| {
        checks.fail(field, err.to_string());
        Timestamp(0)
    })
}

fn check_identity(
    checks: &mut Checks,
    hostname: &str,
    os_name: &str,
    os_version: &str,
    agent_version: &str,
) {
    check_text(checks, "hostname", hostname, 1, 255);
    check_text(checks, "os_name", os_name, 1, 200);
    check_text(checks, "os_version", os_version, 0, 100);
    check_text(checks, "agent_version", agent_version, 0, 50);
}

fn validate_update(checks: &mut Checks, i: usize, u: &WireUpdate, family: OsFamily) -> Update {
    let field = |name: &str| format!("available_updates[{i}].{name}");
    check_text(checks, &field("update_id"), &u.update_id, 1, 200);
    check_text(checks, &field("title"), &u.title, 0, 1000);
    let kb = u.kb.as_deref().and_then(|kb| {
        let normal = normalize_kb(kb);
        checks.check(
            normal.is_some(),
            field("kb"),
            "must be KB followed by digits",
        );
        normal
    });
    if let Some(p) = &u.package {
        checks.check(
            crate::inventory::is_package_name(p),
            field("package"),
            "is not a package name",
        );
    }
    if family == OsFamily::Windows {
        checks.check(
            kb.is_some() || u.package.is_some(),
            field("kb"),
            "a Windows update needs a kb",
        );
    }
    let severity = Severity::parse(&u.severity).unwrap_or_else(|| {
        checks.fail(
            field("severity"),
            "must be critical, important, moderate, low or unknown",
        );
        Severity::Unknown
    });
    checks.check(
        u.cves.len() <= MAX_CVES_PER_UPDATE,
        field("cves"),
        "too many CVEs",
    );
    let mut cves = Vec::with_capacity(u.cves.len());
    for (j, c) in u.cves.iter().enumerate().take(MAX_CVES_PER_UPDATE) {
        let id = normalize_cve(&c.id).unwrap_or_else(|| {
            checks.fail(
                format!("available_updates[{i}].cves[{j}].id"),
                "must be CVE-YYYY-NNNN",
            );
            String::new()
        });
        let cvss_ok = c.cvss.is_none_or(|s| (0.0..=10.0).contains(&s));
        checks.check(
            cvss_ok,
            format!("available_updates[{i}].cves[{j}].cvss"),
            "must be between 0 and 10",
        );
        cves.push(CveRef {
            id,
            cvss: c.cvss.map(|s| s as f32),
        });
    }
    let released_at = u
        .released_at
        .as_deref()
        .map(|t| parse_time(checks, &field("released_at"), t));
    Update {
        update_id: u.update_id.clone(),
        kb,
        package: u.package.clone(),
        title: u.title.clone(),
        severity,
        cves,
        released_at,
    }
}

fn validate_result(checks: &mut Checks, i: usize, r: &WireResult) -> InstallResult {
    let field = |name: &str| format!("results[{i}].{name}");
    check_text(checks, &field("update_id"), &r.update_id, 1, 200);
    let result = match r.result.as_str() {
        "installed" => InstallOutcome::Installed,
        "failed" => InstallOutcome::Failed,
        _ => {
            checks.fail(field("result"), "must be installed or failed");
            InstallOutcome::Failed
        }
    };
    if let Some(code) = &r.error_code {
        check_text(checks, &field("error_code"), code, 0, 100);
    }
    InstallResult {
        update_id: r.update_id.clone(),
        result,
        error_code: r.error_code.clone(),
        at: parse_time(checks, &field("at"), &r.at),
    }
}

fn validate_checkin(req: CheckinRequest) -> RelayResult<ValidCheckin> {
    let mut checks = Checks::new();
    check_identity(
        &mut checks,
        &req.hostname,
        &req.os_name,
        &req.os_version,
        &req.agent_version,
    );
    let os_family = parse_family(&mut checks, "os_family", &req.os_family);
    checks.check(
        req.ip_addresses.len() <= 64,
        "ip_addresses",
        "at most 64 addresses",
    );
    for (i, ip) in req.ip_addresses.iter().enumerate() {
        checks.check(
            ip.parse::<IpAddr>().is_ok(),
            format!("ip_addresses[{i}]"),
            "is not an IP address",
        );
    }
    let reboot_pending_since = req
        .reboot_pending_since
        .as_deref()
        .map(|t| parse_time(&mut checks, "reboot_pending_since", t));

    checks.check(
        req.available_updates.len() <= MAX_UPDATES,
        "available_updates",
        "at most 10000 updates",
    );
    let mut ids = HashSet::new();
    let mut updates = Vec::with_capacity(req.available_updates.len().min(MAX_UPDATES));
    for (i, u) in req.available_updates.iter().enumerate().take(MAX_UPDATES) {
        checks.check(
            ids.insert(u.update_id.as_str()),
            format!("available_updates[{i}].update_id"),
            "is listed twice",
        );
        updates.push(validate_update(&mut checks, i, u, os_family));
    }
    checks.check(
        req.results.len() <= MAX_RESULTS,
        "results",
        "at most 1000 results",
    );
    let results: Vec<InstallResult> = req
        .results
        .iter()
        .enumerate()
        .take(MAX_RESULTS)
        .map(|(i, r)| validate_result(&mut checks, i, r))
        .collect();

    let reboot_result = req.reboot_result.as_ref().map(|r| {
        let id = r.schedule_id.parse::<ScheduleId>().unwrap_or_else(|_| {
            checks.fail("reboot_result.schedule_id", "is not a schedule id");
            ScheduleId::from_ulid(ulid::Ulid(0))
        });
        let completed = match r.result.as_str() {
            "completed" => true,
            "failed" => false,
            _ => {
                checks.fail("reboot_result.result", "must be completed or failed");
                false
            }
        };
        if let Some(e) = &r.error {
            check_text(&mut checks, "reboot_result.error", e, 0, 1000);
        }
        (
            id,
            completed,
            parse_time(&mut checks, "reboot_result.at", &r.at),
            r.error.clone(),
        )
    });

    if let Some(build) = &req.os_build {
        check_text(&mut checks, "os_build", build, 1, 32);
    }
    checks.check(
        req.installed_kbs.len() <= 5000,
        "installed_kbs",
        "at most 5000 KBs",
    );
    let installed_kbs: Vec<String> = req
        .installed_kbs
        .iter()
        .enumerate()
        .filter_map(|(i, kb)| {
            let normal = normalize_kb(kb);
            checks.check(
                normal.is_some(),
                format!("installed_kbs[{i}]"),
                "must be KB followed by digits",
            );
            normal
        })
        .collect();
    checks.finish()?;

    Ok(ValidCheckin {
        hostname: req.hostname,
        os_family,
        os_name: req.os_name,
        os_version: req.os_version,
        agent_version: req.agent_version,
        ip_addresses: req.ip_addresses,
        reboot_pending: req.reboot_pending,
        reboot_pending_since,
        updates,
        results,
        reboot_result,
        os_build: req.os_build,
        installed_kbs,
    })
}

impl Relay {
    /// Mints a new site enrollment token; the old one stops working.
    /// The token is returned once and stored only as a hash.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn rotate_enrollment_token(&self) -> RelayResult<Secret> {
        let secret = Secret::generate(ENROLLMENT_TOKEN_PREFIX);
        let mut batch = Batch::new();
        batch.put(Table::Meta, META_ENROLLMENT_HASH.to_vec(), &secret.hash());
        self.store.writer().apply(batch)?;
        self.store.sync_now().await?;
        tracing::info!("enrollment token rotated");
        Ok(secret)
    }

    pub fn has_enrollment_token(&self) -> bool {
        self.store
            .contains(Table::Meta, META_ENROLLMENT_HASH)
            .unwrap_or(false)
    }

    /// Whether `presented` is the current site enrollment token (used by a
    /// restore to tell whether the token file on disk still applies).
    pub fn enrollment_token_is(&self, presented: &str) -> bool {
        self.enrollment_token_matches(presented).unwrap_or(false)
    }

    fn enrollment_token_matches(&self, presented: &str) -> RelayResult<bool> {
        let stored: Option<[u8; 32]> = self.store.get(Table::Meta, META_ENROLLMENT_HASH)?;
        let presented = hash_secret(presented);
        Ok(stored.is_some_and(|s| bool::from(s.ct_eq(&presented))))
    }

    /// Enrolls a machine, or re-enrolls it with a fresh token.
    ///
    /// # Errors
    /// 401 for a wrong site token, 422 for invalid fields.
    pub async fn enroll(&self, req: EnrollRequest) -> RelayResult<EnrollResponse> {
        let mut checks = Checks::new();
        check_text(&mut checks, "machine_id", &req.machine_id, 1, 200);
        check_identity(
            &mut checks,
            &req.hostname,
            &req.os_name,
            &req.os_version,
            &req.agent_version,
        );
        let os_family = parse_family(&mut checks, "os_family", &req.os_family);
        checks.finish()?;
        if !self.enrollment_token_matches(&req.enrollment_token)? {
            return Err(RelayError::Unauthorized(
                "the enrollment token is not valid".into(),
            ));
        }

        let now = self.clock.now();
        let token = Secret::generate(AGENT_TOKEN_PREFIX);
        let record = {
            let mut writer = self.store.writer();
            let existing: Option<DeviceId> = writer
                .store()
                .get(Table::Machines, req.machine_id.as_bytes())?;
            let existing = match existing {
                Some(id) => writer
                    .store()
                    .get::<DeviceRecord>(Table::Devices, &id.to_bytes())?,
                None => None,
            };
            let mut batch = Batch::new();
            let record = match existing {
                Some(mut device) => {
                    batch.delete(Table::AgentTokens, device.token_hash.to_vec());
                    device.token_hash = token.hash();
                    device.hostname = req.hostname;
                    device.os_family = os_family;
                    device.os_name = req.os_name;
                    device.os_version = req.os_version;
                    device.agent_version = req.agent_version;
                    device
                }
                None => {
                    let device = new_device(req, os_family, token.hash(), now);
                    let data = serde_json::json!({
                        "device_id": device.device_id,
                        "hostname": device.hostname,
                        "os_family": device.os_family,
                        "os_name": device.os_name,
                    });
                    batch.event(EventType::DeviceEnrolled, now, data);
                    batch.put(
                        Table::Machines,
                        device.machine_id.as_bytes().to_vec(),
                        &device.device_id,
                    );
                    device
                }
            };
            batch.put(Table::AgentTokens, token.hash().to_vec(), &record.device_id);
            batch.put(
                Table::Devices,
                record.device_id.to_bytes().to_vec(),
                &record,
            );
            writer.apply(batch)?;
            self.fleet.upsert(&record, Some(&[]));
            record
        };

        self.store.durable().await?;
        Metrics::bump(&self.metrics.enrollments);
        tracing::debug!(device_id = %record.device_id, "device enrolled");
        Ok(EnrollResponse {
            device_id: record.device_id,
            agent_token: token.expose().to_string(),
        })
    }

    /// The device an agent token belongs to.
    ///
    /// # Errors
    /// 401 for an unknown token.
    pub fn agent_device(&self, token: Option<&str>) -> RelayResult<DeviceId> {
        let token = token.filter(|t| t.starts_with(AGENT_TOKEN_PREFIX));
        let unknown = || RelayError::Unauthorized("the agent token is not valid".into());
        let token = token.ok_or_else(unknown)?;
        self.store
            .get::<DeviceId>(Table::AgentTokens, &hash_secret(token))?
            .ok_or_else(unknown)
    }

    /// Stores a check-in whole, then answers with the device's commands.
    ///
    /// # Errors
    /// 422 naming the first invalid fields (nothing is stored), or a storage
    /// failure (nothing is acknowledged).
    pub async fn checkin(
        &self,
        device_id: DeviceId,
        req: CheckinRequest,
    ) -> RelayResult<CheckinResponse> {
        self.checkin_from(device_id, req, None).await
    }

    /// [`Relay::checkin`] with the address the request came from, which an
    /// mDNS announcement for this device must match (see `discovery`).
    ///
    /// # Errors
    /// As [`Relay::checkin`].
    pub async fn checkin_from(
        &self,
        device_id: DeviceId,
        req: CheckinRequest,
        peer: Option<IpAddr>,
    ) -> RelayResult<CheckinResponse> {
        let checkin = validate_checkin(req)?;
        let now = self.clock.now();
        let hash = (!checkin.updates.is_empty()).then(|| set_hash(&checkin.updates));

        let (device, reboot) = {
            let mut writer = self.store.writer();
            let mut device: DeviceRecord = writer
                .store()
                .get(Table::Devices, &device_id.to_bytes())?
                .ok_or(RelayError::Unauthorized(
                    "the agent token is not valid".into(),
                ))?;
            let mut batch = Batch::new();
            let new_set =
                self.stage_update_set(&writer, &mut batch, &device, hash, &checkin.updates, now)?;
            self.stage_results(&writer, &mut batch, &device, &checkin.results, now)?;
            let reboot_done = match &checkin.reboot_result {
                Some(r) => self.stage_reboot_result(&writer, &mut batch, &device, r, now)?,
                None => false,
            };
            let reboot = self.stage_dispatch(&writer, &mut batch, &device, now)?;

            device.hostname = checkin.hostname;
            device.os_family = checkin.os_family;
            device.os_name = checkin.os_name;
            device.os_version = checkin.os_version;
            device.agent_version = checkin.agent_version;
            device.ip_addresses = checkin.ip_addresses;
            device.reboot_pending = checkin.reboot_pending && !reboot_done;
            device.reboot_pending_since = checkin
                .reboot_pending_since
                .filter(|_| device.reboot_pending);
            device.update_set = hash;
            device.os_build = checkin.os_build;
            device.installed_kbs = checkin.installed_kbs;
            device.last_checkin = Some(now);
            batch.put(Table::Devices, device_id.to_bytes().to_vec(), &device);
            let came_online =
                self.stage_checkin_presence(&writer, &mut batch, &device, peer, now)?;

            writer.apply(batch)?;
            self.fleet.upsert(&device, new_set.as_deref());
            self.fleet.set_present(device_id, true);
            if came_online {
                tracing::info!(%device_id, "device online");
            }
            if reboot_done {
                self.fleet.set_scheduled(device_id, None);
            }
            (device, reboot)
        };

        self.store.durable().await?;
        Metrics::bump(&self.metrics.checkins);
        if let Err(err) = self.recheck_claims(device_id) {
            tracing::warn!(%device_id, error = %err, "pending mDNS announcements not checked");
        }
        Ok(CheckinResponse {
            next_checkin_s: self.config.agents.checkin_interval_s,
            exclusions: self.exclusion_commands(device.os_family),
            reboot,
        })
    }

    /// Stages the set's content and reference counts. Returns the updates
    /// when the fleet index has not seen this set yet.
    fn stage_update_set(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        device: &DeviceRecord,
        hash: Option<SetHash>,
        updates: &[Update],
        now: Timestamp,
    ) -> RelayResult<Option<Vec<Update>>> {
        if device.update_set == hash {
            return Ok(None);
        }
        let store = writer.store();
        // Net change of each update's reference count (a new and an old set
        // may share updates), applied once per update below.
        let mut deltas: HashMap<UpdateKey, (i64, Option<&Update>)> = HashMap::new();
        if let Some(h) = hash {
            let refs: u64 = store.get(Table::UpdateSetRefs, &h)?.unwrap_or(0);
            if refs == 0 {
                let keys: Vec<UpdateKey> = updates.iter().map(update_key).collect();
                for (key, update) in keys.iter().zip(updates) {
                    deltas.entry(*key).or_insert((0, None)).0 += 1;
                    deltas.entry(*key).or_insert((0, None)).1 = Some(update);
                }
                batch.put(Table::UpdateSets, h.to_vec(), &keys);
                self.stage_new_cves(writer, batch, updates, now)?;
            }
            batch.put(Table::UpdateSetRefs, h.to_vec(), &(refs + 1));
        }
        if let Some(old) = device.update_set {
            let refs: u64 = store.get(Table::UpdateSetRefs, &old)?.unwrap_or(1);
            if refs <= 1 {
                let keys: Vec<UpdateKey> = store.get(Table::UpdateSets, &old)?.unwrap_or_default();
                for key in keys {
                    deltas.entry(key).or_insert((0, None)).0 -= 1;
                }
                batch.delete(Table::UpdateSetRefs, old.to_vec());
                batch.delete(Table::UpdateSets, old.to_vec());
            } else {
                batch.put(Table::UpdateSetRefs, old.to_vec(), &(refs - 1));
            }
        }
        for (key, (delta, update)) in deltas {
            if delta == 0 {
                continue;
            }
            let refs: u64 = store.get(Table::UpdateRefs, &key)?.unwrap_or(0);
            let after = refs.saturating_add_signed(delta);
            if after == 0 {
                batch.delete(Table::UpdateRefs, key.to_vec());
                batch.delete(Table::Updates, key.to_vec());
            } else {
                batch.put(Table::UpdateRefs, key.to_vec(), &after);
                if refs == 0 {
                    if let Some(u) = update {
                        batch.put(Table::Updates, key.to_vec(), u);
                    }
                }
            }
        }
        let known = hash.is_none_or(|h| self.fleet.has_set(&h));
        Ok((!known).then(|| updates.to_vec()))
    }

    /// `vulnerability.detected` for each CVE the fleet has never had open.
    fn stage_new_cves(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        updates: &[Update],
        now: Timestamp,
    ) -> RelayResult<()> {
        let mut staged = HashSet::new();
        for update in updates {
            for cve in &update.cves {
                if !staged.insert(cve.id.as_str())
                    || writer
                        .store()
                        .contains(Table::CvesSeen, cve.id.as_bytes())?
                {
                    continue;
                }
                batch.put(Table::CvesSeen, cve.id.as_bytes().to_vec(), &now);
                let data = serde_json::json!({
                    "cve_id": cve.id,
                    "severity": update.severity,
                    "fixed_by": update.kb.as_deref().unwrap_or(&update.update_id),
                });
                batch.event(EventType::VulnerabilityDetected, now, data);
            }
        }
        Ok(())
    }

    fn stage_results(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        device: &DeviceRecord,
        results: &[InstallResult],
        now: Timestamp,
    ) -> RelayResult<()> {
        if results.is_empty() {
            return Ok(());
        }
        let key = device.device_id.to_bytes();
        let mut recent: RecentResults = writer
            .store()
            .get(Table::Results, &key)?
            .unwrap_or_default();
        for r in results {
            let event_type = match r.result {
                InstallOutcome::Installed => EventType::PatchInstalled,
                InstallOutcome::Failed => EventType::PatchFailed,
            };
            let data = serde_json::json!({
                "device_id": device.device_id,
                "hostname": device.hostname,
                "update_id": r.update_id,
                "error_code": r.error_code,
                "at": r.at,
            });
            batch.event(event_type, now, data);
            recent.0.push(r.clone());
        }
        let keep = self.config.agents.recent_results;
        if recent.0.len() > keep {
            recent.0.drain(..recent.0.len() - keep);
        }
        batch.put(Table::Results, key.to_vec(), &recent);
        Ok(())
    }

    /// Applies a reported reboot outcome. True when it closed the device's
    /// open schedule.
    fn stage_reboot_result(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        device: &DeviceRecord,
        result: &(ScheduleId, bool, Timestamp, Option<String>),
        now: Timestamp,
    ) -> RelayResult<bool> {
        let (schedule_id, completed, at, error) = result;
        let schedule: Option<RebootSchedule> = writer
            .store()
            .get(Table::Reboots, &schedule_id.to_bytes())?;
        let Some(mut schedule) = schedule.filter(|s| s.device_id == device.device_id) else {
            return Err(RelayError::invalid(
                "reboot_result.schedule_id",
                "is not a reboot of this device",
            ));
        };
        if schedule.status != RebootStatus::Dispatched {
            // Already reported (a retried check-in): nothing changes.
            return Ok(false);
        }
        schedule.status = if *completed {
            RebootStatus::Completed
        } else {
            RebootStatus::Failed
        };
        schedule.finished_at = Some(*at);
        schedule.error = error.clone();
        batch.put(Table::Reboots, schedule_id.to_bytes().to_vec(), &schedule);
        batch.delete(Table::DeviceReboots, device.device_id.to_bytes().to_vec());
        let event_type = if *completed {
            EventType::RebootCompleted
        } else {
            EventType::RebootFailed
        };
        let data = serde_json::json!({
            "device_id": device.device_id,
            "hostname": device.hostname,
            "schedule_id": schedule_id,
            "at": at,
            "error": error,
        });
        batch.event(event_type, now, data);
        Ok(true)
    }

    /// The reboot to hand over in this answer, if one is due.
    fn stage_dispatch(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        device: &DeviceRecord,
        now: Timestamp,
    ) -> RelayResult<Option<RebootCommand>> {
        let key = device.device_id.to_bytes();
        let Some(schedule_id) = writer
            .store()
            .get::<ScheduleId>(Table::DeviceReboots, &key)?
        else {
            return Ok(None);
        };
        let Some(mut schedule) = writer
            .store()
            .get::<RebootSchedule>(Table::Reboots, &schedule_id.to_bytes())?
        else {
            return Ok(None);
        };
        match schedule.dispatch_at(now, self.config.reboot.dispatch_grace_s) {
            Dispatch::Wait => Ok(None),
            Dispatch::Missed => {
                schedule.status = RebootStatus::Missed;
                schedule.finished_at = Some(now);
                batch.put(Table::Reboots, schedule_id.to_bytes().to_vec(), &schedule);
                batch.delete(Table::DeviceReboots, key.to_vec());
                self.fleet.set_scheduled(device.device_id, None);
                Ok(None)
            }
            Dispatch::Send => {
                if schedule.status == RebootStatus::Scheduled {
                    schedule.status = RebootStatus::Dispatched;
                    schedule.dispatched_at = Some(now);
                    batch.put(Table::Reboots, schedule_id.to_bytes().to_vec(), &schedule);
                }
                Ok(Some(RebootCommand {
                    schedule_id,
                    at: schedule.at,
                    message: schedule.message,
                    force: schedule.force,
                }))
            }
        }
    }

    fn exclusion_commands(&self, family: OsFamily) -> Vec<ExclusionCommand> {
        self.fleet
            .active_exclusions()
            .into_iter()
            .filter(|e| e.applies_to(family))
            .map(|e| ExclusionCommand {
                kind: e.kind,
                value: e.value,
            })
            .collect()
    }
}

fn new_device(
    req: EnrollRequest,
    os_family: OsFamily,
    token_hash: [u8; 32],
    now: Timestamp,
) -> DeviceRecord {
    DeviceRecord {
        device_id: DeviceId::generate(),
        machine_id: req.machine_id,
        token_hash,
        hostname: req.hostname,
        os_family,
        os_name: req.os_name,
        os_version: req.os_version,
        agent_version: req.agent_version,
        ip_addresses: Vec::new(),
        enrolled_at: now,
        last_checkin: None,
        reboot_pending: false,
        reboot_pending_since: None,
        update_set: None,
        os_build: None,
        installed_kbs: Vec::new(),
        seen_via_mdns: false,
    }
}
