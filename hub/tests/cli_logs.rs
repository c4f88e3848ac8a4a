//! The hub's logs as a log pipeline reads them: no ANSI colour when stderr
//! is not a terminal, `--log-format json` (or FLOTILLA_LOG_FORMAT) writes
//! one JSON object per line, and the charts pass `logFormat` to the flag.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Runs `flotilla-hub serve` on a fresh data dir with stderr on a pipe and
/// returns its stderr lines up to the first one for which `done` holds
/// (within a generous deadline); the hub is stopped afterwards.
fn hub_stderr(args: &[&str], env: &[(&str, &str)], done: impl Fn(&str) -> bool) -> Vec<String> {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(args)
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
    let lines = read_until(&mut child, done);
    let _ = child.kill();
    let _ = child.wait();
    lines
}

fn read_until(child: &mut Child, done: impl Fn(&str) -> bool) -> Vec<String> {
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
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let end = done(&line);
                lines.push(line);
                if end {
                    return lines;
                }
            }
            Err(_) => panic!("the awaited log line never came; stderr so far:\n{lines:#?}"),
        }
    }
}

#[test]
fn text_logs_on_a_pipe_have_no_colour() {
    let lines = hub_stderr(&[], &[], |l| l.contains("hub serving"));
    let serving = lines.iter().find(|l| l.contains("hub serving")).unwrap();
    // The level and target as plain text, not wrapped in escape codes.
    assert!(
        serving.contains(" INFO flotilla_hub::server: hub serving"),
        "{serving:?}"
    );
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "ANSI escape in {line:?}");
    }
}

fn assert_json_lines(lines: &[String]) {
    for line in lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "no {key} in {line}");
        }
        let ts = v["timestamp"].as_str().unwrap();
        ts.parse::<jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("timestamp {ts:?} is not RFC 3339: {e}"));
    }
}

#[test]
fn json_logs_one_object_per_line() {
    let lines = hub_stderr(&["--log-format", "json"], &[], |l| {
        l.contains("\"hub serving\"")
    });
    assert_json_lines(&lines);
    let serving: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["target"], "flotilla_hub::server");
    // The event's fields sit at the top level, next to the message.
    assert!(
        serving["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{serving}"
    );

    // The environment variable does the same (the charts' way in).
    let lines = hub_stderr(&[], &[("FLOTILLA_LOG_FORMAT", "json")], |l| {
        l.contains("\"hub serving\"")
    });
    assert_json_lines(&lines);
}

#[test]
fn an_unknown_log_format_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
        .args(["serve", "--data-dir", "/nonexistent", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'xml' for '--log-format <LOG_FORMAT>'")
            && err.contains("[possible values: text, json]"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "ANSI escape in {err:?}");
}

/// The value the charts give FLOTILLA_LOG_FORMAT (what --log-format
/// reads) for `logFormat`.
fn log_format_env(container: &Value) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == "FLOTILLA_LOG_FORMAT")?["value"]
        .as_str()
        .map(str::to_owned)
}

fn render(chart: &str, kind: &str, values: Value) -> Value {
    use flotilla_hub::chart::{Chart, Release, merge_values, render};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts")
        .join(chart);
    let chart = Chart::load(&dir).unwrap();
    let mut merged = chart.values.clone();
    merge_values(&mut merged, values);
    let text = render(&chart, &Release::new("r", "flotilla"), merged).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let doc = docs.into_iter().find(|d| d["kind"] == kind).unwrap();
    doc["spec"]["template"]["spec"]["containers"][0].clone()
}

#[test]
fn charts_pass_log_format_to_the_flag() {
    // As an environment variable, not a flag: an older image without
    // --log-format still starts with the new chart.
    for (chart, kind, section) in [
        ("flotilla-hub", "StatefulSet", "hub"),
        ("flotilla-agent", "Deployment", "agent"),
    ] {
        let c = render(chart, kind, json!({}));
        assert_eq!(log_format_env(&c).as_deref(), Some("text"), "{chart}");
        let c = render(chart, kind, json!({ section: {"logFormat": "json"} }));
        assert_eq!(log_format_env(&c).as_deref(), Some("json"), "{chart}");
    }
    // The manifest `cluster add` prints is the same chart.
    let manifest = flotilla_hub::chart::agent_manifest(&flotilla_hub::chart::AgentInstall {
        hub_url: "https://hub.example:7443".into(),
        token: "flt1.x.y".into(),
        ca_pin: "0".repeat(64),
        rbac_scope: "cluster".into(),
        namespaces: vec![],
    })
    .unwrap();
    assert!(
        manifest.contains("- name: FLOTILLA_LOG_FORMAT\n              value: \"text\"\n"),
        "{manifest}"
    );
}
