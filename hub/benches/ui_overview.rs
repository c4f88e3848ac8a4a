//! The web UI's fleet overview at scale, N clusters × M ApplicationSets
//! (one generated application per cluster and set, each with a reported
//! status):
//! - server time of `GET /` (session check, grid, HTML) through the UI's
//!   router, and the bytes it sends (the UI does not compress: the body is
//!   what goes on the wire, under TLS), for the first and last page and
//!   two filters; the grid and HTML steps timed apart;
//! - what open pages cost an idle hub: process CPU over 10 s with V live
//!   overview pages (server-sent event streams) open and nothing written.
//!
//! Prints tables; run with
//! `cargo bench -p flotilla-hub --bench ui_overview -- [CLUSTERS] [SETS] [VIEWERS]`
//! (default 1000 20 10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use flotilla_hub::api::HubContext;
use flotilla_hub::api::hub_api::HubApiService;
use flotilla_hub::store::{AppRecord, ClusterRecord, Store};
use flotilla_hub::ui::pages::{OverviewQuery, overview};
use flotilla_proto as pb;
use tower::ServiceExt as _;

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
            .map_err(anyhow::Error::msg)?
            .into(),
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
    let viewers = args.get(2).copied().unwrap_or(10);
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
    let (token, _) = flotilla_hub::api::create_token(&store, "admin", false)?;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let router = flotilla_hub::ui::router(flotilla_hub::ui::UiState::new(ctx.clone()));
    let cookie = rt.block_on(login(&router, token.trim()))?;
    println!(
        "| query | GET / server time p50 / max (ms) | of which grid p50 (ms) | HTML (ms) | bytes sent (HTML, uncompressed) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (what, q) in queries {
        let mut times = Vec::new();
        let mut grids = Vec::new();
        let mut render = Duration::ZERO;
        let mut bytes = 0;
        for _ in 0..7 {
            let t = Instant::now();
            let grid =
                flotilla_hub::ui::grid(&api, &ctx, &q, &flotilla_hub::api::Caller::admin("bench"))?;
            grids.push(t.elapsed());
            let t = Instant::now();
            let main = overview(&grid, &q, None);
            let _page = flotilla_hub::ui::html::layout("Overview", None, None, &main);
            render = t.elapsed();
            let uri = format!(
                "/?page={}&label={}&app={}&status={}",
                q.page, q.label, q.app, q.status
            );
            let t = Instant::now();
            bytes = rt.block_on(get(&router, &cookie, &uri))?;
            times.push(t.elapsed());
        }
        times.sort();
        grids.sort();
        println!(
            "| {what} | {:.0} / {:.0} | {:.0} | {:.1} | {bytes} |",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
            ms(grids[grids.len() / 2]),
            ms(render)
        );
    }

    // Open, idle pages: what V viewers of the overview cost a hub where
    // nothing is written.
    println!();
    println!(
        "| open overview pages, nothing written | hub CPU over 10 s (% of one core) | events sent |"
    );
    println!("| --- | --- | --- |");
    for v in [0, viewers] {
        let (cpu, events) =
            rt.block_on(idle_viewers(&router, &cookie, v, Duration::from_secs(10)))?;
        println!("| {v} | {:.1} | {events} |", cpu * 100.0);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Logs in through the UI; returns the session cookie.
async fn login(router: &axum::Router, token: &str) -> anyhow::Result<String> {
    let resp = router
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={token}")))?,
        )
        .await?;
    resp.headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("login refused: {}", resp.status()))
}

/// `GET uri` through the router, the whole body read; its size.
async fn get(router: &axum::Router, cookie: &str, uri: &str) -> anyhow::Result<usize> {
    let resp = router
        .clone()
        .oneshot(
            Request::get(uri)
                .header(header::COOKIE, cookie)
                .body(Body::empty())?,
        )
        .await?;
    anyhow::ensure!(resp.status().is_success(), "GET {uri}: {}", resp.status());
    Ok(axum::body::to_bytes(resp.into_body(), 1 << 28).await?.len())
}

/// Process CPU time (user + system) so far, from /proc.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th of them, in clock ticks (100 Hz).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat"))?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok(Duration::from_millis(f.iter().sum::<u64>() * 10))
}

/// Opens `viewers` live-update streams of the overview, waits until each
/// said `ready` (or `changed`), then measures the process's CPU over
/// `span`; returns (CPU seconds per second, events received in `span`).
async fn idle_viewers(
    router: &axum::Router,
    cookie: &str,
    viewers: usize,
    span: Duration,
) -> anyhow::Result<(f64, usize)> {
    use futures::StreamExt as _;
    let body = axum::body::to_bytes(
        router
            .clone()
            .oneshot(
                Request::get("/")
                    .header(header::COOKIE, cookie)
                    .body(Body::empty())?,
            )
            .await?
            .into_body(),
        1 << 28,
    )
    .await?;
    let page = String::from_utf8_lossy(&body);
    let fp = page
        .split("data-fingerprint=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_owned();
    let events = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(viewers.max(1));
    let mut streams = Vec::new();
    for _ in 0..viewers {
        let resp = router
            .clone()
            .oneshot(
                Request::get(format!("/events?path=/&query=&fp={fp}"))
                    .header(header::COOKIE, cookie)
                    .body(Body::empty())?,
            )
            .await?;
        let mut data = resp.into_body().into_data_stream();
        let (events, ready_tx) = (events.clone(), ready_tx.clone());
        streams.push(tokio::spawn(async move {
            let mut first = true;
            while let Some(Ok(chunk)) = data.next().await {
                if !chunk.starts_with(b"event:") {
                    continue;
                }
                if first {
                    first = false;
                    let _ = ready_tx.send(()).await;
                } else {
                    events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for _ in 0..viewers {
        ready_rx.recv().await;
    }
    let cpu = cpu_time()?;
    let t = Instant::now();
    tokio::time::sleep(span).await;
    let used = cpu_time()? - cpu;
    let wall = t.elapsed();
    for s in streams {
        s.abort();
    }
    Ok((
        used.as_secs_f64() / wall.as_secs_f64(),
        events.load(std::sync::atomic::Ordering::Relaxed),
    ))
}
