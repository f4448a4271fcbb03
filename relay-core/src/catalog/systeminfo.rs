//! Parser for the text Windows' `systeminfo` prints, in the common display
//! languages (field names and date formats differ; the values the
//! assessment needs mostly do not).
//!
//! Language-independent where possible: the OS version is the first field
//! whose value starts with a dotted `a.b.c` version, the system type the one
//! ending in `-based PC`, the OS name the one starting `Microsoft Windows`,
//! and hotfixes are the `[NN]: KB…` entries. Host name and install date are
//! found by their localised field names.

use serde::{Deserialize, Serialize};

use super::products::{is_server_name, Arch};

/// What the assessment needs from a `systeminfo` dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub host_name: Option<String>,
    /// As printed, e.g. `Microsoft Windows 11 Enterprise`.
    pub os_name: String,
    /// Dotted version, e.g. `10.0.22631`.
    pub os_version: String,
    pub build: u32,
    pub arch: Arch,
    pub server: bool,
    /// `Original Install Date` as `YYYY-MM-DD`, when readable.
    pub install_date: Option<String>,
    /// The language the field names were recognised as (`en`, `de`, …).
    pub language: Option<&'static str>,
    /// Installed hotfixes as `KB1234567`, in file order, without duplicates.
    pub hotfixes: Vec<String>,
}

/// What could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemInfoError {
    #[error("no OS version line (a value like `10.0.19045 N/A Build 19045`)")]
    NoVersion,
    #[error("no OS name line (a value starting `Microsoft Windows`)")]
    NoName,
    #[error("no system type line (a value like `x64-based PC`)")]
    NoSystemType,
    #[error("unknown system type {0:?}")]
    UnknownSystemType(String),
    #[error("the hotfix list is cut short: {declared} declared, {listed} listed")]
    Truncated { declared: usize, listed: usize },
    #[error("more than {MAX_HOTFIXES} hotfixes")]
    TooManyHotfixes,
}

/// Hotfixes a dump may list at most (the JSON form has the same bound).
pub const MAX_HOTFIXES: usize = 5000;

/// A list section (`Hotfix(s): 3 Hotfix(s) Installed.` and its `[NN]:`
/// entries): the count its header declares and the entries that follow.
#[derive(Default)]
struct Section {
    declared: Option<usize>,
    listed: usize,
    has_kb: bool,
}

impl Section {
    /// A hotfix section with fewer entries than its header says was cut off
    /// (a partial copy, a truncated upload): assessing it would report the
    /// missing entries' updates as not installed.
    fn check(&self) -> Result<(), SystemInfoError> {
        match self.declared {
            Some(declared) if self.has_kb && self.listed < declared => {
                Err(SystemInfoError::Truncated {
                    declared,
                    listed: self.listed,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Per language: (code, host name, original install date).
const LANGUAGES: [(&str, &[&str], &[&str]); 7] = [
    ("en", &["Host Name"], &["Original Install Date"]),
    (
        "de",
        &["Hostname", "Host-Name"],
        &["Ursprüngliches Installationsdatum"],
    ),
    (
        "fr",
        &["Nom de l’hôte", "Nom de l'hôte", "Nom de l’hote"],
        &[
            "Date d’installation originale",
            "Date d'installation originale",
        ],
    ),
    (
        "es",
        &["Nombre de host"],
        &["Fecha de instalación original"],
    ),
    ("it", &["Nome host"], &["Data di installazione originale"]),
    (
        "pt",
        &["Nome do host"],
        &["Data da instalação original", "Data da Instalação Original"],
    ),
    ("nl", &["Hostnaam"], &["Oorspronkelijke installatiedatum"]),
];

/// Decodes the bytes of a `systeminfo` dump: UTF-8 (with or without BOM)
/// or UTF-16 with BOM (what PowerShell's `>` writes); other bytes lossily.
pub fn decode_text(bytes: &[u8]) -> String {
    let utf16 = |le: bool| {
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|c| {
                if le {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    };
    match bytes {
        [0xFF, 0xFE, ..] => utf16(true),
        [0xFE, 0xFF, ..] => utf16(false),
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8_lossy(rest).into_owned(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Parses a `systeminfo` dump (LF, CRLF or mixed line endings).
///
/// # Errors
/// A field the assessment needs is missing; see [`SystemInfoError`].
pub fn parse_systeminfo(text: &str) -> Result<SystemInfo, SystemInfoError> {
    let text = text.replace('\u{a0}', " ");
    let mut fields: Vec<(&str, &str)> = Vec::new();
    let mut hotfixes: Vec<String> = Vec::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut section = Section::default();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with(|c: char| c.is_whitespace()) {
            if is_entry(line) {
                section.listed += 1;
                if push_hotfix(&mut hotfixes, &mut seen, line) {
                    section.has_kb = true;
                }
                if hotfixes.len() > MAX_HOTFIXES {
                    return Err(SystemInfoError::TooManyHotfixes);
                }
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            section.check()?;
            let value = value.trim();
            section = Section {
                declared: value.split_whitespace().next().and_then(|n| n.parse().ok()),
                ..Section::default()
            };
            fields.push((key.trim(), value));
        }
    }
    section.check()?;

    let (os_version, build) = fields
        .iter()
        .find_map(|(_, v)| parse_os_version(v))
        .ok_or(SystemInfoError::NoVersion)?;
    let os_name = fields
        .iter()
        .find(|(_, v)| v.to_ascii_lowercase().starts_with("microsoft windows"))
        .map(|(_, v)| (*v).to_owned())
        .ok_or(SystemInfoError::NoName)?;
    let system_type = fields
        .iter()
        .find(|(_, v)| v.to_ascii_lowercase().ends_with("-based pc"))
        .map(|(_, v)| *v)
        .ok_or(SystemInfoError::NoSystemType)?;
    let arch = Arch::from_system_type(system_type)
        .ok_or_else(|| SystemInfoError::UnknownSystemType(system_type.to_owned()))?;

    let value_of = |names: &[&str]| {
        fields
            .iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .map(|(_, v)| *v)
    };
    let mut language = None;
    let mut host_name = None;
    let mut install_date = None;
    for (code, host, install) in LANGUAGES {
        if let Some(h) = value_of(host) {
            language = Some(code);
            host_name = Some(h.to_owned());
            install_date = value_of(install).and_then(parse_local_date);
            break;
        }
    }
    Ok(SystemInfo {
        host_name,
        server: is_server_name(&os_name),
        os_name,
        os_version,
        build,
        arch,
        install_date,
        language,
        hotfixes,
    })
}

/// A `[01]: …` list entry.
fn is_entry(line: &str) -> bool {
    line.split_once("]:")
        .is_some_and(|(index, _)| index.trim_start().starts_with('['))
}

/// Adds the KB of a `[01]: KB5031354` line (once); other entries (`File 1`,
/// NICs) are skipped. Returns whether the entry was a KB.
fn push_hotfix(
    hotfixes: &mut Vec<String>,
    seen: &mut std::collections::HashSet<String>,
    line: &str,
) -> bool {
    let Some((_, entry)) = line.split_once("]:") else {
        return false;
    };
    match crate::inventory::normalize_kb(entry) {
        Some(kb) if entry.trim().len() > 2 => {
            if seen.insert(kb.clone()) {
                hotfixes.push(kb);
            }
            true
        }
        _ => false,
    }
}

/// `10.0.22631 N/A Build 22631` -> (`10.0.22631`, 22631).
fn parse_os_version(value: &str) -> Option<(String, u32)> {
    let version = value.split_whitespace().next()?;
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || p.parse::<u32>().is_err())
    {
        return None;
    }
    let build = parts[2].parse().ok()?;
    Some((version.to_owned(), build))
}

/// A local date -> `YYYY-MM-DD`. `systeminfo` writes dates in the
/// machine's regional format, which need not match its display language
/// (an English Windows with German regional settings writes `3.10.2018`),
/// so the format decides, not the language: `y-m-d` when the first part has
/// four digits; month first only for slashes with a 12-hour clock (en-US,
/// `7/22/2020, 10:04:12 AM`); day first otherwise (`22.07.2020, 10:04:12`,
/// `22/07/2020 10:04:12`, `22-7-2020`).
fn parse_local_date(value: &str) -> Option<String> {
    let date = value.split([',', ' ']).next()?;
    let parts: Vec<u32> = date
        .split(['/', '.', '-'])
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c] = parts[..] else {
        return None;
    };
    let upper = value.to_ascii_uppercase();
    let twelve_hour = upper.contains("AM") || upper.contains("PM");
    let (year, month, day) = if a > 31 {
        (a, b, c)
    } else if date.contains('/') && twelve_hour {
        (c, a, b)
    } else {
        (c, b, a)
    };
    let ok = (1..=12).contains(&month) && (1..=31).contains(&day) && year >= 1990;
    ok.then(|| format!("{year:04}-{month:02}-{day:02}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_crlf_english_with_odd_entries() {
        let text = "\r\nHost Name:   H1\r\nOS Name:  Microsoft Windows 10 Pro\r\n\
                    OS Version:   10.0.19045 N/A Build 19045\r\n\
                    Original Install Date:     7/22/2020, 10:04:12 AM\r\n\
                    System Type:  ARM64-based PC\n\
                    Hotfix(s):   3 Hotfix(s) Installed.\r\n      [01]: KB1\r\n      [02]: File 1\n\
                    \t[03]: kb22\r\nNetwork Card(s): 1 NIC(s) Installed.\r\n   [01]: KB3 lookalike\r\n";
        let info = parse_systeminfo(text).expect("parses");
        assert_eq!(info.host_name.as_deref(), Some("H1"));
        assert_eq!(info.arch, Arch::Arm64);
        assert_eq!(info.build, 19045);
        assert!(!info.server);
        assert_eq!(info.language, Some("en"));
        assert_eq!(info.install_date.as_deref(), Some("2020-07-22"));
        assert_eq!(info.hotfixes, ["KB1", "KB22"]);
    }

    #[test]
    fn a_cut_off_hotfix_list_and_a_flood_are_refused() {
        let head = "Host Name: H\nOS Name: Microsoft Windows 10 Pro\n\
                    OS Version: 10.0.19045 N/A Build 19045\nSystem Type: x64-based PC\n";
        let cut =
            format!("{head}Hotfix(s): 4 Hotfix(s) Installed.\n  [01]: KB5029921\n  [02]: KB50");
        assert_eq!(
            parse_systeminfo(&cut),
            Err(SystemInfoError::Truncated {
                declared: 4,
                listed: 2
            })
        );
        let whole = format!(
            "{head}Hotfix(s): 2 Hotfix(s) Installed.\n  [01]: KB5029921\n  [02]: KB5030211\n"
        );
        assert_eq!(
            parse_systeminfo(&whole).expect("parses").hotfixes,
            ["KB5029921", "KB5030211"]
        );
        let mut flood = format!("{head}Hotfix(s): 6000 Hotfix(s) Installed.\n");
        for i in 0..6000 {
            flood.push_str(&format!("  [{i:02}]: KB{}\n", 5_000_000 + i));
        }
        assert_eq!(
            parse_systeminfo(&flood),
            Err(SystemInfoError::TooManyHotfixes)
        );
    }

    #[test]
    fn reads_german_and_french() {
        let de = "Hostname:                                  PC1\n\
                  Betriebssystemname:                        Microsoft Windows Server 2022 Standard\n\
                  Betriebssystemversion:                     10.0.20348 Nicht zutreffend Build 20348\n\
                  Ursprüngliches Installationsdatum:         04.03.2023, 09:15:00\n\
                  Systemtyp:                                 x64-based PC\n\
                  Hotfix(es):                                1 Hotfix(e) installiert.\n\
                  \x20                                          [01]: KB5004330\n";
        let info = parse_systeminfo(de).expect("parses");
        assert_eq!(info.language, Some("de"));
        assert!(info.server);
        assert_eq!(info.build, 20348);
        assert_eq!(info.install_date.as_deref(), Some("2023-03-04"));
        assert_eq!(info.hotfixes, ["KB5004330"]);
        let fr = "Nom de l’hôte:\u{a0}PC2\r\nNom du système d’exploitation: Microsoft Windows 7 Entreprise\r\n\
                  Version du système: 6.1.7601 Service Pack 1 version 7601\r\n\
                  Date d’installation originale: 04/03/2023, 09:15:00\r\n\
                  Type du système: X86-based PC\r\n";
        let info = parse_systeminfo(fr).expect("parses");
        assert_eq!(info.language, Some("fr"));
        assert_eq!(info.arch, Arch::X86);
        assert_eq!(info.install_date.as_deref(), Some("2023-03-04"));
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(
            parse_systeminfo("Host Name: x\n"),
            Err(SystemInfoError::NoVersion)
        );
        assert_eq!(
            parse_systeminfo("OS Version: 10.0.1.2\nSystem Type: x64-based PC"),
            Err(SystemInfoError::NoVersion)
        );
        assert_eq!(
            parse_systeminfo("OS Name: Microsoft Windows 10\nOS Version: 10.0.19045 N/A\n"),
            Err(SystemInfoError::NoSystemType)
        );
        assert_eq!(
            parse_systeminfo("OS Version: 10.0.19045\nSystem Type: x64-based PC\n"),
            Err(SystemInfoError::NoName)
        );
    }

    #[test]
    fn decodes_utf16_and_bom() {
        let mut bytes = vec![0xFF, 0xFE];
        for u in "Host Name: x".encode_utf16() {
            bytes.extend(u.to_le_bytes());
        }
        assert_eq!(decode_text(&bytes), "Host Name: x");
        assert_eq!(decode_text(b"\xEF\xBB\xBFab"), "ab");
    }
}
