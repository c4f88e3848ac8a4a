//! The Helm-compatible chart renderer lives in the hub crate (the CLI renders
//! the agent chart for `flotilla cluster add`); re-exported for the tests.

pub use flotilla_hub::chart::*;
