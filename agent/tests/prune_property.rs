//! Property (issue 13, point 2): random interleavings of desired states
//! (new commits and reverts to earlier digests), passes stopped at random
//! requests, crashes there (before a request reaches the server, or after
//! it was carried out without the agent hearing so), restarts on the same
//! or on a fresh disk — once the final desired state has been reconciled,
//! the cluster holds exactly the objects it declares: nothing any earlier
//! state applied is left behind.
//!
//! The cases are generated from a seed (`FLOTILLA_PROP_SEED`, default
//! fixed) and their number is `FLOTILLA_PROP_CASES` (default 32); a failure
//! prints the seed and the steps of the failing case, so it replays.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::cache::Cache;
use flotilla_agent::engine::Engine;
use flotilla_agent::report::Report;
use flotilla_proto::SyncStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;

mod support;
use support::interrupt::{Then, pass_held_at, restarted};
use support::{harness, set_bundle};

const APP: &str = "prop";
const NS: &str = "prop";
/// Objects a desired state may hold.
const UNIVERSE: u32 = 12;
const DEADLINE: Duration = Duration::from_secs(60);

/// A desired state: a non-empty subset of the universe, as a bit mask; its
/// digest depends only on the set, so a set seen before is a revert.
fn bundle(set: u32) -> Bundle {
    let manifests = (0..UNIVERSE)
        .filter(|i| set & (1 << i) != 0)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("p-{i:02}")}, "data": {"i": i.to_string()}})
            .to_string()
        })
        .collect();
    Bundle {
        name: APP.into(),
        digest: format!("d{set:03x}"),
        revision: format!("r{set:03x}"),
        namespace: NS.into(),
        policy: Policy {
            automated: true,
            prune: true,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests,
        ..Bundle::default()
    }
}

fn names(set: u32) -> BTreeSet<String> {
    (0..UNIVERSE)
        .filter(|i| set & (1 << i) != 0)
        .map(|i| format!("p-{i:02}"))
        .collect()
}

#[derive(Debug, Clone)]
enum Step {
    /// The hub sends a new desired state.
    Commit(u32),
    /// One whole pass.
    Pass,
    /// A pass held at request `after` + 1; meanwhile maybe a new desired
    /// state; then it goes on, or the agent crashes and restarts (on a
    /// fresh disk when `fresh_disk`).
    Held {
        after: u64,
        commit: Option<u32>,
        then: Then,
        fresh_disk: bool,
    },
}

fn random_set(rng: &mut StdRng, pool: &[u32]) -> u32 {
    pool[rng.random_range(0..pool.len())]
}

fn generate(rng: &mut StdRng) -> (u32, Vec<Step>, u32) {
    // A few sets, so the same one comes back often (reverts); each holds
    // at least one object (an empty one is not pruned without allowEmpty).
    let pool: Vec<u32> = (0..4)
        .map(|_| rng.random_range(1..(1u32 << UNIVERSE)))
        .collect();
    let first = random_set(rng, &pool);
    let steps = (0..rng.random_range(2..8))
        .map(|_| match rng.random_range(0..10) {
            0 | 1 => Step::Commit(random_set(rng, &pool)),
            2 => Step::Pass,
            _ => Step::Held {
                // A pass makes up to about 30 requests: reads, the
                // inventory, then one write per object.
                after: rng.random_range(0..32),
                commit: rng.random_bool(0.8).then(|| random_set(rng, &pool)),
                then: match rng.random_range(0..3) {
                    0 => Then::Continue,
                    1 => Then::CrashBefore,
                    _ => Then::CrashAfter,
                },
                fresh_disk: rng.random_bool(0.25),
            },
        })
        .collect();
    // The final state: one of the sets (a revert), or a small one, so what
    // earlier states left shows.
    let last = if rng.random_bool(0.5) {
        random_set(rng, &pool)
    } else {
        1 << rng.random_range(0..UNIVERSE)
    };
    (first, steps, last)
}

fn live(kubeconfig: &Path, home: &Path) -> Result<BTreeSet<String>, String> {
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
        .map_err(|e| format!("kubectl: {e}"))?;
    if !out.status.success() {
        return Err(format!("kubectl: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let list: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.pointer("/metadata/name")?.as_str().map(str::to_owned))
        .collect())
}

fn synced_at(reports: &watch::Receiver<Option<Report>>, digest: &str) -> bool {
    reports.borrow().as_ref().is_some_and(|r| {
        r.apps
            .iter()
            .any(|a| a.name == APP && a.digest == digest && a.sync == SyncStatus::Synced as i32)
    })
}

/// Runs one case; the error says what went wrong.
async fn run_case(first: u32, steps: &[Step], last: u32, trace: &mut String) -> Result<(), String> {
    let h = harness().await;
    let kubeconfig = h.sim.kubeconfig_path("sim-1").ok_or("no kubeconfig")?;
    let mut state = h.dir.path().join("state");
    let (mut engine, mut cache, mut reports): (Engine, Arc<Cache>, _) =
        restarted(&h.client, &state);
    let mut current = first;
    set_bundle(&cache, bundle(first));
    for (n, step) in steps.iter().enumerate() {
        let _ = writeln!(trace, "  {n}: {step:?}");
        match step {
            Step::Commit(set) => {
                current = *set;
                set_bundle(&cache, bundle(*set));
            }
            Step::Pass => {
                engine.pass().await;
            }
            Step::Held {
                after,
                commit,
                then,
                fresh_disk,
            } => {
                let to = cache.clone();
                let next = *commit;
                let held = pass_held_at(&mut engine, &h.sim, *after, *then, || {
                    if let Some(set) = next {
                        set_bundle(&to, bundle(set));
                    }
                })
                .await;
                if !held {
                    let _ = writeln!(trace, "     (the pass ended before it was held)");
                    continue;
                }
                if let Some(set) = next {
                    current = set;
                }
                if *then != Then::Continue {
                    drop(engine);
                    drop(cache);
                    if *fresh_disk {
                        state = h.dir.path().join(format!("fresh-{n}"));
                        std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
                    }
                    (engine, cache, reports) = restarted(&h.client, &state);
                    if *fresh_disk {
                        // The hub sends the desired state to the new agent.
                        set_bundle(&cache, bundle(current));
                    }
                }
            }
        }
    }
    let _ = writeln!(trace, "  final: Commit({last})");
    set_bundle(&cache, bundle(last));
    let digest = bundle(last).digest;
    let until = Instant::now() + DEADLINE;
    loop {
        let settled = engine.pass().await;
        if settled && synced_at(&reports, &digest) {
            break;
        }
        if Instant::now() >= until {
            return Err(format!(
                "never settled at {digest}: {:?}",
                reports.borrow().as_ref().map(|r| r.apps.clone())
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = live(&kubeconfig, h.dir.path())?;
    let want = names(last);
    if found != want {
        let left: Vec<&String> = found.difference(&want).collect();
        let missing: Vec<&String> = want.difference(&found).collect();
        return Err(format!(
            "after the final state: left behind {left:?}, missing {missing:?}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_commits_crashes_and_restarts_leave_nothing_behind() {
    let seed: u64 = std::env::var("FLOTILLA_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0013);
    let cases: u64 = std::env::var("FLOTILLA_PROP_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let mut failed = Vec::new();
    for case in 0..cases {
        let case_seed = seed.wrapping_add(case);
        let mut rng = StdRng::seed_from_u64(case_seed);
        let (first, steps, last) = generate(&mut rng);
        let mut trace = format!("  start: Commit({first})\n");
        if let Err(e) = run_case(first, &steps, last, &mut trace).await {
            failed.push(format!(
                "case {case} (replay with FLOTILLA_PROP_SEED={case_seed} FLOTILLA_PROP_CASES=1): {e}\nsteps:\n{trace}"
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
