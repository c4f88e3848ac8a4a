//! A real `flotilla-hub` process for the CLI tests, and the `flotilla`
//! binary run against it; output normalized for snapshot comparisons.

// Each test crate uses a different subset.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `flotilla-hub serve` process on a fresh data directory, stopped
/// (by its own pid) when dropped.
pub struct Hub {
    child: Child,
    pub data: tempfile::TempDir,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
}

impl Hub {
    /// Starts the hub with `args` after `serve --data-dir D --listen
    /// 127.0.0.1:0`; returns once it prints its URL.
    pub fn start(args: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(data.path().join("hub.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path().join("data"))
            .args(args)
            .env_remove("FLOTILLA_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("flotilla-hub listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!(
                    "the hub did not start: {}",
                    std::fs::read_to_string(data.path().join("hub.log")).unwrap_or_default()
                )
            });
        Self { child, data, url }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.data_dir().join("ca.crt")
    }

    pub fn token_file(&self) -> PathBuf {
        self.data_dir().join("admin.token")
    }

    /// `host:port` of the hub.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("https://")
    }

    /// The CLI with this hub's settings in the environment and no user
    /// configuration (FLOTILLA_CONFIG names a file that does not exist).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = bare(args);
        cmd.env("FLOTILLA_HUB", &self.url)
            .env("FLOTILLA_CA_FILE", self.ca_file())
            .env("FLOTILLA_TOKEN_FILE", self.token_file())
            .env(
                "FLOTILLA_CONFIG",
                self.data.path().join("no-such-config.json"),
            );
        cmd
    }

    /// Runs the CLI (see [`Hub::command`]).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// stdout of a successful run; panics with both streams otherwise.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(&self.cli(args))
    }

    /// Polls `args` until its stdout satisfies `cond` (deadline 60 s).
    pub fn until(&self, args: &[&str], cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(args);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && cond(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} never matched; last: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CLI without any connection setting from the environment.
pub fn bare(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(args).stdin(Stdio::null());
    for k in [
        "FLOTILLA_HUB",
        "FLOTILLA_CA_FILE",
        "FLOTILLA_TOKEN",
        "FLOTILLA_TOKEN_FILE",
        "FLOTILLA_CONFIG",
        "FLOTILLA_CONTEXT",
        "NO_COLOR",
    ] {
        cmd.env_remove(k);
    }
    cmd
}

/// stdout of a successful run; panics with both streams otherwise.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The exit code and stderr of a run that must fail.
pub fn fails(out: &Output) -> (i32, String) {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Git repository with `files` committed on `main`; returns its
/// `file://` URL.
pub fn repo(dir: &Path, files: &[(&str, &str)]) -> String {
    let url = format!("file://{}", dir.display());
    super::support::git(dir, &["init", "-q", "-b", "main"]);
    for (path, content) in files {
        super::support::write(dir, path, &content.replace("{{URL}}", &url));
    }
    super::support::git(dir, &["add", "-A"]);
    super::support::git(dir, &["commit", "-q", "-m", "init"]);
    url
}

/// Replaces what changes from run to run with placeholders: each
/// `(text, placeholder)` pair in order, then RFC 3339 timestamps
/// (`<TIME>`), and relative ages (`<AGO>`).
pub fn normalize(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = text.to_owned();
    for (from, to) in pairs {
        if !from.is_empty() {
            s = s.replace(from, to);
        }
    }
    let time = regex::Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
        .unwrap();
    let s = time.replace_all(&s, "<TIME>");
    let ago = regex::Regex::new(r"\b\d+[smhd] ago\b").unwrap();
    ago.replace_all(&s, "<AGO>").into_owned()
}

/// Compares `actual` with `expected` line by line, printing both whole on
/// a mismatch. Table columns may differ in width (placeholders are not as
/// wide as what they replace): runs of two or more spaces compare equal,
/// and trailing spaces do not count.
pub fn assert_text(actual: &str, expected: &str) {
    let gaps = regex::Regex::new(" {2,}").unwrap();
    let squash = |s: &str| {
        s.lines()
            .map(|l| gaps.replace_all(l.trim_end(), "   ").into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        squash(actual) == squash(expected),
        "output differs.\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}
