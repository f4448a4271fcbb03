//! Courier bundles: how an air-gapped site exchanges data with its MSP on
//! a USB stick.
//!
//! An inbound bundle (MSP → relay) carries the CISA KEV list, the Microsoft
//! update catalog and changes made at the MSP's office (exclusions, reboot
//! schedules, key revocations, the confirmation of an export). It is signed
//! with an Ed25519 key the relay trusts (`patchpilot-relay trust add`), its
//! version only ever rises, and it is applied in one store batch or not at
//! all.
//!
//! An outbound bundle (relay → MSP) carries the events the webhooks could
//! not deliver, each signed exactly as a live delivery, plus the latest
//! compliance snapshot, the device inventory and the open vulnerabilities,
//! when they changed since the last export the MSP confirmed. It is signed
//! with the relay's own Ed25519 key, made on first use and kept in the
//! store (a 0700 directory).
//!
//! The file format lives in [`format`]; the MSP's side (build, verify,
//! replay) in [`msp`].
//!
//! Everything the courier keeps is in the `meta` tree under `courier/`.

pub mod format;
mod inbound;
pub mod msp;
mod outbound;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{RelayError, RelayResult};
use crate::relay::Relay;
use crate::store::{Batch, Store, StoreError, Table};

pub use format::{BundleError, Kind};
pub use inbound::{Applied, Changes, ImportReport};
pub use outbound::{ExportSummary, ExportedEvent, PART_NAMES};

const KEY_RELAY: &[u8] = b"courier/relay_key";
const PREFIX_TRUST: &[u8] = b"courier/trust/";
const KEY_INBOUND: &[u8] = b"courier/inbound";
const KEY_OUT_VERSION: &[u8] = b"courier/out_version";
const PREFIX_EXPORT: &[u8] = b"courier/export/";
const KEY_CONFIRMED: &[u8] = b"courier/confirmed";
/// Unconfirmed export records kept; older ones can no longer be confirmed.
const EXPORTS_KEPT: usize = 64;

/// A public key whose bundles the relay applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    pub public_key: String,
    pub fingerprint: String,
    pub name: String,
    pub added_at: Timestamp,
}

/// The last inbound bundle applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundState {
    pub version: u64,
    pub signer: String,
    pub applied_at: Option<Timestamp>,
}

/// What one export carried, kept until the MSP confirms it or a later one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    pub version: u64,
    /// The last event sequence the export covered.
    pub through: u64,
    /// SHA-256 of each state part as exported (empty when absent).
    pub digests: Vec<(String, String)>,
}

/// The latest export the MSP confirmed having received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    pub export: ExportRecord,
    pub confirmed_at: Option<Timestamp>,
}

/// Why a bundle was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CourierError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("the bundle has version {version}, not newer than version {applied} already applied")]
    Older { version: u64, applied: u64 },
    #[error("the bundle is meant for relay {meant}, not this relay ({this})")]
    WrongRelay { meant: String, this: String },
    #[error("`{entry}` is malformed: {problem}")]
    Contents { entry: String, problem: String },
    #[error("`{entry}` is not an entry this release knows")]
    UnknownEntry { entry: String },
    #[error("the bundle carries nothing to apply")]
    Nothing,
    #[error("{field}: {problem}")]
    Change { field: String, problem: String },
    #[error(
        "the bundle confirms export {version}, which this relay never issued or no longer keeps"
    )]
    UnknownExport { version: u64 },
    #[error(transparent)]
    Relay(#[from] RelayError),
}

impl From<StoreError> for CourierError {
    fn from(err: StoreError) -> Self {
        CourierError::Relay(RelayError::Store(err))
    }
}

impl CourierError {
    /// The limit in bytes, when the bundle was refused for its size.
    pub fn too_large(&self) -> Option<u64> {
        match self {
            CourierError::Bundle(BundleError::TooLarge { limit, .. }) => Some(*limit),
            _ => None,
        }
    }
}

impl From<CourierError> for RelayError {
    /// Storage failures stay what they are; every refusal is a 422 whose
    /// message names the problem.
    fn from(err: CourierError) -> Self {
        match err {
            CourierError::Relay(RelayError::Store(e)) => RelayError::Store(e),
            CourierError::Relay(RelayError::Unavailable) => RelayError::Unavailable,
            other => RelayError::invalid("bundle", other.to_string()),
        }
    }
}

fn export_key(version: u64) -> Vec<u8> {
    let mut key = PREFIX_EXPORT.to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn trust_key(public_hex: &str) -> Vec<u8> {
    let mut key = PREFIX_TRUST.to_vec();
    key.extend_from_slice(public_hex.as_bytes());
    key
}

/// The keys whose bundles the relay applies.
///
/// # Errors
/// A storage failure.
pub fn trusted_keys(store: &Store) -> Result<Vec<TrustedKey>, StoreError> {
    Ok(store
        .scan_prefix::<TrustedKey>(Table::Meta, PREFIX_TRUST, None, usize::MAX)?
        .into_iter()
        .map(|(_, k)| k)
        .collect())
}

fn inbound_state(store: &Store) -> Result<InboundState, StoreError> {
    Ok(store.get(Table::Meta, KEY_INBOUND)?.unwrap_or_default())
}

fn confirmed(store: &Store) -> Result<Confirmed, StoreError> {
    Ok(store.get(Table::Meta, KEY_CONFIRMED)?.unwrap_or_default())
}

/// What `GET /courier` style status reports show.
#[derive(Debug, Clone, Serialize)]
pub struct CourierStatus {
    pub relay_public_key: String,
    pub relay_key_fingerprint: String,
    pub trusted: Vec<TrustedKey>,
    pub inbound_version: u64,
    pub last_export_version: u64,
    pub confirmed_export_version: u64,
    pub confirmed_through_sequence: u64,
}

impl Relay {
    /// The relay's outbound signing key, made and stored on first use.
    ///
    /// # Errors
    /// A storage failure.
    pub fn courier_key(&self) -> Result<SigningKey, CourierError> {
        if let Some(seed) = self.store.get::<Vec<u8>>(Table::Meta, KEY_RELAY)? {
            return seed_key(&seed);
        }
        let mut writer = self.store.writer();
        if let Some(seed) = writer.store().get::<Vec<u8>>(Table::Meta, KEY_RELAY)? {
            return seed_key(&seed);
        }
        let key = format::generate_key();
        let mut batch = Batch::new();
        batch.put(Table::Meta, KEY_RELAY.to_vec(), &key.to_bytes().to_vec());
        writer.apply(batch)?;
        tracing::info!(
            fingerprint = %format::fingerprint(&format::key_hex(&key.verifying_key())),
            "courier signing key created"
        );
        Ok(key)
    }

    /// Keys, versions and cursors of the courier.
    ///
    /// # Errors
    /// A storage failure.
    pub fn courier_status(&self) -> Result<CourierStatus, CourierError> {
        let public = format::key_hex(&self.courier_key()?.verifying_key());
        let confirmed = confirmed(&self.store)?;
        Ok(CourierStatus {
            relay_key_fingerprint: format::fingerprint(&public),
            relay_public_key: public,
            trusted: trusted_keys(&self.store)?,
            inbound_version: inbound_state(&self.store)?.version,
            last_export_version: self.store.get(Table::Meta, KEY_OUT_VERSION)?.unwrap_or(0),
            confirmed_export_version: confirmed.export.version,
            confirmed_through_sequence: confirmed.export.through,
        })
    }

    /// Trusts a public key (64 hex digits) for inbound bundles.
    ///
    /// # Errors
    /// 422 for a malformed key or name, 409 when it is trusted already.
    pub async fn trust_add(&self, public_key: &str, name: &str) -> RelayResult<TrustedKey> {
        let key = format::parse_public_key(public_key)
            .map_err(|problem| RelayError::invalid("public_key", problem))?;
        let mut checks = crate::error::Checks::new();
        crate::error::check_text(&mut checks, "name", name, 1, 100);
        checks.finish()?;
        let public = format::key_hex(&key);
        let record = TrustedKey {
            fingerprint: format::fingerprint(&public),
            public_key: public.clone(),
            name: name.trim().to_string(),
            added_at: self.clock.now(),
        };
        {
            let mut writer = self.store.writer();
            if writer.store().contains(Table::Meta, &trust_key(&public))? {
                return Err(RelayError::Conflict {
                    detail: format!("the key {} is trusted already", record.fingerprint),
                });
            }
            let mut batch = Batch::new();
            batch.put(Table::Meta, trust_key(&public), &record);
            writer.apply(batch)?;
        }
        self.store.sync_now().await?;
        tracing::info!(fingerprint = %record.fingerprint, "courier key trusted");
        Ok(record)
    }

    /// Stops trusting a key, named by its hex or its fingerprint.
    ///
    /// # Errors
    /// 404 when no trusted key matches.
    pub async fn trust_remove(&self, key: &str) -> RelayResult<TrustedKey> {
        let wanted = key.trim().to_ascii_lowercase();
        let record = {
            let mut writer = self.store.writer();
            let record = trusted_keys(writer.store())?
                .into_iter()
                .find(|k| k.public_key == wanted || k.fingerprint == wanted)
                .ok_or(RelayError::NotFound("trusted key"))?;
            let mut batch = Batch::new();
            batch.delete(Table::Meta, trust_key(&record.public_key));
            writer.apply(batch)?;
            record
        };
        self.store.sync_now().await?;
        tracing::info!(fingerprint = %record.fingerprint, "courier key no longer trusted");
        Ok(record)
    }
}

fn seed_key(seed: &[u8]) -> Result<SigningKey, CourierError> {
    let seed: [u8; 32] = seed.try_into().map_err(|_| {
        CourierError::from(StoreError::Decode {
            table: "meta (courier key)",
        })
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn verifying_keys(trusted: &[TrustedKey]) -> Vec<VerifyingKey> {
    trusted
        .iter()
        .filter_map(|k| format::parse_public_key(&k.public_key).ok())
        .collect()
}
