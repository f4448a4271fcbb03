//! One simulated agent: identity, update state and protocol behaviour.
//!
//! Per check-in the agent sends its state, then acts on the answer: it stores
//! the exclusions, performs a scheduled reboot once it is due, and otherwise
//! may install a few available, non-excluded updates. Install and reboot
//! results go out with the next check-in; an installed update (and whatever
//! it supersedes) is no longer reported as available.

use std::fmt;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::client::{CallError, RelayClient};
use crate::profiles::Profile;
use crate::protocol::{
    CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, Exclusion, InstallOutcome,
    InstallResult, OsFamily, RebootOrder, RebootOutcome, RebootResult, Update, AGENT_VERSION,
};
use crate::stats::{Event, Phase, Stats};
use crate::timefmt::{now_rfc3339, now_utc, parse_rfc3339};

/// Windows Update error codes used for failed installs.
pub const INSTALL_ERROR_CODES: [&str; 5] = [
    "0x80070643",
    "0x800f0922",
    "0x80073712",
    "0x8024200d",
    "0x80240017",
];

/// Error text of a failed reboot.
pub const REBOOT_ERROR: &str = "0x800705b4: timed out waiting for applications to close";

/// Knobs of the simulated behaviour (all random draws use the agent's seeded RNG).
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Chance per check-in that the agent installs something.
    pub install_probability: f64,
    /// At most this many installs per check-in.
    pub max_installs: usize,
    /// Chance that one install fails.
    pub install_failure_rate: f64,
    /// Chance that a due reboot fails.
    pub reboot_failure_rate: f64,
    /// Each clone hides up to this many of its profile's updates, so clones differ.
    pub max_hidden_per_clone: usize,
    /// Report at most this many (the newest) available updates per check-in.
    pub max_reported_updates: Option<usize>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            install_probability: 0.5,
            max_installs: 2,
            install_failure_rate: 0.1,
            reboot_failure_rate: 0.05,
            max_hidden_per_clone: 2,
            max_reported_updates: None,
        }
    }
}

/// What the agent sent in its last successful check-in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentCheckin {
    /// Indices into the profile's updates.
    pub update_indices: Vec<u32>,
    pub results: Vec<InstallResult>,
    pub reboot_result: Option<RebootResult>,
    pub reboot_pending: bool,
    pub reboot_pending_since: Option<String>,
    pub installed_kbs: Vec<String>,
}

/// A profile shared by its clones, with its updates pre-serialized as JSON
/// (check-in bodies are spliced together from these, which keeps large
/// fleets cheap to drive).
#[derive(Clone)]
pub struct SharedProfile {
    profile: Arc<Profile>,
    update_json: Arc<[Box<str>]>,
}

impl SharedProfile {
    pub fn new(profile: Profile) -> SharedProfile {
        let update_json = profile
            .updates
            .iter()
            .map(|u| {
                serde_json::to_string(u)
                    .expect("an Update always serializes: strings, enums, options and lists only")
                    .into_boxed_str()
            })
            .collect();
        SharedProfile {
            profile: Arc::new(profile),
            update_json,
        }
    }

    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }
}

impl fmt::Debug for SharedProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedProfile")
            .field("source", &self.profile.source)
            .field("updates", &self.profile.updates.len())
            .finish()
    }
}

/// A simulated device.
#[derive(Clone)]
pub struct Agent {
    index: usize,
    profile: Arc<Profile>,
    update_json: Arc<[Box<str>]>,
    machine_id: String,
    hostname: String,
    ip_addresses: Vec<String>,
    enrollment: Option<EnrollResponse>,
    /// Per profile update: hidden, installed or superseded by an install.
    gone: Vec<bool>,
    installed: Vec<u32>,
    failed: Vec<u32>,
    reboot_pending_since: Option<String>,
    pending_results: Vec<InstallResult>,
    pending_reboot_result: Option<RebootResult>,
    reboot_order: Option<RebootOrder>,
    reboot_history: Vec<RebootResult>,
    exclusions: Vec<Exclusion>,
    last_sent: Option<SentCheckin>,
    last_response: Option<CheckinResponse>,
    checkins_ok: u64,
    rng: StdRng,
}

/// Short form: a profile's update list can be large.
impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("index", &self.index)
            .field("hostname", &self.hostname)
            .field("machine_id", &self.machine_id)
            .field("device_id", &self.device_id())
            .field("profile", &self.profile.source)
            .field("available", &self.available_indices().count())
            .field("installed", &self.installed.len())
            .field("reboot_pending_since", &self.reboot_pending_since)
            .field("checkins_ok", &self.checkins_ok)
            .finish_non_exhaustive()
    }
}

/// Deterministic machine id (GUID-shaped) for `seed` and `index`.
pub fn machine_id(seed: u64, index: usize) -> String {
    let digest = Sha256::digest(format!("patchpilot-fleet-sim:{seed}:{index}"));
    let h = hex::encode(&digest[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Department prefixes for host names.
const DEPARTMENTS: [&str; 8] = ["FIN", "HR", "ENG", "OPS", "SALES", "IT", "LEGAL", "MKT"];

/// `FIN-DESKTOP-00042` style: department, the profile host name (up to 8
/// characters), the index (unique within a fleet).
pub fn clone_hostname(profile_host: &str, index: usize, rng: &mut StdRng) -> String {
    let dept = DEPARTMENTS[rng.gen_range(0..DEPARTMENTS.len())];
    let stem: String = profile_host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(8)
        .collect::<String>()
        .trim_matches('-')
        .to_ascii_uppercase();
    let stem = if stem.is_empty() {
        "HOST".to_owned()
    } else {
        stem
    };
    format!("{dept}-{stem}-{index:05}")
}

/// A private 10.x.y.z address (reported data only; nothing connects to it).
fn clone_ip(index: usize) -> String {
    let i = index as u32;
    format!(
        "10.{}.{}.{}",
        1 + (i >> 16) % 254,
        (i >> 8) & 0xff,
        1 + (i & 0xff) % 254
    )
}

impl Agent {
    /// Agent `index` of a fleet built with `seed`, cloned from `shared`.
    pub fn new(index: usize, shared: &SharedProfile, seed: u64, behaviour: &Behaviour) -> Agent {
        let profile = Arc::clone(&shared.profile);
        let mut rng =
            StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let hostname = clone_hostname(&profile.host_name, index, &mut rng);
        let mut gone = vec![false; profile.updates.len()];
        let hide = rng.gen_range(0..=behaviour.max_hidden_per_clone.min(gone.len()));
        for i in rand::seq::index::sample(&mut rng, gone.len(), hide) {
            gone[i] = true;
        }
        Agent {
            index,
            machine_id: machine_id(seed, index),
            hostname,
            ip_addresses: vec![clone_ip(index)],
            profile,
            update_json: Arc::clone(&shared.update_json),
            enrollment: None,
            gone,
            installed: Vec::new(),
            failed: Vec::new(),
            reboot_pending_since: None,
            pending_results: Vec::new(),
            pending_reboot_result: None,
            reboot_order: None,
            reboot_history: Vec::new(),
            exclusions: Vec::new(),
            last_sent: None,
            last_response: None,
            checkins_ok: 0,
            rng,
        }
    }

    /// Position in the fleet.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The profile this agent was cloned from.
    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    pub fn machine_id(&self) -> &str {
        &self.machine_id
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Replaces the host name (tests of duplicate and over-long names).
    pub fn set_hostname(&mut self, hostname: String) {
        self.hostname = hostname;
    }

    pub fn os_family(&self) -> OsFamily {
        self.profile.os_family
    }

    pub fn ip_addresses(&self) -> &[String] {
        &self.ip_addresses
    }

    /// The relay's device id, once enrolled.
    pub fn device_id(&self) -> Option<&str> {
        self.enrollment.as_ref().map(|e| e.device_id.as_str())
    }

    /// The agent token, once enrolled.
    pub fn agent_token(&self) -> Option<&str> {
        self.enrollment.as_ref().map(|e| e.agent_token.as_str())
    }

    /// Forgets the agent token (e.g. to test a rejected/missing token).
    pub fn set_agent_token(&mut self, token: Option<String>) {
        match (&mut self.enrollment, token) {
            (Some(e), Some(t)) => e.agent_token = t,
            (e, None) => *e = None,
            (None, Some(_)) => {}
        }
    }

    /// Updates currently available (what the next check-in reports, before
    /// any `max_reported_updates` cut), newest first.
    pub fn available_updates(&self) -> impl Iterator<Item = &Update> + '_ {
        self.available_indices()
            .map(move |i| &self.profile.updates[i])
    }

    fn available_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.gone
            .iter()
            .enumerate()
            .filter(|(_, g)| !**g)
            .map(|(i, _)| i)
    }

    /// Installed KBs: the profile's plus those installed by the simulation.
    pub fn installed_kbs(&self) -> Vec<&str> {
        let installed = self
            .installed
            .iter()
            .filter_map(|i| self.profile.updates[*i as usize].kb.as_deref());
        self.profile
            .installed_kbs
            .iter()
            .map(String::as_str)
            .chain(installed)
            .collect()
    }

    /// update_ids installed by the simulation, in order.
    pub fn installed_update_ids(&self) -> Vec<&str> {
        self.ids(&self.installed)
    }

    /// update_ids whose install failed (at least once), in order.
    pub fn failed_update_ids(&self) -> Vec<&str> {
        self.ids(&self.failed)
    }

    fn ids(&self, indices: &[u32]) -> Vec<&str> {
        indices
            .iter()
            .map(|i| self.profile.updates[*i as usize].update_id.as_str())
            .collect()
    }

    pub fn reboot_pending(&self) -> bool {
        self.reboot_pending_since.is_some()
    }

    pub fn reboot_pending_since(&self) -> Option<&str> {
        self.reboot_pending_since.as_deref()
    }

    /// Exclusions from the last answer.
    pub fn exclusions(&self) -> &[Exclusion] {
        &self.exclusions
    }

    /// The reboot order waiting to become due.
    pub fn reboot_order(&self) -> Option<&RebootOrder> {
        self.reboot_order.as_ref()
    }

    /// Every reboot performed, in order.
    pub fn reboot_history(&self) -> &[RebootResult] {
        &self.reboot_history
    }

    /// What the last successful check-in carried.
    pub fn last_sent(&self) -> Option<&SentCheckin> {
        self.last_sent.as_ref()
    }

    /// The updates the last successful check-in reported.
    pub fn last_sent_updates(&self) -> Vec<&Update> {
        let sent = self
            .last_sent
            .as_ref()
            .map_or(&[][..], |s| s.update_indices.as_slice());
        sent.iter()
            .map(|i| &self.profile.updates[*i as usize])
            .collect()
    }

    /// The last check-in answer.
    pub fn last_response(&self) -> Option<&CheckinResponse> {
        self.last_response.as_ref()
    }

    /// Successful check-ins so far.
    pub fn checkins_ok(&self) -> u64 {
        self.checkins_ok
    }

    /// A uniformly random delay fraction in `[0, 1)` from the agent's RNG.
    pub fn jitter_fraction(&mut self) -> f64 {
        self.rng.gen::<f64>()
    }

    /// Enrolls (or re-enrolls: same machine id, new token).
    pub async fn enroll(
        &mut self,
        client: &RelayClient,
        enrollment_token: &str,
        stats: &Stats,
    ) -> Result<(), CallError> {
        let req = EnrollRequest {
            enrollment_token,
            machine_id: &self.machine_id,
            hostname: &self.hostname,
            os_family: self.profile.os_family,
            os_name: &self.profile.os_name,
            os_version: &self.profile.os_version,
            agent_version: AGENT_VERSION,
        };
        match client.enroll(&req).await {
            Ok(resp) => {
                stats.count(Event::Enrolled);
                self.enrollment = Some(resp);
                Ok(())
            }
            Err(e) => {
                stats.error(Phase::Enroll, &e.label(), &e.to_string());
                Err(e)
            }
        }
    }

    /// The body of the next check-in and the profile update indices it reports.
    pub fn checkin_request(&self, behaviour: &Behaviour) -> (CheckinRequest<'_>, Vec<u32>) {
        let limit = behaviour.max_reported_updates.unwrap_or(usize::MAX);
        let indices: Vec<u32> = self
            .available_indices()
            .take(limit)
            .map(|i| i as u32)
            .collect();
        let req = CheckinRequest {
            hostname: &self.hostname,
            os_family: self.profile.os_family,
            os_name: &self.profile.os_name,
            os_version: &self.profile.os_version,
            agent_version: AGENT_VERSION,
            ip_addresses: &self.ip_addresses,
            reboot_pending: self.reboot_pending(),
            reboot_pending_since: self.reboot_pending_since.as_deref(),
            available_updates: indices
                .iter()
                .map(|i| &self.profile.updates[*i as usize])
                .collect(),
            results: &self.pending_results,
            reboot_result: self.pending_reboot_result.as_ref(),
            os_build: self.profile.os_build.as_deref(),
            installed_kbs: self.installed_kbs(),
        };
        (req, indices)
    }

    /// One check-in, then the agent acts on the answer.
    pub async fn checkin(
        &mut self,
        client: &RelayClient,
        behaviour: &Behaviour,
        stats: &Stats,
    ) -> Result<(), CallError> {
        self.perform_due_reboot(behaviour, stats);
        let result = match self.agent_token() {
            None => Err(CallError::NotEnrolled),
            Some(token) => {
                let (req, indices) = self.checkin_request(behaviour);
                let sent = self.snapshot(&req, indices);
                let body = || self.checkin_body(behaviour);
                client
                    .checkin_with(token, body)
                    .await
                    .map(|resp| (resp, sent))
            }
        };
        match result {
            Ok((resp, sent)) => {
                stats.count(Event::CheckinOk);
                self.after_checkin(resp, sent, behaviour, stats);
                Ok(())
            }
            Err(e) => {
                stats.error(Phase::Checkin, &e.label(), &e.to_string());
                Err(e)
            }
        }
    }

    /// The JSON body of the next check-in: [`Agent::checkin_request`]
    /// serialized, with the pre-serialized updates spliced in.
    pub fn checkin_body(&self, behaviour: &Behaviour) -> Vec<u8> {
        let (mut req, indices) = self.checkin_request(behaviour);
        req.available_updates = Vec::new();
        let head = serde_json::to_vec(&req)
            .expect("a CheckinRequest always serializes: strings, bools, options and lists only");
        let updates = indices
            .iter()
            .map(|i| self.update_json[*i as usize].as_bytes());
        splice_updates(&head, updates)
    }

    fn snapshot(&self, req: &CheckinRequest<'_>, update_indices: Vec<u32>) -> SentCheckin {
        SentCheckin {
            update_indices,
            results: req.results.to_vec(),
            reboot_result: req.reboot_result.cloned(),
            reboot_pending: req.reboot_pending,
            reboot_pending_since: req.reboot_pending_since.map(str::to_owned),
            installed_kbs: req.installed_kbs.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn after_checkin(
        &mut self,
        resp: CheckinResponse,
        sent: SentCheckin,
        b: &Behaviour,
        stats: &Stats,
    ) {
        self.checkins_ok += 1;
        self.pending_results.clear();
        self.pending_reboot_result = None;
        self.last_sent = Some(sent);
        self.exclusions = resp.exclusions.clone();
        self.reboot_order = resp.reboot.clone().filter(|o| {
            !self
                .reboot_history
                .iter()
                .any(|r| r.schedule_id == o.schedule_id)
        });
        self.last_response = Some(resp);
        if !self.perform_due_reboot(b, stats) {
            self.simulate_installs(b, stats);
        }
    }

    /// Reboots if the scheduled reboot is due (an unparsable `at` counts as
    /// due) and no earlier reboot result is still unsent. Returns whether it did.
    fn perform_due_reboot(&mut self, b: &Behaviour, stats: &Stats) -> bool {
        let due = self
            .reboot_order
            .as_ref()
            .is_some_and(|o| parse_rfc3339(&o.at).map_or(true, |at| at <= now_utc()));
        if !due || self.pending_reboot_result.is_some() {
            return false;
        }
        let Some(order) = self.reboot_order.take() else {
            return false;
        };
        let failed = self.rng.gen_bool(b.reboot_failure_rate.clamp(0.0, 1.0));
        let result = RebootResult {
            schedule_id: order.schedule_id,
            result: if failed {
                RebootOutcome::Failed
            } else {
                RebootOutcome::Completed
            },
            at: now_rfc3339(),
            error: failed.then(|| REBOOT_ERROR.to_owned()),
        };
        stats.count(if failed {
            Event::RebootFailed
        } else {
            Event::RebootCompleted
        });
        if !failed {
            self.reboot_pending_since = None;
        }
        self.reboot_history.push(result.clone());
        self.pending_reboot_result = Some(result);
        true
    }

    /// Whether an exclusion forbids installing `update`.
    pub fn is_excluded(&self, update: &Update) -> bool {
        self.exclusions.iter().any(|e| e.matches(update))
    }

    fn simulate_installs(&mut self, b: &Behaviour, stats: &Stats) {
        if b.max_installs == 0 || !self.rng.gen_bool(b.install_probability.clamp(0.0, 1.0)) {
            return;
        }
        let candidates: Vec<usize> = self
            .available_indices()
            .filter(|i| !self.is_excluded(&self.profile.updates[*i]))
            .collect();
        let n = self.rng.gen_range(1..=b.max_installs);
        let chosen: Vec<usize> = candidates
            .choose_multiple(&mut self.rng, n)
            .copied()
            .collect();
        for i in chosen {
            self.install_one(i, b, stats);
        }
    }

    fn install_one(&mut self, i: usize, b: &Behaviour, stats: &Stats) {
        let failed = self.rng.gen_bool(b.install_failure_rate.clamp(0.0, 1.0));
        let error_code = failed.then(|| {
            INSTALL_ERROR_CODES[self.rng.gen_range(0..INSTALL_ERROR_CODES.len())].to_owned()
        });
        self.pending_results.push(InstallResult {
            update_id: self.profile.updates[i].update_id.clone(),
            result: if failed {
                InstallOutcome::Failed
            } else {
                InstallOutcome::Installed
            },
            error_code,
            at: now_rfc3339(),
        });
        if failed {
            stats.count(Event::InstallFailed);
            self.failed.push(i as u32);
            return;
        }
        stats.count(Event::InstallOk);
        self.mark_installed(i);
        if self.reboot_pending_since.is_none() {
            self.reboot_pending_since = Some(now_rfc3339());
        }
    }

    fn mark_installed(&mut self, i: usize) {
        self.gone[i] = true;
        for &old in self
            .profile
            .supersedes
            .get(i)
            .map_or(&[][..], Vec::as_slice)
        {
            if let Some(g) = self.gone.get_mut(old as usize) {
                *g = true;
            }
        }
        self.installed.push(i as u32);
    }

    /// Applies a check-in answer as if it had just been received (for tests
    /// that drive an agent without a relay).
    pub fn apply_response(&mut self, resp: CheckinResponse, behaviour: &Behaviour, stats: &Stats) {
        let (req, indices) = self.checkin_request(behaviour);
        let sent = self.snapshot(&req, indices);
        self.after_checkin(resp, sent, behaviour, stats);
    }
}

const UPDATES_KEY: &[u8] = b"\"available_updates\":[";

/// Inserts `updates` (JSON objects) into the empty `available_updates` list
/// of `head`. The key cannot occur earlier: quotes inside JSON strings are
/// escaped.
fn splice_updates<'a>(head: &[u8], updates: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let at = head
        .windows(UPDATES_KEY.len())
        .position(|w| w == UPDATES_KEY)
        .map(|p| p + UPDATES_KEY.len())
        .expect("a serialized CheckinRequest always has the available_updates key");
    let mut body = Vec::with_capacity(head.len() * 2);
    body.extend_from_slice(&head[..at]);
    for (n, update) in updates.enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(update);
    }
    body.extend_from_slice(&head[at..]);
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CveRef, ExclusionKind, Severity};

    fn update(id: &str) -> Update {
        Update {
            update_id: id.to_owned(),
            kb: Some(id.to_owned()),
            package: None,
            title: format!("title {id}"),
            severity: Severity::Important,
            cves: vec![CveRef {
                id: "CVE-2024-0001".into(),
                cvss: None,
            }],
            released_at: Some("2024-01-09T00:00:00Z".into()),
        }
    }

    /// KB3 supersedes KB2 and KB1.
    fn profile() -> Profile {
        Profile {
            source: "test".into(),
            host_name: "DESKTOP-JNEKK9U".into(),
            os_family: OsFamily::Windows,
            os_name: "Windows 11 Enterprise".into(),
            os_version: "10.0.22631".into(),
            os_build: Some("22631".into()),
            arch: "x64".into(),
            product: None,
            installed_kbs: vec!["KB9".into()],
            installed_packages: vec![],
            updates: vec![update("KB3"), update("KB2"), update("KB1"), update("KB4")],
            supersedes: vec![vec![1, 2], vec![2], vec![], vec![]],
        }
    }

    fn shared() -> SharedProfile {
        SharedProfile::new(profile())
    }

    fn quiet() -> Behaviour {
        Behaviour {
            max_hidden_per_clone: 0,
            install_probability: 0.0,
            ..Behaviour::default()
        }
    }

    fn answer(exclusions: Vec<Exclusion>, reboot: Option<RebootOrder>) -> CheckinResponse {
        CheckinResponse {
            next_checkin_s: 300,
            exclusions,
            reboot,
        }
    }

    #[test]
    fn identities_are_deterministic_and_distinct() {
        let b = Behaviour::default();
        let a = Agent::new(42, &shared(), 7, &b);
        let again = Agent::new(42, &shared(), 7, &b);
        let other = Agent::new(43, &shared(), 7, &b);
        assert_eq!(a.machine_id(), again.machine_id());
        assert_eq!(a.hostname(), again.hostname());
        assert_ne!(a.machine_id(), other.machine_id());
        assert_ne!(
            a.machine_id(),
            Agent::new(42, &shared(), 8, &b).machine_id()
        );
        assert!(a.hostname().ends_with("-DESKTOP-00042"), "{}", a.hostname());
        assert_eq!(a.machine_id().len(), 36);
        assert_eq!(a.ip_addresses(), ["10.1.0.43"]);
    }

    #[test]
    fn installing_removes_superseded_updates() {
        let stats = Stats::default();
        let mut a = Agent::new(0, &shared(), 1, &quiet());
        a.install_one(
            0,
            &Behaviour {
                install_failure_rate: 0.0,
                ..quiet()
            },
            &stats,
        );
        let left: Vec<&str> = a
            .available_updates()
            .map(|u| u.update_id.as_str())
            .collect();
        assert_eq!(left, ["KB4"]);
        assert_eq!(a.installed_kbs(), ["KB9", "KB3"]);
        assert!(a.reboot_pending());
        assert_eq!(a.pending_results[0].result, InstallOutcome::Installed);
    }

    #[test]
    fn failed_install_keeps_the_update() {
        let stats = Stats::default();
        let mut a = Agent::new(0, &shared(), 1, &quiet());
        a.install_one(
            3,
            &Behaviour {
                install_failure_rate: 1.0,
                ..quiet()
            },
            &stats,
        );
        assert_eq!(a.available_updates().count(), 4);
        let r = &a.pending_results[0];
        assert_eq!(r.result, InstallOutcome::Failed);
        assert!(r
            .error_code
            .as_deref()
            .is_some_and(|c| INSTALL_ERROR_CODES.contains(&c)));
        assert!(!a.reboot_pending());
    }

    #[test]
    fn never_installs_excluded_updates() {
        let stats = Stats::default();
        let b = Behaviour {
            install_probability: 1.0,
            max_installs: 4,
            install_failure_rate: 0.0,
            ..quiet()
        };
        let excluded = ["KB3", "KB2", "KB1"].map(|v| Exclusion {
            kind: ExclusionKind::Kb,
            value: v.to_owned(),
        });
        for seed in 0..20 {
            let mut a = Agent::new(0, &shared(), seed, &quiet());
            a.apply_response(answer(excluded.to_vec(), None), &b, &stats);
            assert_eq!(a.installed_update_ids(), ["KB4"], "seed {seed}");
        }
    }

    #[test]
    fn due_reboot_is_reported_next_and_clears_pending() {
        let stats = Stats::default();
        let b = Behaviour {
            reboot_failure_rate: 0.0,
            ..quiet()
        };
        let mut a = Agent::new(0, &shared(), 1, &b);
        a.reboot_pending_since = Some("2024-01-09T00:00:00Z".into());
        let order = RebootOrder {
            schedule_id: "rs_1".into(),
            at: "2024-01-09T00:00:00Z".into(),
            message: None,
            force: false,
        };
        a.apply_response(answer(vec![], Some(order.clone())), &b, &stats);
        assert!(!a.reboot_pending());
        let (req, _) = a.checkin_request(&b);
        let rr = req.reboot_result.expect("reboot result is pending");
        assert_eq!(
            (rr.schedule_id.as_str(), rr.result),
            ("rs_1", RebootOutcome::Completed)
        );
        assert!(!req.reboot_pending && req.reboot_pending_since.is_none());
        // The relay repeating the same schedule does not cause a second reboot.
        a.apply_response(answer(vec![], Some(order)), &b, &stats);
        a.apply_response(answer(vec![], None), &b, &stats);
        assert_eq!(a.reboot_history().len(), 1);
    }

    #[test]
    fn future_reboot_waits() {
        let stats = Stats::default();
        let b = quiet();
        let mut a = Agent::new(0, &shared(), 1, &b);
        let order = RebootOrder {
            schedule_id: "rs_2".into(),
            at: "2999-01-01T00:00:00Z".into(),
            message: Some("later".into()),
            force: true,
        };
        a.apply_response(answer(vec![], Some(order)), &b, &stats);
        assert!(a.reboot_history().is_empty());
        assert!(a.reboot_order().is_some());
    }

    #[test]
    fn request_respects_report_limit_and_hidden_updates() {
        let b = Behaviour {
            max_reported_updates: Some(2),
            ..quiet()
        };
        let a = Agent::new(0, &shared(), 1, &b);
        let (req, idx) = a.checkin_request(&b);
        assert_eq!(idx, [0, 1]);
        assert_eq!(req.available_updates.len(), 2);
        assert_eq!(req.installed_kbs, ["KB9"]);
        let hiding = Behaviour {
            max_hidden_per_clone: 4,
            ..quiet()
        };
        let hidden: usize = (0..50)
            .map(|i| {
                4 - Agent::new(i, &shared(), 3, &hiding)
                    .available_updates()
                    .count()
            })
            .sum();
        assert!(hidden > 0);
    }

    #[test]
    fn spliced_body_equals_serialized_request() -> anyhow::Result<()> {
        let stats = Stats::default();
        let b = Behaviour {
            install_failure_rate: 0.5,
            ..quiet()
        };
        let mut a = Agent::new(0, &shared(), 1, &b);
        a.install_one(1, &b, &stats);
        a.install_one(3, &b, &stats);
        let (req, _) = a.checkin_request(&b);
        let spliced: serde_json::Value = serde_json::from_slice(&a.checkin_body(&b))?;
        assert_eq!(spliced, serde_json::to_value(&req)?);
        let none = Behaviour {
            max_reported_updates: Some(0),
            ..b
        };
        let (req, _) = a.checkin_request(&none);
        let spliced: serde_json::Value = serde_json::from_slice(&a.checkin_body(&none))?;
        assert_eq!(spliced, serde_json::to_value(&req)?);
        Ok(())
    }

    #[test]
    fn request_json_shape() -> anyhow::Result<()> {
        let b = quiet();
        let a = Agent::new(0, &shared(), 1, &b);
        let (req, _) = a.checkin_request(&b);
        let v = serde_json::to_value(&req)?;
        assert_eq!(v["os_family"], "windows");
        assert_eq!(v["os_build"], "22631");
        assert_eq!(v["reboot_result"], serde_json::Value::Null);
        assert_eq!(v["available_updates"][0]["severity"], "important");
        assert_eq!(
            v["available_updates"][0]["cves"][0]["cvss"],
            serde_json::Value::Null
        );
        assert_eq!(v["ip_addresses"][0], "10.1.0.1");
        Ok(())
    }
}
