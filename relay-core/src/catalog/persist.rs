//! The catalog in the store: one postcard blob, cut into content-addressed
//! chunks of the `catalog` table, plus a meta record naming them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Catalog, CatalogError, CatalogVersion};
use crate::store::{Batch, Store, Table};

const META_KEY: &[u8] = b"meta";
const CHUNK_PREFIX: &[u8] = b"chunk/";
const CHUNK_BYTES: usize = 1 << 20;

/// What the `meta` record of the catalog table says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCatalogMeta {
    pub version: CatalogVersion,
    /// Hex SHA-256 of the postcard blob.
    pub sha256: String,
    pub bytes: u64,
    pub chunks: u32,
    pub rows: u64,
}

fn chunk_key(sha256: &str, n: u32) -> Vec<u8> {
    let mut key = CHUNK_PREFIX.to_vec();
    key.extend_from_slice(&sha256.as_bytes()[..16]);
    key.push(b'/');
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// Adds `catalog` to `batch`, replacing whatever catalog the store holds,
/// so that applying the batch swaps catalogs atomically (with the batch's
/// other writes). Call it while holding the store's writer lock
/// (`writer.store()`), so that the old chunks it removes are the current ones.
///
/// # Errors
/// A storage failure while listing the old chunks.
pub fn stage_catalog(
    store: &Store,
    batch: &mut Batch,
    catalog: &Catalog,
) -> Result<StoredCatalogMeta, CatalogError> {
    let blob = postcard::to_stdvec(catalog)
        .map_err(|e| CatalogError::Damaged(format!("cannot encode the catalog: {e}")))?;
    let sha256 = hex::encode(Sha256::digest(&blob));
    let mut new_keys = Vec::new();
    for (n, chunk) in (0u32..).zip(blob.chunks(CHUNK_BYTES)) {
        let key = chunk_key(&sha256, n);
        batch.put(Table::Catalog, key.clone(), &chunk);
        new_keys.push(key);
    }
    for old in store.keys_with_prefix(Table::Catalog, CHUNK_PREFIX, usize::MAX)? {
        if !new_keys.contains(&old) {
            batch.delete(Table::Catalog, old);
        }
    }
    let meta = StoredCatalogMeta {
        version: catalog.version.clone(),
        sha256,
        bytes: blob.len() as u64,
        chunks: u32::try_from(new_keys.len()).unwrap_or(u32::MAX),
        rows: catalog.rows().len() as u64,
    };
    batch.put(Table::Catalog, META_KEY.to_vec(), &meta);
    Ok(meta)
}

/// The meta record of the stored catalog, if any.
///
/// # Errors
/// A storage or decoding failure.
pub fn stored_meta(store: &Store) -> Result<Option<StoredCatalogMeta>, CatalogError> {
    Ok(store.get(Table::Catalog, META_KEY)?)
}

/// Reads the stored catalog back (checking its digest), or `None`.
///
/// # Errors
/// A storage failure, or chunks that do not add up to the recorded digest.
pub fn load(store: &Store) -> Result<Option<Catalog>, CatalogError> {
    let Some(meta) = stored_meta(store)? else {
        return Ok(None);
    };
    let mut blob = Vec::with_capacity(usize::try_from(meta.bytes).unwrap_or(0));
    for n in 0..meta.chunks {
        let chunk: Vec<u8> = store
            .get(Table::Catalog, &chunk_key(&meta.sha256, n))?
            .ok_or_else(|| CatalogError::Damaged(format!("chunk {n} is missing")))?;
        blob.extend_from_slice(&chunk);
    }
    if hex::encode(Sha256::digest(&blob)) != meta.sha256 {
        return Err(CatalogError::Damaged("digest mismatch".to_owned()));
    }
    let mut catalog: Catalog = postcard::from_bytes(&blob)
        .map_err(|e| CatalogError::Damaged(format!("cannot decode: {e}")))?;
    drop(blob);
    catalog.build_index();
    Ok(Some(catalog))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::parse::tests::{row, zip_of};
    use crate::catalog::parse_definitions;
    use crate::store::StoreOptions;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(&StoreOptions {
            path: dir.join("store"),
            cache_capacity_bytes: 4 << 20,
            flush_every_ms: 500,
            durable_acks: true,
        })
        .expect("store opens")
    }

    #[test]
    fn a_staged_catalog_replaces_the_old_one_and_loads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        assert!(load(&store).expect("reads").is_none());
        let one = parse_definitions(&zip_of(
            &row("20240109", "CVE-2024-0001", "100", "Windows P", "Low", ""),
            None,
        ))
        .expect("parses");
        let two = parse_definitions(&zip_of(
            &row(
                "20240213",
                "CVE-2024-0002",
                "200",
                "Windows P",
                "Low",
                "100",
            ),
            None,
        ))
        .expect("parses");
        for catalog in [&one, &two] {
            let mut writer = store.writer();
            let mut batch = Batch::new();
            stage_catalog(writer.store(), &mut batch, catalog).expect("stages");
            writer.apply(batch).expect("applies");
        }
        let back = load(&store).expect("reads").expect("present");
        assert_eq!(back, two);
        // Only the chunks of the current catalog remain.
        assert_eq!(store.count_prefix(Table::Catalog, CHUNK_PREFIX), 1);
    }
}
