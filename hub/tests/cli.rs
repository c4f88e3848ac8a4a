//! The `flotilla` binary against an in-process hub: the commands, files and
//! output the e2e harness and scripts rely on.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, RepoSpec, start};
use serde_json::Value;

mod support;
use support::{flotilla, git, ok};

fn make_repo(dir: &Path) -> String {
    let url = format!("file://{}", dir.display());
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(dir.join("apps")).unwrap();
    std::fs::create_dir_all(dir.join("web")).unwrap();
    std::fs::write(
        dir.join("apps/web.yaml"),
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: web\nspec:\n  source:\n    repoURL: {url}\n    path: web\n  destination:\n    name: east\n    namespace: default\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("web/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
    )
    .unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "init"]);
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_tables_and_json() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    let mut config = HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.repos = vec![RepoSpec {
        url: url.clone(),
        apps_path: "apps".into(),
        revision: "HEAD".into(),
        poll_interval: Some(Duration::from_secs(1)),
    }];
    let hub = start(config).await.unwrap();

    // cluster add writes the agent's files and prints its command line.
    let out_dir = tempfile::tempdir().unwrap();
    let state = out_dir.path().join("east");
    let text = ok(&flotilla(
        &hub,
        &[
            "cluster",
            "add",
            "east",
            "--label",
            "env=prod",
            "--out",
            state.to_str().unwrap(),
        ],
    ));
    assert!(
        text.contains(&format!(
            "flotilla-agent --hub {} --state-dir {}",
            hub.url(),
            state.display()
        )),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(state.join(f).exists(), "{f}");
    }
    let mode = std::fs::metadata(state.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let table = ok(&flotilla(&hub, &["cluster", "list"]));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("east") && table.contains("env=prod"),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&ok(&flotilla(&hub, &["cluster", "list", "-o", "json"]))).unwrap();
    assert_eq!(json[0]["name"], "east");
    assert_eq!(json[0]["labels"]["env"], "prod");
    assert_eq!(json[0]["connected"], false);

    // The app from Git shows up, rendered, with one row per cluster.
    let deadline = Instant::now() + Duration::from_secs(30);
    let app = loop {
        let v: Value =
            serde_json::from_str(&ok(&flotilla(&hub, &["app", "get", "web", "-o", "json"])))
                .unwrap_or(Value::Null);
        if v["revision"].as_str().is_some_and(|r| !r.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "web never rendered: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(app["clusters"][0]["cluster"], "east");
    assert_eq!(app["clusters"][0]["sync"], "Unknown");
    assert_eq!(app["clusters"][0]["desiredRevision"], app["revision"]);
    let table = ok(&flotilla(&hub, &["app", "get", "web"]));
    assert!(
        table.contains("CLUSTER") && table.contains("SYNC") && table.contains("HEALTH"),
        "{table}"
    );
    let list: Value =
        serde_json::from_str(&ok(&flotilla(&hub, &["app", "list", "-o", "json"]))).unwrap();
    assert_eq!(list[0]["name"], "web");

    // Repositories, refresh, version.
    let repos: Value =
        serde_json::from_str(&ok(&flotilla(&hub, &["repo", "list", "-o", "json"]))).unwrap();
    assert_eq!(repos[0]["url"], url.as_str());
    assert_eq!(repos[0]["appsPath"], "apps");
    ok(&flotilla(&hub, &["refresh"]));
    ok(&flotilla(&hub, &["version"]));

    // app create / delete from a file.
    let file = out_dir.path().join("app.yaml");
    std::fs::write(
        &file,
        std::fs::read_to_string(repo.path().join("apps/web.yaml"))
            .unwrap()
            .replace("name: web\n", "name: web2\n"),
    )
    .unwrap();
    ok(&flotilla(
        &hub,
        &["app", "create", "-f", file.to_str().unwrap()],
    ));
    let dup = flotilla(&hub, &["app", "create", "-f", file.to_str().unwrap()]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    ok(&flotilla(
        &hub,
        &["app", "create", "-f", file.to_str().unwrap(), "--upsert"],
    ));
    ok(&flotilla(&hub, &["app", "delete", "web2", "-y"]));

    // Errors: clear message, non-zero exit.
    let missing = flotilla(&hub, &["app", "get", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let bad = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["app", "list"])
        .env("FLOTILLA_HUB", hub.url())
        .env("FLOTILLA_CA_FILE", hub.ca_file())
        .env("FLOTILLA_TOKEN", "wrong")
        .env_remove("FLOTILLA_TOKEN_FILE")
        .env(
            "FLOTILLA_CONFIG",
            hub.ca_file().with_file_name("no-such-config.json"),
        )
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Unauthenticated"));

    ok(&flotilla(&hub, &["cluster", "remove", "east", "-y"]));
    let json: Value =
        serde_json::from_str(&ok(&flotilla(&hub, &["cluster", "list", "-o", "json"]))).unwrap();
    assert_eq!(json, Value::Array(vec![]));
    hub.shutdown().await.unwrap();
}

fn flotilla_with(envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(args);
    for k in [
        "FLOTILLA_HUB",
        "FLOTILLA_CA_FILE",
        "FLOTILLA_TOKEN",
        "FLOTILLA_TOKEN_FILE",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_tokens_and_login() {
    let data = tempfile::tempdir().unwrap();
    let hub = start(HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let created: Value = serde_json::from_str(&ok(&flotilla(
        &hub,
        &["token", "create", "ci", "--read-only", "-o", "json"],
    )))
    .unwrap();
    let ci = created["token"].as_str().unwrap().to_owned();
    assert_eq!(ci.len(), 64);
    let url = hub.url();
    let ca = hub.ca_file().display().to_string();
    let config = data.path().join("cli-config.json");
    let config = config.to_str().unwrap();
    let as_ci = |args: &[&str]| {
        flotilla_with(
            &[
                ("FLOTILLA_HUB", &url),
                ("FLOTILLA_CA_FILE", &ca),
                ("FLOTILLA_TOKEN", &ci),
                ("FLOTILLA_CONFIG", config),
            ],
            args,
        )
    };
    ok(&as_ci(&["app", "list"]));
    ok(&as_ci(&["cluster", "list"]));
    for args in [
        &["refresh"][..],
        &["cluster", "remove", "x", "-y"],
        &["token", "create", "evil"],
        &["repo", "add", "file:///nowhere"],
        &["app", "terminate-op", "x"],
    ] {
        let out = as_ci(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // login saves hub, CA and token; later commands need no flags.
    ok(&as_ci(&["login"]));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    ok(&flotilla_with(
        &[("FLOTILLA_CONFIG", config)],
        &["app", "list"],
    ));

    // The last read-write token cannot be revoked; ci can, and then fails.
    let out = flotilla(&hub, &["token", "revoke", "admin"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"));
    let list = ok(&flotilla(&hub, &["token", "list"]));
    assert!(list.contains("ci") && list.contains("read-only"), "{list}");
    ok(&flotilla(&hub, &["token", "revoke", "ci"]));
    let out = flotilla_with(&[("FLOTILLA_CONFIG", config)], &["app", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    hub.shutdown().await.unwrap();
}
