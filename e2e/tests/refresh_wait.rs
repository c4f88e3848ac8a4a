//! `flotilla app refresh --wait` against a real hub, agent and simulated
//! cluster: it returns once the hub has fetched the repository again and
//! the cluster reports the commit it now resolves to.

use std::time::Duration;

use flotilla_e2e::fleet::{Fleet, FleetOptions};

const CONVERGE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_refresh_wait_returns_once_every_cluster_reports_the_new_commit() -> anyhow::Result<()>
{
    // Polled hourly: only the refresh fetches the new commit.
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        poll_interval_secs: 3600,
        ..Default::default()
    })
    .await?;
    let head = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &head, CONVERGE)
        .await?;
    let config = fleet.repo.read("guestbook/configmap.yaml")?;
    let new = fleet.repo.commit_file(
        "guestbook/configmap.yaml",
        &config.replace("hello from git", "hello after refresh"),
        "a new greeting",
    )?;
    assert_ne!(new, head);
    let args: Vec<String> = [
        "app",
        "refresh",
        "guestbook-sim-1",
        "--wait",
        "--timeout",
        "90s",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let out = fleet.cli(&args)?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!(
            "guestbook-sim-1 refreshed: every cluster reports {}\n",
            &new[..8]
        )
    );
    // Returned only once reported: the hub shows the new commit right away.
    let status = fleet.status("guestbook-sim-1", "sim-1").await?;
    assert_eq!(status.revision, new);
    Ok(())
}
