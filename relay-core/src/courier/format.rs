//! The courier bundle file: a plain ustar archive holding `manifest.json`,
//! `manifest.sig` and the entries the manifest lists.
//!
//! The manifest names the bundle's kind (in or out), the relay it is for or
//! from, its version, when it was made, the signer's public key, and the
//! size and SHA-256 of every entry. `manifest.sig` is the Ed25519 signature
//! of [`SIGNING_CONTEXT`] followed by the exact bytes of `manifest.json`,
//! so the signature covers every entry through its digest.
//!
//! Reading is strict and happens wholly in memory, before anything else
//! looks at the contents: only regular files, only plain relative names
//! (no `..`, no leading `/`, no backslashes), no name twice, a bounded count
//! and size, every listed entry present with its digest and nothing more.

use std::collections::BTreeMap;
use std::io::Read;

use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;

/// The manifest's file name inside the archive.
pub const MANIFEST: &str = "manifest.json";
/// The signature's file name inside the archive.
pub const SIGNATURE: &str = "manifest.sig";
/// Prefixed to the manifest bytes before signing, so that a courier
/// signature can never be mistaken for a signature over anything else.
pub const SIGNING_CONTEXT: &[u8] = b"patchpilot-courier-bundle-v1\n";
/// The manifest layout this release writes and reads.
pub const FORMAT: u32 = 1;
/// Entries a bundle may hold besides the manifest and its signature.
const MAX_ENTRIES: usize = 64;
const MAX_NAME: usize = 100;

/// Which way a bundle travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// From the MSP's office to a site relay.
    In,
    /// From a site relay to the MSP's office.
    Out,
}

/// One entry's size and digest, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryDigest {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What a bundle says about itself; signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub kind: Kind,
    /// Inbound: the relay it is meant for (any relay when absent).
    /// Outbound: the relay that wrote it.
    pub relay_id: Option<String>,
    /// Rises with every bundle of the same kind from the same signer.
    pub version: u64,
    pub created_at: Timestamp,
    /// The signer's Ed25519 public key, lowercase hex.
    pub signer: String,
    pub entries: Vec<EntryDigest>,
}

/// A bundle whose structure, signature and digests have been checked.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    pub entries: BTreeMap<String, Vec<u8>>,
}

/// Why a bundle was refused. Each message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the bundle is empty")]
    Empty,
    #[error("the bundle is not a courier archive: {0}")]
    NotAnArchive(String),
    #[error("the bundle is truncated: {0}")]
    Truncated(String),
    #[error("the entry `{path}` climbs out of the archive or is not a plain relative name")]
    UnsafePath { path: String },
    #[error("the entry `{path}` is not a regular file")]
    NotAFile { path: String },
    #[error("the entry `{path}` appears twice")]
    Duplicate { path: String },
    #[error("the bundle holds more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("the bundle has no {0}")]
    Missing(&'static str),
    #[error("the manifest is malformed: {0}")]
    BadManifest(String),
    #[error("the bundle is signed by {fingerprint}, a key this relay does not trust")]
    UntrustedSigner { fingerprint: String },
    #[error("the signature does not verify: the manifest was altered or signed by another key")]
    BadSignature,
    #[error("the entry `{path}` does not match its digest in the manifest: it was altered")]
    Tampered { path: String },
    #[error(
        "the manifest lists `{path}` but the archive does not hold it (truncated or stripped)"
    )]
    MissingEntry { path: String },
    #[error("the archive holds `{path}`, which the manifest does not list")]
    Unlisted { path: String },
    #[error("this is an {found} bundle where an {expected} bundle was expected")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
    },
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::In => "inbound",
            Kind::Out => "outbound",
        }
    }
}

/// A public key as hex, the way the CLI prints and reads it.
pub fn key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// A short, stable name for a key: the first 16 hex digits of its SHA-256.
pub fn fingerprint(key_hex: &str) -> String {
    let digest = Sha256::digest(key_hex.as_bytes());
    format!("ed25519:{}", &hex::encode(digest)[..16])
}

/// Parses a public key written as 64 hex digits (surrounding space ignored).
///
/// # Errors
/// Not 32 bytes of hex, or not a point on the curve.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "a public key is 64 hex digits")?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "a public key is 64 hex digits (32 bytes)")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_string())
}

/// Parses a secret key written as 64 hex digits (its 32-byte seed).
///
/// # Errors
/// Not 32 bytes of hex.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "a secret key file holds 64 hex digits")?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "a secret key file holds 64 hex digits (32 bytes)")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A secret key as its key file holds it: the seed as 64 hex digits.
pub fn secret_hex(key: &SigningKey) -> String {
    hex::encode(key.to_bytes())
}

/// A fresh signing key from the operating system's randomness.
pub fn generate_key() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}

// === writing ===

/// Builds a bundle: add entries, then sign and pack.
pub struct BundleBuilder {
    kind: Kind,
    relay_id: Option<String>,
    version: u64,
    created_at: Timestamp,
    entries: Vec<(String, Vec<u8>)>,
}

impl BundleBuilder {
    pub fn new(kind: Kind, relay_id: Option<String>, version: u64, created_at: Timestamp) -> Self {
        Self {
            kind,
            relay_id,
            version,
            created_at,
            entries: Vec::new(),
        }
    }

    /// Adds an entry; `path` must be a plain relative name.
    pub fn add(&mut self, path: &str, bytes: Vec<u8>) -> &mut Self {
        self.entries.push((path.to_string(), bytes));
        self
    }

    pub fn manifest(&self, signer: &VerifyingKey) -> Manifest {
        Manifest {
            format: FORMAT,
            kind: self.kind,
            relay_id: self.relay_id.clone(),
            version: self.version,
            created_at: self.created_at,
            signer: key_hex(signer),
            entries: self
                .entries
                .iter()
                .map(|(path, bytes)| EntryDigest {
                    path: path.clone(),
                    size: bytes.len() as u64,
                    sha256: hex::encode(Sha256::digest(bytes)),
                })
                .collect(),
        }
    }

    /// Signs the manifest and writes the archive.
    ///
    /// # Errors
    /// An entry name the archive cannot hold.
    pub fn finish(self, key: &SigningKey) -> Result<Vec<u8>, BundleError> {
        let manifest = self.manifest(&key.verifying_key());
        let manifest_bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BundleError::BadManifest(e.to_string()))?;
        let signature = sign_manifest(key, &manifest_bytes);
        let mut files = vec![
            (MANIFEST.to_string(), manifest_bytes),
            (SIGNATURE.to_string(), signature.to_vec()),
        ];
        files.extend(self.entries);
        pack(&files)
    }
}

/// The signature over a manifest's bytes.
pub fn sign_manifest(key: &SigningKey, manifest: &[u8]) -> [u8; 64] {
    let mut message = SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(manifest);
    key.sign(&message).to_bytes()
}

/// Packs named files into a ustar archive, in the given order, with fixed
/// metadata so that the same input gives the same bytes.
///
/// # Errors
/// A name the archive cannot hold.
pub fn pack(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, BundleError> {
    let mut archive = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        if !is_plain_name(path) {
            return Err(BundleError::UnsafePath { path: path.clone() });
        }
        let mut header = tar::Header::new_ustar();
        header
            .set_path(path)
            .map_err(|_| BundleError::UnsafePath { path: path.clone() })?;
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        archive
            .append(&header, bytes.as_slice())
            .map_err(|e| BundleError::NotAnArchive(e.to_string()))?;
    }
    archive
        .into_inner()
        .map_err(|e| BundleError::NotAnArchive(e.to_string()))
}

// === reading ===

/// A name made only of `[A-Za-z0-9._-]` segments joined by `/`, none of
/// them empty, `.` or `..`, and not too long.
fn is_plain_name(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_NAME
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// Unpacks an archive into memory, refusing anything but plain files with
/// plain names, each once.
///
/// # Errors
/// As [`BundleError`] says.
pub fn unpack(bytes: &[u8], limit: u64) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let size = bytes.len() as u64;
    if size > limit {
        return Err(BundleError::TooLarge { size, limit });
    }
    if bytes.is_empty() {
        return Err(BundleError::Empty);
    }
    if bytes.len() % 512 != 0 {
        return Err(BundleError::Truncated(format!(
            "{size} bytes is not a whole number of 512-byte archive blocks"
        )));
    }
    let mut archive = tar::Archive::new(bytes);
    let entries = archive
        .entries()
        .map_err(|e| BundleError::NotAnArchive(e.to_string()))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::NotAnArchive(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&raw).into_owned();
        if !std::str::from_utf8(&raw).is_ok_and(is_plain_name) {
            return Err(BundleError::UnsafePath { path });
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BundleError::NotAFile { path });
        }
        if files.contains_key(&path) {
            return Err(BundleError::Duplicate { path });
        }
        if files.len() >= MAX_ENTRIES + 2 {
            return Err(BundleError::TooManyEntries);
        }
        let declared = entry
            .header()
            .size()
            .map_err(|e| BundleError::NotAnArchive(e.to_string()))?;
        if declared > size {
            return Err(BundleError::Truncated(format!(
                "`{path}` claims {declared} bytes, more than the whole bundle"
            )));
        }
        let mut content = Vec::with_capacity(declared as usize);
        entry
            .read_to_end(&mut content)
            .map_err(|e| BundleError::Truncated(format!("`{path}` cannot be read: {e}")))?;
        if content.len() as u64 != declared {
            return Err(BundleError::Truncated(format!(
                "`{path}` holds {} of its {declared} bytes",
                content.len()
            )));
        }
        files.insert(path, content);
    }
    if files.is_empty() {
        return Err(BundleError::NotAnArchive("it holds no entries".into()));
    }
    Ok(files)
}

/// The manifest and signature of an unpacked bundle, not yet trusted.
///
/// # Errors
/// Either is missing or malformed.
pub fn manifest_of(files: &BTreeMap<String, Vec<u8>>) -> Result<Manifest, BundleError> {
    let bytes = files.get(MANIFEST).ok_or(BundleError::Missing(MANIFEST))?;
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| BundleError::BadManifest(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(BundleError::BadManifest(format!(
            "format {} is not the format {FORMAT} this release reads",
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Checks a bundle end to end: structure, a signer among `trusted`, the
/// signature, and every entry against its digest.
///
/// # Errors
/// The first problem found, as [`BundleError`].
pub fn verify(
    bytes: &[u8],
    limit: u64,
    expected: Kind,
    trusted: &[VerifyingKey],
) -> Result<Verified, BundleError> {
    let mut files = unpack(bytes, limit)?;
    let manifest = manifest_of(&files)?;
    let signature = files
        .get(SIGNATURE)
        .ok_or(BundleError::Missing(SIGNATURE))?;
    let signature = Signature::from_slice(signature).map_err(|_| BundleError::BadSignature)?;

    let signer = trusted
        .iter()
        .find(|k| key_hex(k) == manifest.signer)
        .ok_or_else(|| BundleError::UntrustedSigner {
            fingerprint: fingerprint(&manifest.signer),
        })?;
    let mut message = SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(&files[MANIFEST]);
    signer
        .verify_strict(&message, &signature)
        .map_err(|_| BundleError::BadSignature)?;
    if manifest.kind != expected {
        return Err(BundleError::WrongKind {
            found: manifest.kind.as_str(),
            expected: expected.as_str(),
        });
    }

    files.remove(MANIFEST);
    files.remove(SIGNATURE);
    let mut seen = std::collections::HashSet::new();
    for listed in &manifest.entries {
        if !seen.insert(listed.path.as_str()) {
            return Err(BundleError::Duplicate {
                path: listed.path.clone(),
            });
        }
        let Some(content) = files.get(&listed.path) else {
            return Err(BundleError::MissingEntry {
                path: listed.path.clone(),
            });
        };
        let digest = hex::encode(Sha256::digest(content));
        if content.len() as u64 != listed.size || digest != listed.sha256 {
            return Err(BundleError::Tampered {
                path: listed.path.clone(),
            });
        }
    }
    if let Some(extra) = files.keys().find(|p| !seen.contains(p.as_str())) {
        return Err(BundleError::Unlisted {
            path: extra.clone(),
        });
    }
    Ok(Verified {
        manifest,
        entries: files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &SigningKey) -> Vec<u8> {
        let mut b = BundleBuilder::new(Kind::In, None, 3, Timestamp(1_700_000_000));
        b.add("changes.json", b"{}".to_vec());
        b.add("kev.json", b"{\"vulnerabilities\":[]}".to_vec());
        b.finish(key).expect("packs")
    }

    #[test]
    fn a_signed_bundle_verifies_with_its_key_only() {
        let key = generate_key();
        let bytes = sample(&key);
        let ok = verify(&bytes, 1 << 20, Kind::In, &[key.verifying_key()]).expect("verifies");
        assert_eq!(ok.manifest.version, 3);
        assert_eq!(ok.entries.len(), 2);
        let other = generate_key();
        let err = verify(&bytes, 1 << 20, Kind::In, &[other.verifying_key()]).expect_err("refused");
        assert!(matches!(err, BundleError::UntrustedSigner { .. }), "{err}");
        let err = verify(&bytes, 1 << 20, Kind::Out, &[key.verifying_key()]).expect_err("refused");
        assert!(matches!(err, BundleError::WrongKind { .. }), "{err}");
    }

    #[test]
    fn a_changed_entry_byte_is_named_as_tampering() {
        let key = generate_key();
        let mut bytes = sample(&key);
        let at = bytes
            .windows(4)
            .position(|w| w == b"vuln")
            .expect("the kev entry is in the archive");
        bytes[at] = b'V';
        let err = verify(&bytes, 1 << 20, Kind::In, &[key.verifying_key()]).expect_err("refused");
        assert_eq!(
            err,
            BundleError::Tampered {
                path: "kev.json".into()
            }
        );
    }

    #[test]
    fn names_that_climb_out_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a\\b",
            "",
            "./a",
            "a//b",
        ] {
            assert!(!is_plain_name(bad), "{bad}");
        }
        assert!(is_plain_name("catalog/definitions.zip"));
    }

    #[test]
    fn truncation_and_oversize_are_named() {
        let key = generate_key();
        let bytes = sample(&key);
        let err = unpack(&bytes[..bytes.len() - 700], 1 << 20).expect_err("refused");
        assert!(matches!(err, BundleError::Truncated(_)), "{err}");
        let err = unpack(&bytes, 100).expect_err("refused");
        assert!(matches!(err, BundleError::TooLarge { .. }), "{err}");
    }
}
