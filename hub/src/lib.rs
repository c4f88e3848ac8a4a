//! Flotilla hub library.
pub mod api;
pub mod appset;
pub mod cli;
pub mod commands;
pub mod fleet;
pub mod gitsync;
pub mod history;
pub mod inventory;
pub mod model;
pub mod pki;
pub mod render;
pub mod server;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod webhook;
pub mod yaml;
