//! The prune inventory is the union of everything ever applied and not yet
//! pruned (issue 13, point 2): a commit that lands while an older one is
//! being applied, a revert to the digest applied before, a crash in the
//! middle of an apply, a restart on a fresh disk — none leaves an applied
//! object that no desired state contains. The engine is stopped at exact
//! requests by the simulator (`Faults::hold_after_requests`); kubectl, an
//! independent client, checks what the cluster holds.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::engine::{Engine, SyncRequest};
use flotilla_agent::report::Report;
use flotilla_proto::SyncStatus;
use serde_json::{Value, json};
use tokio::sync::watch;

mod support;
use support::interrupt::{Then, pass_held_at, restarted};
use support::{harness, set_bundle};

const DEADLINE: Duration = Duration::from_secs(60);
const APP: &str = "leak";
const NS: &str = "leak";

fn cm(name: &str) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"name": name}})
    .to_string()
}

/// The application with ConfigMaps `names` at `digest`.
fn bundle(digest: &str, names: &[String], prune: bool) -> Bundle {
    Bundle {
        name: APP.into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        namespace: NS.into(),
        policy: Policy {
            automated: true,
            prune,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: names.iter().map(|n| cm(n)).collect(),
        ..Bundle::default()
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// The application's ConfigMaps as kubectl sees them.
fn live_configmaps(kubeconfig: &Path, home: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("kube-cache"))
        .args([
            "get",
            "configmaps",
            "-n",
            NS,
            "-l",
            &format!("flotilla.dev/app={APP}"),
            "-o",
            "json",
        ])
        .env("HOME", home)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("kubectl json");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.pointer("/metadata/name")?.as_str().map(str::to_owned))
        .collect()
}

fn status(reports: &watch::Receiver<Option<Report>>) -> Option<flotilla_proto::AppStatus> {
    reports
        .borrow()
        .as_ref()
        .and_then(|r| r.apps.iter().find(|a| a.name == APP).cloned())
}

/// Passes until the application is Synced at `digest` with nothing
/// running and a pass settles.
async fn settle(engine: &mut Engine, reports: &watch::Receiver<Option<Report>>, digest: &str) {
    let until = Instant::now() + DEADLINE;
    loop {
        let settled = engine.pass().await;
        if settled
            && let Some(s) = status(reports)
            && s.digest == digest
            && s.sync == SyncStatus::Synced as i32
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "never settled at {digest}: {:#?}",
            status(reports)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn expected(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// Objects the simulated cluster stores (read without a request, so also
/// while requests are held).
fn stored_objects(sim: &flotilla_sim::SimHandle) -> u64 {
    sim.stats("sim-1")
        .and_then(|s| s["objects"].as_u64())
        .unwrap_or(0)
}

/// Stops the pass of A in the middle of its applies: after the reads of
/// its 81 objects and 20-odd of its writes.
const MID_APPLY: u64 = 110;

/// A0 (one object) applied; A adds 80; while A is being applied (held
/// after [`MID_APPLY`] requests) the desired state becomes `b`.
async fn replaced_during_apply(b_digest: &str, b_names: &[String], prune: bool) {
    let mut h = harness().await;
    let state = h.dir.path().join("state");
    let (mut engine, cache, reports) = restarted(&h.client, &state);
    h.cache = cache;
    let kubeconfig = h.sim.kubeconfig_path("sim-1").expect("kubeconfig");
    let a0 = names("keep", 1);
    set_bundle(&h.cache, bundle("a0", &a0, prune));
    settle(&mut engine, &reports, "a0").await;
    let mut a = a0.clone();
    a.extend(names("burst", 80));
    set_bundle(&h.cache, bundle("a", &a, prune));
    let cache = h.cache.clone();
    let b = bundle(b_digest, b_names, prune);
    let before = stored_objects(&h.sim);
    let mut during = 0;
    let held = pass_held_at(&mut engine, &h.sim, MID_APPLY, Then::Continue, || {
        during = stored_objects(&h.sim);
        set_bundle(&cache, b);
    })
    .await;
    assert!(held, "the apply of A was never held");
    assert!(
        during > before && during < before + 80,
        "B did not arrive in the middle of A's apply: {before} objects before, {during} then"
    );
    if prune {
        settle(&mut engine, &reports, b_digest).await;
    } else {
        // Without prune, what A left is listed as requiring pruning and
        // the application is OutOfSync (as Argo CD shows it).
        let until = Instant::now() + DEADLINE;
        let s = loop {
            engine.pass().await;
            if let Some(s) = status(&reports)
                && s.digest == b_digest
                && s.sync == SyncStatus::OutOfSync as i32
                && s.resources.iter().any(|r| r.requires_pruning)
                && s.resources
                    .iter()
                    .all(|r| r.requires_pruning || r.sync == SyncStatus::Synced as i32)
            {
                break s;
            }
            assert!(
                Instant::now() < until,
                "never settled at {b_digest} with objects to prune: {:#?}",
                status(&reports)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let listed: BTreeSet<String> = s
            .resources
            .iter()
            .filter(|r| r.requires_pruning)
            .filter_map(|r| r.key.as_ref().map(|k| k.name.clone()))
            .collect();
        let left: BTreeSet<String> = live_configmaps(&kubeconfig, h.dir.path())
            .difference(&expected(b_names))
            .cloned()
            .collect();
        assert_eq!(
            listed, left,
            "objects to prune as reported and as kubectl sees them"
        );
    }
    if prune {
        assert_eq!(
            live_configmaps(&kubeconfig, h.dir.path()),
            expected(b_names),
            "objects of A outlived B"
        );
    } else {
        // Without prune they stay; a sync with --prune removes them.
        engine.sync_requests().lock().expect("lock").insert(
            APP.into(),
            SyncRequest {
                prune: true,
                command_id: "c1".into(),
                ..SyncRequest::default()
            },
        );
        let until = Instant::now() + DEADLINE;
        loop {
            engine.pass().await;
            if live_configmaps(&kubeconfig, h.dir.path()) == expected(b_names) {
                break;
            }
            assert!(
                Instant::now() < until,
                "app sync --prune left {:?}",
                live_configmaps(&kubeconfig, h.dir.path())
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_a_commit_replaced_during_its_apply_are_pruned() {
    let mut b = names("keep", 1);
    b.push("other".into());
    replaced_during_apply("b", &b, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_to_the_applied_digest_during_an_apply_still_prunes() {
    replaced_during_apply("a0", &names("keep", 1), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_with_prune_removes_what_a_replaced_apply_left() {
    replaced_during_apply("a0", &names("keep", 1), false).await;
}

/// The engine crashes in the middle of A (after `after` requests) while
/// the desired state becomes A0 again; a new engine on the same disk, or
/// on a fresh one, prunes what the crashed one applied.
async fn crash_during_apply(then: Then, fresh_disk: bool) {
    let h = harness().await;
    let state = h.dir.path().join("state");
    let kubeconfig = h.sim.kubeconfig_path("sim-1").expect("kubeconfig");
    let (mut engine, cache, reports) = restarted(&h.client, &state);
    let a0 = names("keep", 1);
    set_bundle(&cache, bundle("a0", &a0, true));
    settle(&mut engine, &reports, "a0").await;
    let mut a = a0.clone();
    a.extend(names("burst", 80));
    set_bundle(&cache, bundle("a", &a, true));
    let revert = cache.clone();
    let before = stored_objects(&h.sim);
    let mut during = 0;
    let held = pass_held_at(&mut engine, &h.sim, MID_APPLY, then, || {
        during = stored_objects(&h.sim);
        set_bundle(&revert, bundle("a0", &names("keep", 1), true));
    })
    .await;
    assert!(held, "the apply of A was never held");
    drop(engine);
    drop(cache);
    assert!(
        during > before && during < before + 80,
        "the crash did not come in the middle of A's apply: {before} objects before, {during} then"
    );
    let state = if fresh_disk {
        let fresh = h.dir.path().join("fresh");
        std::fs::create_dir_all(&fresh).expect("fresh state dir");
        fresh
    } else {
        state
    };
    let (mut engine, cache, reports) = restarted(&h.client, &state);
    if fresh_disk {
        // The hub sends the desired state again.
        set_bundle(&cache, bundle("a0", &names("keep", 1), true));
    }
    settle(&mut engine, &reports, "a0").await;
    assert_eq!(
        live_configmaps(&kubeconfig, h.dir.path()),
        expected(&a0),
        "objects the crashed engine applied outlived it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_crash_mid_apply_prunes_what_was_applied() {
    crash_during_apply(Then::CrashBefore, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_crashed_engine_never_heard_of_is_pruned_too() {
    crash_during_apply(Then::CrashAfter, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_disk_after_a_crash_mid_apply_prunes_from_the_cluster_inventory() {
    crash_during_apply(Then::CrashBefore, true).await;
}
