//! Wire types of the relay's agent protocol (`/agent/v1/...`).
//!
//! Times are RFC 3339 UTC strings with `Z` and whole seconds (see
//! [`crate::timefmt`]); they are kept as strings so that what a test compares
//! is exactly what went over the wire.

use serde::{Deserialize, Serialize};

/// The agent version every simulated agent reports.
pub const AGENT_VERSION: &str = "1.4.0";

/// Longest `update_id` the relay accepts.
pub const MAX_UPDATE_ID_LEN: usize = 200;

/// Operating-system family of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    Windows,
    Linux,
    Macos,
}

impl OsFamily {
    /// The wire spelling (`windows`, `linux`, `macos`).
    pub fn as_str(self) -> &'static str {
        match self {
            OsFamily::Windows => "windows",
            OsFamily::Linux => "linux",
            OsFamily::Macos => "macos",
        }
    }
}

/// Update severity; ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    Low,
    Moderate,
    Important,
    Critical,
}

impl Severity {
    /// Normalises a catalog severity: Critical/Important/Moderate/Low (any
    /// case, surrounding blanks ignored); anything else (empty, `None`,
    /// `System.Object[]`, ...) is `Unknown`.
    pub fn from_catalog(raw: &str) -> Severity {
        let s = raw.trim();
        [
            ("critical", Severity::Critical),
            ("important", Severity::Important),
            ("moderate", Severity::Moderate),
            ("low", Severity::Low),
        ]
        .into_iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
        .map_or(Severity::Unknown, |(_, sev)| sev)
    }
}

/// A CVE fixed by an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CveRef {
    pub id: String,
    pub cvss: Option<f64>,
}

/// An available (missing) update as reported in a check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Stable id: `KB5034441` (Windows) or `openssl:3.0.15-1~deb12u1` (Linux).
    pub update_id: String,
    pub kb: Option<String>,
    pub package: Option<String>,
    pub title: String,
    pub severity: Severity,
    pub cves: Vec<CveRef>,
    /// Release date; `None` (JSON `null`) where the source has none (apt).
    pub released_at: Option<String>,
}

/// `POST /agent/v1/enroll` body.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollRequest<'a> {
    pub enrollment_token: &'a str,
    pub machine_id: &'a str,
    pub hostname: &'a str,
    pub os_family: OsFamily,
    pub os_name: &'a str,
    pub os_version: &'a str,
    pub agent_version: &'a str,
}

/// `POST /agent/v1/enroll` answer (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: String,
    pub agent_token: String,
}

/// Outcome of an update installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallOutcome {
    Installed,
    Failed,
}

/// An install result reported in a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallResult {
    pub update_id: String,
    pub result: InstallOutcome,
    pub error_code: Option<String>,
    pub at: String,
}

/// Outcome of a scheduled reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootOutcome {
    Completed,
    Failed,
}

/// A reboot result reported in a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootResult {
    pub schedule_id: String,
    pub result: RebootOutcome,
    pub at: String,
    pub error: Option<String>,
}

/// `POST /agent/v1/checkin` body. Borrows the (shared) update lists.
#[derive(Debug, Clone, Serialize)]
pub struct CheckinRequest<'a> {
    pub hostname: &'a str,
    pub os_family: OsFamily,
    pub os_name: &'a str,
    pub os_version: &'a str,
    pub agent_version: &'a str,
    pub ip_addresses: &'a [String],
    pub reboot_pending: bool,
    pub reboot_pending_since: Option<&'a str>,
    pub available_updates: Vec<&'a Update>,
    pub results: &'a [InstallResult],
    pub reboot_result: Option<&'a RebootResult>,
    pub os_build: Option<&'a str>,
    pub installed_kbs: Vec<&'a str>,
}

/// Kind of an exclusion returned by the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExclusionKind {
    Kb,
    Package,
}

/// An update the agent must not install.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Exclusion {
    pub kind: ExclusionKind,
    pub value: String,
}

impl Exclusion {
    /// Whether this exclusion forbids installing `update`.
    pub fn matches(&self, update: &Update) -> bool {
        let target = match self.kind {
            ExclusionKind::Kb => update.kb.as_deref(),
            ExclusionKind::Package => update.package.as_deref(),
        };
        target.is_some_and(|t| t.eq_ignore_ascii_case(self.value.trim()))
    }
}

/// A reboot the relay schedules for the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebootOrder {
    pub schedule_id: String,
    pub at: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// `POST /agent/v1/checkin` answer (200).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckinResponse {
    pub next_checkin_s: u64,
    #[serde(default)]
    pub exclusions: Vec<Exclusion>,
    #[serde(default)]
    pub reboot: Option<RebootOrder>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_severity() {
        assert_eq!(Severity::from_catalog("Critical"), Severity::Critical);
        assert_eq!(Severity::from_catalog(" important "), Severity::Important);
        assert_eq!(Severity::from_catalog("Moderate"), Severity::Moderate);
        assert_eq!(Severity::from_catalog("Low"), Severity::Low);
        for junk in ["", "None", "System.Object[]", "High"] {
            assert_eq!(Severity::from_catalog(junk), Severity::Unknown, "{junk}");
        }
        assert!(Severity::Critical > Severity::Important);
        assert!(Severity::Low > Severity::Unknown);
    }

    #[test]
    fn exclusion_matching() {
        let update = Update {
            update_id: "KB5034441".into(),
            kb: Some("KB5034441".into()),
            package: None,
            title: String::new(),
            severity: Severity::Unknown,
            cves: vec![],
            released_at: None,
        };
        let kb = |v: &str| Exclusion {
            kind: ExclusionKind::Kb,
            value: v.into(),
        };
        assert!(kb("kb5034441").matches(&update));
        assert!(!kb("KB1").matches(&update));
        let pkg = Exclusion {
            kind: ExclusionKind::Package,
            value: "KB5034441".into(),
        };
        assert!(!pkg.matches(&update));
    }

    #[test]
    fn checkin_response_tolerates_missing_optional_fields() -> anyhow::Result<()> {
        let r: CheckinResponse = serde_json::from_str(r#"{"next_checkin_s": 300}"#)?;
        assert!(r.exclusions.is_empty() && r.reboot.is_none());
        let r: CheckinResponse = serde_json::from_str(
            r#"{"next_checkin_s":5,"exclusions":[{"kind":"package","value":"openssl"}],
                "reboot":{"schedule_id":"rs_1","at":"2024-01-09T00:00:00Z","message":"m","force":true}}"#,
        )?;
        assert_eq!(r.exclusions[0].kind, ExclusionKind::Package);
        assert!(r.reboot.is_some_and(|o| o.force));
        Ok(())
    }
}
