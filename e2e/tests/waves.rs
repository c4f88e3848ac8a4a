//! Flotilla waves (`spec.strategy.flotillaWaves`) end to end on six
//! simulated clusters in three waves: canary (sim-1), eu (sim-2, sim-3),
//! us (sim-4..6, `maxUnavailable: 1`). The canary bakes 3 s.
//!
//! A good commit passes every wave in order: asserted from the clusters
//! (kubectl), sampled while the rollout runs: no eu cluster has the new
//! image before the canary has been rolled out for the bake time, no us
//! cluster before eu is rolled out, at most one us cluster mid-rollout.
//! A bad commit (an image the simulator never makes ready, so the
//! Deployment reports ProgressDeadlineExceeded and goes Degraded) stops in
//! the canary: the five other clusters never see it (their Deployment's
//! resourceVersion is unchanged) and, with `autoRollback`, the canary is
//! put back to the good image. `flotilla rollout pause|resume|abort` from
//! the CLI.

use std::time::{Duration, Instant};

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

fn set_yaml(repo_url: &str) -> String {
    let elements: String = CLUSTERS
        .iter()
        .map(|(c, _)| format!("          - cluster: {c}\n"))
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
{elements}  strategy:
    flotillaWaves:
      autoRollback: true
      progressDeadline: 60s
      waves:
        - name: canary
          clusterSelector:
            matchLabels: {{ring: canary}}
          bakeTime: 3s
        - name: eu
          clusterSelector:
            matchExpressions:
              - {{key: ring, operator: In, values: [eu]}}
        - name: us
          clusterSelector:
            matchLabels: {{ring: us}}
          maxUnavailable: 1
  template:
    metadata:
      name: '{{{{.cluster}}}}-web'
    spec:
      project: default
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
    let mut canary_ready: Option<Instant> = None;
    let mut samples = 0usize;
    eventually(&format!("{image} rolled out in waves"), CONVERGE, || {
        let out: Result<(), String> = (|| {
            samples += 1;
            let mut now: Vec<(&str, &str, Seen)> = Vec::new();
            for (c, ring) in CLUSTERS.iter().rev() {
                now.push((c, ring, seen(fleet, c).map_err(|e| e.to_string())?));
            }
            let has = |s: &Seen| s.image.as_deref() == Some(image);
            let ring = |r: &'static str| now.iter().filter(move |(_, x, _)| *x == r);
            if canary_ready.is_none() && ring("canary").all(|(_, _, s)| has(s) && s.ready) {
                canary_ready = Some(Instant::now());
            }
            if ring("eu").any(|(_, _, s)| has(s)) {
                match canary_ready {
                    None => violations.push(format!(
                        "sample {samples}: eu before the canary is rolled out: {now:?}"
                    )),
                    // The bake starts when the hub sees the canary Healthy,
                    // after this test's first sight of it at the earliest.
                    Some(at)
                        if at.elapsed() < BAKE.saturating_sub(Duration::from_millis(200))
                            && samples > 1 =>
                    {
                        // Seen within the bake only if it started before
                        // our first sample; tolerated when the canary was
                        // ready at the first sample.
                        violations.push(format!(
                            "sample {samples}: eu {:?} after the canary was ready (bake {BAKE:?})",
                            at.elapsed()
                        ));
                    }
                    Some(_) => {}
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
    Ok(())
}
