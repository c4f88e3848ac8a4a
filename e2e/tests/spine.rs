//! The spine end to end: Git commit → hub → mTLS stream → agent →
//! server-side apply in a (simulated) cluster → status back at the hub.
//!
//! Hub, agents and CLI run as separate processes; kubectl is the
//! independent observer of what landed in each cluster.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_proto::agent_link_client::AgentLinkClient;
use flotilla_proto::{AgentMessage, Hello, agent_message};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const CONVERGE: Duration = Duration::from_secs(90);

fn short(rev: &str) -> &str {
    &rev[..rev.len().min(12)]
}

async fn all_synced(fleet: &Fleet, app_prefix: &str, revision: &str) -> anyhow::Result<()> {
    for cluster in fleet.sim.cluster_names() {
        fleet
            .wait_synced(
                &format!("{app_prefix}-{cluster}"),
                &cluster,
                revision,
                CONVERGE,
            )
            .await?;
    }
    Ok(())
}

fn configmap_value(fleet: &Fleet, cluster: &str) -> anyhow::Result<Option<(String, String)>> {
    Ok(fleet
        .kubectl_get(cluster, "configmap", "guestbook", "guestbook-config")?
        .map(|cm| {
            (
                cm["data"]["greeting"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                cm["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_reaches_every_cluster_and_unchanged_apps_are_left_alone() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions::default()).await?;
    let first = fleet.repo.head()?;
    all_synced(&fleet, "guestbook", &first).await?;
    all_synced(&fleet, "podinfo", &first).await?;

    // A user changes one object in Git.
    let cm = fleet
        .repo
        .read("guestbook/configmap.yaml")?
        .replace("hello from git", "hello from commit two");
    let second =
        fleet
            .repo
            .commit_file("guestbook/configmap.yaml", &cm, "guestbook: new greeting")?;
    all_synced(&fleet, "guestbook", &second).await?;
    for cluster in fleet.sim.cluster_names() {
        let (greeting, _) = configmap_value(&fleet, &cluster)?
            .ok_or_else(|| anyhow::anyhow!("configmap missing on {cluster}"))?;
        assert_eq!(greeting, "hello from commit two", "kubectl on {cluster}");
    }

    // Remember the guestbook objects' resourceVersions, then commit a change
    // to another application only.
    let mut before = Vec::new();
    for cluster in fleet.sim.cluster_names() {
        let dep = fleet
            .kubectl_get(&cluster, "deployment", "guestbook", "guestbook-ui")?
            .ok_or_else(|| anyhow::anyhow!("deployment missing"))?;
        let (_, cm_rv) = configmap_value(&fleet, &cluster)?.unwrap_or_default();
        before.push((cluster, cm_rv, dep["metadata"]["resourceVersion"].clone()));
    }
    let settings = fleet
        .repo
        .read("podinfo/config/settings.yaml")?
        .replace("level: info", "level: debug");
    let third = fleet.repo.commit_file(
        "podinfo/config/settings.yaml",
        &settings,
        "podinfo: debug logs",
    )?;
    all_synced(&fleet, "podinfo", &third).await?;
    for cluster in fleet.sim.cluster_names() {
        let cm = fleet
            .kubectl_get(&cluster, "configmap", "podinfo", "podinfo-settings")?
            .ok_or_else(|| anyhow::anyhow!("podinfo-settings missing on {cluster}"))?;
        assert_eq!(cm["data"]["level"], "debug", "{cluster}");
    }
    for (cluster, cm_rv, dep_rv) in before {
        let (_, now_rv) = configmap_value(&fleet, &cluster)?.unwrap_or_default();
        assert_eq!(cm_rv, now_rv, "guestbook configmap re-applied on {cluster}");
        let dep = fleet
            .kubectl_get(&cluster, "deployment", "guestbook", "guestbook-ui")?
            .ok_or_else(|| anyhow::anyhow!("deployment missing"))?;
        assert_eq!(
            dep_rv, dep["metadata"]["resourceVersion"],
            "guestbook deployment re-applied on {cluster}"
        );
    }
    eprintln!(
        "converged at {} then {} then {}",
        short(&first),
        short(&second),
        short(&third)
    );
    Ok(())
}

fn desired_lines(agent: &flotilla_e2e::process::Proc) -> Vec<String> {
    agent
        .lines()
        .into_iter()
        .filter(|l| l.contains("desired state received"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hub_restart_keeps_state_and_agents_resume_without_resend() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOptions::default()).await?;
    let first = fleet.repo.head()?;
    all_synced(&fleet, "guestbook", &first).await?;
    all_synced(&fleet, "podinfo", &first).await?;
    let apps_before = fleet.app("guestbook-sim-2").await?;
    let received_before: Vec<usize> = fleet
        .agents
        .values()
        .map(|a| desired_lines(a).len())
        .collect();

    fleet.restart_hub()?;

    // Clusters, applications and their last statuses survive the restart
    // before any agent has reported again.
    let app = fleet.app("guestbook-sim-2").await?;
    assert_eq!(app.revision, apps_before.revision);
    let status = app
        .clusters
        .iter()
        .find(|c| c.cluster == "sim-2")
        .and_then(|c| c.status.clone())
        .ok_or_else(|| anyhow::anyhow!("status lost across restart: {app:?}"))?;
    assert_eq!(status.revision, first);

    fleet.wait_connected(CONVERGE).await?;
    all_synced(&fleet, "guestbook", &first).await?;

    // Agents said what they hold; the hub must not have re-sent any bundle.
    for ((cluster, agent), before) in fleet.agents.iter().zip(received_before) {
        let last = eventually(&format!("{cluster} resumed"), CONVERGE, || async {
            let lines = desired_lines(agent);
            if lines.len() > before {
                lines.last().cloned().ok_or_else(String::new)
            } else {
                Err(format!("{} desired-state lines", lines.len()))
            }
        })
        .await?;
        assert!(
            last.contains("bundles=0"),
            "{cluster}: after reconnect the hub re-sent bundles: {last}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_yaml_fails_one_application_only() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions::default()).await?;
    let first = fleet.repo.head()?;
    all_synced(&fleet, "podinfo", &first).await?;

    let broken = fleet.repo.commit_file(
        "guestbook/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\ndata:\n  a: [unclosed\n",
        "break guestbook",
    )?;
    // The other application still moves to the new commit.
    let settings = fleet
        .repo
        .read("podinfo/config/settings.yaml")?
        .replace("level: info", "level: warn");
    let after =
        fleet
            .repo
            .commit_file("podinfo/config/settings.yaml", &settings, "podinfo: warn")?;
    all_synced(&fleet, "podinfo", &after).await?;

    let msg = eventually("guestbook render error", CONVERGE, || async {
        let app = fleet
            .app("guestbook-sim-1")
            .await
            .map_err(|e| e.to_string())?;
        if app.error.contains("broken.yaml") {
            Ok(app.error)
        } else {
            Err(format!("error {:?} revision {}", app.error, app.revision))
        }
    })
    .await?;
    assert!(msg.contains("line"), "error names no line: {msg}");
    // Nothing of the broken commit was applied, and the earlier objects stay.
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "guestbook", "broken")?
            .is_none()
    );
    assert!(configmap_value(&fleet, "sim-1")?.is_some());
    let _ = broken;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_without_a_valid_client_certificate_get_nothing() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let ca = std::fs::read_to_string(fleet.hub_data().join("ca.crt"))?;

    // No client certificate: TLS succeeds (Enroll needs it), Connect refuses.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(fleet.hub_url())?
        .tls_config(tls)?
        .connect()
        .await?;
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            claimed_cluster: "sim-1".into(),
            ..Default::default()
        })),
    };
    let result = AgentLinkClient::new(channel)
        .connect(tokio_stream::iter(vec![hello.clone()]))
        .await;
    match result {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}"),
        Ok(resp) => {
            let mut stream = resp.into_inner();
            let first = stream.message().await;
            assert!(
                !matches!(first, Ok(Some(_))),
                "a stream without a certificate received {first:?}"
            );
        }
    }

    // A certificate from another CA: the handshake or the call fails.
    let other_ca = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = params.self_signed(&other_ca)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://flotilla/cluster/sim-1".try_into()?,
    )];
    let issuer = rcgen::Issuer::from_params(&params, &other_ca);
    let leaf = leaf.signed_by(&leaf_key, &issuer)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(Identity::from_pem(leaf.pem(), leaf_key.serialize_pem()))
        .domain_name("localhost");
    let _ = other;
    let outcome = async {
        let channel = Channel::from_shared(fleet.hub_url())?
            .tls_config(tls)?
            .connect()
            .await?;
        let resp = AgentLinkClient::new(channel)
            .connect(tokio_stream::iter(vec![hello]))
            .await?;
        let msg = resp.into_inner().message().await?;
        anyhow::Ok(msg)
    }
    .await;
    assert!(
        !matches!(outcome, Ok(Some(_))),
        "a foreign-CA certificate received desired state: {outcome:?}"
    );
    Ok(())
}
