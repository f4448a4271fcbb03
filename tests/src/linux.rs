//! The Linux profile: this machine's real dpkg/apt state.
//!
//! Installed packages come from `dpkg-query`; available updates from
//! `apt-get -s upgrade` (a simulation: nothing is changed, no network), and
//! only when apt package lists are present. Without lists the profile simply
//! has no updates, which is this machine's real state.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::protocol::{Severity, Update, MAX_UPDATE_ID_LEN};

/// Where apt keeps its package lists.
pub const APT_LISTS_DIR: &str = "/var/lib/apt/lists";

/// dpkg's database of installed packages.
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";

/// An installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
}

/// One `Inst` line of `apt-get -s upgrade`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptUpgrade {
    pub package: String,
    pub old_version: Option<String>,
    pub new_version: String,
    /// The release(s) it comes from, e.g. `Debian-Security:12/oldstable-security`.
    pub origin: String,
}

impl AptUpgrade {
    /// Whether the new version comes from a security suite.
    pub fn is_security(&self) -> bool {
        self.origin.contains("-security")
    }

    /// The update as reported by an agent.
    pub fn to_update(&self) -> Update {
        let mut update_id = format!("{}:{}", self.package, self.new_version);
        truncate_at_char_boundary(&mut update_id, MAX_UPDATE_ID_LEN);
        let from = self.old_version.as_deref().unwrap_or("(none)");
        Update {
            update_id,
            kb: None,
            package: Some(self.package.clone()),
            title: format!(
                "{} {from} -> {} ({})",
                self.package, self.new_version, self.origin
            ),
            severity: if self.is_security() {
                Severity::Important
            } else {
                Severity::Unknown
            },
            cves: Vec::new(),
            released_at: None,
        }
    }
}

fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
    }
}

/// Whether `dpkg-query` can be run here.
pub fn has_dpkg() -> bool {
    Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installed packages (`dpkg-query -W`).
pub fn installed_packages() -> anyhow::Result<Vec<InstalledPackage>> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Package}\t${Version}\n"]))?;
    Ok(parse_dpkg_query(&out))
}

/// Parses `name<TAB>version` lines; packages without a version (removed,
/// config files left) are skipped.
pub fn parse_dpkg_query(text: &str) -> Vec<InstalledPackage> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(name, version)| !name.is_empty() && !version.trim().is_empty())
        .map(|(name, version)| InstalledPackage {
            name: name.to_owned(),
            version: version.trim().to_owned(),
        })
        .collect()
}

/// apt package list files (`*Packages*`) in `dir`, sorted.
pub fn apt_package_lists(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut lists: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("Packages"))
        })
        .collect();
    lists.sort();
    lists
}

/// Available upgrades from `apt-get -s upgrade`; empty when there are no
/// package lists.
pub fn apt_upgrades() -> anyhow::Result<Vec<AptUpgrade>> {
    if apt_package_lists(Path::new(APT_LISTS_DIR)).is_empty() {
        return Ok(Vec::new());
    }
    let out = run(Command::new("apt-get")
        .args(["-s", "-o", "Debug::NoLocking=1", "upgrade"])
        .env("LC_ALL", "C"))?;
    Ok(parse_apt_simulation(&out))
}

/// Parses the `Inst pkg [old] (new origin [arch])` lines of an apt simulation.
pub fn parse_apt_simulation(text: &str) -> Vec<AptUpgrade> {
    text.lines().filter_map(parse_inst_line).collect()
}

fn parse_inst_line(line: &str) -> Option<AptUpgrade> {
    let rest = line.strip_prefix("Inst ")?;
    let (package, rest) = rest.split_once(' ')?;
    let (old_version, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let (old, r) = r.split_once(']')?;
            (Some(old.to_owned()), r.trim_start())
        }
        None => (None, rest),
    };
    let inner = rest.strip_prefix('(')?;
    let inner = &inner[..inner.find(')')?];
    let (new_version, origin) = inner.split_once(' ').unwrap_or((inner, ""));
    let origin = origin.rsplit_once(" [").map_or(origin, |(o, _)| o);
    Some(AptUpgrade {
        package: package.to_owned(),
        old_version,
        new_version: new_version.to_owned(),
        origin: origin.trim().to_owned(),
    })
}

/// `/etc/os-release` fields: (PRETTY_NAME, VERSION_ID).
pub fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    parse_os_release(&text)
}

/// Parses `/etc/os-release`; falls back to `Linux` / `unknown`.
pub fn parse_os_release(text: &str) -> (String, String) {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
    };
    (
        field("PRETTY_NAME").unwrap_or_else(|| "Linux".to_owned()),
        field("VERSION_ID").unwrap_or_else(|| "unknown".to_owned()),
    )
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "linux-host".to_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{cmd:?} failed ({}): {}", out.status, err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIM: &str = "Reading package lists...\n\
        Inst base-files [12.4+deb12u11] (12.4+deb12u14 Debian:12.14/oldstable [amd64])\n\
        Inst libperl5.36 [5.36.0-7+deb12u2] (5.36.0-7+deb12u3 Debian:12.14/oldstable [amd64]) [perl:amd64 ]\n\
        Inst libgnutls30 [3.7.9-2+deb12u6] (3.7.9-2+deb12u7 Debian-Security:12/oldstable-security [amd64]) []\n\
        Inst newpkg (1.0 Debian:12.14/oldstable, Debian-Security:12/oldstable-security [all])\n\
        Conf base-files (12.4+deb12u14 Debian:12.14/oldstable [amd64])\n";

    #[test]
    fn parses_inst_lines() {
        let ups = parse_apt_simulation(SIM);
        assert_eq!(ups.len(), 4);
        assert_eq!(ups[0].package, "base-files");
        assert_eq!(ups[0].old_version.as_deref(), Some("12.4+deb12u11"));
        assert_eq!(ups[0].new_version, "12.4+deb12u14");
        assert_eq!(ups[0].origin, "Debian:12.14/oldstable");
        assert!(!ups[1].is_security());
        assert!(ups[2].is_security());
        assert_eq!(ups[3].old_version, None);
        assert!(ups[3].is_security());
    }

    #[test]
    fn apt_upgrade_to_update() {
        let ups = parse_apt_simulation(SIM);
        let u = ups[2].to_update();
        assert_eq!(u.update_id, "libgnutls30:3.7.9-2+deb12u7");
        assert_eq!(u.package.as_deref(), Some("libgnutls30"));
        assert_eq!(u.kb, None);
        assert_eq!(u.severity, Severity::Important);
        assert_eq!(ups[0].to_update().severity, Severity::Unknown);
        let long = AptUpgrade {
            package: "p".repeat(300),
            ..ups[0].clone()
        };
        assert_eq!(long.to_update().update_id.len(), MAX_UPDATE_ID_LEN);
    }

    #[test]
    fn parses_dpkg_and_os_release() {
        let pkgs = parse_dpkg_query("bash\t5.2.15-2+b8\ngone\t\nopenssl\t3.0.15-1~deb12u1\n");
        assert_eq!(pkgs.len(), 2);
        assert_eq!(pkgs[1].name, "openssl");
        let (name, version) =
            parse_os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\n");
        assert_eq!(name, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(version, "12");
        assert_eq!(
            parse_os_release(""),
            ("Linux".to_owned(), "unknown".to_owned())
        );
    }
}
