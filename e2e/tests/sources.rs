//! Source types end to end (hub → agent → simulator, kubectl observing):
//! a directory in the shape of argocd-example-apps' `sync-waves` applied
//! in wave order, Jsonnet applications (and a broken one that applies
//! nothing and shows the evaluator's error), and a multi-source
//! application whose revision lists every source's.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(120);
const CLUSTER: &str = "sim-1";

async fn one_cluster() -> anyhow::Result<Fleet> {
    Fleet::start(FleetOptions {
        clusters: 1,
        ..FleetOptions::default()
    })
    .await
}

fn application(name: &str, namespace: &str, source: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  project: default
{source}  destination:
    name: {CLUSTER}
    namespace: {namespace}
  syncPolicy:
    automated:
      prune: true
    syncOptions:
    - CreateNamespace=true
"
    )
}

fn resource_version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The sync-waves shape without its hook Jobs (hooks have their own
/// scenario): one multi-document file, objects in waves -1 to 2, next to a
/// README and a Helm-style values file that are not manifests.
const WAVES: &str = r#"---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  annotations:
    argocd.argoproj.io/sync-wave: "-1"
data:
  mode: maintenance
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: backend
spec:
  replicas: 1
  selector:
    matchLabels: {tier: backend}
  template:
    metadata:
      labels: {tier: backend}
    spec:
      containers:
      - name: main
        image: nginx:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: backend
spec:
  selector: {tier: backend}
  ports:
  - port: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: wave-one
  annotations:
    argocd.argoproj.io/sync-wave: "1"
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: frontend
  annotations:
    argocd.argoproj.io/sync-wave: "2"
spec:
  replicas: 1
  selector:
    matchLabels: {tier: frontend}
  template:
    metadata:
      labels: {tier: frontend}
    spec:
      containers:
      - name: main
        image: nginx:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: frontend
  annotations:
    argocd.argoproj.io/sync-wave: "2"
spec:
  selector: {tier: frontend}
  ports:
  - port: 80
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_waves_layout_applies_in_wave_order() -> anyhow::Result<()> {
    let fleet = one_cluster().await?;
    fleet
        .repo
        .commit_file("sync-waves/manifests.yaml", WAVES, "sync waves")?;
    fleet
        .repo
        .commit_file("sync-waves/README.md", "# waves\n", "readme")?;
    fleet.repo.commit_file(
        "sync-waves/values.yaml",
        "replicaCount: 1\nimage:\n  tag: latest\n",
        "values",
    )?;
    let commit = fleet.repo.commit_file(
        "apps/sync-waves.yaml",
        &application(
            "sync-waves",
            "waves",
            &format!(
                "  source:\n    repoURL: {}\n    path: sync-waves\n",
                fleet.repo.url()
            ),
        ),
        "sync-waves app",
    )?;
    fleet
        .wait_synced("sync-waves", CLUSTER, &commit, CONVERGE)
        .await?;

    // kubectl sees everything, and the simulator's resourceVersions (one
    // counter per cluster) show the creation order: wave by wave.
    let get = |kind: &str, name: &str| -> anyhow::Result<Value> {
        fleet
            .kubectl_get(CLUSTER, kind, "waves", name)?
            .ok_or_else(|| anyhow::anyhow!("{kind}/{name} missing"))
    };
    let settings = resource_version(&get("configmap", "settings")?);
    let backend = resource_version(&get("service", "backend")?);
    let one = resource_version(&get("configmap", "wave-one")?);
    let frontend = resource_version(&get("service", "frontend")?);
    get("replicaset", "backend")?;
    get("replicaset", "frontend")?;
    assert!(
        settings < backend && backend < one && one < frontend,
        "creation order by wave: settings {settings} (-1) < backend {backend} (0) < wave-one {one} (1) < frontend {frontend} (2)"
    );
    // Nothing came from the README or the values file.
    let out = fleet.kubectl(CLUSTER, &["get", "configmaps", "-n", "waves", "-o", "name"])?;
    let names = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        names
            .lines()
            .filter(|l| !l.contains("kube-root-ca"))
            .count(),
        2,
        "{names}"
    );
    Ok(())
}

const GUESTBOOK: &str = r#"local params = import 'params.libsonnet';

function(replicas=1)
[
  {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: params.name },
    spec: { ports: [{ port: params.port }], selector: { app: params.name } },
  },
  {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: params.name, labels: { env: std.extVar('env') } },
    spec: {
      replicas: replicas,
      selector: { matchLabels: { app: params.name } },
      template: {
        metadata: { labels: { app: params.name } },
        spec: { containers: [{ name: params.name, image: 'nginx:1.27' }] },
      },
    },
  },
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jsonnet_applications() -> anyhow::Result<()> {
    let fleet = one_cluster().await?;
    fleet
        .repo
        .commit_file("jsonnet/guestbook/guestbook.jsonnet", GUESTBOOK, "jsonnet")?;
    fleet.repo.commit_file(
        "jsonnet/guestbook/params.libsonnet",
        "{ name: 'jsonnet-guestbook', port: 80 }\n",
        "params",
    )?;
    fleet.repo.commit_file(
        "jsonnet/broken/broken.jsonnet",
        "{\n  apiVersion: 'v1',\n  kind: 'ConfigMap',\n  metadata: { name: 'never' },\n  data: { x: std.extVar('missing') + },\n}\n",
        "broken jsonnet",
    )?;
    let source = |path: &str, jsonnet: &str| {
        format!(
            "  source:\n    repoURL: {}\n    path: {path}\n    directory:\n      jsonnet:\n{jsonnet}",
            fleet.repo.url()
        )
    };
    fleet.repo.commit_file(
        "apps/jsonnet-broken.yaml",
        &application(
            "jsonnet-broken",
            "broken",
            &source("jsonnet/broken", "        extVars: []\n"),
        ),
        "broken app",
    )?;
    let commit = fleet.repo.commit_file(
        "apps/jsonnet-guestbook.yaml",
        &application(
            "jsonnet-guestbook",
            "jsonnet",
            &source(
                "jsonnet/guestbook",
                "        extVars:\n        - name: env\n          value: prod-$ARGOCD_APP_NAME\n        tlas:\n        - name: replicas\n          value: \"2\"\n          code: true\n",
            ),
        ),
        "jsonnet app",
    )?;
    fleet
        .wait_synced("jsonnet-guestbook", CLUSTER, &commit, CONVERGE)
        .await?;
    let deployment = fleet
        .kubectl_get(CLUSTER, "deployment", "jsonnet", "jsonnet-guestbook")?
        .ok_or_else(|| anyhow::anyhow!("deployment missing"))?;
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "the TLA reached the cluster"
    );
    assert_eq!(
        deployment["metadata"]["labels"]["env"], "prod-jsonnet-guestbook",
        "the extVar, with $ARGOCD_APP_NAME substituted"
    );
    fleet
        .kubectl_get(CLUSTER, "service", "jsonnet", "jsonnet-guestbook")?
        .ok_or_else(|| anyhow::anyhow!("service missing"))?;

    // The broken application shows the evaluator's error with file and
    // line, and nothing of it reaches the cluster.
    let error = eventually("the jsonnet error on the app", CONVERGE, || async {
        let out = fleet
            .cli(&[
                "app".into(),
                "get".into(),
                "jsonnet-broken".into(),
                "-o".into(),
                "json".into(),
            ])
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let error = v["error"].as_str().unwrap_or_default().to_owned();
        if error.is_empty() {
            Err(format!("no error yet: {v}"))
        } else {
            Ok(error)
        }
    })
    .await?;
    assert!(
        error.starts_with("jsonnet/broken/broken.jsonnet: jsonnet: ")
            && error.contains("jsonnet/broken/broken.jsonnet:5"),
        "{error}"
    );
    assert!(
        fleet
            .kubectl_get(CLUSTER, "configmap", "broken", "never")?
            .is_none(),
        "nothing of the broken app is applied"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_source_application() -> anyhow::Result<()> {
    let fleet = one_cluster().await?;
    // A second repository with shared settings.
    let shared = flotilla_e2e::repo::ConfigRepo::from_examples(&fleet.root.path().join("shared"))?;
    let shared_commit = shared.commit_file(
        "settings/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared-settings\ndata:\n  from: shared\n",
        "shared settings",
    )?;
    fleet.repo.commit_file(
        "multi/app.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-settings\ndata:\n  from: config\n",
        "app settings",
    )?;
    let commit = fleet.repo.commit_file(
        "apps/multi.yaml",
        &application(
            "multi",
            "multi",
            &format!(
                "  sources:\n  - repoURL: {}\n    path: multi\n  - repoURL: {}\n    path: settings\n    targetRevision: main\n",
                fleet.repo.url(),
                shared.url()
            ),
        ),
        "multi-source app",
    )?;
    let revision = format!("{commit},{shared_commit}");
    fleet
        .wait_synced("multi", CLUSTER, &revision, CONVERGE)
        .await?;
    for (name, from) in [("app-settings", "config"), ("shared-settings", "shared")] {
        let cm = fleet
            .kubectl_get(CLUSTER, "configmap", "multi", name)?
            .ok_or_else(|| anyhow::anyhow!("{name} missing"))?;
        assert_eq!(cm["data"]["from"], from);
    }
    let out = fleet.cli(&[
        "app".into(),
        "get".into(),
        "multi".into(),
        "-o".into(),
        "json".into(),
    ])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["revisions"], serde_json::json!([commit, shared_commit]));
    assert_eq!(v["sources"][1]["repoURL"], shared.url());
    assert_eq!(v["error"], "");

    // A change in the second repository alone moves the application.
    let next = shared.commit_file(
        "settings/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared-settings\ndata:\n  from: shared-two\n",
        "shared settings two",
    )?;
    fleet
        .wait_synced("multi", CLUSTER, &format!("{commit},{next}"), CONVERGE)
        .await?;
    let cm = fleet
        .kubectl_get(CLUSTER, "configmap", "multi", "shared-settings")?
        .ok_or_else(|| anyhow::anyhow!("shared-settings missing"))?;
    assert_eq!(cm["data"]["from"], "shared-two");
    Ok(())
}
