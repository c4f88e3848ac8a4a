//! Flotilla agent: keeps one cluster at the desired state the hub streams to
//! it, and reports what it sees.
//!
//! Pure cores ([`health`], [`drift`], [`plan`], [`object`], [`hooks`]) are
//! free of I/O; [`cluster`], [`engine`] and [`link`] are the shells around
//! them.

pub mod bundle;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod cluster_cache;
pub mod custom_health;
pub mod deletion;
pub mod drift;
pub mod engine;
pub mod enroll;
pub mod files;
pub mod health;
pub mod health_http;
pub mod hooks;
pub mod identity;
pub mod inventory;
pub mod jq;
pub mod link;
pub mod log_limit;
pub mod metrics;
pub mod object;
pub mod plan;
pub mod project;
pub mod redact;
pub mod report;
pub mod telemetry;
