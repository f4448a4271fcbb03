//! The Microsoft security update catalog in WES-NG's `definitions.zip`
//! format, held in memory in a compact form and kept in the store.
//!
//! [`parse_definitions`] validates every row and interns every string
//! (products, KBs, CVEs, titles, supersedence lists), so the 608,740 rows of
//! the full catalog take a few bytes each. [`stage_catalog`] adds a parsed
//! catalog to a [`Batch`](crate::store::Batch) as content-addressed chunks
//! that replace the previous catalog in the same atomic write; [`load`]
//! reads it back at start.

mod assess;
mod parse;
mod persist;
pub mod products;
mod relay;
pub mod systeminfo;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::inventory::Severity;

pub use assess::{kb_digits, AssessError, AssessedCve, Assessment, AssessmentQuery, MissingUpdate};
pub use parse::{parse_definitions, parse_definitions_with_progress, MAX_UNPACKED_BYTES};
pub use persist::{load, stage_catalog, stored_meta, StoredCatalogMeta};
pub use products::{Arch, WindowsProduct};
pub(crate) use relay::load_for_relay;

/// Why a catalog was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("not a readable definitions archive: {0}")]
    Archive(String),
    #[error("the definitions archive holds no {0}")]
    MissingFile(&'static str),
    #[error("{file}: the header has no {column} column")]
    MissingColumn { file: String, column: &'static str },
    #[error("{file} line {line}, column {column}: {reason}")]
    Row {
        file: String,
        line: u64,
        column: String,
        reason: String,
    },
    #[error("{file} unpacks to more than {limit} bytes")]
    TooLarge { file: String, limit: u64 },
    #[error("the stored catalog is damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Where the catalog came from: the dates in its file names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogVersion {
    /// `CVEs_YYYYMMDD.csv` as `YYYY-MM-DD`: the catalog version.
    pub cves_date: String,
    /// `Custom_YYYYMMDD.csv` as `YYYY-MM-DD`, when present.
    pub custom_date: Option<String>,
    /// `Version_X.YY.txt`: the WES-NG definitions format version.
    pub format: Option<String>,
}

impl CatalogVersion {
    /// The version reported by the API (`catalog_version`).
    pub fn label(&self) -> &str {
        &self.cves_date
    }
}

/// "No string" in an interned field.
pub(crate) const NONE: u32 = u32::MAX;

/// One catalog row; strings are indices into [`Catalog::strings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// `DatePosted` as `YYYYMMDD`.
    pub date: u32,
    /// The `CVE` field (also `ADV…` advisories and `SP…` service packs), or [`NONE`].
    pub cve: u32,
    /// The `BulletinKB` field, or [`NONE`] when empty.
    pub kb: u32,
    pub title: u32,
    pub product: u32,
    /// Index into [`Catalog::supersedes`].
    pub supersedes: u32,
    pub severity: Severity,
}

/// The parsed catalog. Serialised as is (postcard) into the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub version: CatalogVersion,
    /// Every distinct string of the catalog, once.
    strings: Vec<Box<str>>,
    /// Distinct `Supersedes` lists, as string indices of KBs.
    supersedes: Vec<Box<[u32]>>,
    rows: Vec<Row>,
    #[serde(skip)]
    index: Index,
}

/// Lookup tables rebuilt after parsing or loading.
#[derive(Debug, Clone, Default, PartialEq)]
struct Index {
    /// Product key (trimmed, ASCII lower case) -> row indices.
    by_product: HashMap<Box<str>, Vec<u32>>,
    /// KB string index -> KB string indices it directly supersedes (any product).
    supersedes: HashMap<u32, Vec<u32>>,
    /// KB text -> string index.
    kb_ids: HashMap<Box<str>, u32>,
}

/// Figures about a catalog, for the CLI and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSummary {
    pub catalog_version: String,
    pub format: Option<String>,
    pub rows: u64,
    pub products: u64,
    pub kbs: u64,
    pub cves: u64,
}

/// Matching key of a catalog product name: trimmed, ASCII lower case (the
/// catalog spells one product in several cases and with trailing blanks).
pub fn product_key(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

impl Catalog {
    pub(crate) fn from_parts(
        version: CatalogVersion,
        strings: Vec<Box<str>>,
        supersedes: Vec<Box<[u32]>>,
        rows: Vec<Row>,
    ) -> Catalog {
        let mut catalog = Catalog {
            version,
            strings,
            supersedes,
            rows,
            index: Index::default(),
        };
        catalog.build_index();
        catalog
    }

    fn build_index(&mut self) {
        let mut index = Index::default();
        let mut product_keys: HashMap<u32, Box<str>> = HashMap::new();
        for (i, row) in (0u32..).zip(&self.rows) {
            let key = product_keys
                .entry(row.product)
                .or_insert_with(|| product_key(self.str(row.product)).into_boxed_str());
            match index.by_product.get_mut(key) {
                Some(rows) => rows.push(i),
                None => {
                    index.by_product.insert(key.clone(), vec![i]);
                }
            }
            if row.kb == NONE {
                continue;
            }
            index
                .kb_ids
                .entry(self.str(row.kb).into())
                .or_insert(row.kb);
            let list = self.supersedes_of(row);
            if list.is_empty() {
                continue;
            }
            let olds = index.supersedes.entry(row.kb).or_default();
            for &old in list {
                if old != row.kb && !olds.contains(&old) {
                    olds.push(old);
                }
            }
        }
        self.index = index;
    }

    /// The string with index `id` (empty for [`NONE`] or out of range).
    pub fn str(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("", |s| s)
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The KBs a row lists in `Supersedes`, as string indices.
    pub fn supersedes_of(&self, row: &Row) -> &[u32] {
        self.supersedes
            .get(row.supersedes as usize)
            .map_or(&[], |l| l)
    }

    /// Row indices of the products whose key (see [`product_key`]) is `key`.
    pub fn rows_of_product_key(&self, key: &str) -> &[u32] {
        self.index.by_product.get(key).map_or(&[], Vec::as_slice)
    }

    /// Every distinct product key of the catalog.
    pub fn product_keys(&self) -> impl Iterator<Item = &str> {
        self.index.by_product.keys().map(|k| &**k)
    }

    /// The string index of a KB (`5034441`, or custom ids such as `SP81X64`).
    pub fn kb_id(&self, kb: &str) -> Option<u32> {
        self.index.kb_ids.get(kb).copied()
    }

    /// KBs (string indices) directly superseded by `kb`, over all products.
    pub fn directly_superseded(&self, kb: u32) -> &[u32] {
        self.index.supersedes.get(&kb).map_or(&[], Vec::as_slice)
    }

    pub fn summary(&self) -> CatalogSummary {
        let mut cves = std::collections::HashSet::new();
        for row in &self.rows {
            if row.cve != NONE {
                cves.insert(row.cve);
            }
        }
        CatalogSummary {
            catalog_version: self.version.label().to_owned(),
            format: self.version.format.clone(),
            rows: self.rows.len() as u64,
            products: self.index.by_product.len() as u64,
            kbs: self.index.kb_ids.len() as u64,
            cves: cves.len() as u64,
        }
    }
}
