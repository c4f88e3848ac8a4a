//! The agent chart's cache and state values (`cache.store`,
//! `persistence.*`): rendered as `helm template` would, checked field by
//! field, and applied to a simulated cluster with the real
//! `kubectl apply --server-side`, read back with `kubectl get`.
//!
//! Run: `cargo test -p flotilla-e2e --test charts_agent_cache`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use flotilla_e2e::helm::{self, Release};
use flotilla_e2e::kubectl::run as kubectl;
use serde_json::Value;

const NS: &str = "flotilla-system";

fn chart_dir() -> PathBuf {
    flotilla_e2e::workspace_root()
        .join("charts")
        .join("flotilla-agent")
}

/// Renders the agent chart with `values` (YAML text; empty for the
/// defaults).
fn render(values: &str) -> Result<(String, Vec<Value>)> {
    render_in(NS, values)
}

/// [`render`] as a release in `namespace`.
fn render_in(namespace: &str, values: &str) -> Result<(String, Vec<Value>)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values)?;
    let text = helm::template(
        &chart_dir(),
        &Release::new("flotilla-agent", namespace),
        &[file],
    )?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("rendered chart is not YAML:\n{text}"))?;
    Ok((text, docs.into_iter().filter(|d| !d.is_null()).collect()))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn env<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn state_volume(deployment: &Value) -> Value {
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "state"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn verbs(role: &Value, resource: &str) -> Vec<String> {
    role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|x| x == resource))
        })
        .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn defaults_keep_the_cache_in_the_cluster_on_an_empty_dir() -> Result<()> {
    let (_, docs) = render("")?;
    let deployment = find(&docs, "Deployment", "flotilla-agent").context("Deployment")?;
    assert_eq!(
        env(deployment, "FLOTILLA_CACHE_STORE").map(|e| &e["value"]),
        Some(&Value::from("cluster"))
    );
    let state = state_volume(deployment);
    assert!(state["emptyDir"].is_object(), "{state}");
    assert!(
        !docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"),
        "no claim without persistence.enabled"
    );
    let role = find(&docs, "Role", "flotilla-agent-self").context("Role")?;
    assert_eq!(
        verbs(role, "secrets"),
        ["get", "list", "create", "update", "patch", "delete"]
    );
    // No watch on Secrets: nothing of the agent watches them.
    assert!(!verbs(role, "secrets").contains(&"watch".to_owned()));
    Ok(())
}

#[test]
fn disk_store_drops_the_verbs_only_the_cluster_copy_needs() -> Result<()> {
    let (_, docs) = render("cache:\n  store: disk\n")?;
    let deployment = find(&docs, "Deployment", "flotilla-agent").context("Deployment")?;
    assert_eq!(
        env(deployment, "FLOTILLA_CACHE_STORE").map(|e| &e["value"]),
        Some(&Value::from("disk"))
    );
    let role = find(&docs, "Role", "flotilla-agent-self").context("Role")?;
    assert_eq!(verbs(role, "secrets"), ["get", "create", "update", "patch"]);
    Ok(())
}

#[test]
fn persistence_puts_the_state_dir_on_a_claim() -> Result<()> {
    let (_, docs) =
        render("persistence:\n  enabled: true\n  storageClass: fast-ssd\n  size: 2Gi\n")?;
    let pvc = find(&docs, "PersistentVolumeClaim", "flotilla-agent-state").context("claim")?;
    assert_eq!(pvc["metadata"]["namespace"], NS);
    assert_eq!(pvc["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteOnce");
    let deployment = find(&docs, "Deployment", "flotilla-agent").context("Deployment")?;
    let state = state_volume(deployment);
    assert_eq!(
        state["persistentVolumeClaim"]["claimName"],
        "flotilla-agent-state"
    );
    assert!(state.get("emptyDir").is_none(), "{state}");

    // `-`: explicitly no class; empty: the cluster's default (no field).
    let (_, docs) = render("persistence:\n  enabled: true\n  storageClass: \"-\"\n")?;
    let pvc = find(&docs, "PersistentVolumeClaim", "flotilla-agent-state").context("claim")?;
    assert_eq!(pvc["spec"]["storageClassName"], "");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    let (_, docs) = render("persistence:\n  enabled: true\n")?;
    let pvc = find(&docs, "PersistentVolumeClaim", "flotilla-agent-state").context("claim")?;
    assert!(pvc["spec"].get("storageClassName").is_none(), "{pvc}");
    Ok(())
}

#[test]
fn values_that_cannot_work_are_refused() {
    for (values, expected) in [
        (
            "cache:\n  store: etcd\n",
            r#"cache.store: must be one of "cluster", "disk", not "etcd""#,
        ),
        (
            "persistence:\n  size: lots\n",
            "persistence.size: \"lots\" does not match the pattern",
        ),
        (
            "persistence:\n  enable: true\n",
            "persistence.enable: is not a value of this chart",
        ),
    ] {
        let err = render(values).map(|_| ()).expect_err(values).to_string();
        assert!(err.contains(expected), "{values}: {err}");
    }
}

/// The claim, the Deployment using it and the narrowed Role are accepted
/// by the API server and read back as rendered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_and_persistence_values_apply_to_the_simulator() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = flotilla_sim::Simulator::start(flotilla_sim::SimConfig {
        clusters: 1,
        listen: "127.0.0.1:0".parse()?,
        kubeconfig_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await?;
    let kubeconfig = sim
        .kubeconfig_path("sim-1")
        .context("simulator wrote no kubeconfig for sim-1")?;
    // Each release in a namespace of its own: a fresh install, not an
    // upgrade of the previous one.
    for (ns, values) in [
        (
            "agent-pvc",
            "persistence:\n  enabled: true\n  storageClass: standard\n  size: 512Mi\n",
        ),
        ("agent-disk", "cache:\n  store: disk\n"),
    ] {
        let ns_doc = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
        kubectl(
            &kubeconfig,
            &["apply", "--server-side", "-f", "-"],
            Some(&ns_doc),
        )
        .await?;
        let (text, docs) = render_in(ns, values)?;
        let applied = kubectl(
            &kubeconfig,
            &[
                "apply",
                "--server-side",
                "--field-manager=helm-chart-test",
                "-f",
                "-",
            ],
            Some(&text),
        )
        .await?;
        assert_eq!(applied.lines().count(), docs.len(), "{applied}");
        let role: Value = serde_json::from_str(
            &kubectl(
                &kubeconfig,
                &["get", "role", "flotilla-agent-self", "-n", ns, "-o", "json"],
                None,
            )
            .await?,
        )?;
        let rendered_role = find(&docs, "Role", "flotilla-agent-self").context("Role")?;
        assert_eq!(verbs(&role, "secrets"), verbs(rendered_role, "secrets"));
        let deployment: Value = serde_json::from_str(
            &kubectl(
                &kubeconfig,
                &[
                    "get",
                    "deployment",
                    "flotilla-agent",
                    "-n",
                    ns,
                    "-o",
                    "json",
                ],
                None,
            )
            .await?,
        )?;
        let rendered = find(&docs, "Deployment", "flotilla-agent").context("Deployment")?;
        assert_eq!(
            env(&deployment, "FLOTILLA_CACHE_STORE"),
            env(rendered, "FLOTILLA_CACHE_STORE")
        );
        let live_state = state_volume(&deployment);
        let rendered_state = state_volume(rendered);
        assert_eq!(
            live_state["persistentVolumeClaim"],
            rendered_state["persistentVolumeClaim"]
        );
        assert_eq!(
            live_state["emptyDir"].is_object(),
            rendered_state["emptyDir"].is_object(),
            "{live_state}"
        );
        if let Some(pvc) = find(&docs, "PersistentVolumeClaim", "flotilla-agent-state") {
            let live: Value = serde_json::from_str(
                &kubectl(
                    &kubeconfig,
                    &["get", "pvc", "flotilla-agent-state", "-n", ns, "-o", "json"],
                    None,
                )
                .await?,
            )?;
            assert_eq!(
                live["spec"]["storageClassName"],
                pvc["spec"]["storageClassName"]
            );
            assert_eq!(
                live["spec"]["resources"]["requests"]["storage"],
                pvc["spec"]["resources"]["requests"]["storage"]
            );
        }
    }
    Ok(())
}
