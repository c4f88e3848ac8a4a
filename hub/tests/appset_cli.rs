//! `flotilla appset …` and `flotilla cluster label|annotate|apply` against
//! an in-process hub: tables, JSON, errors.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, RunningHub, start};
use serde_json::Value;

mod support;
use support::{flotilla, ok};

fn json(hub: &RunningHub, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(&flotilla(hub, &a))).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SET: &str = r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: web
spec:
  goTemplate: true
  generators:
  - clusters:
      selector:
        matchExpressions:
        - {key: env, operator: In, values: [prod]}
  template:
    metadata:
      name: 'web-{{.name}}'
      annotations:
        owner: '{{index .metadata.annotations "owner"}}'
    spec:
      project: default
      source:
        repoURL: file:///nowhere
        path: web
      destination:
        name: '{{.name}}'
        namespace: default
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appset_and_inventory_commands() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut config = HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    let hub = start(config).await.unwrap();

    ok(&flotilla(
        &hub,
        &["cluster", "add", "east", "--bootstrap-token"],
    ));
    // Label and annotate: set and remove in one call.
    let text = ok(&flotilla(
        &hub,
        &["cluster", "label", "east", "env=prod", "tier=1"],
    ));
    assert!(text.contains("env=prod"), "{text}");
    let c = json(&hub, &["cluster", "label", "east", "tier-"]);
    assert_eq!(c["labels"], serde_json::json!({"env": "prod"}));
    let c = json(&hub, &["cluster", "annotate", "east", "owner=team-a"]);
    assert_eq!(c["annotations"]["owner"], "team-a");
    let bad = flotilla(&hub, &["cluster", "label", "east", "oops"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KEY=VALUE"));
    let missing = flotilla(&hub, &["cluster", "label", "nope", "a=b"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    // Declared clusters: a Cluster resource and an Argo CD cluster Secret.
    let decl = write(
        files.path(),
        "clusters.yaml",
        "apiVersion: flotilla.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: west\n  labels: {env: prod}\n  annotations: {owner: team-b}\nspec:\n  server: https://west.example\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  labels:\n    argocd.argoproj.io/secret-type: cluster\n    env: dev\ndata:\n  name: bm9ydGg=\n",
    );
    let applied = json(&hub, &["cluster", "apply", "-f", &decl]);
    assert_eq!(applied[0]["name"], "west");
    assert_eq!(applied[1]["name"], "north");
    let list = ok(&flotilla(&hub, &["cluster", "list"]));
    assert!(list.contains("west") && list.contains("north"), "{list}");

    // appset create / list / get.
    let set = write(files.path(), "set.yaml", SET);
    let text = ok(&flotilla(&hub, &["appset", "create", "-f", &set]));
    assert!(text.contains("application set web stored"), "{text}");
    let again = flotilla(&hub, &["appset", "create", "-f", &set]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--upsert"));
    eventually("web-east and web-west", || {
        let s = json(&hub, &["appset", "get", "web"]);
        s["applications"] == serde_json::json!(["web-east", "web-west"])
    })
    .await;
    let table = ok(&flotilla(&hub, &["appset", "list"]));
    assert!(table.contains("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web ") && l.contains(" 2 ")),
        "{table}"
    );
    let get = ok(&flotilla(&hub, &["appset", "get", "web"]));
    assert!(get.contains("web-west"), "{get}");
    assert!(get.contains("ResourcesUpToDate"), "{get}");
    // Its repository does not exist: once the hub tried it, `app get`
    // shows the error and exits 1.
    let out = flotilla(&hub, &["app", "get", "web-west", "-o", "json"]);
    let app: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(app["origin"], "appset:web");
    let failed = !app["error"].as_str().unwrap_or_default().is_empty();
    assert_eq!(out.status.code(), Some(i32::from(failed)), "{out:?}");

    // Nothing held: confirm says so.
    let c = flotilla(&hub, &["appset", "confirm", "web"]);
    assert!(!c.status.success());
    assert!(String::from_utf8_lossy(&c.stderr).contains("no held deletions"));

    // Offline generate needs no hub settings at all.
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "appset",
            "generate",
            &set,
            "--clusters",
            &decl,
            "-o",
            "json",
        ])
        .env_remove("FLOTILLA_HUB")
        .env_remove("FLOTILLA_TOKEN_FILE")
        .env("FLOTILLA_CONFIG", files.path().join("none.json"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v[0]["metadata"]["name"], "web-west");
    assert_eq!(v[0]["metadata"]["annotations"]["owner"], "team-b");

    // delete removes the set and its applications.
    ok(&flotilla(&hub, &["appset", "delete", "web"]));
    let apps = json(&hub, &["app", "list"]);
    assert_eq!(apps, serde_json::json!([]));
    let gone = flotilla(&hub, &["appset", "get", "web"]);
    assert!(!gone.status.success());
    hub.shutdown().await.unwrap();
}
