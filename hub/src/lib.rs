//! Flotilla hub library.
