//! The audit log: who changed what, when, from where, with which result.
//! Entries are keyed by a monotonic id, so they iterate oldest first; the
//! oldest are dropped beyond [`AUDIT_RETENTION`] entries.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, encode};

/// Entries kept; older ones are dropped as new ones arrive.
pub const AUDIT_RETENTION: usize = 20_000;
/// How often (in entries written) the log is trimmed to its bound.
const TRIM_EVERY: u64 = 64;

/// One audited call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// The RBAC subject of the caller (a token name, `proj:P:R`).
    pub subject: String,
    /// The caller's address, `ip:port`, when known.
    #[serde(default)]
    pub peer: String,
    /// RBAC resource and action, e.g. `applications` `sync`.
    pub resource: String,
    pub action: String,
    /// The object, e.g. `team-a/web`, a cluster name, a repository URL.
    pub object: String,
    /// `ok`, `denied` or `error`.
    pub result: String,
    /// The refusal or error, or a detail of the change.
    #[serde(default)]
    pub message: String,
}

impl Store {
    /// Appends `entry` to the audit log and keeps the log bounded.
    ///
    /// # Errors
    /// The store failed.
    pub fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.record_audit_bounded(entry, AUDIT_RETENTION)
    }

    /// [`Store::record_audit`] keeping at most `keep` entries (checked every
    /// few writes, so the log may briefly hold a few more).
    ///
    /// # Errors
    /// The store failed.
    pub fn record_audit_bounded(&self, entry: &AuditEntry, keep: usize) -> Result<(), StoreError> {
        self.with(|t| {
            let id = t.db.generate_id()?;
            t.audit.insert(id.to_be_bytes(), encode(entry))?;
            if id % TRIM_EVERY == 0 || keep < TRIM_EVERY as usize {
                let len = t.audit.len();
                for old in t.audit.iter().keys().take(len.saturating_sub(keep)) {
                    t.audit.remove(old?)?;
                }
            }
            Ok(())
        })
    }

    /// Audit entries at or after `since_ms`, oldest first.
    ///
    /// # Errors
    /// The store failed or an entry is corrupt.
    pub fn audit_entries(&self, since_ms: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|t| {
            let all: Vec<AuditEntry> = self.decode_all(&t.audit, "audit entry")?;
            Ok(all.into_iter().filter(|e| e.time_ms >= since_ms).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_ordered_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        for i in 0..30 {
            store
                .record_audit_bounded(
                    &AuditEntry {
                        time_ms: i,
                        subject: format!("s{i}"),
                        ..Default::default()
                    },
                    10,
                )
                .unwrap();
        }
        let all = store.audit_entries(0).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].subject, "s20");
        assert_eq!(all[9].subject, "s29");
        assert_eq!(store.audit_entries(25).unwrap().len(), 5);
    }
}
