//! Flotilla agent library.
