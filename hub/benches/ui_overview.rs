//! The web UI's fleet overview at scale: server time to build and render
//! the first page (50 clusters) of the grid for N clusters × M
//! ApplicationSets (one generated application per cluster and set, each
//! with a reported status), and the page's size. Prints a table; run with
//! `cargo bench -p flotilla-hub --bench ui_overview -- [CLUSTERS] [SETS]`
//! (default 1000 20).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_hub::api::HubContext;
use flotilla_hub::api::hub_api::HubApiService;
use flotilla_hub::store::{AppRecord, ClusterRecord, Store};
use flotilla_hub::ui::pages::{OverviewQuery, overview};
use flotilla_proto as pb;

fn app(set: &str, cluster: &str) -> anyhow::Result<AppRecord> {
    let yaml = format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {set}-{cluster}
spec:
  source:
    repoURL: https://git.example.com/platform/config.git
    targetRevision: HEAD
    path: {set}
  destination:
    name: {cluster}
    namespace: {set}
"
    );
    Ok(AppRecord {
        app: flotilla_hub::fleet::parse_single_application(&yaml, "bench")
            .map_err(anyhow::Error::msg)?,
        origin: format!("appset:{set}"),
        revision: String::new(),
        error: String::new(),
    })
}

fn status(name: &str, i: usize) -> pb::AppStatus {
    let resource = |kind: &str| pb::ResourceStatus {
        key: Some(pb::ResourceKey {
            version: "v1".into(),
            kind: kind.into(),
            namespace: "ns".into(),
            name: name.into(),
            ..Default::default()
        }),
        sync: pb::SyncStatus::Synced as i32,
        health: pb::HealthStatus::Healthy as i32,
        ..Default::default()
    };
    pb::AppStatus {
        name: name.into(),
        sync: if i.is_multiple_of(17) {
            pb::SyncStatus::OutOfSync as i32
        } else {
            pb::SyncStatus::Synced as i32
        },
        health: pb::HealthStatus::Healthy as i32,
        resources: vec![
            resource("ConfigMap"),
            resource("Service"),
            resource("Deployment"),
        ],
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clusters = args.first().copied().unwrap_or(1000);
    let sets = args.get(1).copied().unwrap_or(20);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("db"))?;
    let t = Instant::now();
    for c in 0..clusters {
        let name = format!("cluster-{c:05}");
        store.put_cluster(&ClusterRecord {
            name: name.clone(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        })?;
        for s in 0..sets {
            let rec = app(&format!("set-{s:02}"), &name)?;
            store.put_status(&name, &status(&rec.app.metadata.name, c + s))?;
            store.put_app(&rec)?;
        }
    }
    store.flush()?;
    let fill = t.elapsed();
    let fleet = flotilla_hub::fleet::Fleet::load(store.clone())?;
    let pki = Arc::new(flotilla_hub::pki::Pki::load_or_create(dir.path(), &[])?);
    let git = flotilla_hub::gitsync::GitSync::new(
        store.clone(),
        fleet.clone(),
        dir.path().join("git"),
        Duration::from_secs(60),
    );
    let appsets =
        flotilla_hub::appset::lifecycle::AppSets::new(fleet.clone(), 0.5, Duration::from_secs(60));
    let (_closing_tx, closing) = tokio::sync::watch::channel(false);
    let ctx = HubContext {
        store,
        fleet,
        pki,
        git,
        commands: Arc::default(),
        appsets,
        closing,
        stream_idle_timeout: Duration::from_secs(90),
        wire: Default::default(),
    };
    let api = HubApiService::new(ctx.clone());
    let queries = [
        ("first page", OverviewQuery::default()),
        (
            "last page",
            OverviewQuery {
                page: clusters.div_ceil(50).saturating_sub(1),
                ..Default::default()
            },
        ),
        (
            "status OutOfSync",
            OverviewQuery {
                status: "OutOfSync".into(),
                ..Default::default()
            },
        ),
        (
            "one set",
            OverviewQuery {
                app: "set-07".into(),
                ..Default::default()
            },
        ),
    ];
    println!(
        "fleet: {clusters} clusters × {sets} ApplicationSets = {} applications (filled in {:.1} s)",
        clusters * sets,
        fill.as_secs_f64()
    );
    println!("| query | build grid p50 / max (ms) | render HTML (ms) | page bytes |");
    println!("| --- | --- | --- | --- |");
    for (what, q) in queries {
        let mut times = Vec::new();
        let mut render = Duration::ZERO;
        let mut bytes = 0;
        for _ in 0..7 {
            let t = Instant::now();
            let grid =
                flotilla_hub::ui::grid(&api, &ctx, &q, &flotilla_hub::api::Caller::admin("bench"))?;
            times.push(t.elapsed());
            let t = Instant::now();
            let main = overview(&grid, &q, None);
            let page = flotilla_hub::ui::html::layout("Overview", None, None, &main);
            render = t.elapsed();
            bytes = page.len();
        }
        times.sort();
        println!(
            "| {what} | {:.0} / {:.0} | {:.1} | {bytes} |",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0,
            render.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
