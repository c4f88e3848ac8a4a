//! The `flotilla.v1` wire protocol between hub, agents and user clients.
//!
//! Generated from `proto/flotilla/v1/flotilla.proto`. Domain crates convert
//! these types at their edges. The one piece of behaviour here is
//! [`wire`]: how messages are kept bounded (limits, splitting a desired state
//! into parts and chunks, assembling it again, truncating status), shared so
//! that both ends of the stream agree on it.

/// Generated `flotilla.v1` messages and services.
#[allow(clippy::all, clippy::unwrap_used, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

pub use v1::*;

pub mod project_rules;
pub mod wire;
