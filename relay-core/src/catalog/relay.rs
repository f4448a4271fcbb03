//! The catalog on the [`Relay`]: loading at start, importing, assessing.

use std::sync::Arc;

use super::{
    parse_definitions_with_progress, stage_catalog, Assessment, AssessmentQuery, Catalog,
    CatalogError, CatalogSummary,
};
use crate::relay::Relay;
use crate::store::{Batch, Store, StoreError};

/// [`super::load`] for [`Relay::open`]: a damaged stored catalog is logged
/// and left out (the relay still starts; a new import replaces it).
///
/// # Errors
/// A storage failure.
pub(crate) fn load_for_relay(store: &Store) -> Result<Option<Arc<Catalog>>, StoreError> {
    let started = std::time::Instant::now();
    match super::load(store) {
        Ok(Some(catalog)) => {
            tracing::info!(
                version = catalog.version.label(),
                rows = catalog.rows().len(),
                ms = started.elapsed().as_millis() as u64,
                "update catalog loaded"
            );
            Ok(Some(Arc::new(catalog)))
        }
        Ok(None) => Ok(None),
        Err(CatalogError::Store(err)) => Err(err),
        Err(err) => {
            tracing::error!(error = %err, "stored update catalog unreadable; import it again");
            Ok(None)
        }
    }
}

impl Relay {
    /// The catalog in use, if one was imported.
    pub fn catalog(&self) -> Option<Arc<Catalog>> {
        self.catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Makes `catalog` the one in use. Call after the batch that staged it
    /// (see [`stage_catalog`]) was applied.
    pub fn install_catalog(&self, catalog: Arc<Catalog>) {
        *self
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(catalog);
    }

    /// Parses, stores (replacing the previous catalog atomically) and
    /// installs a `definitions.zip`. The parse runs on a blocking thread.
    ///
    /// # Errors
    /// A malformed archive or row (nothing is stored), or a storage failure.
    pub async fn import_catalog(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        progress: Option<Box<dyn FnMut(u64, u64) + Send>>,
    ) -> Result<CatalogSummary, CatalogError> {
        let mut progress = progress;
        let catalog = tokio::task::spawn_blocking(move || {
            let mut report = |done: u64, total: u64| {
                if let Some(p) = progress.as_mut() {
                    p(done, total);
                }
            };
            parse_definitions_with_progress(&bytes, &mut report)
        })
        .await
        .map_err(|e| CatalogError::Archive(format!("the import stopped: {e}")))??;
        let catalog = Arc::new(catalog);
        {
            let mut writer = self.store.writer();
            let mut batch = Batch::new();
            stage_catalog(writer.store(), &mut batch, &catalog)?;
            writer.apply(batch)?;
        }
        self.store.durable().await?;
        let summary = catalog.summary();
        tracing::info!(
            version = %summary.catalog_version,
            rows = summary.rows,
            "update catalog imported"
        );
        self.install_catalog(catalog);
        Ok(summary)
    }

    /// Assesses a machine against the catalog in use and the KEV catalog.
    /// `None` when no catalog was imported.
    ///
    /// # Errors
    /// An unknown build or a malformed KB.
    pub fn assess(
        &self,
        query: &AssessmentQuery,
    ) -> Option<Result<Assessment, super::AssessError>> {
        let catalog = self.catalog()?;
        let kev = self
            .kev
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(catalog.assess(query, &kev.cves))
    }
}
