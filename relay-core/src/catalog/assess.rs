//! Offline assessment: which updates a Windows machine misses and which
//! CVEs stay open, from its product and installed KBs.
//!
//! Semantics (WES-NG's, with the supersedence graph of the whole catalog):
//! - an update is *covered* when it is installed or superseded, directly or
//!   transitively, by an installed update — whatever product lists the
//!   links, since supersedence chains skip products;
//! - the product's uncovered updates are *outstanding*; their CVEs are the
//!   open CVEs;
//! - the *missing* updates are the outstanding ones that no other
//!   outstanding update supersedes: what Windows Update would offer, and
//!   what WES-NG lists. Installing them closes every open CVE.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::products::{windows_product, Arch, WindowsProduct};
use super::{product_key, Catalog, NONE};
use crate::inventory::Severity;

/// What to assess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssessmentQuery {
    pub build: u32,
    pub arch: Arch,
    pub server: bool,
    /// Installed KBs, `KB5034441` or `5034441`.
    pub installed_kbs: Vec<String>,
}

/// One update to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingUpdate {
    pub kb: String,
    pub title: String,
    pub severity: Severity,
    pub cves: Vec<String>,
    /// `DatePosted` as an RFC 3339 date-time (midnight UTC).
    pub released_at: String,
}

/// One open CVE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssessedCve {
    pub cve_id: String,
    pub severity: Severity,
    pub known_exploited: bool,
}

/// The answer of `POST /api/assessments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub product: String,
    pub build: u32,
    pub arch: Arch,
    /// The installed KBs as given, normalised to `KB…`, in input order.
    pub installed_kbs: Vec<String>,
    /// Newest first.
    pub missing: Vec<MissingUpdate>,
    /// Sorted by CVE id.
    pub cves: Vec<AssessedCve>,
    pub catalog_version: String,
}

/// Why an assessment could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssessError {
    #[error("Windows build {build} ({kind}) is not a product the catalog knows")]
    UnknownBuild { build: u32, kind: &'static str },
    #[error("{0:?} is not a KB number")]
    BadKb(String),
}

/// `KB5034441`, `kb5034441`, `5034441` -> `5034441`.
pub fn kb_digits(text: &str) -> Option<String> {
    crate::inventory::normalize_kb(text).map(|kb| kb.trim_start_matches("KB").to_owned())
}

/// The CVE ids of the catalog's `CVE` field (`ADV…`, `SP…` and blanks are not).
fn cve_id(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("CVE-")?;
    let (year, seq) = rest.split_once('-')?;
    (year.len() == 4
        && !seq.is_empty()
        && year.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit()))
    .then_some(text)
}

fn released_at(date: u32) -> String {
    format!(
        "{:04}-{:02}-{:02}T00:00:00Z",
        date / 10_000,
        date / 100 % 100,
        date % 100
    )
}

impl Catalog {
    /// Assesses a machine; `kev` holds the known-exploited CVE ids.
    ///
    /// # Errors
    /// An unknown build or a malformed KB.
    pub fn assess(
        &self,
        query: &AssessmentQuery,
        kev: &HashSet<String>,
    ) -> Result<Assessment, AssessError> {
        let product = windows_product(query.build, query.arch, query.server).ok_or(
            AssessError::UnknownBuild {
                build: query.build,
                kind: if query.server { "server" } else { "client" },
            },
        )?;
        let mut installed_kbs = Vec::new();
        let mut installed_digits = Vec::new();
        for kb in &query.installed_kbs {
            let digits = kb_digits(kb).ok_or_else(|| AssessError::BadKb(kb.clone()))?;
            let label = format!("KB{digits}");
            if !installed_kbs.contains(&label) {
                installed_kbs.push(label);
                installed_digits.push(digits);
            }
        }
        let (missing, cves) = self.assess_product(&product, &installed_digits, kev);
        Ok(Assessment {
            product: product.name,
            build: query.build,
            arch: query.arch,
            installed_kbs,
            missing,
            cves,
            catalog_version: self.version.label().to_owned(),
        })
    }

    /// Row indices of a product (all its spellings).
    pub fn product_rows(&self, product: &WindowsProduct) -> Vec<u32> {
        let mut keys: Vec<String> = product.spellings().map(product_key).collect();
        keys.dedup();
        keys.iter()
            .flat_map(|k| self.rows_of_product_key(k).iter().copied())
            .collect()
    }

    /// Every KB reachable from `roots` over supersedence links (roots excluded
    /// unless reached from another root).
    fn reachable(&self, roots: impl IntoIterator<Item = u32>) -> HashSet<u32> {
        let mut seen = HashSet::new();
        let mut stack: Vec<u32> = roots
            .into_iter()
            .flat_map(|kb| self.directly_superseded(kb).iter().copied())
            .collect();
        while let Some(kb) = stack.pop() {
            if seen.insert(kb) {
                stack.extend_from_slice(self.directly_superseded(kb));
            }
        }
        seen
    }

    fn assess_product(
        &self,
        product: &WindowsProduct,
        installed: &[String],
        kev: &HashSet<String>,
    ) -> (Vec<MissingUpdate>, Vec<AssessedCve>) {
        let installed_ids: Vec<u32> = installed.iter().filter_map(|k| self.kb_id(k)).collect();
        let mut covered = self.reachable(installed_ids.iter().copied());
        covered.extend(installed_ids.iter().copied());

        // Outstanding KB -> its rows.
        let mut outstanding: HashMap<u32, Vec<u32>> = HashMap::new();
        for i in self.product_rows(product) {
            let row = &self.rows()[i as usize];
            if row.kb != NONE && !covered.contains(&row.kb) {
                outstanding.entry(row.kb).or_default().push(i);
            }
        }
        let replaced = self.reachable(outstanding.keys().copied());

        let mut open: BTreeMap<&str, Severity> = BTreeMap::new();
        let mut missing = Vec::new();
        for (kb, rows) in &outstanding {
            let mut cves = BTreeSet::new();
            let mut severity = Severity::Unknown;
            let mut date = u32::MAX;
            let mut titles: BTreeMap<&str, u32> = BTreeMap::new();
            for &i in rows {
                let row = &self.rows()[i as usize];
                if let Some(cve) = cve_id(self.str(row.cve)) {
                    cves.insert(cve);
                    let sev = open.entry(cve).or_insert(row.severity);
                    *sev = (*sev).max(row.severity);
                }
                severity = severity.max(row.severity);
                date = date.min(row.date);
                *titles.entry(self.str(row.title)).or_default() += 1;
            }
            if replaced.contains(kb) {
                continue;
            }
            // The most frequent title (the per-CVE rows of a monthly update
            // mostly share one); ties go to the first in order.
            let title = titles
                .iter()
                .max_by_key(|(t, n)| (**n, std::cmp::Reverse(*t)))
                .map_or("", |(t, _)| t);
            missing.push((
                date,
                MissingUpdate {
                    kb: format!("KB{}", self.str(*kb)),
                    title: title.to_owned(),
                    severity,
                    cves: cves.into_iter().map(str::to_owned).collect(),
                    released_at: released_at(date),
                },
            ));
        }
        missing.sort_by(|(da, a), (db, b)| db.cmp(da).then_with(|| b.kb.cmp(&a.kb)));
        let cves = open
            .into_iter()
            .map(|(id, severity)| AssessedCve {
                cve_id: id.to_owned(),
                severity,
                known_exploited: kev.contains(id),
            })
            .collect();
        (missing.into_iter().map(|(_, m)| m).collect(), cves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::parse::tests::{row, zip_of};
    use crate::catalog::parse_definitions;

    const P: &str = "Windows 10 Version 22H2 for x64-based Systems";

    /// 100 <- 200 <- 300 (chain), 400 standalone, 420 <- 450 (only listed
    /// for another product) <- 500, 600 for another product only.
    fn catalog() -> Catalog {
        let q = "Windows 10 Version 21H2 for x64-based Systems";
        let rows = [
            row("20240109", "CVE-2024-0001", "100", P, "Important", ""),
            row("20240213", "CVE-2024-0002", "200", P, "Critical", "100"),
            row(
                "20240213",
                "CVE-2024-0003",
                "200",
                &P.to_lowercase(),
                "System.Object[]",
                "100",
            ),
            row("20240312", "CVE-2024-0004", "300", P, "", "200;999"),
            row("20240312", "ADV240001", "300", P, "None", "200"),
            row("20240409", "CVE-2024-0005", "400", P, "Moderate", ""),
            row("20240514", "CVE-2024-0006", "420", P, "Low", ""),
            row("20240611", "CVE-2024-0007", "450", q, "Low", "420"),
            row("20240709", "CVE-2024-0008", "500", P, "Low", "450"),
            row("20240709", "CVE-2024-0009", "", P, "Low", ""),
            row("20240709", "CVE-2024-0010", "600", q, "Critical", ""),
        ]
        .concat();
        parse_definitions(&zip_of(&rows, None)).expect("parses")
    }

    fn assess(c: &Catalog, installed: &[&str]) -> Assessment {
        let kev: HashSet<String> = ["CVE-2024-0004".to_owned()].into();
        c.assess(
            &AssessmentQuery {
                build: 19045,
                arch: Arch::X64,
                server: false,
                installed_kbs: installed.iter().map(|s| (*s).to_owned()).collect(),
            },
            &kev,
        )
        .expect("assesses")
    }

    fn kbs(a: &Assessment) -> Vec<&str> {
        a.missing.iter().map(|m| m.kb.as_str()).collect()
    }

    fn cves(a: &Assessment) -> Vec<&str> {
        a.cves.iter().map(|c| c.cve_id.as_str()).collect()
    }

    #[test]
    fn nothing_installed_lists_the_newest_of_each_chain() {
        let c = catalog();
        let a = assess(&c, &[]);
        assert_eq!(a.product, P);
        assert_eq!(kbs(&a), ["KB500", "KB400", "KB300"]);
        // Every outstanding update's CVEs are open, also those of 100/200.
        assert_eq!(
            cves(&a),
            [
                "CVE-2024-0001",
                "CVE-2024-0002",
                "CVE-2024-0003",
                "CVE-2024-0004",
                "CVE-2024-0005",
                "CVE-2024-0006",
                "CVE-2024-0008"
            ]
        );
        let kev: Vec<bool> = a.cves.iter().map(|c| c.known_exploited).collect();
        assert_eq!(kev, [false, false, false, true, false, false, false]);
        assert_eq!(a.missing[2].cves, ["CVE-2024-0004"]);
        assert_eq!(a.missing[2].released_at, "2024-03-12T00:00:00Z");
        assert_eq!(a.cves[1].severity, Severity::Critical);
    }

    #[test]
    fn installed_updates_cover_what_they_supersede_across_products() {
        let c = catalog();
        let a = assess(&c, &["KB200", "kb500"]);
        assert_eq!(kbs(&a), ["KB400", "KB300"]);
        assert_eq!(cves(&a), ["CVE-2024-0004", "CVE-2024-0005"]);
        assert_eq!(a.installed_kbs, ["KB200", "KB500"]);
        // 450 (another product's) supersedes 420 transitively for 500.
        let a = assess(&c, &["KB300", "KB400", "KB450"]);
        assert_eq!(kbs(&a), ["KB500"]);
        let a = assess(&c, &["KB300", "KB400", "KB500"]);
        assert!(a.missing.is_empty() && a.cves.is_empty(), "{a:?}");
    }

    #[test]
    fn refuses_unknown_builds_and_bad_kbs() {
        let c = catalog();
        let mut q = AssessmentQuery {
            build: 12345,
            arch: Arch::X64,
            server: false,
            installed_kbs: vec![],
        };
        assert!(matches!(
            c.assess(&q, &HashSet::new()),
            Err(AssessError::UnknownBuild { build: 12345, .. })
        ));
        q.build = 19045;
        q.installed_kbs = vec!["KBx".into()];
        assert!(matches!(
            c.assess(&q, &HashSet::new()),
            Err(AssessError::BadKb(_))
        ));
    }
}
