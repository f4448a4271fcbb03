//! Parser for the English output of Windows' `systeminfo` command.

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// Processor architecture from `System Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    X64,
    X86,
    Arm64,
}

impl Arch {
    /// Parses `x64-based PC`, `X86-based PC`, `ARM64-based PC`.
    pub fn from_system_type(s: &str) -> Option<Arch> {
        let s = s.trim().to_ascii_lowercase();
        if s.starts_with("x64") || s.starts_with("amd64") {
            Some(Arch::X64)
        } else if s.starts_with("x86") {
            Some(Arch::X86)
        } else if s.starts_with("arm64") {
            Some(Arch::Arm64)
        } else {
            None
        }
    }

    /// Short name: `x64`, `x86`, `ARM64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X64 => "x64",
            Arch::X86 => "x86",
            Arch::Arm64 => "ARM64",
        }
    }
}

/// The fields of a `systeminfo` dump the simulator uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub host_name: String,
    /// As printed, e.g. `Microsoft Windows 11 Enterprise`.
    pub os_name: String,
    /// Dotted version, e.g. `10.0.22631`.
    pub os_version: String,
    /// Build number, e.g. `22631`.
    pub build: u32,
    pub arch: Arch,
    /// Installed hotfixes as `KB1234567`, in file order, without duplicates.
    pub hotfixes: Vec<String>,
}

/// Raw `Key: value` fields plus the hotfix list.
#[derive(Default)]
struct RawFields {
    host_name: Option<String>,
    os_name: Option<String>,
    os_version: Option<String>,
    system_type: Option<String>,
    hotfixes: Vec<String>,
}

/// Parses `systeminfo` output (LF, CRLF or mixed line endings).
pub fn parse_systeminfo(text: &str) -> anyhow::Result<SystemInfo> {
    let raw = collect_fields(text);
    let os_version_line = raw.os_version.context("no `OS Version:` line")?;
    let (os_version, build) = parse_os_version(&os_version_line)?;
    let system_type = raw.system_type.context("no `System Type:` line")?;
    let arch = Arch::from_system_type(&system_type)
        .with_context(|| format!("unknown System Type {system_type:?}"))?;
    Ok(SystemInfo {
        host_name: raw.host_name.context("no `Host Name:` line")?,
        os_name: raw.os_name.context("no `OS Name:` line")?,
        os_version,
        build,
        arch,
        hotfixes: raw.hotfixes,
    })
}

fn collect_fields(text: &str) -> RawFields {
    let mut raw = RawFields::default();
    let mut in_hotfixes = false;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with(|c: char| c.is_whitespace()) {
            if in_hotfixes {
                push_hotfix(&mut raw.hotfixes, line);
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            in_hotfixes = false;
            continue;
        };
        let value = value.trim().to_owned();
        in_hotfixes = key == "Hotfix(s)";
        match key {
            "Host Name" => raw.host_name = Some(value),
            "OS Name" => raw.os_name = Some(value),
            "OS Version" => raw.os_version = Some(value),
            "System Type" => raw.system_type = Some(value),
            _ => {}
        }
    }
    raw
}

/// Adds the KB of a `[01]: KB5031354` line; other entries (`File 1`) are skipped.
fn push_hotfix(hotfixes: &mut Vec<String>, line: &str) {
    let Some((_, entry)) = line.split_once("]:") else {
        return;
    };
    let entry = entry.trim();
    let digits = entry
        .get(..2)
        .filter(|p| p.eq_ignore_ascii_case("kb"))
        .map(|_| &entry[2..]);
    if let Some(d) = digits.filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) {
        let kb = format!("KB{d}");
        if !hotfixes.contains(&kb) {
            hotfixes.push(kb);
        }
    }
}

/// `10.0.22631 N/A Build 22631` -> (`10.0.22631`, 22631).
fn parse_os_version(line: &str) -> anyhow::Result<(String, u32)> {
    let version = line.split_whitespace().next().context("empty OS Version")?;
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
        bail!("OS Version {line:?} does not start with a dotted version");
    }
    let build = parts[2].parse::<u32>().context("build number")?;
    Ok((version.to_owned(), build))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn data_dir() -> PathBuf {
        crate::profiles::default_data_dir().join("windows-systeminfo")
    }

    fn parse_file(name: &str) -> anyhow::Result<SystemInfo> {
        let bytes = std::fs::read(data_dir().join(name)).with_context(|| name.to_owned())?;
        parse_systeminfo(&String::from_utf8_lossy(&bytes))
    }

    /// (file, host name, build, hotfix count, first KB)
    const EXPECTED: [(&str, &str, u32, usize, &str); 11] = [
        (
            "10_1809_x64_education_en-us_systeminfo.txt",
            "LAPTOP",
            17763,
            6,
            "KB4465477",
        ),
        (
            "10_21H2_x64_pro_systeminfo.txt",
            "DESKTOP",
            19044,
            7,
            "KB5012117",
        ),
        (
            "10_22H2_x64_enterprise_en-us_systeminfo.txt",
            "DESKTOP-92B51CV",
            19045,
            1,
            "KB5022502",
        ),
        (
            "11_21H2_x64_enterprise_systeminfo.txt",
            "WINXI21H2",
            22000,
            4,
            "KB5004342",
        ),
        (
            "11_22H2_x64_home-single-language_systeminfo.txt",
            "test",
            22621,
            1,
            "KB5008215",
        ),
        (
            "11_23H2_x64_enterprise_systeminfo.txt",
            "DESKTOP-JNEKK9U",
            22631,
            4,
            "KB5029921",
        ),
        (
            "7_sp1_x64_enterprise_en-us_A_systeminfo.txt",
            "WIN7SP1X64",
            7601,
            219,
            "KB2849697",
        ),
        (
            "8.1_u1_x64_enterprise_en-us_systeminfo.txt",
            "WIN81U1X64",
            9600,
            6,
            "KB2919355",
        ),
        (
            "srv_2016_1607_datacenter_en-us_systeminfo.txt",
            "MYSERVER",
            14393,
            5,
            "KB4049065",
        ),
        (
            "srv_2019_rtm_datacenter_en-us_systeminfo.txt",
            "WIN-O863JARO7CM",
            17763,
            5,
            "KB4462930",
        ),
        (
            "srv_2022_systeminfo.txt",
            "WIN-RIBN7SM07BK",
            20348,
            3,
            "KB5004330",
        ),
    ];

    #[test]
    fn all_shared_files_parse() -> anyhow::Result<()> {
        let mut names: Vec<String> = std::fs::read_dir(data_dir())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        assert_eq!(names.len(), EXPECTED.len(), "{names:?}");
        for (file, host, build, kbs, first_kb) in EXPECTED {
            let info = parse_file(file)?;
            assert_eq!(info.host_name, host, "{file}");
            assert_eq!(info.build, build, "{file}");
            assert_eq!(info.hotfixes.len(), kbs, "{file}");
            assert_eq!(info.hotfixes[0], first_kb, "{file}");
            assert_eq!(info.arch, Arch::X64, "{file}");
            assert!(info.os_name.starts_with("Microsoft Windows"), "{file}");
        }
        Ok(())
    }

    #[test]
    fn parses_versions_and_names() -> anyhow::Result<()> {
        let w7 = parse_file("7_sp1_x64_enterprise_en-us_A_systeminfo.txt")?;
        assert_eq!(w7.os_version, "6.1.7601");
        assert_eq!(w7.os_name, "Microsoft Windows 7 Enterprise");
        let srv = parse_file("srv_2022_systeminfo.txt")?;
        assert_eq!(srv.os_version, "10.0.20348");
        assert_eq!(srv.hotfixes, ["KB5004330", "KB5005039", "KB5005552"]);
        Ok(())
    }

    #[test]
    fn handles_crlf_and_odd_entries() -> anyhow::Result<()> {
        let text = "\r\nHost Name:   H1\r\nOS Name:  Microsoft Windows 10 Pro\r\n\
                    OS Version:   10.0.19045 N/A Build 19045\r\nSystem Type:  ARM64-based PC\n\
                    Hotfix(s):   3 Hotfix(s) Installed.\r\n      [01]: KB1\r\n      [02]: File 1\n\
                    \t[03]: kb22\r\nNetwork Card(s): 1 NIC(s) Installed.\r\n   [01]: KB3 lookalike\r\n";
        let info = parse_systeminfo(text)?;
        assert_eq!(info.host_name, "H1");
        assert_eq!(info.arch, Arch::Arm64);
        assert_eq!(info.build, 19045);
        assert_eq!(info.hotfixes, ["KB1", "KB22"]);
        Ok(())
    }

    #[test]
    fn rejects_incomplete_input() {
        assert!(parse_systeminfo("Host Name: x\n").is_err());
        assert!(parse_systeminfo("OS Version: garbage\nSystem Type: x64-based PC").is_err());
    }
}
