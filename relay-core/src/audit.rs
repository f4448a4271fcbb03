//! The audit trail: who changed what, when and from where, for every change
//! made through the API or the CLI. Entries are written by a layer around
//! the routers (see [`crate::api`] and [`crate::control`]), so no handler can
//! forget one, and they hold no request or response body: only the method,
//! the route template (never the raw path or query), the id-shaped path
//! segments and the ids the change created, and its outcome, so an entry
//! cannot carry a key, token or webhook secret even when a caller pastes
//! one into a URL.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::RelayResult;
use crate::ids::{AuditId, KeyId, UserId};
use crate::relay::Relay;
use crate::store::{Batch, Table};

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `api_key` (a `ppk_` key over HTTP) or `cli` (the control socket).
    pub kind: String,
    pub user_id: Option<UserId>,
    pub key_id: Option<KeyId>,
    /// For the CLI: the operating-system user id of the caller, when known.
    pub os_uid: Option<u32>,
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub audit_id: AuditId,
    pub at: Timestamp,
    pub actor: Actor,
    /// The client address, or `control socket` / `cli (relay not running)`.
    pub source: String,
    /// Method and route template, e.g. `DELETE /api/keys/{key_id}`.
    pub action: String,
    /// Ids the change touched: those in the path and those it created.
    pub targets: Vec<String>,
    pub status: u16,
    /// `success` (2xx), `denied` (403) or `refused` (other 4xx).
    pub outcome: String,
    pub request_id: Option<String>,
}

/// Filters of `GET /api/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<UserId>,
    pub key_id: Option<KeyId>,
    pub since: Option<Timestamp>,
    pub outcome: Option<String>,
}

impl AuditFilter {
    fn is_empty(&self) -> bool {
        self.user_id.is_none()
            && self.key_id.is_none()
            && self.since.is_none()
            && self.outcome.is_none()
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        self.user_id.is_none_or(|u| r.actor.user_id == Some(u))
            && self.key_id.is_none_or(|k| r.actor.key_id == Some(k))
            && self.since.is_none_or(|t| r.at >= t)
            && self.outcome.as_ref().is_none_or(|o| &r.outcome == o)
    }
}

/// The outcome word for a status.
pub fn outcome(status: u16) -> &'static str {
    match status {
        200..=299 => "success",
        403 => "denied",
        _ => "refused",
    }
}

impl Relay {
    /// Appends an entry and waits until it is durable.
    ///
    /// # Errors
    /// The store failed.
    pub async fn record_audit(&self, record: AuditRecord) -> RelayResult<()> {
        let mut batch = Batch::new();
        batch.put(Table::Audit, record.audit_id.to_bytes().to_vec(), &record);
        self.store.writer().apply(batch)?;
        self.store.durable().await?;
        Ok(())
    }

    /// A newest-first page of entries strictly older than `before`, and the
    /// number of entries matching the filter.
    ///
    /// # Errors
    /// The store failed.
    pub fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<AuditId>,
        limit: usize,
    ) -> RelayResult<(Vec<AuditRecord>, usize)> {
        let before = before.map(|id| id.to_bytes().to_vec());
        if filter.is_empty() {
            let rows = self.store.scan_rev_before::<AuditRecord>(
                Table::Audit,
                before.as_deref(),
                limit,
            )?;
            return Ok((
                rows.into_iter().map(|(_, r)| r).collect(),
                self.store.len(Table::Audit),
            ));
        }
        // Filtered: the trail is bounded by `audit.max_records`, so one pass
        // over it counts the matches and collects the page.
        let all = self
            .store
            .scan_rev_before::<AuditRecord>(Table::Audit, None, usize::MAX)?;
        let mut total = 0;
        let mut page = Vec::new();
        for (key, record) in all {
            if !filter.matches(&record) {
                continue;
            }
            total += 1;
            let in_range = before.as_deref().is_none_or(|b| key.as_slice() < b);
            if in_range && page.len() < limit {
                page.push(record);
            }
        }
        Ok((page, total))
    }

    /// Drops entries past the retention period and beyond the size bound,
    /// oldest first. Returns how many went.
    ///
    /// # Errors
    /// The store failed.
    pub fn prune_audit(&self) -> RelayResult<usize> {
        let config = &self.config.audit;
        let cutoff = self.clock.now().unix() - config.retention_days * 86_400;
        let len = self.store.len(Table::Audit) as u64;
        let mut excess = len.saturating_sub(config.max_records);
        let mut batch = Batch::new();
        let mut pruned = 0;
        for (key, record) in self
            .store
            .scan_from::<AuditRecord>(Table::Audit, &[], usize::MAX)?
        {
            if excess == 0 && record.at.unix() >= cutoff {
                break;
            }
            excess = excess.saturating_sub(1);
            batch.delete(Table::Audit, key);
            pruned += 1;
            if pruned % 1000 == 0 {
                self.store.writer().apply(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            self.store.writer().apply(batch)?;
        }
        if pruned > 0 {
            tracing::info!(pruned, "audit entries pruned");
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::RelayConfig;

    fn record(at: i64, user: Option<UserId>, status: u16) -> AuditRecord {
        AuditRecord {
            audit_id: AuditId::generate(),
            at: Timestamp(at),
            actor: Actor {
                kind: "api_key".into(),
                user_id: user,
                key_id: None,
                os_uid: None,
            },
            source: "127.0.0.1".into(),
            action: "POST /api/users".into(),
            targets: vec![],
            status,
            outcome: outcome(status).into(),
            request_id: None,
        }
    }

    #[tokio::test]
    async fn pages_newest_first_filters_and_prunes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = RelayConfig::default();
        config.store.data_dir = dir.path().to_path_buf();
        config.audit.retention_days = 10;
        let clock = Clock::manual(Timestamp(100 * 86_400));
        let relay = Relay::open(config, clock).expect("open");
        let alice = UserId::generate();
        let mut ids = Vec::new();
        for day in 80..100 {
            let user = (day % 2 == 0).then_some(alice);
            let r = record(day * 86_400, user, if day % 5 == 0 { 403 } else { 201 });
            ids.push(r.audit_id);
            relay.record_audit(r).await.expect("record");
        }
        let (page, total) = relay
            .audit_page(&AuditFilter::default(), None, 3)
            .expect("page");
        assert_eq!(total, 20);
        assert_eq!(
            page.iter().map(|r| r.audit_id).collect::<Vec<_>>(),
            vec![ids[19], ids[18], ids[17]]
        );
        let (next, _) = relay
            .audit_page(&AuditFilter::default(), Some(ids[17]), 3)
            .expect("page");
        assert_eq!(next[0].audit_id, ids[16]);

        let mine = AuditFilter {
            user_id: Some(alice),
            ..AuditFilter::default()
        };
        let (page, total) = relay.audit_page(&mine, Some(ids[18]), 100).expect("page");
        assert_eq!(total, 10);
        assert_eq!(
            page.len(),
            9,
            "the newest of alice's entries is at or after the cursor"
        );
        assert!(page.iter().all(|r| r.actor.user_id == Some(alice)));
        let denied = AuditFilter {
            outcome: Some("denied".into()),
            ..AuditFilter::default()
        };
        assert_eq!(relay.audit_page(&denied, None, 50).expect("page").1, 4);

        // Days 80..=89 are older than the 10-day retention.
        assert_eq!(relay.prune_audit().expect("prune"), 10);
        let (page, total) = relay
            .audit_page(&AuditFilter::default(), None, 100)
            .expect("page");
        assert_eq!(total, 10);
        assert!(page.iter().all(|r| r.at.unix() >= 90 * 86_400));
    }
}
