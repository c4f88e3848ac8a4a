//! No size cliff on the wire (issue 13 point 3), against real processes:
//! a 50 MB application reaches its cluster through an agent that decodes at
//! most 4 MiB per message, beside a small application that keeps syncing;
//! a change to one of its objects sends a few chunks, not the application;
//! a reconnect (hub or agent restarted) sends none; an agent too old for
//! chunks gets a clear condition instead of a reconnect loop; and many
//! applications on one cluster sync and list through a CLI whose decode
//! limit is far below the size of the list.

use std::time::Duration;

use anyhow::Context as _;
use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions, ProcessOptions};
use flotilla_e2e::http::get_ok as http_get;
use flotilla_proto::agent_link_client::AgentLinkClient;
use flotilla_proto::{AgentMessage, Hello, ListApplicationsRequest, agent_message, hub_message};
use sha2::Digest as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Value of one sample (name with labels as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    flotilla_e2e::http::sample(text, series).unwrap_or(0.0)
}

const CONVERGE: Duration = Duration::from_secs(90);
/// A 50 MB application takes a while in a debug build (render, store,
/// transfer, cache, apply), on a shared machine.
const BIG_CONVERGE: Duration = Duration::from_secs(600);

/// The hub's wire counters: (chunk messages, chunk bytes, desired-state
/// part messages, part bytes).
fn hub_wire(fleet: &Fleet) -> anyhow::Result<(f64, f64, f64, f64)> {
    let base = fleet
        .hub_metrics_base()
        .ok_or_else(|| anyhow::anyhow!("hub printed no metrics address"))?;
    let text = http_get(&base, "/metrics").map_err(|e| anyhow::anyhow!(e))?;
    Ok((
        sample(
            &text,
            "flotilla_hub_desired_state_messages_total{kind=\"chunk\"}",
        ),
        sample(
            &text,
            "flotilla_hub_desired_state_bytes_total{kind=\"chunk\"}",
        ),
        sample(
            &text,
            "flotilla_hub_desired_state_messages_total{kind=\"desired\"}",
        ),
        sample(
            &text,
            "flotilla_hub_desired_state_bytes_total{kind=\"desired\"}",
        ),
    ))
}

fn cli_out(fleet: &Fleet, args: &[&str]) -> anyhow::Result<std::process::Output> {
    fleet.cli(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
}

/// Deterministic filler that does not compress or repeat.
fn filler(seed: &str, len: usize) -> String {
    let mut out = String::with_capacity(len + 64);
    let mut block = sha2::Sha256::digest(seed.as_bytes());
    while out.len() < len {
        out.push_str(&hex::encode(block));
        block = sha2::Sha256::digest(block);
    }
    out.truncate(len);
    out
}

const BIG_OBJECTS: usize = 60;
const BIG_VALUE: usize = 850_000;

fn big_configmap(i: usize, salt: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: blob-{i:03}\ndata:\n  payload: {}\n",
        filler(&format!("blob-{i}-{salt}"), BIG_VALUE)
    )
}

fn application(repo: &str, name: &str, path: &str, cluster: &str, namespace: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  project: default\n  source:\n    repoURL: {repo}\n    targetRevision: HEAD\n    path: {path}\n  destination:\n    name: {cluster}\n    namespace: {namespace}\n  syncPolicy:\n    automated:\n      prune: true\n    syncOptions:\n      - CreateNamespace=true\n"
    )
}

/// The payload length of a ConfigMap in the cluster, as kubectl sees it.
fn payload(fleet: &Fleet, name: &str) -> anyhow::Result<Option<String>> {
    Ok(fleet
        .kubectl_get("sim-1", "configmap", "big", name)?
        .and_then(|cm| cm["data"]["payload"].as_str().map(str::to_owned)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_50_mb_app_syncs_in_chunks_and_is_not_sent_again() -> anyhow::Result<()> {
    let mut fleet = Fleet::start_with(
        FleetOptions {
            clusters: 1,
            ..Default::default()
        },
        ProcessOptions {
            hub_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
            // The limit every agent had before, on hub and agent: no
            // message may exceed it. (An environment variable, so the
            // same test runs against binaries from before the flag.)
            env: vec![("FLOTILLA_MAX_MESSAGE_SIZE".into(), "4MiB".into())],
            ..Default::default()
        },
    )
    .await?;
    let first = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &first, CONVERGE)
        .await?;

    // 60 ConfigMaps of 850 kB: a 51 MB application.
    let mut files: Vec<(String, String)> = (0..BIG_OBJECTS)
        .map(|i| (format!("big/blob-{i:03}.yaml"), big_configmap(i, "one")))
        .collect();
    files.push((
        "apps/big-sim-1.yaml".into(),
        application(&fleet.repo.url(), "big-sim-1", "big", "sim-1", "big"),
    ));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let size: usize = files.iter().map(|(_, c)| c.len()).sum();
    assert!(size > 50_000_000, "{size}");
    fleet.repo.commit_files(&refs, "a 50 MB application")?;
    // The small application changes right after, on the same cluster.
    let cm = fleet
        .repo
        .read("guestbook/configmap.yaml")?
        .replace("hello from git", "hello beside a big app");
    let second =
        fleet
            .repo
            .commit_file("guestbook/configmap.yaml", &cm, "guestbook: new greeting")?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &second, BIG_CONVERGE)
        .await?;
    fleet
        .wait_synced("big-sim-1", "sim-1", &second, BIG_CONVERGE)
        .await?;
    let greeting = fleet
        .kubectl_get("sim-1", "configmap", "guestbook", "guestbook-config")?
        .and_then(|c| c["data"]["greeting"].as_str().map(str::to_owned));
    assert_eq!(greeting.as_deref(), Some("hello beside a big app"));
    // kubectl sees every object, whole.
    let names = fleet.kubectl("sim-1", &["get", "configmaps", "-n", "big", "-o", "name"])?;
    let listed = String::from_utf8_lossy(&names.stdout)
        .lines()
        .filter(|l| l.contains("blob-"))
        .count();
    assert_eq!(listed, BIG_OBJECTS);
    assert!(
        payload(&fleet, "blob-059")? == Some(filler("blob-59-one", BIG_VALUE)),
        "blob-059 is not what Git has"
    );
    let (chunks, chunk_bytes, _, _) = hub_wire(&fleet)?;
    assert!(
        chunk_bytes > 50e6 && chunks >= 50.0,
        "{chunks} chunks, {chunk_bytes} bytes"
    );
    assert!(
        fleet.agents["sim-1"].has_line(|l| l.contains("desired state assembled")),
        "the agent assembled no chunked state"
    );

    // One object changes: a few chunks go, not the application.
    let changed = big_configmap(30, "two");
    let third = fleet
        .repo
        .commit_file("big/blob-030.yaml", &changed, "one blob changes")?;
    fleet
        .wait_synced("big-sim-1", "sim-1", &third, BIG_CONVERGE)
        .await?;
    let expected = filler("blob-30-two", BIG_VALUE);
    let before = filler("blob-30-one", BIG_VALUE);
    // Synced at the new commit means applied: the cluster already holds it.
    match payload(&fleet, "blob-030")? {
        Some(p) if p == expected => {}
        Some(p) if p == before => panic!("Synced at {third} with the first payload"),
        Some(p) => panic!("a payload of {} bytes that is neither", p.len()),
        None => panic!("blob-030 missing"),
    }
    let (chunks_after, bytes_after, _, _) = hub_wire(&fleet)?;
    assert!(
        chunks_after - chunks <= 3.0 && bytes_after - chunk_bytes < 3.0 * 1_048_576.0,
        "one changed object sent {} chunks, {} bytes",
        chunks_after - chunks,
        bytes_after - chunk_bytes
    );

    // The hub restarts: the agent reconnects, says what it holds, and no
    // chunk is sent (the counters start at zero with the new process).
    fleet.restart_hub()?;
    fleet.wait_connected(CONVERGE).await?;
    let generation = eventually(
        "the agent acknowledges after the hub restart",
        CONVERGE,
        || async {
            let mut api = fleet.api().await.map_err(|e| e.to_string())?;
            let c = api
                .list_clusters(flotilla_proto::ListClustersRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .clusters
                .into_iter()
                .find(|c| c.name == "sim-1")
                .ok_or("no sim-1")?;
            let (_, _, parts, _) = hub_wire(&fleet).map_err(|e| e.to_string())?;
            if c.connected && c.acked_generation == c.generation && parts > 0.0 {
                Ok(c.generation)
            } else {
                Err(format!("{c:?}, {parts} parts sent"))
            }
        },
    )
    .await?;
    let (chunks, chunk_bytes, parts, part_bytes) = hub_wire(&fleet)?;
    assert_eq!(
        (chunks, chunk_bytes),
        (0.0, 0.0),
        "chunks re-sent after a hub restart"
    );
    assert!(
        part_bytes < 100_000.0,
        "{parts} parts of {part_bytes} bytes"
    );

    // The agent restarts: its cache holds the bundle, nothing large goes.
    fleet
        .agents
        .get_mut("sim-1")
        .context("agent")?
        .stop(Duration::from_secs(10));
    fleet.start_agent("sim-1")?;
    fleet
        .agents
        .get_mut("sim-1")
        .context("agent")?
        .wait_for_line(CONVERGE, |l| l.contains("desired state received"))?;
    let (chunks, chunk_bytes, parts_after, part_bytes_after) = hub_wire(&fleet)?;
    assert_eq!(
        (chunks, chunk_bytes),
        (0.0, 0.0),
        "chunks re-sent after an agent restart"
    );
    assert!(parts_after > parts);
    assert!(
        part_bytes_after - part_bytes < 100_000.0,
        "{} bytes sent to a restarted agent",
        part_bytes_after - part_bytes
    );
    fleet
        .wait_synced("big-sim-1", "sim-1", &third, CONVERGE)
        .await?;

    // An agent too old for chunks (it announces nothing, decodes 4 MiB):
    // the big bundle is withheld with a reason on the application, the
    // small ones still come, and nothing exceeds what it decodes.
    fleet
        .agents
        .get_mut("sim-1")
        .context("agent")?
        .stop(Duration::from_secs(10));
    let dir = fleet.root.path().join("agents").join("sim-1");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(dir.join("ca.crt"))?))
        .identity(Identity::from_pem(
            std::fs::read(dir.join("tls.crt"))?,
            std::fs::read(dir.join("tls.key"))?,
        ))
        .domain_name("localhost");
    let channel = Channel::from_shared(fleet.hub_url())?
        .tls_config(tls)?
        .connect()
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(4);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_version: "0.0.1-old".into(),
            generation,
            ..Default::default()
        })),
    })
    .await?;
    // tonic's default decode limit (4 MiB), as agents before this had.
    let mut inbound = AgentLinkClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(CONVERGE, inbound.message())
        .await
        .context("no desired state for the old agent")??
        .context("stream closed")?;
    let Some(hub_message::Kind::Desired(desired)) = first.kind else {
        anyhow::bail!("expected a desired state, got {first:?}");
    };
    assert!(!desired.more && desired.chunked_bundles.is_empty());
    let names: Vec<&str> = desired.bundles.iter().map(|b| b.name.as_str()).collect();
    assert!(names.contains(&"guestbook-sim-1"), "{names:?}");
    assert!(!names.contains(&"big-sim-1"), "{names:?}");
    assert!(
        !desired.index.iter().any(|r| r.name == "big-sim-1"),
        "an old agent holding nothing of big-sim-1 must not be told it exists"
    );
    let out = cli_out(&fleet, &["app", "get", "big-sim-1"])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("agent too old to receive chunked bundles") && text.contains("MiB"),
        "{text}"
    );
    drop(tx);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_apps_on_one_cluster_sync_and_list_in_pages() -> anyhow::Result<()> {
    const APPS: usize = 1000;
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    // The examples' applications (some for clusters this fleet lacks).
    let before = eventually("the example applications", CONVERGE, || async {
        let mut api = fleet.api().await.map_err(|e| e.to_string())?;
        let apps = api
            .list_applications(ListApplicationsRequest::default())
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .applications;
        if apps.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(apps.len())
        }
    })
    .await?;
    let mut files: Vec<(String, String)> = vec![(
        "tiny/configmap.yaml".into(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tiny\ndata:\n  hello: world\n".into(),
    )];
    for i in 0..APPS {
        let name = format!("many-{i:04}");
        files.push((
            format!("apps/{name}.yaml"),
            application(&fleet.repo.url(), &name, "tiny", "sim-1", &name),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let head = fleet.repo.commit_files(&refs, "a thousand applications")?;
    let total = before + APPS;
    eventually(
        &format!("{APPS} applications Synced on sim-1"),
        Duration::from_secs(900),
        || async {
            let mut api = fleet.api().await.map_err(|e| e.to_string())?;
            let mut synced = 0;
            let mut seen = 0;
            let mut page_token = String::new();
            loop {
                let page = api
                    .list_applications(ListApplicationsRequest {
                        page_size: 250,
                        page_token,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                for a in page.applications.iter().filter(|a| !a.clusters.is_empty()) {
                    seen += 1;
                    if a.clusters.iter().any(|c| {
                        c.status.as_ref().is_some_and(|s| {
                            s.sync == flotilla_proto::SyncStatus::Synced as i32
                                && s.revision == head
                        })
                    }) {
                        synced += 1;
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            // Every application on sim-1: the thousand and the examples'.
            if seen >= APPS && synced == seen {
                Ok(())
            } else {
                Err(format!("{synced}/{seen} synced at {head}"))
            }
        },
    )
    .await?;
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "many-0999", "tiny")?
            .is_some()
    );

    // The whole list is far larger than what this CLI decodes: it pages.
    let out = cli_out(
        &fleet,
        &["app", "list", "-o", "json", "--max-message-size", "256KiB"],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "flotilla app list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let apps = list.as_array().context("a JSON array")?;
    assert_eq!(apps.len(), total);
    assert!(
        out.stdout.len() > 2 * 256 * 1024,
        "{} bytes",
        out.stdout.len()
    );
    // One unpaged response does not fit in 256 KiB: the paging above is
    // what made it work.
    let mut small = fleet.api().await?.max_decoding_message_size(256 * 1024);
    let unpaged = small
        .list_applications(ListApplicationsRequest::default())
        .await;
    assert!(
        unpaged.is_err(),
        "one response of {total} applications fit in 256 KiB"
    );
    // The table too.
    let out = cli_out(&fleet, &["app", "list", "--max-message-size", "256KiB"])?;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("many-"))
            .count(),
        APPS
    );
    Ok(())
}
