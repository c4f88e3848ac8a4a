//! Issue 13 point 6: one slow Git server must not stall the fleet.
//!
//! A Git smart-HTTP server on loopback ([`flotilla_e2e::gitserver`]) serves
//! some repositories normally and stalls (or drips bytes for) another.
//! The change of an application whose repository answers reaches its
//! cluster, and `app sync` of it returns, while the slow repository's
//! fetch is still stalled; the slow repository's application shows an
//! error naming the timeout and its clusters keep its last good state; and
//! the slow server never sees two fetches of its repository at once.
//!
//! Every wait polls a condition with a deadline; "still stalled" is read
//! from the server's own count of the connections it holds.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_e2e::gitserver::{Behaviour, GitHttpServer};
use flotilla_hub::fleet::Fleet as HubFleet;
use flotilla_hub::gitsync::{GitLimits, GitSync};
use flotilla_hub::source::{FetchAuth, FetchLimits, GitCache, SourceError};
use flotilla_hub::store::{AppRecord, Store};

const CONVERGE: Duration = Duration::from_secs(120);

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Flotilla Test",
            "-c",
            "user.email=test@flotilla.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn config_map(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: {value:?}\n"
    )
}

/// A repository `root/name` with `cm.yaml` holding a ConfigMap; returns its
/// commit.
fn new_repo(root: &Path, name: &str, value: &str) -> anyhow::Result<String> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    git(&dir, &["init", "-q", "-b", "main"])?;
    commit(root, name, value)
}

/// Rewrites `root/name/cm.yaml` with `value` and commits; returns the commit.
fn commit(root: &Path, name: &str, value: &str) -> anyhow::Result<String> {
    let dir = root.join(name);
    std::fs::write(dir.join("cm.yaml"), config_map(name, value))?;
    git(&dir, &["add", "-A"])?;
    git(&dir, &["commit", "-q", "-m", value])?;
    git(&dir, &["rev-parse", "HEAD"])
}

/// A fetch that drips bytes, or gets no answer at all, ends at its
/// deadline with an error naming the repository and the timeout, and
/// closes its connection (so the thread that ran it is not left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_is_cut_at_its_deadline() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let first = new_repo(&served, "ok", "1")?;
    new_repo(&served, "drip", "1")?;
    new_repo(&served, "stall", "1")?;
    let server = GitHttpServer::start(&served).await?;
    server.set("drip", Behaviour::Drip(Duration::from_millis(300)));
    server.set("stall", Behaviour::Stall);
    let cache = GitCache::new(tmp.path().join("mirrors"));

    // The server itself works.
    let (c, url) = (cache.clone(), server.url("ok"));
    let fetched = tokio::task::spawn_blocking(move || {
        c.fetch_bounded(
            &url,
            "HEAD",
            FetchAuth::Anonymous,
            &FetchLimits::starting_now(Duration::from_secs(60)),
        )
    })
    .await??;
    assert_eq!(fetched, first);

    for name in ["drip", "stall"] {
        let (c, url) = (cache.clone(), server.url(name));
        let result = tokio::task::spawn_blocking(move || {
            c.fetch_bounded(
                &url,
                "HEAD",
                FetchAuth::Anonymous,
                &FetchLimits::starting_now(Duration::from_secs(2)),
            )
        })
        .await?;
        let err = result.expect_err("a slow server cannot answer within 2s");
        assert!(
            matches!(err, SourceError::TimedOut { .. }),
            "{name}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&server.url(name)) && text.contains("timed out after 2s"),
            "{name}: {text}"
        );
        // The client closed its connection: nothing is left holding it.
        eventually(
            &format!("{name}: the connection closed by the client"),
            Duration::from_secs(20),
            || async {
                let s = server.stats(name);
                if s.held_now == 0 && s.closed_by_client >= 1 {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            },
        )
        .await?;
    }
    Ok(())
}

fn put_app(store: &Store, name: &str, url: &str) -> anyhow::Result<()> {
    let yaml = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {url}\n    path: .\n  destination:\n    name: c1\n    namespace: default\n"
    );
    let app = flotilla_hub::model::parse_applications(&yaml, "test")?.remove(0);
    store.put_app(&AppRecord {
        app: app.into(),
        origin: "api".into(),
        revision: String::new(),
        error: String::new(),
    })?;
    Ok(())
}

fn bundle_revision(fleet: &HubFleet, app: &str) -> Result<String, String> {
    let b = fleet
        .bundle(app)
        .ok_or_else(|| format!("no bundle of {app} yet"))?;
    if b.render_error.is_empty() {
        Ok(b.revision.clone())
    } else {
        Err(format!("{app}: {}", b.render_error))
    }
}

/// The Git loop against a stalled repository: another repository's change
/// is rendered and handed to the fleet, and `app sync`'s path (resolve,
/// render one application) completes, while the stalled fetch is still
/// held by the server; the stalled application then shows the timeout and
/// keeps its last good bundle; at no time are two fetches of the stalled
/// repository in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_repository_delays_only_its_own_applications() -> anyhow::Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(15);
    let tmp = tempfile::tempdir()?;
    let served = tmp.path().join("served");
    let fast1 = new_repo(&served, "fast", "1")?;
    let slow1 = new_repo(&served, "slow", "1")?;
    let server = GitHttpServer::start(&served).await?;

    let store = Store::open(&tmp.path().join("db"))?;
    let fleet = HubFleet::load(store.clone())?;
    let sync = GitSync::new(
        store.clone(),
        fleet.clone(),
        tmp.path().join("git"),
        Duration::from_secs(1),
    );
    sync.set_limits(GitLimits {
        fetch_timeout: TIMEOUT,
        fetch_concurrency: 4,
        render_concurrency: 2,
    });
    put_app(&store, "fast", &server.url("fast"))?;
    put_app(&store, "slow", &server.url("slow"))?;
    let run = tokio::spawn(sync.clone().run());

    for (app, commit) in [("fast", &fast1), ("slow", &slow1)] {
        eventually(&format!("{app} rendered at {commit}"), CONVERGE, || async {
            match bundle_revision(&fleet, app)? {
                r if r == *commit => Ok(()),
                r => Err(format!("at {r}")),
            }
        })
        .await?;
    }

    server.set("slow", Behaviour::Stall);
    commit(&served, "slow", "2")?;
    eventually("the slow repository's fetch stalled", CONVERGE, || async {
        let s = server.stats("slow");
        if s.held_now >= 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;

    let fast2 = commit(&served, "fast", "2")?;
    eventually("fast rendered at its new commit", CONVERGE, || async {
        match bundle_revision(&fleet, "fast")? {
            r if r == fast2 => Ok(()),
            r => Err(format!("at {r}")),
        }
    })
    .await?;
    let s = server.stats("slow");
    assert_eq!(
        s.held_now, 1,
        "the fast change must be delivered while the slow fetch is still stalled: {s:?}"
    );

    // `app sync`: the application's own sources fetched now, it alone
    // rendered.
    let fast3 = commit(&served, "fast", "3")?;
    let app = store.app("fast")?.map(|r| r.app).expect("fast exists");
    let resolved = sync.resolve_app(&app, "").await;
    assert_eq!(resolved.as_deref(), Ok(fast3.as_str()));
    sync.render_app("fast").await;
    assert_eq!(
        bundle_revision(&fleet, "fast").as_deref(),
        Ok(fast3.as_str())
    );
    let s = server.stats("slow");
    assert_eq!(
        s.held_now, 1,
        "app sync of fast must not wait for the stalled fetch: {s:?}"
    );

    // The stalled application: the timeout, named; its last good bundle
    // kept.
    let error = eventually("slow shows the timeout", CONVERGE, || async {
        let rec = store
            .app("slow")
            .map_err(|e| e.to_string())?
            .ok_or("slow is gone")?;
        if rec.error.contains("timed out after 15s") {
            Ok(rec.error)
        } else {
            Err(format!("error {:?}", rec.error))
        }
    })
    .await?;
    assert!(error.contains(&server.url("slow")), "{error}");
    assert_eq!(
        bundle_revision(&fleet, "slow").as_deref(),
        Ok(slow1.as_str())
    );

    // Later polls fetch it again, one at a time.
    let before = server.stats("slow").requests;
    eventually("slow fetched again", CONVERGE, || async {
        let s = server.stats("slow");
        if s.requests > before && s.closed_by_client >= 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    let s = server.stats("slow");
    assert_eq!(
        s.held_max, 1,
        "two fetches of one repository at once: {s:?}"
    );
    assert!(
        sync.fetches_in_flight() <= 1,
        "fetches in flight: {}",
        sync.fetches_in_flight()
    );

    // Served again: it recovers.
    server.set("slow", Behaviour::Serve);
    let slow3 = commit(&served, "slow", "3")?;
    sync.refresh_urls(&[server.url("slow")]);
    eventually("slow recovered", CONVERGE, || async {
        match bundle_revision(&fleet, "slow")? {
            r if r == slow3 => Ok(()),
            r => Err(format!("at {r}")),
        }
    })
    .await?;
    run.abort();
    let _ = run.await;
    Ok(())
}

fn application(name: &str, url: &str, path: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  project: default
  source:
    repoURL: {url}
    path: {path}
  destination:
    name: sim-1
    namespace: {name}
  syncPolicy:
    automated:
      prune: true
    syncOptions:
    - CreateNamespace=true
"
    )
}

fn config_map_value(fleet: &Fleet, namespace: &str, name: &str) -> Result<String, String> {
    let cm = fleet
        .kubectl_get("sim-1", "configmap", namespace, name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("configmap {namespace}/{name} missing"))?;
    Ok(cm["data"]["value"].as_str().unwrap_or_default().to_owned())
}

/// The whole system (hub and agent processes, the simulator, kubectl):
/// with one application's Git server stalled, another application's
/// change reaches the cluster and `flotilla app sync` of it returns while
/// the stalled fetch is still held; the stalled application shows the
/// timeout and the cluster keeps what it had; and `app sync` of the
/// stalled application ends at the hub's API deadline with
/// DEADLINE_EXCEEDED naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_git_server_does_not_stall_the_fleet() -> anyhow::Result<()> {
    let fleet = Fleet::start_with_hub_args(
        FleetOptions {
            clusters: 1,
            ..FleetOptions::default()
        },
        &["--git-fetch-timeout", "30s", "--api-deadline", "10s"],
    )
    .await?;
    let served = fleet.root.path().join("served");
    new_repo(&served, "slow", "before")?;
    let server = GitHttpServer::start(&served).await?;
    fleet
        .repo
        .commit_file("fast/cm.yaml", &config_map("fast", "before"), "fast app")?;
    let first = fleet.repo.commit_files(
        &[
            (
                "apps/fast.yaml",
                &application("fast", &fleet.repo.url(), "fast"),
            ),
            (
                "apps/slow.yaml",
                &application("slow", &server.url("slow"), "."),
            ),
        ],
        "fast and slow applications",
    )?;
    fleet.wait_synced("fast", "sim-1", &first, CONVERGE).await?;
    eventually("slow applied", CONVERGE, || async {
        config_map_value(&fleet, "slow", "slow")
            .and_then(|v| if v == "before" { Ok(()) } else { Err(v) })
    })
    .await?;

    server.set("slow", Behaviour::Stall);
    commit(&served, "slow", "after")?;
    eventually("the slow fetch stalled", CONVERGE, || async {
        let s = server.stats("slow");
        if s.held_now >= 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;

    let committed = std::time::Instant::now();
    fleet
        .repo
        .commit_file("fast/cm.yaml", &config_map("fast", "after"), "fast change")?;
    eventually("the fast change on the cluster", CONVERGE, || async {
        match config_map_value(&fleet, "fast", "fast")? {
            v if v == "after" => Ok(()),
            v => Err(format!("value {v:?}")),
        }
    })
    .await?;
    // Reported, not asserted (benchmarks print, tests poll).
    eprintln!(
        "fast change on the cluster {:?} after the commit, slow fetch stalled",
        committed.elapsed()
    );
    let s = server.stats("slow");
    assert_eq!(
        s.held_now, 1,
        "the fast change must reach the cluster while the slow fetch is still stalled: {s:?}"
    );

    let syncing = std::time::Instant::now();
    let out = fleet.cli(&["app".into(), "sync".into(), "fast".into()])?;
    eprintln!("app sync fast took {:?}", syncing.elapsed());
    assert!(
        out.status.success(),
        "app sync fast: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = server.stats("slow");
    assert_eq!(
        s.held_now, 1,
        "app sync of fast must return while the slow fetch is still stalled: {s:?}"
    );

    let error = eventually("slow shows the timeout", CONVERGE, || async {
        let app = fleet.app("slow").await.map_err(|e| e.to_string())?;
        if app.error.contains("timed out after 30s") {
            Ok(app.error)
        } else {
            Err(format!("error {:?}", app.error))
        }
    })
    .await?;
    assert!(error.contains(&server.url("slow")), "{error}");
    assert_eq!(
        config_map_value(&fleet, "slow", "slow").as_deref(),
        Ok("before"),
        "the cluster keeps the slow application's last good state"
    );
    assert_eq!(server.stats("slow").held_max, 1);

    // The next poll stalls again; a sync of the slow application waits for
    // that fetch, and the API deadline (10s, shorter than the fetch's 30s)
    // ends the call.
    let before = server.stats("slow").requests;
    eventually("the slow fetch stalled again", CONVERGE, || async {
        let s = server.stats("slow");
        if s.requests > before && s.held_now >= 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    let out = fleet.cli(&["app".into(), "sync".into(), "slow".into()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "app sync slow succeeded: {stderr}");
    assert!(
        stderr.contains("SyncApplication did not finish within the hub's API deadline of 10s"),
        "{stderr}"
    );
    assert_eq!(server.stats("slow").held_max, 1);
    Ok(())
}
