//! The agent's logs as a log pipeline reads them: no ANSI colour when
//! stderr is not a terminal; `--log-format json` (or FLOTILLA_LOG_FORMAT)
//! writes one JSON object per line.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Starts the agent with a bootstrap token against a hub address nothing
/// listens on (loopback port 1), so it logs its enrollment retries, and
/// returns its first `n` stderr lines; the agent is stopped afterwards.
fn agent_stderr(args: &[&str], env: &[(&str, &str)], n: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n\
         current-context: c\n",
    )
    .unwrap();
    let zeros = "0".repeat(64);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"));
    cmd.args(["--hub", "https://127.0.0.1:1", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .env("FLOTILLA_TOKEN", format!("flt1.{zeros}.{zeros}"))
        .env_remove("FLOTILLA_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while lines.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), n, "expected {n} log lines: {lines:#?}");
    lines
}

#[test]
fn text_logs_on_a_pipe_have_no_colour() {
    let lines = agent_stderr(&[], &[], 1);
    assert!(
        lines[0].contains(" WARN flotilla_agent::enroll: enrollment failed; retrying"),
        "{lines:?}"
    );
    assert!(!lines[0].contains('\u{1b}'), "ANSI escape in {lines:?}");
}

#[test]
fn json_logs_one_object_per_line() {
    for (args, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("FLOTILLA_LOG_FORMAT", "json")][..]),
    ] {
        let lines = agent_stderr(args, env, 1);
        let v: Value = serde_json::from_str(&lines[0])
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {lines:?}"));
        assert_eq!(v["level"], "WARN", "{v}");
        assert_eq!(v["target"], "flotilla_agent::enroll", "{v}");
        assert_eq!(v["message"], "enrollment failed; retrying", "{v}");
        assert_eq!(v["hub"], "https://127.0.0.1:1", "{v}");
        assert!(v["timestamp"].is_string(), "{v}");
    }
}
