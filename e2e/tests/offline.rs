//! Offline enforcement: with the hub gone, agents keep the cluster at the
//! last desired state they received — across an agent restart too — and
//! when the hub returns it shows the right status without a full re-sync.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};

const CONVERGE: Duration = Duration::from_secs(90);

async fn healed(fleet: &Fleet, what: &str) -> anyhow::Result<()> {
    eventually(what, CONVERGE, || async {
        let g = fleet.guestbook_greeting("sim-1")?;
        if g == "hello from git" {
            Ok(())
        } else {
            Err(format!("greeting is {g:?}"))
        }
    })
    .await
}

fn desired_lines(fleet: &Fleet) -> Vec<String> {
    fleet.agents["sim-1"]
        .lines()
        .into_iter()
        .filter(|l| l.contains("desired state received"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_enforces_from_its_cache_while_the_hub_is_down() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let revision = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &revision, CONVERGE)
        .await?;

    fleet.stop_hub();

    // A manual change is healed from the cached desired state (guestbook
    // has selfHeal on), with no hub to ask.
    fleet.tamper_guestbook("sim-1")?;
    healed(&fleet, "drift healed with the hub down").await?;

    // The agent restarts while the hub is still down: it loads its cache
    // and keeps enforcing.
    if let Some(agent) = fleet.agents.get_mut("sim-1") {
        agent.kill();
    }
    fleet.start_agent("sim-1")?;
    eventually("restarted agent loaded its cache", CONVERGE, || async {
        let started = fleet.agents["sim-1"]
            .lines()
            .into_iter()
            .find(|l| l.contains("flotilla-agent starting"));
        match started {
            Some(l) if !l.contains("cached_apps=0") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    fleet.tamper_guestbook("sim-1")?;
    healed(
        &fleet,
        "drift healed by a restarted agent with the hub down",
    )
    .await?;

    // The hub returns: statuses are right and nothing is re-sent.
    fleet.start_hub_again()?;
    fleet.wait_connected(CONVERGE).await?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &revision, CONVERGE)
        .await?;
    let last = eventually("desired state after reconnect", CONVERGE, || async {
        desired_lines(&fleet)
            .last()
            .cloned()
            .ok_or_else(|| "no desired state line yet".to_owned())
    })
    .await?;
    assert!(last.contains("bundles=0"), "hub re-sent bundles: {last}");
    Ok(())
}
