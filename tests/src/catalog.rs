//! The simulator's view of the Microsoft update catalog (WES-NG
//! `definitions.zip`): relay-core's parser, `systeminfo` reader, product
//! mapping and assessment, turned into agent-protocol updates, so that the
//! simulated Windows agents report what the relay itself would work out.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context as _;
pub use relay_core::catalog::systeminfo::{decode_text, parse_systeminfo, SystemInfo};
pub use relay_core::catalog::{Assessment, AssessmentQuery, Catalog};

use crate::protocol::{CveRef, Severity, Update};

/// Reads and parses a `definitions.zip`.
///
/// # Errors
/// The file cannot be read or the catalog is malformed.
pub fn read_catalog(path: &Path) -> anyhow::Result<Catalog> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    relay_core::catalog::parse_definitions(&bytes)
        .with_context(|| format!("parse {}", path.display()))
}

/// Reads a `systeminfo` file (any encoding Windows writes).
///
/// # Errors
/// The file cannot be read or lacks a field the assessment needs.
pub fn read_systeminfo(path: &Path) -> anyhow::Result<SystemInfo> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    parse_systeminfo(&decode_text(&bytes)).with_context(|| format!("parse {}", path.display()))
}

/// The offline assessment of a machine (no KEV flags).
///
/// # Errors
/// The catalog has no product for the machine's build.
pub fn assess(catalog: &Catalog, info: &SystemInfo) -> anyhow::Result<Assessment> {
    let query = AssessmentQuery {
        build: info.build,
        arch: info.arch,
        server: info.server,
        installed_kbs: info.hotfixes.clone(),
    };
    catalog
        .assess(&query, &HashSet::new())
        .with_context(|| format!("{} build {}", info.os_name, info.build))
}

/// The missing updates of an assessment as an agent reports them.
pub fn to_updates(assessment: &Assessment) -> Vec<Update> {
    assessment
        .missing
        .iter()
        .map(|m| Update {
            update_id: m.kb.clone(),
            kb: Some(m.kb.clone()),
            package: None,
            title: m.title.clone(),
            severity: Severity::from_catalog(m.severity.as_str()),
            cves: m
                .cves
                .iter()
                .map(|id| CveRef {
                    id: id.clone(),
                    cvss: None,
                })
                .collect(),
            released_at: Some(m.released_at.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::catalog::Arch;

    fn systeminfo_dir() -> std::path::PathBuf {
        crate::profiles::default_data_dir().join("windows-systeminfo")
    }

    /// (file, host name, build, server, hotfix count, first KB)
    const EXPECTED: [(&str, &str, u32, bool, usize, &str); 11] = [
        (
            "10_1809_x64_education_en-us_systeminfo.txt",
            "LAPTOP",
            17763,
            false,
            6,
            "KB4465477",
        ),
        (
            "10_21H2_x64_pro_systeminfo.txt",
            "DESKTOP",
            19044,
            false,
            7,
            "KB5012117",
        ),
        (
            "10_22H2_x64_enterprise_en-us_systeminfo.txt",
            "DESKTOP-92B51CV",
            19045,
            false,
            1,
            "KB5022502",
        ),
        (
            "11_21H2_x64_enterprise_systeminfo.txt",
            "WINXI21H2",
            22000,
            false,
            4,
            "KB5004342",
        ),
        (
            "11_22H2_x64_home-single-language_systeminfo.txt",
            "test",
            22621,
            false,
            1,
            "KB5008215",
        ),
        (
            "11_23H2_x64_enterprise_systeminfo.txt",
            "DESKTOP-JNEKK9U",
            22631,
            false,
            4,
            "KB5029921",
        ),
        (
            "7_sp1_x64_enterprise_en-us_A_systeminfo.txt",
            "WIN7SP1X64",
            7601,
            false,
            219,
            "KB2849697",
        ),
        (
            "8.1_u1_x64_enterprise_en-us_systeminfo.txt",
            "WIN81U1X64",
            9600,
            false,
            6,
            "KB2919355",
        ),
        (
            "srv_2016_1607_datacenter_en-us_systeminfo.txt",
            "MYSERVER",
            14393,
            true,
            5,
            "KB4049065",
        ),
        (
            "srv_2019_rtm_datacenter_en-us_systeminfo.txt",
            "WIN-O863JARO7CM",
            17763,
            true,
            5,
            "KB4462930",
        ),
        (
            "srv_2022_systeminfo.txt",
            "WIN-RIBN7SM07BK",
            20348,
            true,
            3,
            "KB5004330",
        ),
    ];

    #[test]
    fn every_shared_systeminfo_file_parses() -> anyhow::Result<()> {
        let mut names: Vec<String> = std::fs::read_dir(systeminfo_dir())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        assert_eq!(names.len(), EXPECTED.len(), "{names:?}");
        for (file, host, build, server, kbs, first_kb) in EXPECTED {
            let info = read_systeminfo(&systeminfo_dir().join(file))?;
            assert_eq!(info.host_name.as_deref(), Some(host), "{file}");
            assert_eq!(info.build, build, "{file}");
            assert_eq!(info.server, server, "{file}");
            assert_eq!(info.hotfixes.len(), kbs, "{file}");
            assert_eq!(info.hotfixes[0], first_kb, "{file}");
            assert_eq!(info.arch, Arch::X64, "{file}");
            assert_eq!(info.language, Some("en"), "{file}");
            assert!(info.install_date.is_some(), "{file}");
            assert!(info.os_name.starts_with("Microsoft Windows"), "{file}");
        }
        Ok(())
    }
}
