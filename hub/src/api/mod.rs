//! The gRPC services: the agent link and the user API, plus the bearer
//! token check in front of the user API.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::fleet::Fleet;
use crate::gitsync::GitSync;
use crate::pki::Pki;
use crate::store::{Store, StoreError, TokenRecord};

pub mod agent_link;
pub mod hub_api;

/// What every service handler needs.
#[derive(Clone, Debug)]
pub struct HubContext {
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub pki: Arc<Pki>,
    pub git: Arc<GitSync>,
    /// Becomes true when the hub shuts down: agent streams end so the
    /// server can stop.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        Status::internal(e.to_string())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Hex SHA-256 of a token secret, as stored.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Creates a new random token (32 bytes, hex), stores its hash under `name`
/// and returns the secret.
///
/// # Errors
/// The store cannot be written.
pub fn create_token(store: &Store, name: &str) -> Result<String, StoreError> {
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes);
    store.put_token(
        &token_hash(&secret),
        &TokenRecord {
            name: name.to_owned(),
            created_ms: now_ms(),
        },
    )?;
    store.flush()?;
    Ok(secret)
}

/// Checks `authorization: Bearer <token>` against the stored token hashes.
///
/// # Errors
/// `Unauthenticated` when the header is missing or the token unknown.
pub fn check_bearer(store: &Store, req: &Request<()>) -> Result<(), Status> {
    let header = req
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
    let value = header
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be a Bearer token"))?
        .trim();
    let hash = token_hash(secret);
    let tokens = store.tokens().map_err(Status::from)?;
    // Compare against every token so timing does not reveal which matched.
    let mut ok = false;
    for (stored, _) in &tokens {
        ok |= constant_time_eq(stored.as_bytes(), hash.as_bytes());
    }
    if ok {
        Ok(())
    } else {
        Err(Status::unauthenticated("invalid token"))
    }
}
