//! Snapshot tests of `flotilla appset generate` (offline, no hub): the
//! output is compared exactly with hub/tests/snapshots/*. Re-bless with
//! `FLOTILLA_BLESS=1 cargo test -p flotilla-hub --test appset_generate`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/appset")
}

fn generate(file: &str, extra: &[&str]) -> Output {
    let f = fixtures();
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("appset")
        .arg("generate")
        .arg(f.join(file))
        .arg("--clusters")
        .arg(f.join("clusters-inventory.yaml"))
        .arg("--repo-root")
        .arg(f.join("repo"))
        .args(extra)
        // No hub settings are needed (nor read).
        .env("FLOTILLA_CONFIG", "/nonexistent/flotilla.json")
        .output()
        .unwrap()
}

fn assert_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("FLOTILLA_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with FLOTILLA_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{name} differs from the snapshot (FLOTILLA_BLESS=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

fn check(file: &str, snapshot: &str, extra: &[&str]) {
    let out = generate(file, extra);
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_snapshot(snapshot, &String::from_utf8(out.stdout).unwrap());
}

#[test]
fn list_generator() {
    check("list.yaml", "list.yaml", &[]);
}

#[test]
fn clusters_generator_with_cluster_resources_and_argo_secrets() {
    check("clusters.yaml", "clusters.yaml", &[]);
}

#[test]
fn git_directories_generator_over_a_local_checkout() {
    check("git-directories.yaml", "git-directories.yaml", &[]);
}

#[test]
fn matrix_of_git_and_clusters() {
    check("matrix.yaml", "matrix.yaml", &[]);
    check("matrix.yaml", "matrix.json", &["-o", "json"]);
}

#[test]
fn set_level_error_exits_non_zero_with_the_message() {
    let out = generate("bad-generator.yaml", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad-generator"), "{err}");
    assert!(
        err.contains("pullRequest") || err.contains("unknown"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// A template failure in one application: the others are still printed,
/// the error names the application once, and the exit status says it
/// failed (issue 14, point 8).
#[test]
fn per_application_errors_exit_non_zero_and_the_rest_is_printed() {
    let out = generate("one-bad-app.yaml", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one-bad-app"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(r#"application "Broken_Name": metadata.name"#),
        "{err}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("name: good-a"), "{text}");
    assert!(!text.contains("Broken_Name"), "{text}");
    assert!(text.contains("name: good-b"), "{text}");
}

/// Every template error kind exits non-zero with Go's message, naming the
/// cause itself (the missing key, the line, the function, the `fail`
/// text), and prints each error exactly once.
#[test]
fn every_template_error_kind_exits_non_zero_naming_the_cause_once() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "template-missingkey.yaml",
            r#"at <.team>: map has no entry for key "team""#,
            Some("name: good-a"),
        ),
        ("template-parse-error.yaml", "template: base:3:", None),
        (
            "template-unknown-function.yaml",
            r#"template: base:1: function "shout" not defined"#,
            None,
        ),
        (
            "template-fail.yaml",
            "error calling fail: element b has no tier",
            Some("name: a"),
        ),
    ];
    for (file, cause, printed) in cases {
        let out = generate(file, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{file} exited 0\n{err}\n{text}");
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        assert_eq!(
            err.matches(cause).count(),
            1,
            "{file}: want {cause:?} once in\n{err}"
        );
        assert_eq!(
            err.lines().count(),
            1,
            "{file}: one error, one line:\n{err}"
        );
        match printed {
            Some(app) => assert!(text.contains(app), "{file}: {text}"),
            None => assert!(text.trim().is_empty(), "{file}: {text}"),
        }
    }
}

/// A set that uses toJson, toYaml, range and keys over a map renders the
/// same bytes on every run (issue 14, point 1).
#[test]
fn map_walking_templates_render_byte_identical_output() {
    let first = generate("template-deterministic.yaml", &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8(first.stdout.clone()).unwrap();
    assert!(
        text.contains(r#"{\"alpha\":{\"b\":[\"x\",\"z\"],\"y\":\"2\"},\"beta\":null,\"kappa\":true,\"mid\":\"m\",\"zeta\":1}"#),
        "{text}"
    );
    assert!(text.contains("alpha,beta,kappa,mid,zeta,"), "{text}");
    for _ in 0..10 {
        let again = generate("template-deterministic.yaml", &[]);
        assert_eq!(again.stdout, first.stdout);
    }
    check(
        "template-deterministic.yaml",
        "template-deterministic.yaml",
        &[],
    );
}
