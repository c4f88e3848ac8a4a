//! Table tests of the health rules from YAML fixtures, in the shapes of
//! gitops-engine's `pkg/health/testdata`.
//!
//! Each file `fixtures/health/<kind>-<state>[-<case>].yaml` holds one or
//! more objects that must all assess to `<state>`, with exactly the message
//! in their annotation `flotilla.dev/expected-message` (every object
//! carries one). The state `none` means the kind has no built-in rule
//! (Argo CD shows no health): Healthy, without a message.
//! Objects are assessed as the agent assesses them for an application's
//! status ([`HealthRules::assess_for_app`]).

use std::path::Path;

use flotilla_agent::custom_health::HealthRules;
use flotilla_agent::health::{self, Health, HealthStatus};
use serde_json::Value;

const EXPECTED_MESSAGE: &str = "flotilla.dev/expected-message";

/// The expected status of a fixture file; `None` for kinds without a rule.
fn expected_status(stem: &str) -> Option<HealthStatus> {
    let state = stem.split('-').nth(1).unwrap_or_default();
    if state == "none" {
        return None;
    }
    let mut chars = state.chars();
    let capitalised: String = chars
        .next()
        .map(|c| c.to_ascii_uppercase())
        .into_iter()
        .chain(chars)
        .collect();
    Some(HealthStatus::parse(&capitalised).unwrap_or_else(|| panic!("bad fixture name {stem}")))
}

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/health");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    entries
}

#[test]
fn every_fixture_assesses_to_its_state_and_message() {
    let rules = HealthRules::builtin();
    let entries = fixtures();
    assert!(entries.len() >= 50, "fixtures missing");
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in entries {
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("name");
        let want = expected_status(stem);
        let text = std::fs::read_to_string(&path).expect("read");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("yaml");
        for doc in docs {
            checked += 1;
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let Some(message) = doc
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(EXPECTED_MESSAGE))
                .and_then(Value::as_str)
            else {
                failures.push(format!("{stem}/{name}: no {EXPECTED_MESSAGE} annotation"));
                continue;
            };
            let got = rules.assess_for_app(&doc);
            let want_status = match want {
                Some(s) => s,
                None => {
                    if let Some(h) = health::builtin(&doc) {
                        failures.push(format!("{stem}/{name}: has a rule: {h:?}"));
                    }
                    HealthStatus::Healthy
                }
            };
            if got != Health::new(want_status, message) {
                failures.push(format!(
                    "{stem}/{name}: want {want_status} {message:?}, got {} {:?}",
                    got.status, got.message
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
        "deployment-unknown",
        "statefulset-healthy",
        "statefulset-progressing",
        "daemonset-healthy",
        "daemonset-progressing",
        "replicaset-healthy",
        "replicaset-progressing",
        "replicaset-degraded",
        "pod-healthy",
        "pod-healthy-ignore-healthcheck",
        "pod-progressing",
        "pod-degraded",
        "pod-degraded-failed",
        "pod-unknown",
        "service-healthy",
        "service-progressing",
        "ingress-healthy",
        "ingress-progressing",
        "pvc-healthy",
        "pvc-progressing",
        "pvc-degraded",
        "pvc-unknown",
        "job-healthy",
        "job-progressing",
        "job-degraded",
        "job-suspended",
        "job-unknown",
        "cronjob-healthy",
        "cronjob-progressing",
        "cronjob-degraded",
        "hpa-healthy",
        "hpa-progressing",
        "hpa-degraded",
        "hpa-unknown",
        "apiservice-healthy",
        "apiservice-progressing",
        "workflow-healthy",
        "workflow-progressing",
        "workflow-degraded",
        "workflow-unknown",
        "crd-healthy",
        "crd-progressing",
        "crd-degraded",
        "pdb-healthy",
        "pdb-progressing",
        "pdb-degraded",
        "configmap-none",
        "configmap-progressing",
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
            && lines[1].contains("Deployment \"stuck\" exceeded its progress deadline")
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
