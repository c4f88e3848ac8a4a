//! Table tests of the health rules from YAML fixtures.
//!
//! Each file `fixtures/health/<kind>-<state>.yaml` holds one or more objects
//! that must all assess to `<state>`. An object may carry the annotation
//! `flotilla.dev/expected-message` with a substring the message must contain.

use std::path::Path;

use flotilla_agent::health::{self, HealthStatus};
use serde_json::Value;

const EXPECTED_MESSAGE: &str = "flotilla.dev/expected-message";

fn expected_status(stem: &str) -> HealthStatus {
    let state = stem.split('-').nth(1).unwrap_or_default();
    let mut chars = state.chars();
    let capitalised: String = chars
        .next()
        .map(|c| c.to_ascii_uppercase())
        .into_iter()
        .chain(chars)
        .collect();
    HealthStatus::parse(&capitalised).unwrap_or_else(|| panic!("bad fixture name {stem}"))
}

#[test]
fn every_fixture_assesses_to_its_state() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/health");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 30, "fixtures missing");
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in entries {
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("name");
        let want = expected_status(stem);
        let text = std::fs::read_to_string(&path).expect("read");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("yaml");
        for doc in docs {
            checked += 1;
            let got = health::assess(&doc);
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?");
            if got.status != want {
                failures.push(format!(
                    "{stem}/{name}: want {want}, got {} ({})",
                    got.status, got.message
                ));
            }
            let message = doc
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(EXPECTED_MESSAGE))
                .and_then(Value::as_str);
            if let Some(m) = message
                && !got.message.contains(m)
            {
                failures.push(format!(
                    "{stem}/{name}: message {:?} lacks {m:?}",
                    got.message
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{checked} objects, failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_kind_reaches_its_statuses() {
    // Guard against a fixture being deleted: each listed kind/state exists.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/health");
    for name in [
        "deployment-healthy",
        "deployment-progressing",
        "deployment-degraded",
        "deployment-suspended",
        "statefulset-healthy",
        "statefulset-progressing",
        "daemonset-healthy",
        "daemonset-progressing",
        "replicaset-healthy",
        "replicaset-progressing",
        "replicaset-degraded",
        "pod-healthy",
        "pod-progressing",
        "pod-degraded",
        "pod-unknown",
        "service-healthy",
        "service-progressing",
        "ingress-healthy",
        "ingress-progressing",
        "pvc-healthy",
        "pvc-progressing",
        "pvc-degraded",
        "job-healthy",
        "job-progressing",
        "job-degraded",
        "job-suspended",
        "hpa-healthy",
        "hpa-progressing",
        "hpa-degraded",
        "apiservice-healthy",
        "apiservice-progressing",
        "generic-healthy",
        "generic-degraded",
        "generic-progressing",
    ] {
        assert!(
            dir.join(format!("{name}.yaml")).exists(),
            "missing fixture {name}"
        );
    }
}

#[test]
fn cli_prints_health_of_files_offline() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/health");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .arg("health")
        .arg(dir.join("deployment-degraded.yaml"))
        .arg(dir.join("pvc-healthy.yaml"))
        .output()
        .expect("run flotilla-agent health");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("KIND"));
    assert!(
        lines[1].contains("Deployment")
            && lines[1].contains("Degraded")
            && lines[1].contains("timed out")
    );
    assert!(lines[2].contains("PersistentVolumeClaim") && lines[2].contains("Healthy"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(["health", "-o", "json"])
        .arg(dir.join("job-suspended.yaml"))
        .output()
        .expect("run flotilla-agent health -o json");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["status"], "Suspended");
    assert_eq!(rows[0]["kind"], "Job");
}

#[test]
fn cli_uses_custom_lua_checks() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(["health", "-o", "json", "--health-checks"])
        .arg(fixtures.join("lua"))
        .arg(fixtures.join("lua-certificates.yaml"))
        .output()
        .expect("run flotilla-agent health");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap_or(""),
                r["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("Healthy", "Certificate is up to date and has not expired"),
            ("Degraded", "Issuer letsencrypt not found"),
            ("Progressing", "Waiting for certificate"),
        ]
    );
}
