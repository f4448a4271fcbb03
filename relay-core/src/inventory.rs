//! What agents report about a machine: OS, updates, install results. Shared
//! by the agent protocol (which validates it) and the store (which keeps it).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    Windows,
    Macos,
    Linux,
}

impl OsFamily {
    pub const ALL: [OsFamily; 3] = [OsFamily::Windows, OsFamily::Macos, OsFamily::Linux];

    pub fn as_str(self) -> &'static str {
        match self {
            OsFamily::Windows => "windows",
            OsFamily::Macos => "macos",
            OsFamily::Linux => "linux",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == text)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Update severity, ordered from least to most severe.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    Low,
    Moderate,
    Important,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Unknown,
        Severity::Low,
        Severity::Moderate,
        Severity::Important,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Moderate => "moderate",
            Severity::Important => "important",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CveRef {
    pub id: String,
    pub cvss: Option<f32>,
}

/// One applicable update as the agent reported it, after validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub update_id: String,
    pub kb: Option<String>,
    pub package: Option<String>,
    pub title: String,
    pub severity: Severity,
    pub cves: Vec<CveRef>,
    pub released_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstallOutcome {
    Installed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstallResult {
    pub update_id: String,
    pub result: InstallOutcome,
    pub error_code: Option<String>,
    pub at: Timestamp,
}

/// `KB5034441`, `kb5034441`, `5034441` and `KB 5034441` are one KB.
pub fn normalize_kb(text: &str) -> Option<String> {
    let trimmed = text.trim();
    let digits = match trimmed.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("kb") => trimmed[2..].trim_start(),
        _ => trimmed,
    };
    let valid =
        !digits.is_empty() && digits.len() <= 10 && digits.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| format!("KB{digits}"))
}

/// `CVE-YYYY-NNNN…` (four or more digits), returned upper case.
pub fn normalize_cve(text: &str) -> Option<String> {
    let upper = text.trim().to_ascii_uppercase();
    let rest = upper.strip_prefix("CVE-")?;
    let (year, number) = rest.split_once('-')?;
    let year_ok = year.len() == 4 && year.bytes().all(|b| b.is_ascii_digit());
    let number_ok = (4..=19).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit());
    (year_ok && number_ok).then_some(upper)
}

/// A package name as package managers write it.
pub fn is_package_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphanumeric()
                && rest.len() <= 127
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'_' | b'-'))
        }
        None => false,
    }
}

/// Unicode default case folding, for case-insensitive matching.
pub fn fold_case(text: &str) -> String {
    caseless::default_case_fold_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kb_spellings_normalise_to_one_form() {
        for spelling in [
            "KB5034441",
            "kb5034441",
            "5034441",
            "KB 5034441",
            "  Kb5034441 ",
        ] {
            assert_eq!(
                normalize_kb(spelling).as_deref(),
                Some("KB5034441"),
                "{spelling}"
            );
        }
        for bad in [
            "",
            "KB",
            "KB50344x1",
            "KB-5034441",
            "５０３４４４１",
            "12345678901",
        ] {
            assert_eq!(normalize_kb(bad), None, "{bad}");
        }
    }

    #[test]
    fn cve_ids_are_validated_and_upper_cased() {
        assert_eq!(
            normalize_cve("cve-2024-21412").as_deref(),
            Some("CVE-2024-21412")
        );
        assert_eq!(
            normalize_cve("CVE-2021-123456").as_deref(),
            Some("CVE-2021-123456")
        );
        assert_eq!(normalize_cve("CVE-2021-123"), None);
        assert_eq!(normalize_cve("CVE-21-1234"), None);
        assert_eq!(normalize_cve("CVE-2021-12a4"), None);
    }

    #[test]
    fn package_names_follow_the_package_manager_rules() {
        assert!(is_package_name("openssl"));
        assert!(is_package_name("libstdc++6"));
        assert!(is_package_name("python3.11-minimal"));
        assert!(!is_package_name("-rf"));
        assert!(!is_package_name("a b"));
        assert!(!is_package_name(&"a".repeat(129)));
        assert!(!is_package_name("pаckage")); // Cyrillic a
    }

    #[test]
    fn case_folding_handles_more_than_ascii() {
        assert_eq!(fold_case("STRASSE"), fold_case("straße"));
        assert_eq!(fold_case("ΣΊΣΥΦΟΣ"), fold_case("σίσυφος"));
    }
}
