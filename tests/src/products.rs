//! Windows build -> Microsoft catalog `AffectedProduct` name.
//!
//! The names were checked against `CVEs_20260628.csv`. The catalog is not
//! consistent in case and trailing blanks (`Windows 11 version 21H2 ...`,
//! `Windows 8.1 for x64-based systems`, `Windows Server 2016  `), so products
//! are matched with [`product_key`] (trimmed, ASCII lower case).

use serde::{Deserialize, Serialize};

use crate::systeminfo::Arch;

/// A catalog product: the canonical name plus other spellings of the same
/// product in the catalog (matched the same way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub name: String,
    pub aliases: Vec<String>,
}

impl Product {
    fn new(name: String) -> Product {
        Product {
            name,
            aliases: Vec::new(),
        }
    }

    /// All spellings: the name first, then the aliases.
    pub fn spellings(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// Matching key of a catalog product name: trimmed, ASCII lower case.
pub fn product_key(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

/// Maps a Windows OS name (as in `systeminfo`), build and architecture to
/// its catalog product, or `None` for builds the simulator does not know.
pub fn catalog_product(os_name: &str, build: u32, arch: Arch) -> Option<Product> {
    if os_name.to_ascii_lowercase().contains("server") {
        server_product(build, arch)
    } else {
        client_product(build, arch)
    }
}

/// `x64-based`, `32-bit`, `ARM64-based` as used in client product names.
fn arch_label(arch: Arch) -> &'static str {
    match arch {
        Arch::X64 => "x64-based",
        Arch::X86 => "32-bit",
        Arch::Arm64 => "ARM64-based",
    }
}

fn server_product(build: u32, arch: Arch) -> Option<Product> {
    let name = match build {
        7601 => {
            return Some(Product::new(format!(
                "Windows Server 2008 R2 for {} Systems Service Pack 1",
                arch_label(arch)
            )))
        }
        9200 => "Windows Server 2012",
        9600 => "Windows Server 2012 R2",
        14393 => "Windows Server 2016",
        17763 => "Windows Server 2019",
        20348 => "Windows Server 2022",
        26100 => "Windows Server 2025",
        _ => return None,
    };
    Some(Product::new(name.to_owned()))
}

fn client_product(build: u32, arch: Arch) -> Option<Product> {
    let a = arch_label(arch);
    match build {
        7601 => Some(Product::new(format!(
            "Windows 7 for {a} Systems Service Pack 1"
        ))),
        9600 => Some(Product::new(format!("Windows 8.1 for {a} Systems"))),
        10240 => Some(Product::new(format!("Windows 10 for {a} Systems"))),
        22000 => Some(Product {
            name: format!("Windows 11 version 21H2 for {a} Systems"),
            aliases: vec![format!("Windows 11 for {a} Systems")],
        }),
        _ => {
            let (windows, version) = client_version(build)?;
            Some(Product::new(format!(
                "Windows {windows} Version {version} for {a} Systems"
            )))
        }
    }
}

/// Windows 10/11 feature-update builds: (generation, version).
fn client_version(build: u32) -> Option<(u32, &'static str)> {
    const TABLE: [(u32, u32, &str); 17] = [
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
        (22621, 11, "22H2"),
        (22631, 11, "23H2"),
        (26100, 11, "24H2"),
        (26200, 11, "25H2"),
    ];
    TABLE
        .iter()
        .find(|(b, _, _)| *b == build)
        .map(|(_, windows, version)| (*windows, *version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(os: &str, build: u32) -> Option<String> {
        catalog_product(os, build, Arch::X64).map(|p| p.name)
    }

    #[test]
    fn maps_shared_data_builds() {
        let cases = [
            (
                "Microsoft Windows 10 Education",
                17763,
                "Windows 10 Version 1809 for x64-based Systems",
            ),
            (
                "Microsoft Windows 10 Pro",
                19044,
                "Windows 10 Version 21H2 for x64-based Systems",
            ),
            (
                "Microsoft Windows 10 Enterprise",
                19045,
                "Windows 10 Version 22H2 for x64-based Systems",
            ),
            (
                "Microsoft Windows 11 Enterprise",
                22000,
                "Windows 11 version 21H2 for x64-based Systems",
            ),
            (
                "Microsoft Windows 11 Home Single Language",
                22621,
                "Windows 11 Version 22H2 for x64-based Systems",
            ),
            (
                "Microsoft Windows 11 Enterprise",
                22631,
                "Windows 11 Version 23H2 for x64-based Systems",
            ),
            (
                "Microsoft Windows 11 Pro",
                26100,
                "Windows 11 Version 24H2 for x64-based Systems",
            ),
            (
                "Microsoft Windows 7 Enterprise ",
                7601,
                "Windows 7 for x64-based Systems Service Pack 1",
            ),
            (
                "Microsoft Windows 8.1 Enterprise",
                9600,
                "Windows 8.1 for x64-based Systems",
            ),
            (
                "Microsoft Windows Server 2016 Datacenter",
                14393,
                "Windows Server 2016",
            ),
            (
                "Microsoft Windows Server 2019 Datacenter",
                17763,
                "Windows Server 2019",
            ),
            (
                "Microsoft Windows Server 2022 Standard",
                20348,
                "Windows Server 2022",
            ),
            (
                "Microsoft Windows Server 2012 R2 Standard",
                9600,
                "Windows Server 2012 R2",
            ),
        ];
        for (os, build, expected) in cases {
            assert_eq!(name(os, build).as_deref(), Some(expected), "{os} {build}");
        }
    }

    #[test]
    fn windows_11_21h2_has_its_alias() {
        let p = catalog_product("Microsoft Windows 11 Enterprise", 22000, Arch::X64);
        let spellings: Vec<String> = p
            .iter()
            .flat_map(|p| p.spellings())
            .map(String::from)
            .collect();
        assert_eq!(
            spellings,
            [
                "Windows 11 version 21H2 for x64-based Systems",
                "Windows 11 for x64-based Systems"
            ]
        );
    }

    #[test]
    fn architecture_and_unknown_builds() {
        let arm = catalog_product("Microsoft Windows 11 Pro", 22631, Arch::Arm64).map(|p| p.name);
        assert_eq!(
            arm.as_deref(),
            Some("Windows 11 Version 23H2 for ARM64-based Systems")
        );
        let x86 = catalog_product("Microsoft Windows 10 Pro", 19045, Arch::X86).map(|p| p.name);
        assert_eq!(
            x86.as_deref(),
            Some("Windows 10 Version 22H2 for 32-bit Systems")
        );
        assert_eq!(name("Microsoft Windows 10 Pro", 12345), None);
        assert_eq!(name("Microsoft Windows Server 2022", 22631), None);
    }

    #[test]
    fn keys_ignore_case_and_blanks() {
        assert_eq!(
            product_key("Windows 8.1 for x64-based systems "),
            product_key("Windows 8.1 for x64-based Systems")
        );
    }
}
