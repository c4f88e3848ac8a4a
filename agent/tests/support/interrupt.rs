//! Stopping an engine at an exact request to the simulator: the simulator
//! holds every request after the first N (`Faults::hold_after_requests`),
//! the test acts while the engine waits there, then lets the pass go on or
//! crashes the engine (its pass is dropped, the held request never
//! happens, or has happened without the engine learning it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::cache::Cache;
use flotilla_agent::cluster::Cluster;
use flotilla_agent::engine::Engine;
use flotilla_agent::report::Report;
use flotilla_sim::{Faults, SimHandle};
use tokio::sync::{Notify, watch};

/// What happens once the engine is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// The held request goes through and the pass finishes.
    Continue,
    /// The engine crashes before the held request reaches the server.
    CrashBefore,
    /// The held request was carried out; the engine crashes before it
    /// hears so.
    CrashAfter,
}

/// The simulator's count of held requests.
pub fn held(sim: &SimHandle) -> u64 {
    sim.stats("sim-1")
        .and_then(|s| s["held"].as_u64())
        .unwrap_or(0)
}

async fn until_held(sim: &SimHandle) {
    while held(sim) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn until_released(sim: &SimHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while held(sim) > 0 {
        assert!(Instant::now() < deadline, "held requests never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs one pass of `engine`, held at request `after` + 1 (counted from
/// now); then `meanwhile` runs and the pass goes on or crashes as `then`
/// says. False when the pass finished before that request (nothing was
/// held, `meanwhile` did not run). After a crash the engine must not be
/// used again: start a new one on the cache read back from disk.
pub async fn pass_held_at(
    engine: &mut Engine,
    sim: &SimHandle,
    after: u64,
    then: Then,
    meanwhile: impl FnOnce(),
) -> bool {
    sim.set_faults(
        "sim-1",
        Faults {
            hold_after_requests: Some(after),
            hold_processed: then == Then::CrashAfter,
            ..Faults::default()
        },
    );
    let mut pass = Box::pin(engine.pass());
    let was_held = tokio::select! {
        biased;
        _ = &mut pass => false,
        () = until_held(sim) => true,
    };
    if !was_held {
        sim.set_faults("sim-1", Faults::default());
        return false;
    }
    meanwhile();
    match then {
        Then::Continue => {
            sim.set_faults("sim-1", Faults::default());
            pass.await;
        }
        Then::CrashBefore | Then::CrashAfter => {
            drop(pass);
            // Released as down: a request held before it was carried out
            // never is.
            sim.set_faults(
                "sim-1",
                Faults {
                    down: true,
                    ..Faults::default()
                },
            );
            until_released(sim).await;
            sim.set_faults("sim-1", Faults::default());
        }
    }
    true
}

/// A new engine (as after a restart) over the cache in `state_dir` read
/// back from disk, keeping inventories in the cluster as the agent does.
pub fn restarted(
    client: &kube::Client,
    state_dir: &std::path::Path,
) -> (Engine, Arc<Cache>, watch::Receiver<Option<Report>>) {
    let cache = Arc::new(Cache::open(state_dir).expect("cache"));
    let (tx, reports) = watch::channel(None);
    let engine = Engine::new(
        Arc::new(Cluster::new(client.clone())),
        cache.clone(),
        Arc::new(Notify::new()),
        tx,
    )
    .with_inventory(flotilla_agent::inventory::Inventory::new(
        flotilla_agent::inventory::DEFAULT_NAMESPACE,
    ));
    (engine, cache, reports)
}
