//! `flotilla cluster add` with a bootstrap token prints the agent command
//! line and the agent's install manifest (the embedded agent chart).

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use flotilla_hub::server::{HubConfig, start};
use serde_json::Value;

mod support;
use support::{flotilla, ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_add_prints_the_agent_command_and_manifest() {
    let data = tempfile::tempdir().unwrap();
    let hub = start(HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();

    // Text: token, pin, command line, manifest.
    let out = flotilla(&hub, &["cluster", "add", "east", "--bootstrap-token"]);
    // The hub listens on 127.0.0.1, which an agent in a cluster cannot
    // reach: a warning on stderr, the manifest on stdout stays clean.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("warning: the agent would dial https://127.0.0.1:")
            && stderr.contains("loopback")
            && stderr.contains("--hub-url"),
        "{stderr}"
    );
    let text = ok(&out);
    assert!(!text.contains("loopback"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("flotilla-agent --hub"))
        .unwrap_or_else(|| panic!("no command line in {text}"));
    assert!(line.trim().starts_with("FLOTILLA_TOKEN='flt1."), "{line}");
    assert!(
        line.contains(&format!(
            "flotilla-agent --hub {} --state-dir ./flotilla-agent-east",
            hub.url()
        )),
        "{line}"
    );
    assert!(text.contains("kubectl apply --server-side -f -"), "{text}");
    assert!(text.contains("kind: Deployment"), "{text}");

    // JSON: the manifest and the command are fields.
    let v: Value = serde_json::from_str(&ok(&flotilla(
        &hub,
        &[
            "cluster",
            "add",
            "west",
            "--bootstrap-token",
            "--hub-url",
            "https://hub.example.com:7443",
            "-o",
            "json",
        ],
    )))
    .unwrap();
    let manifest = v["manifest"].as_str().unwrap();
    let quiet = flotilla(
        &hub,
        &[
            "cluster",
            "add",
            "west-2",
            "--bootstrap-token",
            "--hub-url",
            "https://hub.example.com:7443",
        ],
    );
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    let token = v["bootstrapToken"].as_str().unwrap();
    assert!(manifest.contains(token));
    assert!(manifest.contains("https://hub.example.com:7443"));
    assert!(manifest.contains(&format!("sha256:{}", v["caPin"].as_str().unwrap())));
    assert!(v["agentCommand"].as_str().unwrap().contains(token));

    // -o yaml and --manifest-only: the manifest alone.
    for (name, flag) in [("north", "--manifest-only"), ("south", "-oyaml")] {
        let m = ok(&flotilla(&hub, &["cluster", "add", name, flag]));
        assert!(
            m.starts_with("---\napiVersion: v1\nkind: Namespace\n"),
            "{m}"
        );
        assert!(!m.contains("bootstrap token (single use"), "{m}");
    }

    // Namespace scope needs namespaces; nothing is created on refusal.
    let bad = flotilla(
        &hub,
        &[
            "cluster",
            "add",
            "x",
            "--manifest-only",
            "--rbac-scope",
            "namespace",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--namespaces"));
    let scoped = ok(&flotilla(
        &hub,
        &[
            "cluster",
            "add",
            "x",
            "--manifest-only",
            "--rbac-scope",
            "namespace",
            "--namespaces",
            "a,b",
        ],
    ));
    assert!(scoped.contains("kind: Role\n") && !scoped.contains("kind: ClusterRole\n"));
    hub.shutdown().await.unwrap();
}
