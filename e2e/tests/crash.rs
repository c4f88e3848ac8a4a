//! Crash safety of the hub's store: the hub is killed with SIGKILL while
//! users are creating applications; after a restart every creation the
//! hub acknowledged is there. This is the test DESIGN.md asks for before
//! sled stays the default store.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_e2e::fleet::{Fleet, FleetOptions, api_client};
use flotilla_proto::{CreateApplicationRequest, ListApplicationsRequest};

const CYCLES: usize = 3;
const ACKS_BEFORE_KILL: usize = 25;

fn application(name: &str, repo: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {repo}\n    path: guestbook\n  destination:\n    name: sim-1\n    namespace: {name}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_killed_hub() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut next = 0usize;
    for cycle in 0..CYCLES {
        let hub_url = fleet.hub_url();
        let data = fleet.hub_data();
        let repo = fleet.repo.url();
        let acked_in = Arc::clone(&acked);
        let start = next;
        // A writer keeps creating applications; each one counts once the
        // hub has answered OK.
        let writer = tokio::spawn(async move {
            let Ok(mut api) = api_client(&hub_url, &data).await else {
                return;
            };
            for i in start.. {
                let name = format!("crash-{i}");
                let req = CreateApplicationRequest {
                    manifest: application(&name, &repo),
                    upsert: false,
                };
                match api.create_application(req).await {
                    Ok(_) => {
                        if let Ok(mut a) = acked_in.lock() {
                            a.insert(name);
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        flotilla_e2e::eventually(
            "acknowledged creations",
            Duration::from_secs(60),
            || async {
                let n = acked.lock().map(|a| a.len()).unwrap_or(0);
                if n >= (cycle + 1) * ACKS_BEFORE_KILL {
                    Ok(())
                } else {
                    Err(format!("{n} acknowledged"))
                }
            },
        )
        .await?;
        // Crash in the middle of writes.
        fleet.hub.kill();
        writer.abort();
        let _ = writer.await;
        next = start + 10_000;

        fleet.start_hub_again()?;
        let mut api = fleet.api().await?;
        let present: BTreeSet<String> = api
            .list_applications(ListApplicationsRequest::default())
            .await?
            .into_inner()
            .applications
            .into_iter()
            .map(|a| a.name)
            .collect();
        let acked_now = acked.lock().map(|a| a.clone()).unwrap_or_default();
        let lost: Vec<&String> = acked_now.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: {} acknowledged applications lost after SIGKILL: {lost:?}",
            lost.len()
        );
    }
    Ok(())
}
