//! Backups: one self-checking file holding every tree of the store.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "PPRELAY-BACKUP\n\0"  16 bytes
//! format version              u32
//! header length, header       u32 + postcard(BackupHeader)
//! per tree:   0x01, name      u8 + u32 + bytes
//! per record: 0x02, key, value u8 + (u32 + bytes) * 2
//! end:        0x00, records   u8 + u64
//! SHA-256 of all of the above 32 bytes
//! ```
//!
//! A snapshot is taken under the store's writer lock, so it is one
//! consistent cut: no batch lands while the trees are read. A restore reads
//! the whole file once to check magic, version, structure and checksum
//! before it creates anything, then imports into a directory of the
//! caller's choosing; swapping it in is the caller's job.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Store, StoreError};

const MAGIC: &[u8; 16] = b"PPRELAY-BACKUP\n\0";
/// The backup format this release writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const TAG_END: u8 = 0;
const TAG_TREE: u8 = 1;
const TAG_RECORD: u8 = 2;
/// No key, value, tree name or header in a sane store comes near this; a
/// larger length means a damaged file, not a reason to allocate.
const MAX_FIELD: usize = 256 << 20;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    pub relay_id: String,
    /// Unix seconds when the snapshot was taken.
    pub created_at: i64,
    /// The record layout version of the store it came from.
    pub record_version: u8,
}

/// The outcome of writing or checking a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub header: BackupHeader,
    pub trees: u64,
    pub records: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path} is not a PatchPilot relay backup")]
    Foreign { path: PathBuf },
    #[error("{path} is a backup in format {found}; this relay reads format {FORMAT_VERSION}")]
    UnknownVersion { path: PathBuf, found: u32 },
    #[error("{path} holds records of layout {found}; this relay reads layout {expected}")]
    UnknownRecords {
        path: PathBuf,
        found: u8,
        expected: u8,
    },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the backup")]
    Write(#[source] io::Error),
    #[error("the target {path} exists already")]
    TargetExists { path: PathBuf },
    #[error("cannot create the restored store at {path}")]
    Target { path: PathBuf, source: sled::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

// === impl Store ===

impl Store {
    /// Writes a consistent snapshot of every tree to `out`.
    ///
    /// Holds the writer lock while reading, so writes wait until the
    /// snapshot is taken; write to a local file, not to a slow peer.
    ///
    /// # Errors
    /// A storage failure while reading, or `out` cannot be written.
    pub fn write_backup(
        &self,
        header: &BackupHeader,
        out: impl Write,
    ) -> Result<BackupSummary, BackupError> {
        let _writer = self.writer();
        let mut out = HashingWriter::new(BufWriter::new(out));
        let header_bytes = postcard::to_stdvec(header)
            .map_err(|e| BackupError::Write(io::Error::other(e.to_string())))?;
        let mut trees = 0u64;
        let mut records = 0u64;
        let mut names = self.db.tree_names();
        names.sort();

        out.put(MAGIC)?;
        out.put(&FORMAT_VERSION.to_le_bytes())?;
        out.field(&header_bytes)?;
        for name in names {
            let tree = self.db.open_tree(&name).map_err(StoreError::from)?;
            out.put(&[TAG_TREE])?;
            out.field(&name)?;
            trees += 1;
            for item in tree.iter() {
                let (key, value) = item.map_err(StoreError::from)?;
                out.put(&[TAG_RECORD])?;
                out.field(&key)?;
                out.field(&value)?;
                records += 1;
            }
        }
        out.put(&[TAG_END])?;
        out.put(&records.to_le_bytes())?;
        let (mut inner, digest, bytes) = out.finish();
        inner.write_all(&digest).map_err(BackupError::Write)?;
        inner.flush().map_err(BackupError::Write)?;
        Ok(BackupSummary {
            header: header.clone(),
            trees,
            records,
            bytes: bytes + 32,
            sha256: hex::encode(digest),
        })
    }
}

/// Checks a backup file end to end without writing anything.
///
/// # Errors
/// The file cannot be read, is not a relay backup, is of an unknown format
/// or record layout, or is damaged (truncated, altered, bad checksum).
pub fn verify_backup(path: &Path) -> Result<BackupSummary, BackupError> {
    read_backup(path, &mut |_| Ok(()))
}

/// Verifies `file`, then imports it into a new store at `target` (which
/// must not exist) and fsyncs it. On error, nothing is left at `target`.
///
/// # Errors
/// As [`verify_backup`], or the target cannot be created or written.
pub fn restore_backup(file: &Path, target: &Path) -> Result<BackupSummary, BackupError> {
    let summary = verify_backup(file)?;
    if target.exists() {
        return Err(BackupError::TargetExists {
            path: target.to_path_buf(),
        });
    }
    let imported = import(file, target);
    if imported.is_err() {
        let _ = std::fs::remove_dir_all(target);
    }
    imported?;
    Ok(summary)
}

fn import(file: &Path, target: &Path) -> Result<(), BackupError> {
    let open_err = |source| BackupError::Target {
        path: target.to_path_buf(),
        source,
    };
    // No background flusher: its thread would keep the database (and its
    // file lock) alive for up to a tick after this function returns, and
    // the caller opens the restored store right away.
    let db = sled::Config::new()
        .path(target)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(None)
        .open()
        .map_err(open_err)?;
    let mut tree: Option<sled::Tree> = None;
    read_backup(file, &mut |item| {
        match item {
            Item::Tree(name) => tree = Some(db.open_tree(name).map_err(open_err)?),
            Item::Record(key, value) => {
                let Some(tree) = &tree else {
                    return Err(damaged(file, "a record before any tree"));
                };
                tree.insert(key, value).map_err(StoreError::from)?;
            }
        }
        Ok(())
    })?;
    db.flush().map_err(StoreError::from)?;
    drop(tree);
    drop(db);
    fsync_dir_tree(target).map_err(|source| BackupError::Read {
        path: target.to_path_buf(),
        source,
    })
}

/// fsync every file under `dir` and the directories themselves: sled's
/// flush is not a durability barrier (see `durability`).
fn fsync_dir_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fsync_dir_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

enum Item<'a> {
    Tree(&'a [u8]),
    Record(&'a [u8], &'a [u8]),
}

fn damaged(path: &Path, reason: &str) -> BackupError {
    BackupError::Damaged {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads the file once, handing each tree and record to `visit`; the
/// checksum is only known to match when this returns `Ok`.
fn read_backup(
    path: &Path,
    visit: &mut dyn FnMut(Item<'_>) -> Result<(), BackupError>,
) -> Result<BackupSummary, BackupError> {
    let file = File::open(path).map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = HashingReader::new(BufReader::new(file), path);

    let mut magic = [0u8; 16];
    if r.exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(BackupError::Foreign {
            path: path.to_path_buf(),
        });
    }
    let found = u32::from_le_bytes(r.array()?);
    if found != FORMAT_VERSION {
        return Err(BackupError::UnknownVersion {
            path: path.to_path_buf(),
            found,
        });
    }
    let header: BackupHeader = postcard::from_bytes(&r.field()?)
        .map_err(|_| damaged(path, "the header cannot be read"))?;
    if header.record_version != super::RECORD_VERSION {
        return Err(BackupError::UnknownRecords {
            path: path.to_path_buf(),
            found: header.record_version,
            expected: super::RECORD_VERSION,
        });
    }

    let (mut trees, mut records) = (0u64, 0u64);
    loop {
        let [tag] = r.array()?;
        match tag {
            TAG_TREE => {
                visit(Item::Tree(&r.field()?))?;
                trees += 1;
            }
            TAG_RECORD if trees > 0 => {
                let key = r.field()?;
                visit(Item::Record(&key, &r.field()?))?;
                records += 1;
            }
            TAG_END => break,
            _ => return Err(damaged(path, "an unknown section")),
        }
    }
    let counted = u64::from_le_bytes(r.array()?);
    if counted != records {
        return Err(damaged(path, "the record count does not match"));
    }

    let (digest, bytes) = r.digest();
    let mut stored = [0u8; 32];
    r.raw_exact(&mut stored)?;
    if stored != digest {
        return Err(damaged(path, "the checksum does not match its contents"));
    }
    if !r.at_end()? {
        return Err(damaged(path, "data follows the checksum"));
    }
    Ok(BackupSummary {
        header,
        trees,
        records,
        bytes: bytes + 32,
        sha256: hex::encode(digest),
    })
}

// === impl HashingWriter ===

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        self.inner.write_all(bytes).map_err(BackupError::Write)
    }

    fn field(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| BackupError::Write(io::Error::other("a record is over 4 GiB")))?;
        self.put(&len.to_le_bytes())?;
        self.put(bytes)
    }

    fn finish(self) -> (W, [u8; 32], u64) {
        (self.inner, self.hash.finalize().into(), self.bytes)
    }
}

// === impl HashingReader ===

struct HashingReader<'p, R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
    path: &'p Path,
}

impl<'p, R: Read> HashingReader<'p, R> {
    fn new(inner: R, path: &'p Path) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
            path,
        }
    }

    fn raw_exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => damaged(self.path, "the file is truncated"),
            _ => BackupError::Read {
                path: self.path.to_path_buf(),
                source: e,
            },
        })
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.raw_exact(buf)?;
        self.hash.update(&*buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BackupError> {
        let mut buf = [0u8; N];
        self.exact(&mut buf)?;
        Ok(buf)
    }

    fn field(&mut self) -> Result<Vec<u8>, BackupError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if len > MAX_FIELD {
            return Err(damaged(self.path, "a field length is out of range"));
        }
        let mut buf = vec![0u8; len];
        self.exact(&mut buf)?;
        Ok(buf)
    }

    fn digest(&mut self) -> ([u8; 32], u64) {
        (std::mem::take(&mut self.hash).finalize().into(), self.bytes)
    }

    fn at_end(&mut self) -> Result<bool, BackupError> {
        let mut one = [0u8; 1];
        match self.inner.read(&mut one) {
            Ok(0) => Ok(true),
            Ok(_) => Ok(false),
            Err(source) => Err(BackupError::Read {
                path: self.path.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;
    use crate::store::{Batch, Table};

    fn header() -> BackupHeader {
        BackupHeader {
            relay_id: "rly_test".into(),
            created_at: 1_700_000_000,
            record_version: crate::store::RECORD_VERSION,
        }
    }

    fn filled_backup(dir: &Path) -> (PathBuf, BackupSummary) {
        let store = temp_store(dir);
        let mut batch = Batch::new();
        for i in 0..50u32 {
            batch.put(
                Table::Devices,
                i.to_be_bytes().to_vec(),
                &format!("device {i}"),
            );
        }
        batch.put(Table::Keys, b"k".to_vec(), &"key record".to_string());
        store.writer().apply(batch).expect("applies");
        let path = dir.join("relay.ppbackup");
        let file = File::create(&path).expect("create");
        let summary = store.write_backup(&header(), file).expect("backup");
        (path, summary)
    }

    #[test]
    fn a_backup_restores_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, written) = filled_backup(dir.path());
        assert_eq!(written.records, 51);
        assert_eq!(written.bytes, std::fs::metadata(&path).expect("meta").len());
        assert_eq!(verify_backup(&path).expect("verifies"), written);

        let target = dir.path().join("restored");
        restore_backup(&path, &target).expect("restores");
        let restored = Store::open(&crate::store::StoreOptions {
            path: target,
            cache_capacity_bytes: 1 << 20,
            flush_every_ms: 500,
            durable_acks: false,
        })
        .expect("opens");
        assert_eq!(restored.len(Table::Devices), 50);
        let value: Option<String> = restored
            .get(Table::Devices, &7u32.to_be_bytes())
            .expect("get");
        assert_eq!(value.as_deref(), Some("device 7"));
    }

    #[test]
    fn a_flipped_byte_is_refused_and_nothing_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = filled_backup(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");

        let target = dir.path().join("restored");
        let err = restore_backup(&path, &target).expect_err("damaged");
        assert!(matches!(err, BackupError::Damaged { .. }), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn truncated_foreign_and_future_files_are_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = filled_backup(dir.path());
        let bytes = std::fs::read(&path).expect("read");

        std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("write");
        let err = verify_backup(&path).expect_err("truncated");
        assert!(err.to_string().contains("damaged"), "{err}");

        std::fs::write(&path, b"SQLite format 3\0 and so on").expect("write");
        let err = verify_backup(&path).expect_err("foreign");
        assert!(matches!(err, BackupError::Foreign { .. }), "{err}");

        let mut future = bytes.clone();
        future[16..20].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, &future).expect("write");
        let err = verify_backup(&path).expect_err("future");
        assert!(
            matches!(err, BackupError::UnknownVersion { found: 2, .. }),
            "{err}"
        );

        let mut trailing = bytes;
        trailing.push(0);
        std::fs::write(&path, &trailing).expect("write");
        let err = verify_backup(&path).expect_err("trailing");
        assert!(err.to_string().contains("follows the checksum"), "{err}");
    }
}
