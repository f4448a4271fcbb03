//! Windows build number -> the catalog's `AffectedProduct` names.
//!
//! Names were checked against `CVEs_20260628.csv`. The catalog spells one
//! product in several cases and with trailing blanks, so names are matched
//! with [`super::product_key`]. A server matches its Server Core rows too:
//! `systeminfo` does not tell the two installations apart, and their
//! updates are the same.

use serde::{Deserialize, Serialize};

/// Processor architecture, from `systeminfo`'s `System Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X64,
    X86,
    Arm64,
}

impl Arch {
    /// Parses `x64-based PC`, `X86-based PC`, `ARM64-based PC` (also bare
    /// `x64`, `amd64`, `x86`, `arm64`).
    pub fn from_system_type(text: &str) -> Option<Arch> {
        let s = text.trim().to_ascii_lowercase();
        if s.starts_with("x64") || s.starts_with("amd64") {
            Some(Arch::X64)
        } else if s.starts_with("x86") || s.starts_with("i686") || s.starts_with("i386") {
            Some(Arch::X86)
        } else if s.starts_with("arm64") || s.starts_with("aarch64") {
            Some(Arch::Arm64)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X64 => "x64",
            Arch::X86 => "x86",
            Arch::Arm64 => "arm64",
        }
    }

    /// `x64-based`, `32-bit`, `ARM64-based` as in product names.
    fn label(self) -> &'static str {
        match self {
            Arch::X64 => "x64-based",
            Arch::X86 => "32-bit",
            Arch::Arm64 => "ARM64-based",
        }
    }
}

/// A Windows product as the catalog names it: the name, then other
/// spellings of the same product in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowsProduct {
    pub name: String,
    pub aliases: Vec<String>,
}

impl WindowsProduct {
    fn new(name: String) -> Self {
        Self {
            name,
            aliases: Vec::new(),
        }
    }

    fn with_core(name: String) -> Self {
        let core = format!("{name} (Server Core installation)");
        Self {
            name,
            aliases: vec![core],
        }
    }

    /// All spellings: the name first, then the aliases.
    pub fn spellings(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// Windows 10/11 feature-update builds.
const CLIENT_VERSIONS: [(u32, u32, &str); 21] = [
    (10240, 10, "1507"),
    (10586, 10, "1511"),
    (14393, 10, "1607"),
    (15063, 10, "1703"),
    (16299, 10, "1709"),
    (17134, 10, "1803"),
    (17763, 10, "1809"),
    (18362, 10, "1903"),
    (18363, 10, "1909"),
    (19041, 10, "2004"),
    (19042, 10, "20H2"),
    (19043, 10, "21H1"),
    (19044, 10, "21H2"),
    (19045, 10, "22H2"),
    (22000, 11, "21H2"),
    (22621, 11, "22H2"),
    (22631, 11, "23H2"),
    (26100, 11, "24H2"),
    (26200, 11, "25H2"),
    (28000, 11, "26H1"),
    (0, 0, ""),
];

/// Windows Server semi-annual channel builds (Server Core only).
const SERVER_SAC: [(u32, &str); 6] = [
    (16299, "1709"),
    (17134, "1803"),
    (18362, "1903"),
    (18363, "1909"),
    (19041, "2004"),
    (19042, "20H2"),
];

/// Every build this module maps, with whether it is a server build, for
/// listings and tests.
pub fn known_builds() -> Vec<(u32, bool)> {
    let mut out: Vec<(u32, bool)> = CLIENT_VERSIONS
        .iter()
        .filter(|(b, _, _)| *b != 0)
        .map(|(b, _, _)| (*b, false))
        .collect();
    out.extend([6002, 7600, 7601, 9200, 9600].map(|b| (b, false)));
    out.extend(
        [
            6002, 7600, 7601, 9200, 9600, 14393, 17763, 20348, 25398, 26100,
        ]
        .map(|b| (b, true)),
    );
    out.extend(SERVER_SAC.iter().map(|(b, _)| (*b, true)));
    out
}

/// The Windows version a client build belongs to, e.g. `22631` -> (11, `23H2`).
pub fn client_version(build: u32) -> Option<(u32, &'static str)> {
    CLIENT_VERSIONS
        .iter()
        .find(|(b, _, _)| *b == build && build != 0)
        .map(|(_, w, v)| (*w, *v))
}

/// The catalog product of a Windows build, or `None` for a build the
/// catalog has no product for.
pub fn windows_product(build: u32, arch: Arch, server: bool) -> Option<WindowsProduct> {
    if server {
        server_product(build, arch)
    } else {
        client_product(build, arch)
    }
}

fn server_product(build: u32, arch: Arch) -> Option<WindowsProduct> {
    let a = arch.label();
    let year = match build {
        6002 => {
            return Some(WindowsProduct::with_core(format!(
                "Windows Server 2008 for {a} Systems Service Pack 2"
            )))
        }
        7600 => {
            return Some(WindowsProduct::with_core(format!(
                "Windows Server 2008 R2 for {a} Systems"
            )))
        }
        7601 => {
            return Some(WindowsProduct::with_core(format!(
                "Windows Server 2008 R2 for {a} Systems Service Pack 1"
            )))
        }
        25398 => {
            return Some(WindowsProduct::new(
                "Windows Server 2022, 23H2 Edition (Server Core installation)".to_owned(),
            ))
        }
        9200 => "2012",
        9600 => "2012 R2",
        14393 => "2016",
        17763 => "2019",
        20348 => "2022",
        26100 => "2025",
        _ => {
            let (_, version) = SERVER_SAC.iter().find(|(b, _)| *b == build)?;
            return Some(WindowsProduct::new(format!(
                "Windows Server, version {version} (Server Core installation)"
            )));
        }
    };
    Some(WindowsProduct::with_core(format!("Windows Server {year}")))
}

fn client_product(build: u32, arch: Arch) -> Option<WindowsProduct> {
    let a = arch.label();
    let one = |name: String| Some(WindowsProduct::new(name));
    match build {
        6002 => one(match arch {
            Arch::X64 => "Windows Vista x64 Edition Service Pack 2".to_owned(),
            _ => "Windows Vista Service Pack 2".to_owned(),
        }),
        7600 => one(format!("Windows 7 for {a} Systems")),
        7601 => one(format!("Windows 7 for {a} Systems Service Pack 1")),
        9200 => one(format!("Windows 8 for {a} Systems")),
        9600 => one(format!("Windows 8.1 for {a} Systems")),
        10240 => Some(WindowsProduct {
            name: format!("Windows 10 Version 1507 for {a} Systems"),
            aliases: vec![format!("Windows 10 for {a} Systems")],
        }),
        22000 => Some(WindowsProduct {
            name: format!("Windows 11 Version 21H2 for {a} Systems"),
            aliases: vec![format!("Windows 11 for {a} Systems")],
        }),
        26200 if arch == Arch::Arm64 => Some(WindowsProduct {
            name: format!("Windows 11 Version 25H2 for {a} Systems"),
            aliases: vec!["Windows 11 Version 25H2 for ARM systems".to_owned()],
        }),
        _ => {
            let (windows, version) = client_version(build)?;
            one(format!(
                "Windows {windows} Version {version} for {a} Systems"
            ))
        }
    }
}

/// Whether an OS name (`Microsoft Windows Server 2022 Standard`) is a server's.
pub fn is_server_name(os_name: &str) -> bool {
    os_name.to_ascii_lowercase().contains("server")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(build: u32, server: bool) -> Option<String> {
        windows_product(build, Arch::X64, server).map(|p| p.name)
    }

    #[test]
    fn maps_the_builds_of_the_issue() {
        let cases = [
            (
                17763,
                false,
                "Windows 10 Version 1809 for x64-based Systems",
            ),
            (
                19044,
                false,
                "Windows 10 Version 21H2 for x64-based Systems",
            ),
            (
                19045,
                false,
                "Windows 10 Version 22H2 for x64-based Systems",
            ),
            (
                22000,
                false,
                "Windows 11 Version 21H2 for x64-based Systems",
            ),
            (
                22621,
                false,
                "Windows 11 Version 22H2 for x64-based Systems",
            ),
            (
                22631,
                false,
                "Windows 11 Version 23H2 for x64-based Systems",
            ),
            (
                26100,
                false,
                "Windows 11 Version 24H2 for x64-based Systems",
            ),
            (
                7601,
                false,
                "Windows 7 for x64-based Systems Service Pack 1",
            ),
            (9600, false, "Windows 8.1 for x64-based Systems"),
            (14393, true, "Windows Server 2016"),
            (17763, true, "Windows Server 2019"),
            (20348, true, "Windows Server 2022"),
            (26100, true, "Windows Server 2025"),
            (9600, true, "Windows Server 2012 R2"),
        ];
        for (build, server, expected) in cases {
            assert_eq!(name(build, server).as_deref(), Some(expected), "{build}");
        }
        assert_eq!(name(12345, false), None);
        assert_eq!(name(22631, true), None);
        let arm = windows_product(22631, Arch::Arm64, false).map(|p| p.name);
        assert_eq!(
            arm.as_deref(),
            Some("Windows 11 Version 23H2 for ARM64-based Systems")
        );
        let x86 = windows_product(19045, Arch::X86, false).map(|p| p.name);
        assert_eq!(
            x86.as_deref(),
            Some("Windows 10 Version 22H2 for 32-bit Systems")
        );
    }

    #[test]
    fn servers_include_server_core() {
        let p = windows_product(20348, Arch::X64, true).expect("known");
        assert_eq!(
            p.spellings().collect::<Vec<_>>(),
            [
                "Windows Server 2022",
                "Windows Server 2022 (Server Core installation)"
            ]
        );
    }

    #[test]
    fn every_known_build_maps() {
        for (build, server) in known_builds() {
            for arch in [Arch::X64, Arch::X86, Arch::Arm64] {
                if server && arch != Arch::X64 {
                    continue;
                }
                assert!(
                    windows_product(build, arch, server).is_some(),
                    "{build} {server}"
                );
            }
        }
    }
}
