//! ApplicationSet `strategy: RollingSync` end to end, on six simulated
//! clusters: a list generator labels the generated applications
//! envLabel=env-dev / env-staging / env-prod (three clusters) /
//! env-sandbox, in the shape of Argo CD's Progressive-Syncs.md example.
//! Three steps: dev, staging (maxUpdate 50 %), prod (maxUpdate 1); the
//! sandbox application matches no step.
//!
//! A commit that changes the Deployment's image must reach prod only after
//! dev and staging are Healthy, and prod one cluster at a time; both are
//! asserted from the clusters (kubectl), sampled while the rollout runs,
//! and the set's `applicationStatus` from the CLI. The sandbox application
//! is never synced by the set. A hub restart in the middle of the rollout
//! does not lose its place. With `deletionOrder: Reverse`, deleting the
//! set deletes prod's applications first and dev's last: with one prod
//! agent down, staging and dev keep theirs until it is back.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};

const CONVERGE: Duration = Duration::from_secs(120);

/// Cluster → envLabel, in the order the rollout must reach them.
const CLUSTERS: [(&str, &str); 6] = [
    ("sim-1", "env-dev"),
    ("sim-2", "env-staging"),
    ("sim-3", "env-prod"),
    ("sim-4", "env-prod"),
    ("sim-5", "env-prod"),
    ("sim-6", "env-sandbox"),
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

/// The set as an Argo CD user writes it (goTemplate, list generator,
/// labels on the template, steps by label, maxUpdate as a percentage and as
/// a number, automated sync in the template that RollingSync turns off).
fn set_yaml(repo_url: &str) -> String {
    let elements: String = CLUSTERS
        .iter()
        .map(|(c, env)| format!("          - cluster: {c}\n            env: {env}\n"))
        .collect();
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: web
spec:
  goTemplate: true
  goTemplateOptions: ["missingkey=error"]
  generators:
    - list:
        elements:
{elements}  strategy:
    type: RollingSync
    rollingSync:
      steps:
        - matchExpressions:
            - key: envLabel
              operator: In
              values:
                - env-dev
        - matchExpressions:
            - key: envLabel
              operator: In
              values:
                - env-staging
          maxUpdate: 50%
        - matchExpressions:
            - key: envLabel
              operator: In
              values:
                - env-prod
          maxUpdate: 1
  template:
    metadata:
      name: '{{{{.cluster}}}}-web'
      labels:
        envLabel: '{{{{.env}}}}'
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
"#
    )
}

/// What kubectl shows of the `web` Deployment on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    image: Option<String>,
    /// Rolled out: every replica updated and available.
    ready: bool,
}

fn seen(fleet: &Fleet, cluster: &str) -> anyhow::Result<Seen> {
    let Some(d) = fleet.kubectl_get(cluster, "deployment", "default", "web")? else {
        return Ok(Seen {
            image: None,
            ready: false,
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
    Ok(Seen { image, ready })
}

fn appset(fleet: &Fleet) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &fleet.cli_ok(&["appset", "get", "web", "-o", "json"])?,
    )?)
}

/// `applicationStatus` by application: (status, step, target revisions).
fn app_status(s: &serde_json::Value) -> BTreeMap<String, (String, String, Vec<String>)> {
    s["applicationStatus"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["application"].as_str().unwrap_or_default().to_owned(),
                (
                    a["status"].as_str().unwrap_or_default().to_owned(),
                    a["step"].as_str().unwrap_or_default().to_owned(),
                    a["targetRevisions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect(),
                ),
            )
        })
        .collect()
}

/// Samples the clusters until every cluster of a step shows `image` rolled
/// out, checking on every sample that no prod cluster has `image` before
/// dev and staging have it rolled out, and that at most one prod cluster is
/// mid-rollout at a time. Clusters are read in the reverse of the
/// rollout's order: a later cluster holding the image means the earlier
/// ones were Healthy before it was read, and stay so when read after it.
async fn watch_rollout(fleet: &Fleet, image: &str) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    let mut samples = 0usize;
    eventually(&format!("{image} rolled out to dev, staging and prod"), CONVERGE, || {
        let out: Result<(), String> = (|| {
            samples += 1;
            let mut now: Vec<(&str, &str, Seen)> = Vec::new();
            for (c, env) in CLUSTERS.iter().rev().filter(|(_, e)| *e != "env-sandbox") {
                now.push((c, env, seen(fleet, c).map_err(|e| e.to_string())?));
            }
            let has = |s: &Seen| s.image.as_deref() == Some(image);
            let prod_touched = now
                .iter()
                .any(|(_, env, s)| *env == "env-prod" && has(s));
            let early_ready = now
                .iter()
                .filter(|(_, env, _)| *env != "env-prod")
                .all(|(_, _, s)| has(s) && s.ready);
            if prod_touched && !early_ready {
                violations.push(format!("sample {samples}: prod has {image} before dev and staging are Healthy: {now:?}"));
            }
            let mid: Vec<&str> = now
                .iter()
                .filter(|(_, env, s)| *env == "env-prod" && has(s) && !s.ready)
                .map(|(c, _, _)| *c)
                .collect();
            if mid.len() > 1 {
                violations.push(format!("sample {samples}: {} prod clusters rolling out at once (maxUpdate 1): {mid:?}", mid.len()));
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
async fn rolling_sync_rolls_out_step_by_step() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOptions {
        clusters: CLUSTERS.len(),
        ..FleetOptions::default()
    })
    .await?;
    let v1 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v1"), "web v1")?;
    let file = fleet.root.path().join("web-set.yaml");
    std::fs::write(&file, set_yaml(&fleet.repo.url()))?;
    // Accepted as written, with no notice of anything not applied.
    let created: serde_json::Value = serde_json::from_str(&fleet.cli_ok(&[
        "appset",
        "create",
        "-f",
        &file.display().to_string(),
        "-o",
        "json",
    ])?)?;
    let conditions = created["conditions"].to_string();
    assert!(
        !conditions.contains("UnsupportedField") && !conditions.contains("ErrorOccurred"),
        "{conditions}"
    );

    // The first rollout: every step's clusters get v1, in order.
    let violations = watch_rollout(&fleet, "web:v1").await?;
    assert!(violations.is_empty(), "{violations:#?}");
    eventually("applicationStatus Healthy at v1", CONVERGE, || async {
        let s = appset(&fleet).map_err(|e| e.to_string())?;
        let st = app_status(&s);
        let healthy = st
            .iter()
            .filter(|(a, _)| *a != "sim-6-web")
            .all(|(_, (status, _, revs))| status == "Healthy" && revs == std::slice::from_ref(&v1));
        if st.len() == CLUSTERS.len() && healthy {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await?;

    // RollingSync turned automated sync off on the generated applications.
    let app = fleet.app("sim-3-web").await?;
    assert!(
        !app.manifest.contains("automated"),
        "automated sync must be off under RollingSync: {}",
        app.manifest
    );

    // A new image: the same order again, prod one cluster at a time.
    let v2 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v2"), "web v2")?;
    // Wait for the set to see the new commit before sampling: prod must
    // keep v1 while dev has not finished.
    eventually("the rollout of v2 starts", CONVERGE, || async {
        let s = appset(&fleet).map_err(|e| e.to_string())?;
        let st = app_status(&s);
        if st
            .get("sim-1-web")
            .is_some_and(|(_, _, revs)| revs == std::slice::from_ref(&v2))
        {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await?;
    let violations = watch_rollout(&fleet, "web:v2").await?;
    assert!(violations.is_empty(), "{violations:#?}");

    // applicationStatus, from the CLI: every application of a step Healthy
    // at v2, with its step; the sandbox application outside every step.
    let s = eventually("applicationStatus Healthy at v2", CONVERGE, || async {
        let s = appset(&fleet).map_err(|e| e.to_string())?;
        let st = app_status(&s);
        let done = st
            .iter()
            .filter(|(a, _)| *a != "sim-6-web")
            .all(|(_, (status, _, revs))| status == "Healthy" && revs == std::slice::from_ref(&v2));
        if done
            && s["conditions"]
                .to_string()
                .contains("Rollout has completed")
        {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await?;
    let st = app_status(&s);
    for (cluster, step) in [
        ("sim-1", "1"),
        ("sim-2", "2"),
        ("sim-3", "3"),
        ("sim-4", "3"),
        ("sim-5", "3"),
    ] {
        assert_eq!(st[&format!("{cluster}-web")].1, step, "{s}");
    }
    let (sandbox_status, sandbox_step, _) = &st["sim-6-web"];
    assert_eq!(
        (sandbox_status.as_str(), sandbox_step.as_str()),
        ("Waiting", "-1"),
        "{s}"
    );
    // Never synced by the set: its cluster never got the Deployment.
    assert_eq!(seen(&fleet, "sim-6")?.image, None);

    // The set's syncs are in the applications' history, as the set's.
    let history: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["app", "history", "sim-4-web", "-o", "json"])?)?;
    assert!(
        history["history"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| h["initiatedBy"] == "appset:web" && h["revision"] == v2.as_str()),
        "{history}"
    );

    // A hub restart in the middle of a rollout: it carries on from the
    // store, in order.
    let v3 = fleet
        .repo
        .commit_file("web/deployment.yaml", &deployment("web:v3"), "web v3")?;
    eventually("the rollout of v3 starts", CONVERGE, || async {
        let st = app_status(&appset(&fleet).map_err(|e| e.to_string())?);
        match st.get("sim-1-web") {
            Some((status, _, revs)) if revs == std::slice::from_ref(&v3) && status != "Waiting" => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    fleet.restart_hub()?;
    let violations = watch_rollout(&fleet, "web:v3").await?;
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(seen(&fleet, "sim-6")?.image, None);

    // deletionOrder Reverse: deleting the set deletes prod's applications
    // first, then staging's, then dev's, each step once the clusters of
    // the one before let it go.
    let reverse = set_yaml(&fleet.repo.url()).replace(
        "    type: RollingSync\n",
        "    type: RollingSync\n    deletionOrder: Reverse\n",
    );
    std::fs::write(&file, reverse)?;
    let updated = fleet.cli_ok(&[
        "appset",
        "create",
        "-f",
        &file.display().to_string(),
        "--upsert",
        "-o",
        "json",
    ])?;
    assert!(!updated.contains("UnsupportedField"), "{updated}");
    // One prod cluster's agent is down: its step cannot finish, so staging
    // and dev must keep their applications until it is back.
    drop(fleet.agents.remove("sim-5"));
    fleet.cli_ok(&["appset", "delete", "web"])?;
    eventually("the other prod clusters let web go", CONVERGE, || async {
        let mut state = Vec::new();
        for c in ["sim-3", "sim-4"] {
            state.push((c, going(&fleet, c).map_err(|e| e.to_string())?));
        }
        let clusters: serde_json::Value = serde_json::from_str(
            &fleet
                .cli_ok(&["cluster", "list", "-o", "json"])
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let acked = |c: &str| {
            clusters.as_array().into_iter().flatten().any(|x| {
                x["name"] == c && x["ackedGeneration"].as_u64() >= x["generation"].as_u64()
            })
        };
        if state.iter().all(|(_, g)| *g) && acked("sim-3") && acked("sim-4") {
            Ok(())
        } else {
            Err(format!("{state:?} {clusters}"))
        }
    })
    .await?;
    for c in ["sim-1", "sim-2", "sim-5"] {
        assert!(
            !going(&fleet, c)?,
            "{c} lost web while prod's sim-5 had not let it go"
        );
    }
    fleet.start_agent("sim-5")?;
    let violations = watch_reverse_deletion(&fleet).await?;
    assert!(violations.is_empty(), "{violations:#?}");
    Ok(())
}

/// Whether the `web` Deployment on `cluster` is gone or being deleted.
fn going(fleet: &Fleet, cluster: &str) -> anyhow::Result<bool> {
    Ok(fleet
        .kubectl_get(cluster, "deployment", "default", "web")?
        .is_none_or(|d| d.pointer("/metadata/deletionTimestamp").is_some()))
}

/// Samples the clusters until every Deployment is gone, checking on every
/// sample that a step's clusters only lose it after every later step's
/// did. Read in deletion order reversed (dev first): an earlier step going
/// means the later ones went before it was read.
async fn watch_reverse_deletion(fleet: &Fleet) -> anyhow::Result<Vec<String>> {
    let rank = |env: &str| match env {
        "env-dev" => 0,
        "env-staging" => 1,
        _ => 2,
    };
    let mut violations = Vec::new();
    let mut samples = 0usize;
    eventually("every web Deployment deleted", CONVERGE, || {
        let out: Result<(), String> = (|| {
            samples += 1;
            let mut now: Vec<(&str, &str, bool)> = Vec::new();
            for (c, env) in CLUSTERS.iter().filter(|(_, e)| *e != "env-sandbox") {
                now.push((c, env, going(fleet, c).map_err(|e| e.to_string())?));
            }
            for (c, env, gone) in &now {
                if !gone {
                    continue;
                }
                let kept: Vec<&str> = now
                    .iter()
                    .filter(|(_, e, g)| rank(e) > rank(env) && !g)
                    .map(|(c, _, _)| *c)
                    .collect();
                if !kept.is_empty() {
                    violations.push(format!(
                        "sample {samples}: {c} ({env}) deleted while {kept:?} of a later step still run"
                    ));
                }
            }
            if now.iter().all(|(_, _, g)| *g) {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        })();
        std::future::ready(out)
    })
    .await?;
    Ok(violations)
}

#[test]
fn argo_cd_progressive_syncs_example_is_accepted_unchanged() {
    // The example of Argo CD's Progressive-Syncs.md, in its shape: three
    // steps by label, maxUpdate unset, 0 and a percentage, deletionOrder.
    let yaml = r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: guestbook
spec:
  generators:
    - list:
        elements:
          - cluster: engineering-dev
            url: https://1.2.3.4
            env: env-dev
          - cluster: engineering-qa
            url: https://2.4.6.8
            env: env-qa
          - cluster: engineering-prod
            url: https://9.8.7.6/
            env: env-prod
  strategy:
    type: RollingSync
    rollingSync:
      steps:
        - matchExpressions:
            - key: envLabel
              operator: In
              values:
                - env-dev
        - matchExpressions:
            - key: envLabel
              operator: In
              values:
                - env-qa
          maxUpdate: 0
        - matchExpressions:
            - key: envLabel
              operator: In
              values:
                - env-prod
          maxUpdate: 10%
  goTemplate: true
  goTemplateOptions: ['missingkey=error']
  template:
    metadata:
      name: '{{.cluster}}-guestbook'
      labels:
        envLabel: '{{.env}}'
    spec:
      project: my-project
      source:
        repoURL: https://github.com/infra-team/cluster-deployments.git
        targetRevision: HEAD
        path: guestbook/{{.cluster}}
      destination:
        server: '{{.url}}'
        namespace: guestbook
"#;
    let sets = flotilla_hub::appset::parse_application_sets(yaml, "Progressive-Syncs.md")
        .expect("accepted");
    let steps = sets[0]
        .strategy
        .rolling_sync
        .clone()
        .expect("RollingSync with steps");
    assert_eq!(steps.len(), 3);
    let generated = sets[0].generate(&[], None).expect("generates");
    assert!(generated.notices.is_empty(), "{:?}", generated.notices);
    let names: Vec<&str> = generated
        .applications
        .iter()
        .map(|a| a.metadata.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "engineering-dev-guestbook",
            "engineering-qa-guestbook",
            "engineering-prod-guestbook"
        ]
    );
    // The steps select one application each.
    let assignment = flotilla_hub::rollout::rolling_sync::assign_steps(
        &steps,
        generated
            .applications
            .iter()
            .map(|a| (a.metadata.name.as_str(), &a.metadata.labels)),
    );
    assert_eq!(assignment.shown_step("engineering-qa-guestbook"), 2);
    assert!(assignment.issues.is_empty(), "{:?}", assignment.issues);
}
