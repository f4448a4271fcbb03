//! The WES-NG / MSRC security update catalog (`definitions.zip`).
//!
//! The CSV is streamed out of the zip; only the rows of the wanted products
//! are kept, plus the (small) supersedence graph of the whole catalog, because
//! supersedence chains skip products: a KB listed for one product may
//! supersede a KB that is only listed for another one, which in turn
//! supersedes one of ours.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context as _};

use crate::products::{product_key, Product};
use crate::protocol::{CveRef, Severity, Update};
use crate::timefmt::date_posted_to_rfc3339;

/// One catalog row of a wanted product (one CVE fixed by one KB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRow {
    pub kb: u32,
    /// Normalised `CVE-YYYY-NNNN`; `None` for advisories, blanks and junk.
    pub cve: Option<String>,
    /// `DatePosted` as `YYYYMMDD` (0 when unparsable).
    pub date: u32,
    pub severity: Severity,
}

/// The part of the catalog the simulator needs.
#[derive(Debug, Default)]
pub struct Catalog {
    /// KB -> KBs it directly supersedes, over all products.
    supersedes: HashMap<u32, Vec<u32>>,
    /// Canonical product name -> its rows.
    rows: HashMap<String, Vec<CatalogRow>>,
    /// Data rows read (all products).
    pub rows_read: usize,
}

/// Column positions, found by header name.
struct Columns {
    date: usize,
    cve: usize,
    kb: usize,
    product: usize,
    severity: usize,
    supersedes: usize,
}

impl Columns {
    fn from_headers(headers: &csv::ByteRecord) -> anyhow::Result<Columns> {
        let find = |name: &str| {
            headers
                .iter()
                .position(|h| h == name.as_bytes())
                .with_context(|| format!("catalog has no {name} column"))
        };
        Ok(Columns {
            date: find("DatePosted")?,
            cve: find("CVE")?,
            kb: find("BulletinKB")?,
            product: find("AffectedProduct")?,
            severity: find("Severity")?,
            supersedes: find("Supersedes")?,
        })
    }
}

/// The missing updates of one device, newest first.
#[derive(Debug, Clone, Default)]
pub struct MissingUpdates {
    pub updates: Vec<Update>,
    /// Per update: indices (into `updates`) of the other missing updates it
    /// supersedes, transitively. Installing update `i` makes those obsolete.
    pub supersedes: Vec<Vec<u32>>,
}

impl Catalog {
    /// Streams `CVEs_*.csv` out of `definitions.zip`, keeping `products`.
    pub fn read_zip(path: &Path, products: &[Product]) -> anyhow::Result<Catalog> {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut zip =
            zip::ZipArchive::new(file).with_context(|| format!("read {}", path.display()))?;
        let entry = zip
            .file_names()
            .find(|n| n.starts_with("CVEs") && n.ends_with(".csv"))
            .map(str::to_owned)
            .with_context(|| format!("no CVEs_*.csv in {}", path.display()))?;
        let reader = zip
            .by_name(&entry)
            .with_context(|| format!("open {entry}"))?;
        Catalog::read_csv(reader, products).with_context(|| format!("parse {entry}"))
    }

    /// Reads a catalog CSV (with header row), keeping `products`.
    pub fn read_csv<R: Read>(reader: R, products: &[Product]) -> anyhow::Result<Catalog> {
        let mut csv = csv::ReaderBuilder::new()
            .flexible(true)
            .comment(Some(b'#'))
            .from_reader(reader);
        let columns = Columns::from_headers(csv.byte_headers()?)?;
        let wanted = wanted_keys(products);
        let mut catalog = Catalog::default();
        let mut record = csv::ByteRecord::new();
        let mut key = Vec::new();
        while csv.read_byte_record(&mut record)? {
            catalog.rows_read += 1;
            catalog.add_record(&record, &columns, &wanted, &mut key);
        }
        Ok(catalog)
    }

    fn add_record(
        &mut self,
        record: &csv::ByteRecord,
        columns: &Columns,
        wanted: &HashMap<Vec<u8>, String>,
        key: &mut Vec<u8>,
    ) {
        let field = |i: usize| record.get(i).unwrap_or_default();
        let Some(kb) = parse_digits(field(columns.kb)) else {
            return;
        };
        self.add_supersedes(kb, field(columns.supersedes));
        key.clear();
        key.extend(
            field(columns.product)
                .trim_ascii()
                .iter()
                .map(u8::to_ascii_lowercase),
        );
        let Some(product) = wanted.get(key.as_slice()) else {
            return;
        };
        let row = CatalogRow {
            kb,
            cve: normalize_cve(&String::from_utf8_lossy(field(columns.cve))),
            date: parse_digits(field(columns.date)).unwrap_or(0),
            severity: Severity::from_catalog(&String::from_utf8_lossy(field(columns.severity))),
        };
        self.rows.entry(product.clone()).or_default().push(row);
    }

    fn add_supersedes(&mut self, kb: u32, field: &[u8]) {
        for old in field.split(|b| *b == b';').filter_map(parse_digits) {
            let olds = self.supersedes.entry(kb).or_default();
            if old != kb && !olds.contains(&old) {
                olds.push(old);
            }
        }
    }

    /// The kept rows of `product` (canonical name), empty if none.
    pub fn rows(&self, product: &str) -> &[CatalogRow] {
        self.rows.get(product).map_or(&[], Vec::as_slice)
    }

    /// Every KB superseded, directly or transitively, by one of `roots`.
    pub fn superseded_by(&self, roots: impl IntoIterator<Item = u32>) -> HashSet<u32> {
        let mut seen = HashSet::new();
        let mut stack: Vec<u32> = roots.into_iter().collect();
        while let Some(kb) = stack.pop() {
            for &old in self.supersedes.get(&kb).map_or(&[][..], Vec::as_slice) {
                if seen.insert(old) {
                    stack.push(old);
                }
            }
        }
        seen
    }

    /// Missing updates of a device running `product` with `installed` KBs:
    /// the product's KBs that are neither installed nor superseded
    /// (transitively, over the whole catalog) by an installed KB.
    pub fn missing_updates(&self, product: &str, installed: &[u32]) -> MissingUpdates {
        self.missing_where(product, installed, false)
    }

    /// What Windows Update itself offers: the missing updates less those
    /// superseded by another missing update (only the newest of a chain).
    /// This is also the rule WES-NG applies.
    pub fn applicable_updates(&self, product: &str, installed: &[u32]) -> MissingUpdates {
        self.missing_where(product, installed, true)
    }

    fn missing_where(&self, product: &str, installed: &[u32], newest_only: bool) -> MissingUpdates {
        let mut covered = self.superseded_by(installed.iter().copied());
        covered.extend(installed.iter().copied());
        let candidates: Vec<(u32, KbAggregate)> = aggregate_by_kb(self.rows(product))
            .into_iter()
            .filter(|(kb, _)| !covered.contains(kb))
            .collect();
        let replaced: HashSet<u32> = if newest_only {
            candidates
                .iter()
                .flat_map(|(kb, _)| {
                    let kb = *kb;
                    self.superseded_by([kb])
                        .into_iter()
                        .filter(move |old| *old != kb)
                })
                .collect()
        } else {
            HashSet::new()
        };
        let mut missing: Vec<(u32, KbAggregate)> = candidates
            .into_iter()
            .filter(|(kb, _)| !replaced.contains(kb))
            .collect();
        missing.sort_by_key(|(kb, agg)| std::cmp::Reverse((agg.date(), *kb)));
        let supersedes = self.missing_supersedence(&missing);
        let updates = missing
            .into_iter()
            .map(|(kb, agg)| agg.into_update(kb, product))
            .collect();
        MissingUpdates {
            updates,
            supersedes,
        }
    }

    fn missing_supersedence(&self, missing: &[(u32, KbAggregate)]) -> Vec<Vec<u32>> {
        let position: HashMap<u32, u32> = missing
            .iter()
            .zip(0u32..)
            .map(|((kb, _), i)| (*kb, i))
            .collect();
        missing
            .iter()
            .map(|(kb, _)| {
                let mut older: Vec<u32> = self
                    .superseded_by([*kb])
                    .iter()
                    .filter(|old| *old != kb)
                    .filter_map(|old| position.get(old).copied())
                    .collect();
                older.sort_unstable();
                older
            })
            .collect()
    }
}

/// Lower-cased spellings -> canonical product name.
fn wanted_keys(products: &[Product]) -> HashMap<Vec<u8>, String> {
    products
        .iter()
        .flat_map(|p| {
            p.spellings()
                .map(move |s| (product_key(s).into_bytes(), p.name.clone()))
        })
        .collect()
}

/// Parses an all-digit (after trimming) field as `u32`.
fn parse_digits(field: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(field.trim_ascii()).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `CVE-2024-1234` (any case; also the catalog's `CVE20163247` typo form);
/// advisories (`ADV...`), blanks and junk give `None`.
pub fn normalize_cve(raw: &str) -> Option<String> {
    let s = raw.trim().to_ascii_uppercase();
    let rest = s.strip_prefix("CVE")?;
    let digits: String = match rest.strip_prefix('-') {
        Some(dashed) => {
            let (year, seq) = dashed.split_once('-')?;
            (year.len() == 4).then(|| format!("{year}{seq}"))?
        }
        None => rest.to_owned(),
    };
    let valid = digits.len() >= 8 && digits.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| format!("CVE-{}-{}", &digits[..4], &digits[4..]))
}

/// All rows of one KB for one product.
#[derive(Debug, Default)]
struct KbAggregate {
    cves: BTreeSet<String>,
    severity: Option<Severity>,
    dates: BTreeMap<u32, u32>,
}

impl KbAggregate {
    fn add(&mut self, row: &CatalogRow) {
        if let Some(cve) = &row.cve {
            self.cves.insert(cve.clone());
        }
        self.severity = self.severity.max(Some(row.severity));
        *self.dates.entry(row.date).or_default() += 1;
    }

    /// The most frequent `DatePosted` (later revisions add a few rows with
    /// later dates); ties go to the earliest.
    fn date(&self) -> u32 {
        let best = self
            .dates
            .iter()
            .max_by_key(|(date, n)| (**n, std::cmp::Reverse(**date)));
        best.map_or(0, |(date, _)| *date)
    }

    fn into_update(self, kb: u32, product: &str) -> Update {
        let date = self.date();
        let month = (date > 0).then(|| format!("{}-{:02} ", date / 10_000, date / 100 % 100));
        Update {
            update_id: format!("KB{kb}"),
            kb: Some(format!("KB{kb}")),
            package: None,
            title: format!(
                "{}Security Update for {product} (KB{kb})",
                month.unwrap_or_default()
            ),
            severity: self.severity.unwrap_or(Severity::Unknown),
            cves: self
                .cves
                .into_iter()
                .map(|id| CveRef { id, cvss: None })
                .collect(),
            released_at: date_posted_to_rfc3339(date),
        }
    }
}

fn aggregate_by_kb(rows: &[CatalogRow]) -> BTreeMap<u32, KbAggregate> {
    let mut by_kb: BTreeMap<u32, KbAggregate> = BTreeMap::new();
    for row in rows {
        by_kb.entry(row.kb).or_default().add(row);
    }
    by_kb
}

/// Parses `KB5034441` / `5034441` into 5034441.
pub fn kb_number(kb: &str) -> anyhow::Result<u32> {
    let t = kb.trim();
    let digits = t
        .get(..2)
        .filter(|p| p.eq_ignore_ascii_case("kb"))
        .map_or(t, |_| &t[2..]);
    match parse_digits(digits.as_bytes()) {
        Some(n) => Ok(n),
        None => bail!("not a KB number: {kb:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "\"DatePosted\",\"CVE\",\"BulletinKB\",\"Title\",\"AffectedProduct\",\
                          \"AffectedComponent\",\"Severity\",\"Impact\",\"Supersedes\",\"Exploits\"\n";

    /// Product P: 100 <- 200 <- 300 (chain), 400 (standalone),
    /// 420 <- 450 (listed only for Q) <- 500; 700 (listed under the alias).
    const ROWS: &[(&str, &str, &str, &str, &str, &str)] = &[
        // date, cve, kb, product, severity, supersedes
        (
            "20240109",
            "CVE-2024-0001",
            "100",
            "Windows P",
            "Important",
            "",
        ),
        (
            "20240213",
            "CVE-2024-0002",
            "200",
            "Windows P",
            "Critical",
            "100",
        ),
        (
            "20240213",
            "cve-2024-0003",
            "200",
            "windows p ",
            "System.Object[]",
            "100",
        ),
        (
            "20240312",
            "CVE-2024-0004",
            "300",
            "Windows P",
            "",
            "200;999",
        ),
        ("20240312", "ADV240001", "300", "Windows P", "None", "200"),
        (
            "20240409",
            "CVE-2024-0005",
            "400",
            "Windows P",
            "Moderate",
            "",
        ),
        ("20240514", "CVE-2024-0006", "420", "Windows P", "Low", ""),
        (
            "20240611",
            "CVE-2024-0007",
            "450",
            "Windows Q",
            "Low",
            "420",
        ),
        (
            "20240709",
            "CVE-2024-0008",
            "500",
            "Windows P",
            "Low",
            "450",
        ),
        ("20240709", "CVE-2024-0009", "", "Windows P", "Low", ""),
        (
            "20240709",
            "CVE-2024-0010",
            "600",
            "Windows R",
            "Critical",
            "",
        ),
        (
            "20240806",
            "CVE-2024-0011",
            "700",
            "WINDOWS P ALIAS",
            "Critical",
            "",
        ),
    ];

    fn catalog() -> anyhow::Result<Catalog> {
        let mut csv = String::from(HEADER);
        for (date, cve, kb, product, sev, sup) in ROWS {
            csv.push_str(&format!(
                "\"{date}\",\"{cve}\",\"{kb}\",\"t\",\"{product}\",\"c\",\"{sev}\",\"i\",\"{sup}\",\n"
            ));
        }
        let products = [Product {
            name: "Windows P".into(),
            aliases: vec!["Windows P Alias".into()],
        }];
        Catalog::read_csv(csv.as_bytes(), &products)
    }

    fn missing_ids(c: &Catalog, installed: &[u32]) -> Vec<String> {
        let m = c.missing_updates("Windows P", installed);
        m.updates.into_iter().map(|u| u.update_id).collect()
    }

    #[test]
    fn keeps_only_wanted_products() -> anyhow::Result<()> {
        let c = catalog()?;
        assert_eq!(c.rows_read, ROWS.len());
        assert_eq!(c.rows("Windows P").len(), 9);
        assert!(c.rows("Windows Q").is_empty());
        Ok(())
    }

    #[test]
    fn nothing_installed_everything_missing_newest_first() -> anyhow::Result<()> {
        let c = catalog()?;
        assert_eq!(
            missing_ids(&c, &[]),
            ["KB700", "KB500", "KB420", "KB400", "KB300", "KB200", "KB100"]
        );
        Ok(())
    }

    #[test]
    fn superseded_by_installed_is_not_missing() -> anyhow::Result<()> {
        let c = catalog()?;
        // 200 installed: 100 is superseded by it; 300 and 400 still missing.
        assert_eq!(
            missing_ids(&c, &[200]),
            ["KB700", "KB500", "KB420", "KB400", "KB300"]
        );
        // 300 installed: 200 and (transitively) 100 are covered.
        assert_eq!(
            missing_ids(&c, &[300]),
            ["KB700", "KB500", "KB420", "KB400"]
        );
        // 500 supersedes 450 (another product) which supersedes 420.
        assert_eq!(missing_ids(&c, &[500, 300, 700]), ["KB400"]);
        Ok(())
    }

    #[test]
    fn applicable_updates_keep_only_the_newest_of_a_chain() -> anyhow::Result<()> {
        let c = catalog()?;
        let m = c.applicable_updates("Windows P", &[]);
        let ids: Vec<&str> = m.updates.iter().map(|u| u.update_id.as_str()).collect();
        assert!(ids.contains(&"KB300") && !ids.contains(&"KB200") && !ids.contains(&"KB100"));
        assert!(ids.contains(&"KB500") && !ids.contains(&"KB420"));
        assert!(m.supersedes.iter().all(Vec::is_empty));
        Ok(())
    }

    #[test]
    fn missing_updates_know_what_they_supersede() -> anyhow::Result<()> {
        let c = catalog()?;
        let m = c.missing_updates("Windows P", &[]);
        let ids: Vec<&str> = m.updates.iter().map(|u| u.update_id.as_str()).collect();
        let of = |id: &str| -> Vec<&str> {
            let i = ids
                .iter()
                .position(|x| *x == id)
                .expect("id is in the list");
            m.supersedes[i].iter().map(|j| ids[*j as usize]).collect()
        };
        assert_eq!(of("KB300"), ["KB200", "KB100"]);
        assert_eq!(of("KB500"), ["KB420"]);
        assert!(of("KB400").is_empty());
        Ok(())
    }

    #[test]
    fn aggregates_cves_severity_and_dates() -> anyhow::Result<()> {
        let c = catalog()?;
        let m = c.missing_updates("Windows P", &[]);
        let kb = |id: &str| {
            m.updates
                .iter()
                .find(|u| u.update_id == id)
                .expect("present")
        };
        let u200 = kb("KB200");
        let cves: Vec<&str> = u200.cves.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(cves, ["CVE-2024-0002", "CVE-2024-0003"]);
        assert_eq!(u200.severity, Severity::Critical);
        assert_eq!(u200.kb.as_deref(), Some("KB200"));
        assert_eq!(u200.released_at.as_deref(), Some("2024-02-13T00:00:00Z"));
        assert_eq!(u200.title, "2024-02 Security Update for Windows P (KB200)");
        let u300 = kb("KB300");
        assert_eq!(u300.severity, Severity::Unknown);
        assert_eq!(u300.cves.len(), 1, "advisories are not CVEs");
        assert!(u300.cves.iter().all(|c| c.cvss.is_none()));
        Ok(())
    }

    #[test]
    fn normalises_cve_ids() {
        assert_eq!(
            normalize_cve(" cve-2012-0159").as_deref(),
            Some("CVE-2012-0159")
        );
        assert_eq!(
            normalize_cve("CVE20163247").as_deref(),
            Some("CVE-2016-3247")
        );
        assert_eq!(
            normalize_cve("CVE-2024-12345").as_deref(),
            Some("CVE-2024-12345")
        );
        for junk in [
            "",
            "CVE",
            "ADV190023",
            "CVE-2015-2442CVE-2015-2446",
            "CVE-24-1234",
        ] {
            assert_eq!(normalize_cve(junk), None, "{junk}");
        }
    }

    #[test]
    fn parses_kb_numbers() -> anyhow::Result<()> {
        assert_eq!(kb_number("KB5034441")?, 5034441);
        assert_eq!(kb_number("kb12")?, 12);
        assert_eq!(kb_number("777")?, 777);
        assert!(kb_number("KB").is_err());
        assert!(kb_number("SP81X64").is_err());
        Ok(())
    }
}
