//! Flotilla hub library.
pub mod model;
pub mod source;
pub mod yaml;
