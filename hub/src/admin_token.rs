//! The admin token on first start: adopted from `DATA/admin.token` when that
//! file exists (a Helm chart or operator supplied it), else generated and
//! written there. Only its hash is stored.

use std::path::Path;

use crate::api;
use crate::clock::now_ms;
use crate::store::{Store, StoreError, TokenRecord};

/// What [`ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminToken {
    /// Tokens exist already: nothing done.
    Existing,
    /// The secret in the file was adopted.
    Adopted,
    /// A new secret was generated; it must be written to the file.
    Generated(String),
}

/// Makes sure an admin token exists when the store has none.
///
/// # Errors
/// The store cannot be read or written.
pub fn ensure(store: &Store, path: &Path) -> Result<AdminToken, StoreError> {
    if !store.tokens()?.is_empty() {
        return Ok(AdminToken::Existing);
    }
    let supplied = std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(secret) = supplied {
        let rec = TokenRecord {
            name: "admin".to_owned(),
            created_ms: now_ms(),
            read_only: false,
            ..Default::default()
        };
        store.put_token(&api::token_hash(&secret), &rec)?;
        store.flush()?;
        return Ok(AdminToken::Adopted);
    }
    let (secret, _) = api::create_token(store, "admin", false)?;
    Ok(AdminToken::Generated(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopts_a_supplied_token_and_generates_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "s3cret-from-chart\n").unwrap();
        assert_eq!(ensure(&store, &path).unwrap(), AdminToken::Adopted);
        let tokens = store.tokens().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].0, api::token_hash("s3cret-from-chart"));
        assert_eq!(ensure(&store, &path).unwrap(), AdminToken::Existing);

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let path = dir.path().join("admin.token");
        let AdminToken::Generated(secret) = ensure(&store, &path).unwrap() else {
            panic!("expected a generated token");
        };
        assert_eq!(store.tokens().unwrap()[0].0, api::token_hash(&secret));
    }
}
