//! `flotilla cluster remove` of a cluster whose agent is connected: the hub
//! tells the agent, which stops enforcing (its objects stay, drift is no
//! longer repaired) or, with `--cascade`, deletes what it manages first; the
//! cluster leaves the application lists, and a removed agent that connects
//! again is refused with a message that says why.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_e2e::process::Proc;
use flotilla_proto::ListApplicationsRequest;

const CONVERGE: Duration = Duration::from_secs(90);

fn agent<'a>(fleet: &'a mut Fleet, cluster: &str) -> anyhow::Result<&'a mut Proc> {
    fleet
        .agents
        .get_mut(cluster)
        .ok_or_else(|| anyhow::anyhow!("no agent for {cluster}"))
}

/// Clusters that any application lists a row for.
async fn listed_clusters(fleet: &Fleet) -> anyhow::Result<Vec<String>> {
    let mut api = fleet.api().await?;
    let apps = api
        .list_applications(ListApplicationsRequest::default())
        .await?
        .into_inner()
        .applications;
    let mut clusters: Vec<String> = apps
        .iter()
        .flat_map(|a| a.clusters.iter().map(|c| c.cluster.clone()))
        .collect();
    clusters.sort();
    clusters.dedup();
    Ok(clusters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_cluster_keeps_its_objects_and_its_agent_stops_enforcing() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOptions {
        clusters: 2,
        ..Default::default()
    })
    .await?;
    let head = fleet.repo.head()?;
    for cluster in ["sim-1", "sim-2"] {
        fleet
            .wait_synced(&format!("guestbook-{cluster}"), cluster, &head, CONVERGE)
            .await?;
    }
    assert_eq!(listed_clusters(&fleet).await?, ["sim-1", "sim-2"]);

    let out = fleet.cli_ok(&["cluster", "remove", "sim-2", "-y"])?;
    assert!(
        out.contains("cluster sim-2 removed") && out.contains("the objects stay"),
        "{out}"
    );
    agent(&mut fleet, "sim-2")?
        .wait_for_line(CONVERGE, |l| l.contains("flotilla-agent removed"))?;
    let agent_dir = fleet.root.path().join("agents").join("sim-2");
    assert!(agent_dir.join("removed").exists(), "no removal marker");

    // The cluster's rows leave the application lists.
    eventually(
        "sim-2 gone from the application lists",
        CONVERGE,
        || async {
            let listed = listed_clusters(&fleet).await.map_err(|e| e.to_string())?;
            if listed == ["sim-1"] {
                Ok(())
            } else {
                Err(format!("clusters listed: {listed:?}"))
            }
        },
    )
    .await?;

    // Drift is no longer repaired on sim-2, while sim-1's agent (the same
    // selfHeal policy) repairs the same change.
    fleet.tamper_guestbook("sim-2")?;
    fleet.tamper_guestbook("sim-1")?;
    eventually("drift healed on sim-1", CONVERGE, || async {
        match fleet.guestbook_greeting("sim-1")?.as_str() {
            "hello from git" => Ok(()),
            g => Err(format!("greeting is {g:?}")),
        }
    })
    .await?;
    assert_eq!(
        fleet
            .guestbook_greeting("sim-2")
            .map_err(anyhow::Error::msg)?,
        "changed by hand",
        "the removed cluster's agent repaired drift"
    );
    assert!(
        fleet
            .kubectl_get("sim-2", "deployment", "guestbook", "guestbook-ui")?
            .is_some(),
        "objects of the removed cluster were deleted without --cascade"
    );

    // A restarted agent reads its removal record and idles.
    if let Some(agent) = fleet.agents.get_mut("sim-2") {
        agent.kill();
    }
    fleet.start_agent("sim-2")?;
    agent(&mut fleet, "sim-2")?
        .wait_for_line(CONVERGE, |l| l.contains("flotilla-agent removed"))?;
    assert!(
        !fleet.agents["sim-2"].has_line(|l| l.contains("connected to")),
        "an agent that knows it was removed connected"
    );

    // Without that record (a lost state directory), it tries to connect and
    // the hub refuses it, saying why.
    if let Some(agent) = fleet.agents.get_mut("sim-2") {
        agent.kill();
    }
    std::fs::remove_file(agent_dir.join("removed"))?;
    fleet.start_agent("sim-2")?;
    agent(&mut fleet, "sim-2")?.wait_for_line(CONVERGE, |l| {
        l.contains("link down")
            && l.contains("unknown or removed cluster")
            && l.contains("sim-2")
            && l.contains("enroll the agent")
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_removed_with_cascade_loses_the_objects_its_agent_managed() -> anyhow::Result<()>
{
    let mut fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let head = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &head, CONVERGE)
        .await?;
    let objects = [
        ("configmap", "guestbook-config"),
        ("deployment", "guestbook-ui"),
        ("service", "guestbook-ui"),
    ];
    for (kind, name) in objects {
        assert!(
            fleet
                .kubectl_get("sim-1", kind, "guestbook", name)?
                .is_some(),
            "{kind}/{name} not applied"
        );
    }

    let out = fleet.cli_ok(&["cluster", "remove", "sim-1", "--cascade", "-y"])?;
    assert!(
        out.contains("its agent deletes the objects it manages"),
        "{out}"
    );
    eventually("the managed objects deleted", CONVERGE, || async {
        let mut left = Vec::new();
        for (kind, name) in objects {
            if fleet
                .kubectl_get("sim-1", kind, "guestbook", name)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                left.push(format!("{kind}/{name}"));
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {left:?}"))
        }
    })
    .await?;
    assert!(listed_clusters(&fleet).await?.is_empty());
    let agent = agent(&mut fleet, "sim-1")?;
    agent.wait_for_line(CONVERGE, |l| l.contains("flotilla-agent removed"))?;
    assert!(
        agent.has_line(|l| l.contains("every managed object is deleted")),
        "{}",
        agent.tail(20)
    );
    Ok(())
}
