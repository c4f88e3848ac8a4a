//! The RBAC settings ([`RbacConfig`], re-exported by `crate::rbac`): one
//! record.

use super::records::RbacConfig;
use super::{Store, StoreError, encode};

const KEY: &[u8] = b"config";

impl Store {
    /// The stored RBAC settings; the empty settings when none were set.
    ///
    /// # Errors
    /// The store failed or the record is corrupt.
    pub fn rbac_config(&self) -> Result<RbacConfig, StoreError> {
        self.read(|t| {
            t.rbac
                .get(KEY)?
                .map(|v| self.decode("rbac settings", KEY, &v))
                .transpose()
                .map(Option::unwrap_or_default)
        })
    }

    /// Replaces the RBAC settings.
    ///
    /// # Errors
    /// The store failed.
    pub fn put_rbac_config(&self, config: &RbacConfig) -> Result<(), StoreError> {
        self.with(|t| {
            t.rbac.insert(KEY, encode(config))?;
            Ok(())
        })
    }
}
