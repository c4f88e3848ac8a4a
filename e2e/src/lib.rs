//! End-to-end harness for Flotilla: a configuration repository made with
//! real Git, simulated clusters, and the hub, agents and CLI as real
//! processes talking over real TLS sockets.
//!
//! Scenarios live in `tests/`; the quickstart demo in `src/bin`.

pub mod fleet;
pub mod gitserver;
pub mod helm;
pub mod http;
pub mod kubectl;
pub mod process;
pub mod repo;
pub mod webdriver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries (`target/debug` for
/// tests). `FLOTILLA_BIN_DIR` overrides it.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Test executables live in target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, with a clear error when it was not built.
///
/// # Errors
/// The binary does not exist (run `cargo build --workspace --bins`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if path.exists() {
        Ok(path)
    } else {
        anyhow::bail!(
            "{} not found; build the workspace binaries first (cargo build --workspace --bins)",
            path.display()
        )
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with the
/// last observation in the message.
///
/// # Errors
/// The deadline passed; the error carries `what` and the last state seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last;
    let mut pause = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(state) => last = state,
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Root of the source checkout (for `examples/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
