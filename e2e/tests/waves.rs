//! Flotilla waves (`spec.strategy.flotillaWaves`) end to end on six
//! simulated clusters in three waves: canary (sim-1), eu (sim-2, sim-3),
//! us (sim-4..6, `maxUnavailable: 1`). The canary bakes 3 s.
//!
//! A good commit passes every wave in order: asserted from the clusters
//! (kubectl), sampled while the rollout runs: no eu cluster has the new
//! image before the canary has been rolled out for the bake time, no us
//! cluster before eu is rolled out, at most one us cluster mid-rollout;
//! and again afterwards from the agents' apply timestamps (each
//! cluster's reported operation start and finish).
//! A bad commit (an image the simulator never makes ready, so the
//! Deployment reports ProgressDeadlineExceeded and goes Degraded) stops in
//! the canary: the five other clusters never see it (their Deployment's
//! resourceVersion is unchanged) and, with `autoRollback`, the canary is
//! put back to the good image. `flotilla rollout pause|resume|abort` from
//! the CLI.
//!
//! A deploy window (a deny window of the set's AppProject, computed from
//! this test's clock) holds the second wave: the rollout says which
//! clusters and until when, does not fail them past `progressDeadline`
//! while held, and goes on by itself when the window closes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};

const CONVERGE: Duration = Duration::from_secs(120);
const BAKE: Duration = Duration::from_secs(3);

/// Cluster → ring label, in the order the rollout must reach them.
const CLUSTERS: [(&str, &str); 6] = [
    ("sim-1", "canary"),
    ("sim-2", "eu"),
    ("sim-3", "eu"),
    ("sim-4", "us"),
    ("sim-5", "us"),
    ("sim-6", "us"),
];

fn deployment(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 1
  progressDeadlineSeconds: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: {image}
"#
    )
}

/// The ApplicationSet `web` every test here uses: one application per
/// cluster of `clusters` (list generator), of project `project`, staged by
/// `strategy` (the `strategy:` block, or empty for none).
fn web_set(repo_url: &str, clusters: &[&str], project: &str, strategy: &str) -> String {
    let elements: String = clusters
        .iter()
        .map(|c| format!("          - cluster: {c}\n"))
        .collect();
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: web
spec:
  goTemplate: true
  generators:
    - list:
        elements:
{elements}{strategy}  template:
    metadata:
      name: '{{{{.cluster}}}}-web'
    spec:
      project: {project}
      source:
        repoURL: {repo_url}
        targetRevision: HEAD
        path: web
      destination:
        name: '{{{{.cluster}}}}'
        namespace: default
      syncPolicy:
        automated:
          prune: true
          selfHeal: true
"#
    )
}

fn set_yaml(repo_url: &str) -> String {
    let clusters: Vec<&str> = CLUSTERS.iter().map(|(c, _)| *c).collect();
    web_set(
        repo_url,
        &clusters,
        "default",
        r#"  strategy:
    flotillaWaves:
      autoRollback: true
      progressDeadline: 60s
      waves:
        - name: canary
          clusterSelector:
            matchLabels: {ring: canary}
          bakeTime: 3s
        - name: eu
          clusterSelector:
            matchExpressions:
              - {key: ring, operator: In, values: [eu]}
        - name: us
          clusterSelector:
            matchLabels: {ring: us}
          maxUnavailable: 1
"#,
    )
}

/// What kubectl shows of the `web` Deployment on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    image: Option<String>,
    ready: bool,
    resource_version: String,
}

fn seen(fleet: &Fleet, cluster: &str) -> anyhow::Result<Seen> {
    let Some(d) = fleet.kubectl_get(cluster, "deployment", "default", "web")? else {
        return Ok(Seen {
            image: None,
            ready: false,
            resource_version: String::new(),
        });
    };
    let image = d
        .pointer("/spec/template/spec/containers/0/image")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let want = d.pointer("/spec/replicas").and_then(|v| v.as_i64());
    let generation = d.pointer("/metadata/generation").and_then(|v| v.as_i64());
    let ready = generation.is_some()
        && d.pointer("/status/observedGeneration")
            .and_then(|v| v.as_i64())
            == generation
        && d.pointer("/status/updatedReplicas")
            .and_then(|v| v.as_i64())
            == want
        && d.pointer("/status/availableReplicas")
            .and_then(|v| v.as_i64())
            == want;
    let resource_version = d
        .pointer("/metadata/resourceVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    Ok(Seen {
        image,
        ready,
        resource_version,
    })
}

fn rollout(fleet: &Fleet) -> Result<serde_json::Value, String> {
    let out = fleet
        .cli_ok(&["rollout", "get", "web", "-o", "json"])
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

async fn phase_is(fleet: &Fleet, phase: &str, target: &str) -> anyhow::Result<serde_json::Value> {
    eventually(
        &format!("rollout {phase} at {target}"),
        CONVERGE,
        || async {
            let r = rollout(fleet)?;
            if r["phase"] == phase && r["target"] == target {
                Ok(r)
            } else {
                Err(r.to_string())
            }
        },
    )
    .await
}

/// Samples the clusters until all show `image` rolled out; returns the
/// order violations seen. Clusters are read last wave first.
async fn watch_rollout(fleet: &Fleet, image: &str) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    // Whether the canary was seen rolled out, and when the last sample
    // that saw it not yet rolled out started: it became ready after that
    // moment, the hub saw it Healthy later still, and the bake ran from
    // there. An eu cluster seen with the image less than the bake after
    // that moment was started early, whatever the sampling's pace.
    let mut canary_ready = false;
    let mut canary_not_ready: Option<Instant> = None;
    let mut samples = 0usize;
    eventually(&format!("{image} rolled out in waves"), CONVERGE, || {
        let out: Result<(), String> = (|| {
            samples += 1;
            let started = Instant::now();
            let mut now: Vec<(&str, &str, Seen)> = Vec::new();
            for (c, ring) in CLUSTERS.iter().rev() {
                now.push((c, ring, seen(fleet, c).map_err(|e| e.to_string())?));
            }
            let read = Instant::now();
            let has = |s: &Seen| s.image.as_deref() == Some(image);
            let ring = |r: &'static str| now.iter().filter(move |(_, x, _)| *x == r);
            if !canary_ready {
                if ring("canary").all(|(_, _, s)| has(s) && s.ready) {
                    canary_ready = true;
                } else {
                    canary_not_ready = Some(started);
                }
            }
            if ring("eu").any(|(_, _, s)| has(s)) {
                if !canary_ready {
                    violations.push(format!(
                        "sample {samples}: eu before the canary is rolled out: {now:?}"
                    ));
                } else if let Some(at) = canary_not_ready
                    && read.duration_since(at) < BAKE
                {
                    violations.push(format!(
                        "sample {samples}: eu at most {:?} after the canary became ready (bake {BAKE:?})",
                        read.duration_since(at)
                    ));
                }
            }
            if ring("us").any(|(_, _, s)| has(s)) && !ring("eu").all(|(_, _, s)| has(s) && s.ready)
            {
                violations.push(format!(
                    "sample {samples}: us before eu is rolled out: {now:?}"
                ));
            }
            let mid: Vec<&str> = ring("us")
                .filter(|(_, _, s)| has(s) && !s.ready)
                .map(|(c, _, _)| *c)
                .collect();
            if mid.len() > 1 {
                violations.push(format!(
                    "sample {samples}: {mid:?} mid-rollout at once (maxUnavailable 1)"
                ));
            }
            if now.iter().all(|(_, _, s)| has(s) && s.ready) {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        })();
        std::future::ready(out)
    })
    .await?;
    anyhow::ensure!(samples > 1, "the rollout was over at the first sample");
    Ok(violations)
}

/// The same order, from the agents' own records of the apply that brought
/// each cluster to `revision` (its operation's start and finish, reported
/// with the status): a cluster is Healthy after its apply finished, so an
/// eu apply starts at least the bake after the canary's finished, every us
/// apply after every eu apply finished, and one us apply after the other
/// (`maxUnavailable: 1`).
async fn apply_order_violations(fleet: &Fleet, revision: &str) -> anyhow::Result<Vec<String>> {
    let mut applied: Vec<(&str, &str, i64, i64)> = Vec::new();
    for (c, ring) in CLUSTERS {
        let app = format!("{c}-web");
        fleet.wait_synced(&app, c, revision, CONVERGE).await?;
        let a = fleet.app(&app).await?;
        let op = a
            .clusters
            .iter()
            .find(|x| x.cluster == c)
            .and_then(|x| x.status.as_ref())
            .and_then(|s| s.operation.clone())
            .ok_or_else(|| anyhow::anyhow!("{app}: no operation reported on {c}"))?;
        anyhow::ensure!(
            op.started_ms > 0 && op.finished_ms >= op.started_ms,
            "{app} on {c}: {op:?}"
        );
        applied.push((c, ring, op.started_ms, op.finished_ms));
    }
    let bake = i64::try_from(BAKE.as_millis())?;
    let of = |r: &'static str| applied.iter().filter(move |a| a.1 == r).copied();
    let mut violations = Vec::new();
    for (canary, _, _, canary_done) in of("canary") {
        for (c, _, start, _) in of("eu") {
            if start < canary_done + bake {
                violations.push(format!(
                    "{c} (eu) applied {} ms after {canary} (canary) finished, within the bake",
                    start - canary_done
                ));
            }
        }
    }
    let eu_done = of("eu").map(|a| a.3).max().unwrap_or(0);
    for (c, _, start, _) in of("us") {
        if start < eu_done {
            violations.push(format!("{c} (us) applied before eu finished"));
        }
    }
    let mut us: Vec<_> = of("us").collect();
    us.sort_by_key(|a| a.2);
    for pair in us.windows(2) {
        if pair[1].2 < pair[0].3 {
            violations.push(format!(
                "{} and {} (us) applied at once (maxUnavailable 1)",
                pair[0].0, pair[1].0
            ));
        }
    }
    Ok(violations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waves_roll_out_stop_a_bad_commit_and_roll_it_back() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: CLUSTERS.len(),
        ..FleetOptions::default()
    })
    .await?;
    for (c, ring) in CLUSTERS {
        fleet.cli_ok(&["cluster", "label", c, &format!("ring={ring}")])?;
    }
    let v1 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v1"), "web v1")?;
    let file = fleet.root.path().join("web-set.yaml");
    std::fs::write(&file, set_yaml(&fleet.repo.url()))?;
    fleet.cli_ok(&["appset", "create", "-f", &file.display().to_string()])?;
    // The first deployment goes everywhere (nothing to stage against) and
    // is adopted by the rollout.
    phase_is(&fleet, "Completed", &v1).await?;
    eventually("v1 everywhere", CONVERGE, || async {
        for (c, _) in CLUSTERS {
            let s = seen(&fleet, c).map_err(|e| e.to_string())?;
            if s.image.as_deref() != Some("web:v1") || !s.ready {
                return Err(format!("{c}: {s:?}"));
            }
        }
        Ok(())
    })
    .await?;

    // A good commit: wave by wave.
    let v2 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v2"), "web v2")?;
    let violations = watch_rollout(&fleet, "web:v2").await?;
    assert!(violations.is_empty(), "{violations:#?}");
    let done = phase_is(&fleet, "Completed", &v2).await?;
    let waves = done["waves"].as_array().cloned().unwrap_or_default();
    assert_eq!(waves.len(), 3, "{done}");
    let order = apply_order_violations(&fleet, &v2).await?;
    assert!(order.is_empty(), "{order:#?}");
    let history: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["app", "history", "sim-5-web", "-o", "json"])?)?;
    assert!(
        history["history"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| h["initiatedBy"] == "rollout:web" && h["revision"] == v2.as_str()),
        "{history}"
    );

    // A bad commit: it stops in the canary and is rolled back there.
    let before: Vec<Seen> = CLUSTERS
        .iter()
        .map(|(c, _)| seen(&fleet, c))
        .collect::<anyhow::Result<_>>()?;
    let v3 = fleet.repo.commit_file(
        "web/deployment.yaml",
        &deployment("web:never-ready"),
        "web v3 (bad)",
    )?;
    let failed = phase_is(&fleet, "Failed", &v3).await?;
    assert_eq!(failed["wave"], 1, "{failed}");
    eventually("the canary back at v2", CONVERGE, || async {
        let s = seen(&fleet, "sim-1").map_err(|e| e.to_string())?;
        if s.image.as_deref() == Some("web:v2") && s.ready {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    let canary = &failed["clusters"][0];
    assert_eq!(canary["cluster"], "sim-1", "{failed}");
    for (i, (c, _)) in CLUSTERS.iter().enumerate().skip(1) {
        let now = seen(&fleet, c)?;
        assert_eq!(now, before[i], "{c} must never see the bad commit");
    }

    // Control from the CLI: abort on a failed rollout rolls back what it
    // touched (nothing left here) and stops it.
    let aborted = fleet.cli_ok(&["rollout", "abort", "web"])?;
    assert!(aborted.contains("Aborted"), "{aborted}");

    // A good commit again, paused after the canary and resumed.
    let v4 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v4"), "web v4")?;
    phase_is(&fleet, "Baking", &v4).await?;
    let paused = fleet.cli_ok(&["rollout", "pause", "web"])?;
    assert!(paused.contains("paused by"), "{paused}");
    // Paused past the bake time: eu does not start.
    let baked = Instant::now() + BAKE + Duration::from_secs(1);
    eventually("the bake time passes while paused", CONVERGE, || {
        std::future::ready(if Instant::now() >= baked {
            Ok(())
        } else {
            Err("baking".to_owned())
        })
    })
    .await?;
    assert_ne!(seen(&fleet, "sim-2")?.image.as_deref(), Some("web:v4"));
    let listed = fleet.cli_ok(&["rollout", "list"])?;
    assert!(listed.contains("paused by"), "{listed}");
    fleet.cli_ok(&["rollout", "resume", "web"])?;
    phase_is(&fleet, "Completed", &v4).await?;
    // The audit log names who moved it.
    let audit = fleet.cli_ok(&["audit", "-o", "json"])?;
    assert!(
        audit.contains("rollout-pause") && audit.contains("rollout-resume"),
        "{audit}"
    );
    // So does the history of every application the rollout touched: the
    // controls with the person, the rollout's own transitions (waves,
    // the automatic pause and rollback) with the rollout.
    let events = |app: &str| -> anyhow::Result<Vec<(String, String, String)>> {
        let h: serde_json::Value =
            serde_json::from_str(&fleet.cli_ok(&["app", "history", app, "-o", "json"])?)?;
        Ok(h["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (s("event"), s("initiatedBy"), s("revision"))
            })
            .collect())
    };
    let has = |events: &[(String, String, String)], event: &str, by: &str, rev: &str| {
        events
            .iter()
            .any(|(e, b, r)| e.starts_with(event) && b.starts_with(by) && r == rev)
    };
    let canary = events("sim-1-web")?;
    for (event, by, rev) in [
        ("wave canary (1/3) started", "rollout:web", v2.as_str()),
        ("wave canary finished", "rollout:web", v2.as_str()),
        (
            "cluster sim-1 (sim-1-web) Degraded",
            "rollout:web",
            v3.as_str(),
        ),
        ("wave canary failed", "rollout:web", v3.as_str()),
        ("aborted by user:", "user:", v3.as_str()),
        ("rollout paused by user:", "user:", v4.as_str()),
        ("rollout resumed by user:", "user:", v4.as_str()),
    ] {
        assert!(
            has(&canary, event, by, rev),
            "no {event:?} by {by} at {rev}: {canary:#?}"
        );
    }
    assert!(
        canary.iter().any(|(e, _, _)| e.contains("autoRollback")),
        "{canary:#?}"
    );
    let us = events("sim-5-web")?;
    assert!(
        has(&us, "wave us (3/3) started", "rollout:web", &v4),
        "{us:#?}"
    );
    assert!(
        !us.iter()
            .any(|(e, _, _)| e.contains("Degraded") || e.contains("failed")),
        "the bad commit's failure is only in the canary's history: {us:#?}"
    );
    let table = fleet.cli_ok(&["app", "history", "sim-1-web"])?;
    assert!(
        table.contains("EVENT") && table.contains("rollout paused by user:"),
        "{table}"
    );
    Ok(())
}

/// How long the deny window stays open after the test adds it: time for
/// the commit to reach the canary and the held state to be checked, and
/// well past the set's progress deadline.
const HOLD: Duration = Duration::from_secs(40);
/// The held set's progress deadline: shorter than the window.
const DEADLINE: Duration = Duration::from_secs(8);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A daily deny window opening at this minute (UTC) and closing `HOLD`
/// from now: (schedule, duration, closes at in ms).
fn window_from_now() -> (String, String, i64) {
    let secs = now_ms() / 1000;
    let (minute, hour) = ((secs / 60) % 60, (secs / 3600) % 24);
    let into_minute = secs % 60;
    let duration = into_minute + i64::try_from(HOLD.as_secs()).unwrap_or(40);
    let closes = (secs - into_minute + duration) * 1000;
    (
        format!("{minute} {hour} * * *"),
        format!("{duration}s"),
        closes,
    )
}

/// A two-wave set (canary sim-1, then sim-2 and sim-3) of project `shop`,
/// failing a cluster not Healthy within `DEADLINE`.
fn held_set_yaml(repo_url: &str) -> String {
    let strategy = format!(
        r#"  strategy:
    flotillaWaves:
      autoRollback: true
      progressDeadline: {deadline}s
      waves:
        - name: canary
          clusterSelector:
            matchLabels: {{ring: canary}}
        - name: rest
          clusterSelector:
            matchLabels: {{ring: rest}}
"#,
        deadline = DEADLINE.as_secs()
    );
    web_set(repo_url, &["sim-1", "sim-2", "sim-3"], "shop", &strategy)
}

const SHOP: &str = "apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: shop
spec:
  sourceRepos:
  - '*'
  destinations:
  - name: '*'
    namespace: '*'
";

/// `ms` as the hub prints an instant (RFC 3339, UTC, whole seconds), by
/// date(1), an independent formatter.
fn rfc3339(ms: i64) -> anyhow::Result<String> {
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", ms / 1000),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()?;
    anyhow::ensure!(out.status.success(), "date failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deny_window_holds_a_wave_and_the_rollout_resumes_when_it_closes() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 3,
        ..FleetOptions::default()
    })
    .await?;
    for (c, ring) in [("sim-1", "canary"), ("sim-2", "rest"), ("sim-3", "rest")] {
        fleet.cli_ok(&["cluster", "label", c, &format!("ring={ring}")])?;
    }
    let project = fleet.root.path().join("shop.yaml");
    std::fs::write(&project, SHOP)?;
    fleet.cli_ok(&["proj", "create", "-f", &project.display().to_string()])?;
    let v1 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v1"), "web v1")?;
    let file = fleet.root.path().join("web-set.yaml");
    std::fs::write(&file, held_set_yaml(&fleet.repo.url()))?;
    fleet.cli_ok(&["appset", "create", "-f", &file.display().to_string()])?;
    phase_is(&fleet, "Completed", &v1).await?;
    eventually("v1 everywhere", CONVERGE, || async {
        for c in ["sim-1", "sim-2", "sim-3"] {
            let s = seen(&fleet, c).map_err(|e| e.to_string())?;
            if s.image.as_deref() != Some("web:v1") || !s.ready {
                return Err(format!("{c}: {s:?}"));
            }
        }
        Ok(())
    })
    .await?;
    let before: Vec<Seen> = ["sim-2", "sim-3"]
        .iter()
        .map(|c| seen(&fleet, c))
        .collect::<anyhow::Result<_>>()?;

    // A deny window on the second wave's clusters, open now.
    let (schedule, duration, closes_ms) = window_from_now();
    fleet.cli_ok(&[
        "proj",
        "windows",
        "add",
        "shop",
        "--kind",
        "deny",
        "--schedule",
        &schedule,
        "--duration",
        &duration,
        "--clusters",
        "sim-2,sim-3",
    ])?;
    let v2 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v2"), "web v2")?;
    let until = rfc3339(closes_ms)?;
    // The canary goes; the rest is held, and the rollout says which
    // clusters and until when.
    let held = eventually("the second wave held by the window", CONVERGE, || async {
        let r = rollout(&fleet)?;
        let message = r["message"].as_str().unwrap_or_default();
        if r["target"] == v2.as_str()
            && r["wave"] == 2
            && message.contains("held by a deploy window")
            && message.contains("sim-2-web on sim-2, sim-3-web on sim-3")
            && message.contains(&format!("until {until}"))
        {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    })
    .await?;
    let clusters = held["clusters"].as_array().cloned().unwrap_or_default();
    for c in &clusters[1..] {
        assert_eq!(c["state"], "Waiting", "{held}");
        assert_eq!(c["heldUntil"], until.as_str(), "{held}");
    }
    let table = fleet.cli_ok(&["rollout", "get", "web"])?;
    assert!(
        table.contains(&format!("Waiting (window until {until})")),
        "{table}"
    );
    eventually("the canary at v2", CONVERGE, || async {
        let s = seen(&fleet, "sim-1").map_err(|e| e.to_string())?;
        if s.image.as_deref() == Some("web:v2") && s.ready {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    // Held past the progress deadline: the wave does not fail, and the
    // held clusters are untouched.
    let past_deadline = Instant::now() + DEADLINE + Duration::from_secs(2);
    eventually("the progress deadline passes while held", CONVERGE, || {
        std::future::ready(if Instant::now() >= past_deadline {
            Ok(())
        } else {
            Err("held".to_owned())
        })
    })
    .await?;
    let r = rollout(&fleet).map_err(anyhow::Error::msg)?;
    assert_eq!(r["phase"], "Progressing", "{r}");
    assert!(
        now_ms() < closes_ms,
        "the window closed before the held state was checked; raise HOLD"
    );
    let after: Vec<Seen> = ["sim-2", "sim-3"]
        .iter()
        .map(|c| seen(&fleet, c))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(
        after, before,
        "a held cluster was touched inside the window"
    );

    // The window closes: the rollout goes on by itself and completes.
    let done = phase_is(&fleet, "Completed", &v2).await?;
    assert!(
        now_ms() >= closes_ms,
        "completed {} ms before the window closed",
        closes_ms - now_ms()
    );
    assert!(
        !done["message"]
            .as_str()
            .unwrap_or_default()
            .contains("held"),
        "{done}"
    );
    for c in ["sim-2", "sim-3"] {
        let s = seen(&fleet, c)?;
        assert!(
            s.image.as_deref() == Some("web:v2") && s.ready,
            "{c}: {s:?}"
        );
    }
    let history = fleet.cli_ok(&["app", "history", "sim-2-web", "-o", "json"])?;
    assert!(
        history.contains("wave rest (2/2) started") && history.contains("rollout:web"),
        "{history}"
    );
    Ok(())
}

/// A two-wave set (canary sim-1, then sim-2 behind an approval gate), or
/// the same set without `flotillaWaves`.
fn gated_set_yaml(repo_url: &str, waves: bool) -> String {
    let strategy = if waves {
        "  strategy:
    flotillaWaves:
      waves:
        - name: canary
          clusterSelector:
            matchLabels: {ring: canary}
        - name: rest
          clusterSelector:
            matchLabels: {ring: rest}
          requireApproval: true
"
    } else {
        ""
    };
    web_set(repo_url, &["sim-1", "sim-2"], "default", strategy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_flotilla_waves_releases_the_pins_and_returns_to_automated_sync()
-> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 2,
        ..FleetOptions::default()
    })
    .await?;
    fleet.cli_ok(&["cluster", "label", "sim-1", "ring=canary"])?;
    fleet.cli_ok(&["cluster", "label", "sim-2", "ring=rest"])?;
    let v1 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v1"), "web v1")?;
    let file = fleet.root.path().join("web-set.yaml");
    std::fs::write(&file, gated_set_yaml(&fleet.repo.url(), true))?;
    fleet.cli_ok(&["appset", "create", "-f", &file.display().to_string()])?;
    // The set adopts what its first render deployed; when that was the
    // commit before v1 (the Git loop had not fetched v1 yet), v1 rolls out
    // through the gate.
    eventually("the rollout completed at v1", CONVERGE, || async {
        let r = rollout(&fleet)?;
        if r["target"] == v1.as_str() && r["phase"] == "AwaitingApproval" {
            fleet
                .cli_ok(&["rollout", "promote", "web"])
                .map_err(|e| e.to_string())?;
        }
        if r["target"] == v1.as_str() && r["phase"] == "Completed" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await?;
    fleet
        .wait_synced("sim-2-web", "sim-2", &v1, CONVERGE)
        .await?;

    // v2 stops at the gate: sim-2 stays pinned at v1.
    let v2 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v2"), "web v2")?;
    phase_is(&fleet, "AwaitingApproval", &v2).await?;
    let pinned: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["app", "history", "sim-2-web", "-o", "json"])?)?;
    assert_eq!(pinned["pinnedRevision"], v1.as_str(), "{pinned}");
    assert_eq!(seen(&fleet, "sim-2")?.image.as_deref(), Some("web:v1"));

    // The waves go: the pin is released and sim-2 syncs automatically to
    // Git's revision, with nothing else asking for it.
    std::fs::write(&file, gated_set_yaml(&fleet.repo.url(), false))?;
    fleet.cli_ok(&[
        "appset",
        "create",
        "--upsert",
        "-f",
        &file.display().to_string(),
    ])?;
    fleet
        .wait_synced("sim-2-web", "sim-2", &v2, CONVERGE)
        .await?;
    eventually("sim-2 at v2", CONVERGE, || async {
        let s = seen(&fleet, "sim-2").map_err(|e| e.to_string())?;
        if s.image.as_deref() == Some("web:v2") && s.ready {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    let history: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["app", "history", "sim-2-web", "-o", "json"])?)?;
    assert_eq!(history["pinnedRevision"], "", "{history}");
    assert!(
        history.to_string().contains("rollout pin released"),
        "{history}"
    );
    let gone = fleet.cli(&["rollout".into(), "get".into(), "web".into()])?;
    assert!(
        !gone.status.success(),
        "the set has no waves rollout any more"
    );

    // Automated sync is back: the next commit goes to both at once.
    let v3 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v3"), "web v3")?;
    for c in ["sim-1", "sim-2"] {
        fleet
            .wait_synced(&format!("{c}-web"), c, &v3, CONVERGE)
            .await?;
    }
    Ok(())
}
