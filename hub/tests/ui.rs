//! The UI in process, through its router, on a real store.
//!
//! Live updates are driven by the store's change signal: an open
//! page costs nothing while nothing changes, a write of a kind the page
//! does not show renders nothing, a write that changes the page sends one
//! `changed` event, and a write that leaves the page as it was sends none.
//! In process, through the UI's router, on a real store; the clock is
//! tokio's paused clock, so "nothing happened for two minutes" takes no
//! wall time.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use flotilla_hub::api::HubContext;
use flotilla_hub::store::{AppRecord, ClusterRecord, RepoRecord, Store};
use flotilla_hub::ui::{UiState, router};
use flotilla_proto as pb;
use futures::StreamExt as _;
use tower::ServiceExt as _;

fn app(name: &str, cluster: &str) -> anyhow::Result<AppRecord> {
    let yaml = format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  source:
    repoURL: https://git.example.com/platform/config.git
    targetRevision: HEAD
    path: {name}
  destination:
    name: {cluster}
    namespace: {name}
"
    );
    Ok(AppRecord {
        app: flotilla_hub::fleet::parse_single_application(&yaml, "test")
            .map_err(anyhow::Error::msg)?
            .into(),
        origin: "api".into(),
        revision: String::new(),
        error: String::new(),
    })
}

fn status(name: &str, sync: pb::SyncStatus) -> pb::AppStatus {
    pb::AppStatus {
        name: name.into(),
        sync: sync as i32,
        health: pb::HealthStatus::Healthy as i32,
        ..Default::default()
    }
}

struct Ui {
    _dir: tempfile::TempDir,
    store: Store,
    state: UiState,
    router: axum::Router,
    cookie: String,
}

async fn ui() -> anyhow::Result<Ui> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("db"))?;
    for c in ["c1", "c2"] {
        store.put_cluster(&ClusterRecord {
            name: c.into(),
            ..Default::default()
        })?;
        let rec = app(&format!("web-{c}"), c)?;
        store.put_app(&rec)?;
        store.put_status(c, &status(&rec.app.metadata.name, pb::SyncStatus::Synced))?;
    }
    let (token, _) = flotilla_hub::api::create_token(&store, "admin", false)?;
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
        store: store.clone(),
        fleet,
        pki,
        git,
        commands: Arc::default(),
        appsets,
        closing,
        stream_idle_timeout: Duration::from_secs(90),
        wire: Default::default(),
    };
    let state = UiState::new(ctx);
    let router = router(state.clone());
    let resp = router
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={}", token.trim())))?,
        )
        .await?;
    anyhow::ensure!(resp.status() == StatusCode::SEE_OTHER, "login: {resp:?}");
    let cookie = resp
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_owned();
    Ok(Ui {
        _dir: dir,
        store,
        state,
        router,
        cookie,
    })
}

impl Ui {
    async fn get(&self, uri: &str) -> anyhow::Result<axum::response::Response> {
        Ok(self
            .router
            .clone()
            .oneshot(
                Request::get(uri)
                    .header(header::COOKIE, &self.cookie)
                    .body(Body::empty())?,
            )
            .await?)
    }

    /// The fingerprint the page at `uri` is served with.
    async fn fingerprint(&self, uri: &str) -> anyhow::Result<String> {
        let body = axum::body::to_bytes(self.get(uri).await?.into_body(), 1 << 24).await?;
        let page = String::from_utf8(body.to_vec())?;
        let at = page
            .find("data-fingerprint=\"")
            .ok_or_else(|| anyhow::anyhow!("no fingerprint in {page}"))?;
        let rest = &page[at + "data-fingerprint=\"".len()..];
        Ok(rest.split('"').next().unwrap_or_default().to_owned())
    }
}

/// The next event (name, data) of an SSE body, skipping keep-alive
/// comments; `None` when `within` passes first.
async fn next_event(
    body: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    within: Duration,
) -> anyhow::Result<Option<(String, String)>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => anyhow::bail!("the event stream ended"),
            Ok(Some(chunk)) => chunk?,
        };
        let text = String::from_utf8(chunk.to_vec())?;
        let mut name = String::new();
        let mut data = String::new();
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                data = d.trim().to_owned();
            }
        }
        if !name.is_empty() {
            return Ok(Some((name, data)));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_overview_renders_only_after_a_write_it_shows() -> anyhow::Result<()> {
    let ui = ui().await?;
    let fp = ui.fingerprint("/").await?;
    let resp = ui.get(&format!("/events?path=/&query=&fp={fp}")).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let first = next_event(&mut body, Duration::from_secs(5)).await?;
    assert_eq!(first, Some(("ready".into(), String::new())));
    assert_eq!(ui.state.live_renders(), 1, "one render to check the page");

    // Two idle minutes: nothing rendered, nothing sent.
    let idle = next_event(&mut body, Duration::from_secs(120)).await?;
    assert_eq!(idle, None);
    assert_eq!(
        ui.state.live_renders(),
        1,
        "an idle open page was rendered again"
    );

    // A repository record is not on the overview: not rendered.
    ui.store.put_repo(&RepoRecord {
        url: "https://git.example.com/other.git".into(),
        ..Default::default()
    })?;
    assert_eq!(next_event(&mut body, Duration::from_secs(10)).await?, None);
    assert_eq!(ui.state.live_renders(), 1, "a repository write re-rendered");

    // Drift reported on c2: the grid changed, one event with the page's
    // new fingerprint.
    ui.store
        .put_status("c2", &status("web-c2", pb::SyncStatus::OutOfSync))?;
    let changed = next_event(&mut body, Duration::from_secs(10)).await?;
    let now = ui.fingerprint("/").await?;
    assert_ne!(now, fp);
    assert_eq!(changed, Some(("changed".into(), now)));
    assert_eq!(ui.state.live_renders(), 2);

    // The same report again: rendered once, nothing sent.
    ui.store
        .put_status("c2", &status("web-c2", pb::SyncStatus::OutOfSync))?;
    assert_eq!(next_event(&mut body, Duration::from_secs(10)).await?, None);
    assert_eq!(ui.state.live_renders(), 3);

    // A burst of 100 reports costs one render, not 100.
    for i in 0..100 {
        let sync = if i % 2 == 0 {
            pb::SyncStatus::Synced
        } else {
            pb::SyncStatus::OutOfSync
        };
        ui.store.put_status("c1", &status("web-c1", sync))?;
    }
    let changed = next_event(&mut body, Duration::from_secs(10)).await?;
    assert!(
        matches!(&changed, Some((n, _)) if n == "changed"),
        "{changed:?}"
    );
    assert_eq!(next_event(&mut body, Duration::from_secs(10)).await?, None);
    assert_eq!(
        ui.state.live_renders(),
        4,
        "a burst rendered more than once"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_repositories_page_ignores_status_reports() -> anyhow::Result<()> {
    let ui = ui().await?;
    let fp = ui.fingerprint("/repos").await?;
    let resp = ui
        .get(&format!("/events?path=/repos&query=&fp={fp}"))
        .await?;
    let mut body = resp.into_body().into_data_stream();
    assert_eq!(
        next_event(&mut body, Duration::from_secs(5)).await?,
        Some(("ready".into(), String::new()))
    );
    ui.store
        .put_status("c1", &status("web-c1", pb::SyncStatus::OutOfSync))?;
    assert_eq!(next_event(&mut body, Duration::from_secs(10)).await?, None);
    assert_eq!(ui.state.live_renders(), 1);
    ui.store.put_repo(&RepoRecord {
        url: "https://git.example.com/other.git".into(),
        ..Default::default()
    })?;
    let changed = next_event(&mut body, Duration::from_secs(10)).await?;
    assert!(
        matches!(&changed, Some((n, _)) if n == "changed"),
        "{changed:?}"
    );
    Ok(())
}

/// The overview's first page as served, in bytes.
async fn overview_bytes(ui: &Ui) -> anyhow::Result<(usize, usize)> {
    let body = axum::body::to_bytes(ui.get("/").await?.into_body(), 1 << 26).await?;
    let page = String::from_utf8(body.to_vec())?;
    Ok((
        page.len(),
        page.matches("<tr><th><span class=\"dot").count(),
    ))
}

#[tokio::test]
async fn the_overview_page_does_not_grow_with_the_fleet() -> anyhow::Result<()> {
    let ui = ui().await?;
    let add = |from: usize, to: usize| -> anyhow::Result<()> {
        for i in from..to {
            let c = format!("z{i:04}");
            ui.store.put_cluster(&ClusterRecord {
                name: c.clone(),
                ..Default::default()
            })?;
            for set in ["api", "web"] {
                let mut rec = app(&format!("{set}-{c}"), &c)?;
                rec.origin = format!("appset:{set}");
                ui.store.put_app(&rec)?;
                ui.store
                    .put_status(&c, &status(&rec.app.metadata.name, pb::SyncStatus::Synced))?;
            }
        }
        Ok(())
    };
    add(0, 100)?;
    let (small, rows) = overview_bytes(&ui).await?;
    assert_eq!(rows, 50, "one page of clusters");
    add(100, 1000)?;
    let (large, rows) = overview_bytes(&ui).await?;
    assert_eq!(rows, 50, "one page of clusters");
    // Only the counts and the page links have more digits.
    assert!(
        large <= small + 200,
        "the first page grew from {small} to {large} bytes with 10× the clusters"
    );
    Ok(())
}

async fn overview_text(ui: &Ui, uri: &str) -> anyhow::Result<String> {
    let body = axum::body::to_bytes(ui.get(uri).await?.into_body(), 1 << 24).await?;
    Ok(String::from_utf8(body.to_vec())?)
}

#[tokio::test]
async fn the_overview_filters_by_project() -> anyhow::Result<()> {
    let ui = ui().await?;
    // web-c1 and web-c2 name no project (`default`); a third in team-a.
    let mut rec = app("billing-c1", "c1")?;
    std::sync::Arc::make_mut(&mut rec.app).spec.project = "team-a".into();
    ui.store.put_app(&rec)?;
    let all = overview_text(&ui, "/").await?;
    assert!(
        all.contains("billing-c1") && all.contains("web-c1"),
        "{all}"
    );
    let team = overview_text(&ui, "/?project=team-a").await?;
    assert!(team.contains("billing-c1"), "{team}");
    assert!(
        !team.contains("web-c1"),
        "team-a shows only its applications: {team}"
    );
    let default = overview_text(&ui, "/?project=default").await?;
    assert!(
        default.contains("web-c1") && default.contains("web-c2"),
        "{default}"
    );
    assert!(!default.contains("billing-c1"), "{default}");
    // The form keeps the filter, and so do the page links.
    assert!(team.contains("name=\"project\" value=\"team-a\""), "{team}");
    Ok(())
}
