//! An object the application still has in the cluster but no longer in
//! Git (and that nothing pruned: no `prune` in the policy) makes the
//! application OutOfSync with the object listed as requiring pruning, as
//! Argo CD shows it; it is never a reason for automated sync to run again.
//! `argocd.argoproj.io/compare-options: IgnoreExtraneous` on the object
//! keeps it out of the application's sync status; an object deleted by
//! hand is not extraneous. kubectl, an independent client, changes and
//! reads the cluster.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::engine::Engine;
use flotilla_agent::report::Report;
use flotilla_proto::{AppStatus, SyncStatus};
use serde_json::json;
use tokio::sync::watch;

mod support;
use support::{harness, set_bundle};

const DEADLINE: Duration = Duration::from_secs(60);
const APP: &str = "extra";
const NS: &str = "extra";

fn bundle(digest: &str, names: &[&str]) -> Bundle {
    Bundle {
        name: APP.into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        namespace: NS.into(),
        policy: Policy {
            automated: true,
            prune: false,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: names
            .iter()
            .map(|n| {
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n},
                    "data": {"name": n}})
                .to_string()
            })
            .collect(),
        ..Bundle::default()
    }
}

fn status(reports: &watch::Receiver<Option<Report>>) -> Option<AppStatus> {
    reports
        .borrow()
        .as_ref()
        .and_then(|r| r.apps.iter().find(|a| a.name == APP).cloned())
}

/// Passes until `want` holds for the application's status.
async fn until(
    engine: &mut Engine,
    reports: &watch::Receiver<Option<Report>>,
    what: &str,
    want: impl Fn(&AppStatus) -> bool,
) -> AppStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        engine.pass().await;
        if let Some(s) = status(reports)
            && want(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {:#?}",
            status(reports)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("kube-cache"))
        .args(args)
        .env("HOME", home)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pruning(s: &AppStatus) -> Vec<String> {
    s.resources
        .iter()
        .filter(|r| r.requires_pruning)
        .filter_map(|r| r.key.as_ref().map(|k| k.name.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_left_in_the_cluster_is_out_of_sync_until_it_is_gone() {
    let mut h = harness().await;
    let kubeconfig = h.sim.kubeconfig_path("sim-1").expect("kubeconfig");
    let home = h.dir.path().to_owned();
    set_bundle(&h.cache, bundle("v1", &["a", "b"]));
    until(&mut h.engine, &h.reports, "Synced at v1", |s| {
        s.digest == "v1" && s.sync == SyncStatus::Synced as i32
    })
    .await;

    // b leaves Git; without prune it stays in the cluster.
    set_bundle(&h.cache, bundle("v2", &["a"]));
    let s = until(&mut h.engine, &h.reports, "v2 with b to prune", |s| {
        s.digest == "v2" && !pruning(s).is_empty()
    })
    .await;
    assert_eq!(s.sync, SyncStatus::OutOfSync as i32, "{s:#?}");
    assert_eq!(pruning(&s), ["b"], "{s:#?}");
    let b = s
        .resources
        .iter()
        .find(|r| r.requires_pruning)
        .expect("b listed");
    assert_eq!(b.sync, SyncStatus::OutOfSync as i32);
    assert!(s.message.contains("requires pruning"), "{}", s.message);
    assert!(
        kubectl(
            &kubeconfig,
            &home,
            &["get", "configmap", "b", "-n", NS, "-o", "name"]
        )
        .contains("configmap/b")
    );
    // Automated sync does not run for an object only a prune removes: the
    // apply count stays put over further passes.
    let applied = s.last_applied_ms;
    for _ in 0..5 {
        h.engine.pass().await;
    }
    let s = status(&h.reports).expect("status");
    assert_eq!(s.last_applied_ms, applied, "synced again for b: {s:#?}");
    assert_eq!(s.sync, SyncStatus::OutOfSync as i32);

    // IgnoreExtraneous keeps it out of the application's sync status; it
    // is still listed.
    kubectl(
        &kubeconfig,
        &home,
        &[
            "annotate",
            "configmap",
            "b",
            "-n",
            NS,
            "argocd.argoproj.io/compare-options=IgnoreExtraneous",
        ],
    );
    let s = until(&mut h.engine, &h.reports, "Synced with b ignored", |s| {
        s.sync == SyncStatus::Synced as i32
    })
    .await;
    assert_eq!(pruning(&s), ["b"], "{s:#?}");

    // Deleted by hand: nothing left to prune.
    kubectl(&kubeconfig, &home, &["delete", "configmap", "b", "-n", NS]);
    let s = until(&mut h.engine, &h.reports, "b gone from the status", |s| {
        pruning(s).is_empty()
    })
    .await;
    assert_eq!(s.sync, SyncStatus::Synced as i32, "{s:#?}");
}
