//! Applying an inbound bundle: verify, parse every entry, then stage every
//! change into one batch under the writer lock and apply it, or refuse the
//! whole bundle with the first problem found.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::format::{self, Kind};
use super::{
    confirmed, export_key, inbound_state, trusted_keys, verifying_keys, Confirmed, CourierError,
    ExportRecord, InboundState, KEY_CONFIRMED, KEY_INBOUND, PREFIX_EXPORT,
};
use crate::auth::KeyRecord;
use crate::catalog::Catalog;
use crate::clock::Timestamp;
use crate::error::RelayError;
use crate::events::EventType;
use crate::exclusions::{normalize_value, unique_key, ExclusionKind, NewExclusion};
use crate::ids::{DeviceId, ExclusionId, KeyId, UserId};
use crate::inventory::OsFamily;
use crate::reboots::{NewSchedule, RebootSchedule};
use crate::relay::{KevCatalog, Relay};
use crate::store::{Batch, Table, Writer};

/// The entry names an inbound bundle may carry.
pub const KEV_ENTRY: &str = "kev.json";
pub const CHANGES_ENTRY: &str = "changes.json";
/// The Microsoft catalog, as WES-NG's `definitions.zip`.
pub const CATALOG_ENTRY: &str = "definitions.zip";

/// The user recorded as the author of changes imported without one (the
/// CLI, through the control socket): the all-zero id, `usr_000…`.
pub fn courier_user() -> UserId {
    UserId::from_bytes([0; 16])
}

/// Changes made at the MSP's office, as `changes.json` carries them.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    #[serde(default)]
    pub exclusions: ExclusionChanges,
    #[serde(default)]
    pub reboots: RebootChanges,
    /// Key ids (`key_…`) to revoke.
    #[serde(default)]
    pub revoke_keys: Vec<String>,
    /// The version of the last export the MSP received.
    #[serde(default)]
    pub confirm_export: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExclusionChanges {
    #[serde(default)]
    pub create: Vec<NewExclusionEntry>,
    #[serde(default)]
    pub delete: Vec<ExclusionRef>,
}

/// An exclusion to create: the body of `POST /api/patch-exclusions`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewExclusionEntry {
    pub kind: String,
    pub value: String,
    pub os_family: Option<String>,
    #[serde(default)]
    pub reason: String,
    pub expires_at: Option<String>,
}

/// An exclusion to delete: by id, or by what it excludes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExclusionRef {
    pub exclusion_id: Option<String>,
    pub kind: Option<String>,
    pub value: Option<String>,
    pub os_family: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootChanges {
    #[serde(default)]
    pub schedule: Vec<RebootEntry>,
    /// Device ids whose open schedule is cancelled.
    #[serde(default)]
    pub cancel: Vec<String>,
}

/// A reboot to schedule: the body of the schedule endpoint plus the device.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootEntry {
    pub device_id: String,
    pub at: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub force: bool,
}

/// What an applied bundle changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    pub kev_entries: Option<usize>,
    pub catalog: Option<crate::catalog::CatalogSummary>,
    pub exclusions_created: usize,
    pub exclusions_deleted: usize,
    pub reboots_scheduled: usize,
    pub reboots_cancelled: usize,
    pub keys_revoked: usize,
    pub export_confirmed: Option<u64>,
}

/// `POST /api/bundles` answer.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub bundle_version: u64,
    pub applied: Applied,
}

/// The parsed contents, before anything is staged.
struct Contents {
    kev: Option<KevCatalog>,
    catalog: Option<Arc<Catalog>>,
    changes: Changes,
}

/// Caches to update once the batch has landed.
#[derive(Default)]
struct AfterApply {
    kev: Option<KevCatalog>,
    catalog: Option<Arc<Catalog>>,
    exclusions: bool,
    scheduled: Vec<RebootSchedule>,
    cancelled: Vec<DeviceId>,
    revoked: Vec<KeyRecord>,
}

fn contents_error(entry: &str, problem: impl ToString) -> CourierError {
    CourierError::Contents {
        entry: entry.to_string(),
        problem: problem.to_string(),
    }
}

fn parse_contents(entries: &BTreeMap<String, Vec<u8>>) -> Result<Contents, CourierError> {
    if let Some(unknown) = entries
        .keys()
        .find(|k| ![KEV_ENTRY, CHANGES_ENTRY, CATALOG_ENTRY].contains(&k.as_str()))
    {
        return Err(CourierError::UnknownEntry {
            entry: unknown.clone(),
        });
    }
    if entries.is_empty() {
        return Err(CourierError::Nothing);
    }
    let kev = entries
        .get(KEV_ENTRY)
        .map(|bytes| crate::vulns::parse_kev(bytes).map_err(|e| contents_error(KEV_ENTRY, e)))
        .transpose()?;
    let catalog = entries
        .get(CATALOG_ENTRY)
        .map(|bytes| parse_catalog(bytes).map(Arc::new))
        .transpose()?;
    let changes = match entries.get(CHANGES_ENTRY) {
        Some(bytes) => parse_changes(bytes)?,
        None => Changes::default(),
    };
    Ok(Contents {
        kev,
        catalog,
        changes,
    })
}

/// Parses the catalog entry, naming the first malformed row.
///
/// # Errors
/// Not a definitions archive, or a malformed row.
pub fn parse_catalog(bytes: &[u8]) -> Result<Catalog, CourierError> {
    crate::catalog::parse_definitions(bytes).map_err(|e| contents_error(CATALOG_ENTRY, e))
}

/// Parses `changes.json`, naming the path of the first bad value.
///
/// # Errors
/// Not JSON, or a value of the wrong shape.
pub fn parse_changes(bytes: &[u8]) -> Result<Changes, CourierError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let changes: Changes = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        contents_error(CHANGES_ENTRY, format!("at {path}: {}", err.into_inner()))
    })?;
    de.end().map_err(|e| contents_error(CHANGES_ENTRY, e))?;
    Ok(changes)
}

/// A domain refusal of one change, with the change's place in the file.
fn change_error(field: String, err: RelayError) -> CourierError {
    let problem = match err {
        RelayError::Invalid(errors) => {
            let first = errors.into_iter().next();
            return match first {
                Some(e) => CourierError::Change {
                    field: format!("{field}.{}", e.field),
                    problem: e.message,
                },
                None => CourierError::Change {
                    field,
                    problem: "is invalid".into(),
                },
            };
        }
        RelayError::NotFound(what) => format!("no such {what}"),
        RelayError::Conflict { detail } => detail,
        other => return CourierError::Relay(other),
    };
    CourierError::Change { field, problem }
}

impl Relay {
    /// Verifies and applies an inbound bundle, all at once or not at all.
    /// `by` is the admin who imports it (none through the control socket).
    ///
    /// # Errors
    /// [`CourierError`] naming the problem; the store is left as it was.
    pub async fn import_bundle(
        &self,
        bytes: Vec<u8>,
        by: Option<UserId>,
    ) -> Result<ImportReport, CourierError> {
        let limit = self.config.courier.max_bundle_bytes;
        let trusted = verifying_keys(&trusted_keys(&self.store)?);
        let verified = tokio::task::spawn_blocking(move || {
            let verified = format::verify(&bytes, limit, Kind::In, &trusted)?;
            parse_contents(&verified.entries).map(|c| (verified.manifest, c))
        })
        .await
        .map_err(|_| CourierError::Relay(RelayError::Unavailable))?;
        let (manifest, contents) = verified?;
        if let Some(meant) = &manifest.relay_id {
            if meant != &self.relay_id {
                return Err(CourierError::WrongRelay {
                    meant: meant.clone(),
                    this: self.relay_id.clone(),
                });
            }
        }

        let now = self.clock.now();
        let by = by.unwrap_or_else(courier_user);
        let applied = {
            let mut writer = self.store.writer();
            let last = inbound_state(writer.store())?;
            if manifest.version <= last.version {
                return Err(CourierError::Older {
                    version: manifest.version,
                    applied: last.version,
                });
            }
            let mut batch = Batch::new();
            let (applied, after) = self.stage_contents(&writer, &mut batch, contents, by, now)?;
            let state = InboundState {
                version: manifest.version,
                signer: manifest.signer.clone(),
                applied_at: Some(now),
            };
            batch.put(Table::Meta, KEY_INBOUND.to_vec(), &state);
            batch.event(
                EventType::BundleImported,
                now,
                serde_json::json!({
                    "bundle_version": manifest.version,
                    "signer": format::fingerprint(&manifest.signer),
                    "created_at": manifest.created_at,
                    "applied": applied,
                }),
            );
            writer.apply(batch)?;
            self.after_apply(after)?;
            applied
        };
        self.store.sync_now().await?;
        tracing::info!(
            bundle_version = manifest.version,
            signer = %format::fingerprint(&manifest.signer),
            "courier bundle applied"
        );
        Ok(ImportReport {
            bundle_version: manifest.version,
            applied,
        })
    }

    fn stage_contents(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        contents: Contents,
        by: UserId,
        now: Timestamp,
    ) -> Result<(Applied, AfterApply), CourierError> {
        let mut applied = Applied::default();
        let mut after = AfterApply::default();
        if let Some(kev) = contents.kev {
            crate::vulns::stage_kev(writer.store(), batch, &kev)?;
            applied.kev_entries = Some(kev.cves.len());
            after.kev = Some(kev);
        }
        if let Some(catalog) = contents.catalog {
            crate::catalog::stage_catalog(writer.store(), batch, &catalog).map_err(
                |e| match e {
                    crate::catalog::CatalogError::Store(e) => CourierError::from(e),
                    other => contents_error(CATALOG_ENTRY, other),
                },
            )?;
            applied.catalog = Some(catalog.summary());
            after.catalog = Some(catalog);
        }
        let changes = contents.changes;
        self.stage_exclusions(writer, batch, changes.exclusions, by, now, &mut applied)?;
        after.exclusions = applied.exclusions_created + applied.exclusions_deleted > 0;
        self.stage_reboots(writer, batch, changes.reboots, by, now, &mut after)?;
        applied.reboots_scheduled = after.scheduled.len();
        applied.reboots_cancelled = after.cancelled.len();
        for (i, raw) in changes.revoke_keys.iter().enumerate() {
            let field = format!("changes.revoke_keys[{i}]");
            let id: KeyId = raw.parse().map_err(|_| CourierError::Change {
                field: field.clone(),
                problem: "is not a key id".into(),
            })?;
            if let Some(key) = self
                .stage_revoke_key(batch, id, now)
                .map_err(|e| change_error(field, e))?
            {
                after.revoked.push(key);
            }
        }
        applied.keys_revoked = after.revoked.len();
        if let Some(version) = changes.confirm_export {
            applied.export_confirmed = stage_confirmation(writer, batch, version, now)?;
        }
        Ok((applied, after))
    }

    fn stage_exclusions(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        changes: ExclusionChanges,
        by: UserId,
        now: Timestamp,
        applied: &mut Applied,
    ) -> Result<(), CourierError> {
        let mut deleted = HashSet::new();
        for (i, entry) in changes.delete.iter().enumerate() {
            let field = format!("changes.exclusions.delete[{i}]");
            let id =
                resolve_exclusion(writer, entry).map_err(|e| change_error(field.clone(), e))?;
            if !deleted.insert(id) {
                return Err(CourierError::Change {
                    field,
                    problem: "deletes the same exclusion twice".into(),
                });
            }
            Self::stage_exclusion_delete(writer, batch, id).map_err(|e| change_error(field, e))?;
        }
        applied.exclusions_deleted = deleted.len();

        let mut created = HashSet::new();
        for (i, entry) in changes.create.into_iter().enumerate() {
            let field = format!("changes.exclusions.create[{i}]");
            let req = NewExclusion {
                kind: entry.kind,
                value: entry.value,
                os_family: entry.os_family,
                reason: entry.reason,
                expires_at: entry.expires_at,
            };
            let exclusion = self
                .check_exclusion(req, by, now)
                .map_err(|e| change_error(field.clone(), e))?;
            if !created.insert(exclusion.unique_key()) {
                return Err(CourierError::Change {
                    field,
                    problem: "creates the same exclusion twice".into(),
                });
            }
            Self::stage_exclusion(writer, batch, &exclusion).map_err(|e| change_error(field, e))?;
        }
        applied.exclusions_created = created.len();
        Ok(())
    }

    fn stage_reboots(
        &self,
        writer: &Writer<'_>,
        batch: &mut Batch,
        changes: RebootChanges,
        by: UserId,
        now: Timestamp,
        after: &mut AfterApply,
    ) -> Result<(), CourierError> {
        let mut devices = HashSet::new();
        for (i, raw) in changes.cancel.iter().enumerate() {
            let field = format!("changes.reboots.cancel[{i}]");
            let device = parse_device(&field, raw)?;
            if !devices.insert(device) {
                return Err(CourierError::Change {
                    field,
                    problem: "names the same device twice".into(),
                });
            }
            if self
                .stage_close_open(writer, batch, device, now)
                .map_err(|e| change_error(field, e))?
                .is_some()
            {
                after.cancelled.push(device);
            }
        }
        for (i, entry) in changes.schedule.into_iter().enumerate() {
            let field = format!("changes.reboots.schedule[{i}]");
            let device = parse_device(&format!("{field}.device_id"), &entry.device_id)?;
            if !devices.insert(device) {
                return Err(CourierError::Change {
                    field,
                    problem: "names a device another reboot change names".into(),
                });
            }
            let req = NewSchedule {
                at: entry.at,
                message: entry.message,
                force: entry.force,
            };
            let schedule = self
                .check_reboot(device, req, by, now)
                .map_err(|e| change_error(field.clone(), e))?;
            self.stage_reboot(writer, batch, &schedule, now)
                .map_err(|e| change_error(field, e))?;
            after.scheduled.push(schedule);
        }
        Ok(())
    }

    fn after_apply(&self, after: AfterApply) -> Result<(), CourierError> {
        if let Some(kev) = after.kev {
            self.replace_kev(kev);
        }
        if let Some(catalog) = after.catalog {
            self.install_catalog(catalog);
        }
        for device in after.cancelled {
            self.fleet.set_scheduled(device, None);
        }
        for s in after.scheduled {
            self.fleet
                .set_scheduled(s.device_id, Some((s.schedule_id, s.at)));
        }
        for key in after.revoked {
            tracing::info!(key_id = %key.key_id, "API key revoked by a courier bundle");
            self.auth.put_key(key);
        }
        if after.exclusions {
            self.refresh_exclusions()?;
        }
        Ok(())
    }
}

fn parse_device(field: &str, raw: &str) -> Result<DeviceId, CourierError> {
    raw.parse().map_err(|_| CourierError::Change {
        field: field.to_string(),
        problem: "is not a device id".into(),
    })
}

fn resolve_exclusion(writer: &Writer<'_>, entry: &ExclusionRef) -> Result<ExclusionId, RelayError> {
    if let Some(raw) = &entry.exclusion_id {
        return raw
            .parse()
            .map_err(|_| RelayError::invalid("exclusion_id", "is not an exclusion id"));
    }
    let (Some(kind), Some(value)) = (&entry.kind, &entry.value) else {
        return Err(RelayError::invalid(
            "exclusion_id",
            "name the exclusion by exclusion_id, or by kind and value",
        ));
    };
    let kind = match kind.as_str() {
        "kb" => ExclusionKind::Kb,
        "package" => ExclusionKind::Package,
        _ => return Err(RelayError::invalid("kind", "must be kb or package")),
    };
    let family =
        match &entry.os_family {
            Some(f) => Some(OsFamily::parse(f).ok_or_else(|| {
                RelayError::invalid("os_family", "must be windows, macos or linux")
            })?),
            None => None,
        };
    let value =
        normalize_value(kind, value).map_err(|e| RelayError::invalid("value", e.to_string()))?;
    writer
        .store()
        .get::<ExclusionId>(Table::ExclusionKeys, &unique_key(kind, family, &value))?
        .ok_or(RelayError::NotFound("exclusion"))
}

/// Records that the MSP received export `version` (and every one before).
fn stage_confirmation(
    writer: &Writer<'_>,
    batch: &mut Batch,
    version: u64,
    now: Timestamp,
) -> Result<Option<u64>, CourierError> {
    let current = confirmed(writer.store())?;
    if version <= current.export.version {
        return Ok(None);
    }
    let record: ExportRecord = writer
        .store()
        .get(Table::Meta, &export_key(version))?
        .ok_or(CourierError::UnknownExport { version })?;
    let confirmed = Confirmed {
        export: record,
        confirmed_at: Some(now),
    };
    batch.put(Table::Meta, KEY_CONFIRMED.to_vec(), &confirmed);
    for key in writer
        .store()
        .keys_with_prefix(Table::Meta, PREFIX_EXPORT, usize::MAX)?
    {
        let older = key
            .get(PREFIX_EXPORT.len()..)
            .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
            .is_some_and(|v| u64::from_be_bytes(v) <= version);
        if older {
            batch.delete(Table::Meta, key);
        }
    }
    Ok(Some(version))
}
