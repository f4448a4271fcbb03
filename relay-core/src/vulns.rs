//! Vulnerabilities across the fleet: every CVE open on at least one device,
//! derived from the stored update sets, flagged `known_exploited` from the
//! CISA KEV catalog the relay holds.

use std::collections::{HashMap, HashSet};

use crate::devices::{SetHash, UpdateKey};
use crate::inventory::Update;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::RelayResult;
use crate::ids::DeviceId;
use crate::inventory::Severity;
use crate::relay::{KevCatalog, Relay};
use crate::store::{Batch, Store, StoreError, Table};

const META_KEV_VERSION: &[u8] = b"kev_version";

/// One CVE open on the fleet.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Vulnerability {
    pub cve_id: String,
    pub severity: Severity,
    pub cvss_score: Option<f32>,
    pub known_exploited: bool,
    pub affected_devices: usize,
    pub device_ids: Vec<DeviceId>,
    pub fixed_by: Vec<String>,
    pub first_detected: Option<Timestamp>,
    pub last_detected: Option<Timestamp>,
}

#[derive(Debug, Clone, Default)]
pub struct VulnFilter {
    pub severity: Option<Severity>,
    pub device_id: Option<DeviceId>,
    pub known_exploited: Option<bool>,
    pub min_cvss: Option<f32>,
}

#[derive(Deserialize)]
struct KevFile {
    #[serde(rename = "catalogVersion")]
    catalog_version: Option<String>,
    vulnerabilities: Vec<KevEntry>,
}

#[derive(Deserialize)]
struct KevEntry {
    #[serde(rename = "cveID")]
    cve_id: String,
}

/// Why a KEV file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KevError {
    #[error("not a CISA KEV catalog: {0}")]
    Format(String),
    #[error("entry {index} has an invalid CVE id")]
    BadCve { index: usize },
}

/// Parses the CISA KEV JSON into a catalog.
///
/// # Errors
/// The text is not the KEV format, or an entry's CVE id is invalid.
pub fn parse_kev(text: &[u8]) -> Result<KevCatalog, KevError> {
    let file: KevFile =
        serde_json::from_slice(text).map_err(|e| KevError::Format(e.to_string()))?;
    let mut cves = HashSet::with_capacity(file.vulnerabilities.len());
    for (index, entry) in file.vulnerabilities.iter().enumerate() {
        let cve =
            crate::inventory::normalize_cve(&entry.cve_id).ok_or(KevError::BadCve { index })?;
        cves.insert(cve);
    }
    Ok(KevCatalog {
        version: file.catalog_version,
        cves,
    })
}

/// The KEV catalog as stored.
///
/// # Errors
/// A storage failure.
pub fn load_kev(store: &Store) -> Result<KevCatalog, StoreError> {
    let version = store.get::<String>(Table::Meta, META_KEV_VERSION)?;
    let cves = store
        .keys(Table::Kev)?
        .into_iter()
        .filter_map(|k| String::from_utf8(k).ok())
        .collect();
    Ok(KevCatalog { version, cves })
}

/// Adds the writes that replace the stored KEV catalog with `catalog`.
///
/// # Errors
/// A storage failure.
pub fn stage_kev(store: &Store, batch: &mut Batch, catalog: &KevCatalog) -> Result<(), StoreError> {
    for old in store.keys(Table::Kev)? {
        if !catalog
            .cves
            .contains(std::str::from_utf8(&old).unwrap_or(""))
        {
            batch.delete(Table::Kev, old);
        }
    }
    for cve in &catalog.cves {
        batch.put(Table::Kev, cve.as_bytes().to_vec(), &());
    }
    match &catalog.version {
        Some(v) => batch.put(Table::Meta, META_KEV_VERSION.to_vec(), v),
        None => batch.delete(Table::Meta, META_KEV_VERSION.to_vec()),
    }
    Ok(())
}

impl Relay {
    /// Replaces the KEV catalog, all at once.
    ///
    /// # Errors
    /// A storage failure; the old catalog stays.
    pub async fn import_kev(&self, catalog: KevCatalog) -> RelayResult<usize> {
        {
            let mut writer = self.store.writer();
            let mut batch = Batch::new();
            stage_kev(writer.store(), &mut batch, &catalog)?;
            writer.apply(batch)?;
        }
        self.store.sync_now().await?;
        let count = catalog.cves.len();
        self.replace_kev(catalog);
        Ok(count)
    }

    /// Puts an applied catalog in force (after [`stage_kev`]'s batch landed).
    pub fn replace_kev(&self, catalog: KevCatalog) {
        let count = catalog.cves.len();
        *self.kev.write().unwrap_or_else(|p| p.into_inner()) = catalog;
        tracing::info!(entries = count, "KEV catalog imported");
    }

    pub fn is_known_exploited(&self, cve: &str) -> bool {
        self.kev
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .cves
            .contains(cve)
    }

    /// Every CVE open on the fleet, filtered and in the default order.
    /// Rows carry everything but `device_ids`, `first_detected` and
    /// `last_detected`, which [`Relay::expand_vulnerability`] fills in for
    /// the rows actually returned.
    ///
    /// The work is per distinct update and per distinct update set, never
    /// per device × CVE: 10,000 devices sharing a few hundred sets cost as
    /// much as those sets.
    ///
    /// # Errors
    /// A storage failure.
    pub fn vulnerabilities(&self, filter: &VulnFilter) -> RelayResult<Vec<VulnRow>> {
        let groups: Vec<(SetHash, Vec<DeviceId>)> = match filter.device_id {
            Some(id) => self
                .fleet
                .devices_by_set()
                .into_iter()
                .find(|(_, devices)| devices.contains(&id))
                .map(|(hash, _)| vec![(hash, vec![id])])
                .unwrap_or_default(),
            None => self.fleet.devices_by_set().into_iter().collect(),
        };

        // Which sets hold each distinct update.
        let mut holders: HashMap<UpdateKey, Vec<u32>> = HashMap::new();
        for (i, (hash, _)) in groups.iter().enumerate() {
            let keys: Vec<UpdateKey> = self.store.get(Table::UpdateSets, hash)?.unwrap_or_default();
            for key in keys {
                holders.entry(key).or_default().push(i as u32);
            }
        }

        // Each distinct update once: its CVEs, severity and name.
        let mut by_cve: HashMap<String, CveAcc> = HashMap::new();
        for (key, sets) in &holders {
            let Some(update) = self.store.get::<Update>(Table::Updates, key)? else {
                continue;
            };
            let fix = update
                .kb
                .clone()
                .unwrap_or_else(|| update.update_id.clone());
            for cve in &update.cves {
                let acc = by_cve.entry(cve.id.clone()).or_insert_with(|| CveAcc {
                    severity: update.severity,
                    cvss: None,
                    fixed_by: Vec::new(),
                    sets: Vec::new(),
                });
                acc.severity = acc.severity.max(update.severity);
                acc.cvss = max_score(acc.cvss, cve.cvss);
                acc.fixed_by.push(fix.clone());
                acc.sets.extend_from_slice(sets);
            }
        }

        let mut rows = Vec::with_capacity(by_cve.len());
        for (cve_id, mut acc) in by_cve {
            acc.sets.sort_unstable();
            acc.sets.dedup();
            acc.fixed_by.sort();
            acc.fixed_by.dedup();
            let affected = acc.sets.iter().map(|i| groups[*i as usize].1.len()).sum();
            let row = VulnRow {
                known_exploited: self.is_known_exploited(&cve_id),
                cve_id,
                severity: acc.severity,
                cvss_score: acc.cvss,
                affected_devices: affected,
                fixed_by: acc.fixed_by,
                sets: acc
                    .sets
                    .iter()
                    .map(|i| groups[*i as usize].1.clone())
                    .collect(),
            };
            if keep(&row, filter) {
                rows.push(row);
            }
        }
        rows.sort_by_cached_key(VulnRow::sort_key);
        Ok(rows)
    }

    /// The full entry of one row: its devices and detection times.
    ///
    /// # Errors
    /// A storage failure.
    pub fn expand_vulnerability(&self, row: &VulnRow) -> RelayResult<Vulnerability> {
        let mut device_ids: Vec<DeviceId> = row.sets.iter().flatten().copied().collect();
        device_ids.sort_unstable();
        device_ids.dedup();
        let last_detected = device_ids
            .iter()
            .filter_map(|d| self.fleet.last_seen_of(*d))
            .max();
        Ok(Vulnerability {
            cve_id: row.cve_id.clone(),
            severity: row.severity,
            cvss_score: row.cvss_score,
            known_exploited: row.known_exploited,
            affected_devices: device_ids.len(),
            device_ids,
            fixed_by: row.fixed_by.clone(),
            first_detected: self.store.get(Table::CvesSeen, row.cve_id.as_bytes())?,
            last_detected,
        })
    }
}

struct CveAcc {
    severity: Severity,
    cvss: Option<f32>,
    fixed_by: Vec<String>,
    sets: Vec<u32>,
}

/// One CVE open on the fleet, before its device list is expanded.
#[derive(Debug, Clone)]
pub struct VulnRow {
    pub cve_id: String,
    pub severity: Severity,
    pub cvss_score: Option<f32>,
    pub known_exploited: bool,
    pub affected_devices: usize,
    pub fixed_by: Vec<String>,
    /// The devices of each update set that leaves the CVE open.
    sets: Vec<Vec<DeviceId>>,
}

impl VulnRow {
    /// The default order: known-exploited first, then severity, then the
    /// number of affected devices; the CVE id breaks ties.
    pub fn sort_key(
        &self,
    ) -> (
        bool,
        std::cmp::Reverse<Severity>,
        std::cmp::Reverse<usize>,
        String,
    ) {
        (
            !self.known_exploited,
            std::cmp::Reverse(self.severity),
            std::cmp::Reverse(self.affected_devices),
            self.cve_id.clone(),
        )
    }
}

fn max_score(a: Option<f32>, b: Option<f32>) -> Option<f32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

fn keep(v: &VulnRow, f: &VulnFilter) -> bool {
    f.severity.is_none_or(|s| s == v.severity)
        && f.known_exploited.is_none_or(|k| k == v.known_exploited)
        && f.min_cvss
            .is_none_or(|min| v.cvss_score.is_some_and(|s| s >= min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kev_json_is_parsed_and_ids_normalised() {
        let json = br#"{"catalogVersion":"2025.08.25","vulnerabilities":[{"cveID":"cve-2021-44228"},{"cveID":"CVE-2024-21412"}]}"#;
        let kev = parse_kev(json).expect("valid");
        assert_eq!(kev.version.as_deref(), Some("2025.08.25"));
        assert!(kev.cves.contains("CVE-2021-44228"));
        assert!(parse_kev(br#"{"vulnerabilities":[{"cveID":"nope"}]}"#).is_err());
        assert!(parse_kev(b"[]").is_err());
    }

    #[test]
    fn the_real_kev_catalog_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/kev/known_exploited_vulnerabilities.json");
        let Ok(text) = std::fs::read(&path) else {
            panic!("the shared KEV data is missing at {}", path.display());
        };
        let kev = parse_kev(&text).expect("the published catalog parses");
        assert_eq!(kev.cves.len(), 1404);
    }
}
