//! Patch exclusions: recorded decisions not to install an update. An active
//! exclusion takes the update out of the counts and the compliance policy,
//! marks it in device detail and is sent to agents; its CVEs stay open.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{ExclusionId, UserId};
use crate::inventory::{fold_case, is_package_name, normalize_kb, OsFamily, Severity, Update};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExclusionKind {
    Kb,
    Package,
}

impl ExclusionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExclusionKind::Kb => "kb",
            ExclusionKind::Package => "package",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exclusion {
    pub exclusion_id: ExclusionId,
    pub kind: ExclusionKind,
    pub value: String,
    pub os_family: Option<OsFamily>,
    pub reason: String,
    pub created_at: Timestamp,
    pub created_by: UserId,
    pub expires_at: Option<Timestamp>,
}

impl Exclusion {
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    pub fn applies_to(&self, family: OsFamily) -> bool {
        self.os_family.is_none_or(|f| f == family)
    }

    /// Whether this exclusion blocks `update` on a device of `family`.
    pub fn blocks(&self, update: &Update, family: OsFamily) -> bool {
        self.blocks_item(update.kb.as_deref(), update.package.as_deref(), family)
    }

    /// [`Exclusion::blocks`] for an update known only by its KB or package.
    pub fn blocks_item(&self, kb: Option<&str>, package: Option<&str>, family: OsFamily) -> bool {
        if !self.applies_to(family) {
            return false;
        }
        match self.kind {
            ExclusionKind::Kb => kb == Some(self.value.as_str()),
            ExclusionKind::Package => package.is_some_and(|p| p.eq_ignore_ascii_case(&self.value)),
        }
    }

    /// The uniqueness key: kind, family and the value as matched.
    pub fn unique_key(&self) -> Vec<u8> {
        unique_key(self.kind, self.os_family, &self.value)
    }
}

pub fn unique_key(kind: ExclusionKind, family: Option<OsFamily>, value: &str) -> Vec<u8> {
    let family = family.map_or("*", OsFamily::as_str);
    format!("{}|{}|{}", kind.as_str(), family, fold_case(value)).into_bytes()
}

/// Why a proposed exclusion value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("a KB is written KB followed by digits, such as KB5034441")]
    Kb,
    #[error("a package name is 1 to 128 characters from A-Z a-z 0-9 + . _ - starting with a letter or digit")]
    Package,
}

/// Trims and normalises a value for its kind.
///
/// # Errors
/// The value is not a KB or package name.
pub fn normalize_value(kind: ExclusionKind, raw: &str) -> Result<String, ValueError> {
    let trimmed = raw.trim();
    match kind {
        ExclusionKind::Kb => normalize_kb(trimmed).ok_or(ValueError::Kb),
        ExclusionKind::Package if is_package_name(trimmed) => Ok(trimmed.to_string()),
        ExclusionKind::Package => Err(ValueError::Package),
    }
}

/// The first active exclusion in `active` that blocks `update`.
pub fn blocking<'a>(
    active: &'a [Exclusion],
    update: &Update,
    family: OsFamily,
) -> Option<&'a Exclusion> {
    active.iter().find(|e| e.blocks(update, family))
}

/// `(updates_available, critical_count)`: the one place these are derived.
pub fn counts(updates: &[Update], active: &[Exclusion], family: OsFamily) -> (u32, u32) {
    let items = updates
        .iter()
        .map(|u| (u.kb.as_deref(), u.package.as_deref(), u.severity));
    counts_of(items, active, family)
}

/// [`counts`] over `(kb, package, severity)` triples.
pub fn counts_of<'a>(
    items: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, Severity)>,
    active: &[Exclusion],
    family: OsFamily,
) -> (u32, u32) {
    let mut available = 0;
    let mut critical = 0;
    for (kb, package, severity) in items {
        if active.iter().any(|e| e.blocks_item(kb, package, family)) {
            continue;
        }
        available += 1;
        if severity == Severity::Critical {
            critical += 1;
        }
    }
    (available, critical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(kb: Option<&str>, package: Option<&str>, severity: Severity) -> Update {
        Update {
            update_id: kb.or(package).unwrap_or("u").to_string(),
            kb: kb.map(str::to_string),
            package: package.map(str::to_string),
            title: "t".into(),
            severity,
            cves: vec![],
            released_at: None,
        }
    }

    fn exclusion(kind: ExclusionKind, value: &str, family: Option<OsFamily>) -> Exclusion {
        Exclusion {
            exclusion_id: ExclusionId::generate(),
            kind,
            value: value.into(),
            os_family: family,
            reason: String::new(),
            created_at: Timestamp(0),
            created_by: UserId::generate(),
            expires_at: None,
        }
    }

    #[test]
    fn an_exclusion_removes_its_update_from_the_counts() {
        let updates = vec![
            update(Some("KB1"), None, Severity::Critical),
            update(Some("KB2"), None, Severity::Critical),
            update(Some("KB3"), None, Severity::Low),
        ];
        assert_eq!(counts(&updates, &[], OsFamily::Windows), (3, 2));
        let ex = vec![exclusion(ExclusionKind::Kb, "KB1", Some(OsFamily::Windows))];
        assert_eq!(counts(&updates, &ex, OsFamily::Windows), (2, 1));
        assert_eq!(counts(&updates, &ex, OsFamily::Linux), (3, 2));
    }

    #[test]
    fn package_exclusions_match_case_insensitively() {
        let u = update(None, Some("OpenSSL"), Severity::Important);
        let ex = exclusion(ExclusionKind::Package, "openssl", None);
        assert!(ex.blocks(&u, OsFamily::Linux));
        assert_eq!(
            unique_key(ExclusionKind::Package, None, "OpenSSL"),
            unique_key(ExclusionKind::Package, None, "openssl")
        );
    }

    #[test]
    fn expired_exclusions_are_inactive() {
        let mut ex = exclusion(ExclusionKind::Kb, "KB1", None);
        ex.expires_at = Some(Timestamp(100));
        assert!(ex.is_active(Timestamp(99)));
        assert!(!ex.is_active(Timestamp(100)));
    }

    #[test]
    fn values_are_trimmed_and_normalised() {
        assert_eq!(
            normalize_value(ExclusionKind::Kb, " kb 5034441 "),
            Ok("KB5034441".into())
        );
        assert_eq!(
            normalize_value(ExclusionKind::Package, " nginx "),
            Ok("nginx".into())
        );
        assert_eq!(
            normalize_value(ExclusionKind::Package, "rm -rf"),
            Err(ValueError::Package)
        );
    }
}

/// `POST /api/patch-exclusions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewExclusion {
    #[schema(value_type = ExclusionKind)]
    pub kind: String,
    pub value: String,
    #[schema(value_type = Option<OsFamily>)]
    pub os_family: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub reason: String,
    #[schema(value_type = Option<Timestamp>)]
    pub expires_at: Option<String>,
}

mod ops {
    use super::*;
    use crate::error::{check_text, Checks, RelayError, RelayResult};
    use crate::relay::Relay;
    use crate::store::{Batch, Table};

    impl Relay {
        /// Adds an exclusion; it takes effect on counts and agents at once.
        ///
        /// # Errors
        /// 422 for invalid fields, 409 naming the existing exclusion.
        pub async fn create_exclusion(
            &self,
            req: NewExclusion,
            by: UserId,
        ) -> RelayResult<Exclusion> {
            let exclusion = self.check_exclusion(req, by, self.clock.now())?;
            {
                let mut writer = self.store.writer();
                let mut batch = Batch::new();
                Self::stage_exclusion(&writer, &mut batch, &exclusion)?;
                writer.apply(batch)?;
                self.refresh_exclusions()?;
            }
            self.store.durable().await?;
            Ok(exclusion)
        }

        /// Validates a new exclusion into the record it would create.
        ///
        /// # Errors
        /// 422 for invalid fields.
        pub fn check_exclusion(
            &self,
            req: NewExclusion,
            by: UserId,
            now: Timestamp,
        ) -> RelayResult<Exclusion> {
            let mut checks = Checks::new();
            let kind = match req.kind.as_str() {
                "kb" => Some(ExclusionKind::Kb),
                "package" => Some(ExclusionKind::Package),
                _ => None,
            };
            checks.check(kind.is_some(), "kind", "must be kb or package");
            let os_family = req.os_family.as_deref().and_then(|f| {
                let family = OsFamily::parse(f);
                checks.check(
                    family.is_some(),
                    "os_family",
                    "must be windows, macos or linux",
                );
                family
            });
            let value = kind.and_then(|k| match normalize_value(k, &req.value) {
                Ok(v) => Some(v),
                Err(err) => {
                    checks.fail("value", err.to_string());
                    None
                }
            });
            check_text(&mut checks, "reason", &req.reason, 0, 1000);
            let expires_at = req
                .expires_at
                .as_deref()
                .and_then(|t| match Timestamp::parse(t) {
                    Ok(at) if at > now => Some(at),
                    Ok(_) => {
                        checks.fail("expires_at", "must be in the future");
                        None
                    }
                    Err(err) => {
                        checks.fail("expires_at", err.to_string());
                        None
                    }
                });
            checks.finish()?;
            let (Some(kind), Some(value)) = (kind, value) else {
                return Err(RelayError::invalid("value", "is required"));
            };
            Ok(Exclusion {
                exclusion_id: ExclusionId::generate(),
                kind,
                value,
                os_family,
                reason: req.reason.trim().to_string(),
                created_at: now,
                created_by: by,
                expires_at,
            })
        }

        /// Adds the writes that create `exclusion` to `batch`.
        ///
        /// # Errors
        /// 409 naming the existing exclusion; a storage failure.
        pub fn stage_exclusion(
            writer: &crate::store::Writer<'_>,
            batch: &mut Batch,
            exclusion: &Exclusion,
        ) -> RelayResult<()> {
            let unique = exclusion.unique_key();
            if let Some(existing) = writer
                .store()
                .get::<ExclusionId>(Table::ExclusionKeys, &unique)?
            {
                return Err(RelayError::Conflict {
                    detail: format!("the same exclusion exists as {existing}"),
                });
            }
            batch.put(
                Table::Exclusions,
                exclusion.exclusion_id.to_bytes().to_vec(),
                exclusion,
            );
            batch.put(Table::ExclusionKeys, unique, &exclusion.exclusion_id);
            Ok(())
        }

        /// Removes an exclusion.
        ///
        /// # Errors
        /// 404 for an unknown id.
        pub async fn delete_exclusion(&self, id: ExclusionId) -> RelayResult<()> {
            {
                let mut writer = self.store.writer();
                let mut batch = Batch::new();
                Self::stage_exclusion_delete(&writer, &mut batch, id)?;
                writer.apply(batch)?;
                self.refresh_exclusions()?;
            }
            self.store.durable().await?;
            Ok(())
        }

        /// Adds the writes that remove exclusion `id` to `batch`.
        ///
        /// # Errors
        /// 404 for an unknown id; a storage failure.
        pub fn stage_exclusion_delete(
            writer: &crate::store::Writer<'_>,
            batch: &mut Batch,
            id: ExclusionId,
        ) -> RelayResult<Exclusion> {
            let exclusion: Exclusion = writer
                .store()
                .get(Table::Exclusions, &id.to_bytes())?
                .ok_or(RelayError::NotFound("exclusion"))?;
            batch.delete(Table::Exclusions, id.to_bytes().to_vec());
            batch.delete(Table::ExclusionKeys, exclusion.unique_key());
            Ok(exclusion)
        }

        /// Reloads the active exclusions into the fleet index (after a
        /// change, or when one expires).
        ///
        /// # Errors
        /// A storage failure.
        pub fn refresh_exclusions(&self) -> RelayResult<()> {
            let active = self.stored_active_exclusions()?;
            if active == self.fleet.active_exclusions() {
                return Ok(());
            }
            // Recount every update set under the new exclusions, outside the
            // index lock; sets that appear meanwhile are counted in a further
            // pass.
            let mut counts = std::collections::HashMap::new();
            let mut cache = std::collections::HashMap::new();
            let mut pending = self.fleet.set_hashes();
            while !pending.is_empty() {
                for hash in pending {
                    let updates: Vec<Update> = self
                        .update_set_cached(&hash, &mut cache)?
                        .iter()
                        .map(|u| Update::clone(u))
                        .collect();
                    counts.insert(hash, crate::devices::set_counts(&updates, &active));
                }
                pending = self.fleet.replace_exclusions(&active, &counts);
            }
            Ok(())
        }

        /// Exclusions in id order after `after`, with the total.
        ///
        /// # Errors
        /// A storage failure.
        pub fn exclusion_page(
            &self,
            after: Option<ExclusionId>,
            limit: usize,
        ) -> RelayResult<(Vec<Exclusion>, usize)> {
            let key = after.map(|a| a.to_bytes().to_vec()).unwrap_or_default();
            let rows = self
                .store
                .scan_from::<Exclusion>(Table::Exclusions, &key, limit)?;
            Ok((
                rows.into_iter().map(|(_, e)| e).collect(),
                self.store.len(Table::Exclusions),
            ))
        }
    }
}
