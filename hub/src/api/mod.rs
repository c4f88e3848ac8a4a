//! The gRPC services: the agent link and the user API, plus the bearer
//! token check in front of the user API.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::fleet::Fleet;
use crate::gitsync::GitSync;
use crate::pki::Pki;
use crate::store::{Store, StoreError, TokenRecord};

pub mod access;
pub mod agent_link;
pub mod auth;
pub mod deadline;
pub mod guard;
pub mod hub_api;
pub mod ops;
pub mod projects;
pub mod rollouts;
pub mod sso_login;

/// What every service handler needs.
#[derive(Clone, Debug)]
pub struct HubContext {
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub pki: Arc<Pki>,
    pub git: Arc<GitSync>,
    /// Commands to connected agents (sync now).
    pub commands: Arc<crate::commands::CommandBus>,
    /// The ApplicationSet controller.
    pub appsets: Arc<crate::appset::lifecycle::AppSets>,
    /// Becomes true when the hub shuts down: agent streams end so the
    /// server can stop.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// How long an agent stream may stay silent before it is closed.
    pub stream_idle_timeout: std::time::Duration,
    /// Message size limits of both services.
    pub wire: WireLimits,
}

/// How large the hub's gRPC messages may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest message decoded or encoded by either service.
    pub max_message_size: usize,
    /// Largest chunk of a bundle sent to an agent, and target size of a
    /// desired-state part.
    pub chunk_size: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        Self {
            max_message_size: flotilla_proto::wire::DEFAULT_MAX_MESSAGE_SIZE,
            chunk_size: flotilla_proto::wire::DEFAULT_CHUNK_SIZE,
        }
    }
}

impl WireLimits {
    /// Checks that a chunk fits in a message.
    ///
    /// # Errors
    /// The chunk size is below the minimum or does not fit.
    pub fn validate(&self) -> Result<(), String> {
        use flotilla_proto::wire::{MIN_CHUNK_SIZE, format_size};
        if self.chunk_size < MIN_CHUNK_SIZE {
            return Err(format!(
                "--bundle-chunk-size {} is below the minimum of {}",
                format_size(self.chunk_size),
                format_size(MIN_CHUNK_SIZE)
            ));
        }
        if self.chunk_size.saturating_add(64 * 1024) > self.max_message_size {
            return Err(format!(
                "--bundle-chunk-size {} must be at least 64 KiB below --max-message-size {}",
                format_size(self.chunk_size),
                format_size(self.max_message_size)
            ));
        }
        Ok(())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        if e.is_unavailable() {
            // A full disk or a store being reopened: worth retrying.
            Status::unavailable(e.to_string())
        } else {
            Status::internal(e.to_string())
        }
    }
}

pub use crate::clock::now_ms;

/// Hex SHA-256 of a token secret, as stored.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates a new random token (32 bytes, hex), stores its hash under `name`
/// and returns the secret with its record.
///
/// # Errors
/// The store cannot be written.
pub fn create_token(
    store: &Store,
    name: &str,
    read_only: bool,
) -> Result<(String, TokenRecord), StoreError> {
    create_token_with(
        store,
        TokenRecord {
            name: name.to_owned(),
            read_only,
            ..TokenRecord::default()
        },
    )
}

/// [`create_token`] for a record with groups or a project role; its
/// creation time is set here.
///
/// # Errors
/// The store cannot be written.
pub fn create_token_with(
    store: &Store,
    mut rec: TokenRecord,
) -> Result<(String, TokenRecord), StoreError> {
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes);
    rec.created_ms = now_ms();
    store.put_token(&token_hash(&secret), &rec)?;
    store.flush()?;
    Ok((secret, rec))
}

pub use auth::Caller;

/// Refuses the call when the caller's token is read-only.
///
/// # Errors
/// `PermissionDenied` for a read-only token.
pub fn require_write<T>(req: &Request<T>) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(c) if !c.read_only => Ok(()),
        Some(c) => Err(Status::permission_denied(format!(
            "token {:?} is read-only",
            c.token_name
        ))),
        None => Err(Status::unauthenticated("no caller identity")),
    }
}

/// Checks `authorization: Bearer <token>` against the stored token hashes.
///
/// # Errors
/// `Unauthenticated` when the header is missing or the token unknown.
pub fn check_bearer(store: &Store, req: &Request<()>) -> Result<Caller, Status> {
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
    let mut found = None;
    for (stored, rec) in &tokens {
        if crate::secret::same(stored.as_bytes(), hash.as_bytes()) {
            found = Some(rec);
        }
    }
    let rec = found.ok_or_else(|| Status::unauthenticated("invalid token"))?;
    let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
    auth::caller_of(store, rec, peer)
}
