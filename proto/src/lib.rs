//! The `flotilla.v1` wire protocol between hub, agents and user clients.
//!
//! Generated from `proto/flotilla/v1/flotilla.proto`. Domain crates convert
//! these types at their edges; nothing here carries behaviour.

/// Generated `flotilla.v1` messages and services.
#[allow(clippy::all, clippy::unwrap_used, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

pub use v1::*;
