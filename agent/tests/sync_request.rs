//! A sync request syncs the newest desired state: when the hub's command
//! overtakes the desired state it belongs to (they travel apart) and the
//! state lands while a pass is under way, the request waits for the next
//! pass instead of syncing the older content.

use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::engine::SyncRequest;
use flotilla_proto::SyncStatus;
use serde_json::json;

mod support;
use support::interrupt::{Then, pass_held_at, restarted};
use support::{harness, set_bundle};

fn manual(digest: &str, greeting: &str) -> Bundle {
    Bundle {
        name: "manual".into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        namespace: "manual".into(),
        policy: Policy {
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"greeting": greeting}})
            .to_string(),
        ],
        ..Bundle::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_request_syncs_the_state_that_landed_during_the_pass() {
    let h = harness().await;
    let state = h.dir.path().join("state");
    let (mut engine, cache, reports) = restarted(&h.client, &state);
    set_bundle(&cache, manual("one", "one"));
    let requests = engine.sync_requests();
    let request = |id: &str| SyncRequest {
        command_id: id.into(),
        ..SyncRequest::default()
    };
    requests
        .lock()
        .expect("lock")
        .insert("manual".into(), request("c1"));
    let status = || {
        reports
            .borrow()
            .as_ref()
            .and_then(|r| r.apps.iter().find(|a| a.name == "manual").cloned())
    };
    let until = Instant::now() + Duration::from_secs(30);
    while status().is_none_or(|s| s.sync != SyncStatus::Synced as i32) {
        engine.pass().await;
        assert!(Instant::now() < until, "never synced: {:?}", status());
    }

    // The pass stops at its first read; meanwhile the command arrives, and
    // then the desired state it was sent for.
    let to = cache.clone();
    let held = pass_held_at(&mut engine, &h.sim, 0, Then::Continue, || {
        requests
            .lock()
            .expect("lock")
            .insert("manual".into(), request("c2"));
        set_bundle(&to, manual("three", "three"));
    })
    .await;
    assert!(held, "the pass was never held");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        engine.pass().await;
        if let Some(s) = status()
            && s.digest == "three"
            && s.sync == SyncStatus::Synced as i32
        {
            assert_eq!(
                s.requested_operation.map(|o| o.command_id),
                Some("c2".to_owned())
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "the request did not sync the newer state: {:?}",
            status()
        );
    }
}
