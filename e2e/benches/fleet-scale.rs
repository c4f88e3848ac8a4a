//! Fleet scale: one hub process against N clusters.
//!
//! Each cluster is the agent's real link (`flotilla_agent::link::Link`:
//! mTLS gRPC stream, desired-state merge, its own on-disk cache), run in
//! this process so a thousand of them fit on a laptop; nothing is applied
//! to a Kubernetes API (`cargo bench -p flotilla-agent --bench apply`
//! measures that part). One ApplicationSet with a clusters generator makes
//! one application per cluster from the example repository's `guestbook`.
//!
//! For each fleet size the table shows:
//! - register: `AddCluster` (certificate issued) for every cluster;
//! - connect→state: from starting the links until every cluster's cache
//!   holds its application at the repository's commit;
//! - commit→hub: from a commit (and a refresh call, as a webhook would make)
//!   until the hub shows the new revision for one application: Git fetch
//!   and render, the part that does not depend on N — the baseline;
//! - commit→all: until every cluster's cache holds the new revision;
//! - hub RSS idle with every stream open, and per cluster.
//!
//! ```text
//! cargo build --release -p flotilla-hub --bins
//! cargo bench -p flotilla-e2e --bench fleet-scale
//! FLOTILLA_BENCH_CLUSTERS=10,100,1000 cargo bench -p flotilla-e2e --bench fleet-scale
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_agent::cache::Cache;
use flotilla_agent::link::{CA_FILE, CERT_FILE, KEY_FILE, Link, LinkConfig};
use flotilla_e2e::fleet::{api_client, start_hub};
use flotilla_e2e::repo::ConfigRepo;
use flotilla_proto as pb;
use tokio::sync::{Notify, watch};

const DEADLINE: Duration = Duration::from_secs(600);

struct Row {
    clusters: usize,
    register: Duration,
    first_state: Duration,
    commit_hub: Duration,
    commit_all: Duration,
    hub_rss_kib: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn appset(repo_url: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: guestbook
spec:
  generators:
  - clusters:
      selector:
        matchLabels:
          bench: fleet-scale
  template:
    metadata:
      name: 'guestbook-{{{{name}}}}'
    spec:
      project: default
      source:
        repoURL: {repo_url}
        targetRevision: HEAD
        path: guestbook
      destination:
        name: '{{{{name}}}}'
        namespace: guestbook
      syncPolicy:
        automated:
          prune: true
"#
    )
}

/// Polls until every cache holds its application at `revision`.
async fn wait_all(
    caches: &[(String, Arc<Cache>)],
    revision: &str,
    what: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    flotilla_e2e::eventually(what, DEADLINE, || async {
        let behind = caches
            .iter()
            .filter(|(name, cache)| {
                cache
                    .snapshot()
                    .apps
                    .get(&format!("guestbook-{name}"))
                    .is_none_or(|a| a.bundle.revision != revision)
            })
            .count();
        if behind == 0 {
            Ok(())
        } else {
            Err(format!("{behind} of {} clusters behind", caches.len()))
        }
    })
    .await?;
    Ok(started.elapsed())
}

async fn run(clusters: usize) -> anyhow::Result<Row> {
    let root = tempfile::Builder::new()
        .prefix("flotilla-fleet-scale-")
        .tempdir()?;
    let repo = ConfigRepo::from_examples(&root.path().join("config-repo"))?;
    let data_dir = root.path().join("hub-data");
    // Every simulated agent connects from 127.0.0.1 at once: lift the
    // per-address handshake cap (docs/security.md#limits), which would
    // otherwise admit them 64 at a time and measure the agents' backoff.
    let admission = [
        "--max-pending-connections".to_owned(),
        "100000".to_owned(),
        "--max-pending-connections-per-source".to_owned(),
        "100000".to_owned(),
    ];
    let (hub, addr) = start_hub(root.path(), &data_dir, "127.0.0.1:0", 0, &admission, &[])?;
    let hub_url = format!("https://{addr}");
    let mut api = api_client(&hub_url, &data_dir).await?;

    let started = Instant::now();
    let mut names = Vec::with_capacity(clusters);
    for i in 0..clusters {
        let name = format!("c{i:04}");
        let r = api
            .add_cluster(pb::AddClusterRequest {
                name: name.clone(),
                labels: [("bench".to_owned(), "fleet-scale".to_owned())].into(),
                issue_certificate: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("adding {name}"))?
            .into_inner();
        let dir = root.path().join("agents").join(&name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(CA_FILE), r.ca_pem)?;
        std::fs::write(dir.join(CERT_FILE), r.certificate_pem)?;
        std::fs::write(dir.join(KEY_FILE), r.key_pem)?;
        names.push(name);
    }
    let register = started.elapsed();

    api.create_application_set(pb::CreateApplicationSetRequest {
        manifest: appset(&repo.url()),
        upsert: false,
    })
    .await
    .context("creating the ApplicationSet")?;

    let head = repo.head()?;
    let mut caches = Vec::with_capacity(clusters);
    let mut reporters = Vec::with_capacity(clusters);
    let mut tasks = Vec::with_capacity(clusters);
    let started = Instant::now();
    for name in &names {
        let state_dir = root.path().join("agents").join(name);
        let cache = Arc::new(Cache::open(&state_dir)?);
        let (tx, rx) = watch::channel(None);
        let link = Link::new(
            &LinkConfig {
                hub: hub_url.clone(),
                state_dir,
            },
            cache.clone(),
            Arc::new(Notify::new()),
            rx,
        )?;
        tasks.push(tokio::spawn(link.run()));
        reporters.push(tx);
        caches.push((name.clone(), cache));
    }
    wait_all(&caches, &head, "every cluster holds its application").await?;
    let first_state = started.elapsed();
    let hub_rss_kib = hub.pid().map_or(0, rss_kib);

    let text = repo
        .read("guestbook/configmap.yaml")?
        .replace("hello from git", "hello from the fleet-scale bench");
    let next = repo.commit_file("guestbook/configmap.yaml", &text, "bench: new greeting")?;
    let started = Instant::now();
    api.refresh(pb::RefreshRequest::default()).await?;
    let probe = format!("guestbook-{}", names[0]);
    flotilla_e2e::eventually("the hub renders the commit", DEADLINE, || async {
        let a = api
            .clone()
            .get_application(pb::GetApplicationRequest {
                name: probe.clone(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if a.revision == next {
            Ok(())
        } else {
            Err(format!("revision {}", a.revision))
        }
    })
    .await?;
    let commit_hub = started.elapsed();
    wait_all(&caches, &next, "every cluster holds the new commit").await?;
    let commit_all = started.elapsed();

    for t in &tasks {
        t.abort();
    }
    drop(reporters);
    drop(hub);
    if std::env::var_os("FLOTILLA_BENCH_KEEP").is_some() {
        eprintln!("kept {}", root.keep().display());
    }
    Ok(Row {
        clusters,
        register,
        first_state,
        commit_hub,
        commit_all,
        hub_rss_kib,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sizes: Vec<usize> = std::env::var("FLOTILLA_BENCH_CLUSTERS")
        .unwrap_or_else(|_| "10,100,1000".to_owned())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("FLOTILLA_BENCH_CLUSTERS: comma-separated cluster counts")?;
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("fleet-scale: {n} clusters ...");
        rows.push(runtime.block_on(run(n))?);
    }
    println!();
    println!(
        "| clusters | register | connect→state | commit→hub (baseline) | commit→all | hub RSS | hub RSS / cluster |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} MiB | {:.1} KiB |",
            r.clusters,
            ms(r.register),
            ms(r.first_state),
            ms(r.commit_hub),
            ms(r.commit_all),
            r.hub_rss_kib as f64 / 1024.0,
            r.hub_rss_kib as f64 / r.clusters.max(1) as f64,
        );
    }
    Ok(())
}
