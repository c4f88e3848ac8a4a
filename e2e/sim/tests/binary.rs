//! The `flotilla-sim` binary: ready lines, kubeconfig files, state kept across
//! a SIGTERM restart.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn run(dir: &Path) -> (tokio::process::Child, Vec<String>) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-sim"))
        .args([
            "--clusters",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig-dir",
        ])
        .arg(dir.join("kube"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    for _ in 0..2 {
        out.push(lines.next_line().await.unwrap().unwrap());
    }
    (child, out)
}

async fn client(path: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let st = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_ready_lines_and_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = run(dir.path()).await;
    let kc = dir.path().join("kube/sim-2.kubeconfig");
    let parts: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(parts[0], "sim-2");
    assert_eq!(parts[1], "ready");
    assert!(
        parts[2].starts_with("https://127.0.0.1:") && parts[2].ends_with("/clusters/sim-2"),
        "{}",
        lines[1]
    );
    assert_eq!(parts[3], "kubeconfig");
    assert_eq!(Path::new(parts[4]), kc);

    let cms: Api<ConfigMap> = Api::namespaced(client(&kc).await, "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"}, "data": {"a": "1"}});
    cms.patch("kept", &PatchParams::apply("flotilla"), &Patch::Apply(&cm))
        .await
        .unwrap();
    stop(child).await;

    let (child, _) = run(dir.path()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&kc).await, "default");
    let got = cms.get("kept").await.unwrap();
    assert_eq!(got.data.unwrap()["a"], "1");
    let mf = got.metadata.managed_fields.unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("flotilla"));
    stop(child).await;
}
