//! ApplicationSets end to end: a `clusters` generator selecting env=prod;
//! labelling clusters with the `flotilla` CLI makes their applications
//! appear and sync (kubectl sees the objects), removing the label removes
//! the application and prunes its objects, removing another within the
//! deletion budget's window is held until confirmed, and a generator error
//! (Git unreachable) deletes nothing.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions, ProcessOptions};
use flotilla_e2e::http::get_ok as http_get;
use flotilla_e2e::repo::ConfigRepo;

const CONVERGE: Duration = Duration::from_secs(90);

fn cli(fleet: &Fleet, args: &[&str]) -> anyhow::Result<String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = fleet.cli(&args)?;
    anyhow::ensure!(
        out.status.success(),
        "flotilla {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn appset_json(fleet: &Fleet, name: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&cli(
        fleet,
        &["appset", "get", name, "-o", "json"],
    )?)?)
}

fn marker(fleet: &Fleet, cluster: &str, name: &str) -> anyhow::Result<bool> {
    Ok(fleet
        .kubectl_get(cluster, "configmap", "default", name)?
        .is_some())
}

async fn wait_marker(
    fleet: &Fleet,
    cluster: &str,
    name: &str,
    present: bool,
) -> anyhow::Result<()> {
    eventually(
        &format!("configmap {name} present={present} on {cluster}"),
        CONVERGE,
        || async {
            match marker(fleet, cluster, name) {
                Ok(p) if p == present => Ok(()),
                Ok(p) => Err(format!("present={p}")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

fn evaluations(fleet: &Fleet, set: &str) -> anyhow::Result<u64> {
    appset_json(fleet, set)?["evaluations"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no evaluations in `appset get {set}`"))
}

/// Kicks passes (`flotilla refresh`) until `set` has been evaluated twice
/// more than when called. Evaluations are counted once their plan is
/// applied and passes never overlap, so the second one started after this
/// call: the hub has seen and acted upon whatever changed before it.
async fn two_more_evaluations(fleet: &Fleet, set: &str) -> anyhow::Result<serde_json::Value> {
    let from = evaluations(fleet, set)?;
    eventually(
        &format!("two more evaluations of {set} (after {from})"),
        CONVERGE,
        || async {
            cli(fleet, &["refresh"]).map_err(|e| e.to_string())?;
            let s = appset_json(fleet, set).map_err(|e| e.to_string())?;
            match s["evaluations"].as_u64() {
                Some(n) if n >= from + 2 => Ok(s),
                n => Err(format!("evaluations {n:?}")),
            }
        },
    )
    .await
}

/// Waits until `cluster`'s agent has finished a pass (pruning included)
/// over the desired state the hub holds for it now, or a later one.
async fn wait_agent_caught_up(fleet: &Fleet, cluster: &str) -> anyhow::Result<()> {
    let clusters: serde_json::Value =
        serde_json::from_str(&cli(fleet, &["cluster", "list", "-o", "json"])?)?;
    let generation = clusters
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == cluster))
        .and_then(|c| c["generation"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no generation of {cluster} in {clusters}"))?;
    let base = fleet
        .agent_health_base(cluster)
        .ok_or_else(|| anyhow::anyhow!("agent {cluster} printed no health address"))?;
    eventually(
        &format!("agent {cluster} enforcing generation {generation}"),
        CONVERGE,
        || async {
            let text = http_get(&base, "/metrics")?;
            let enforced = text
                .lines()
                .find_map(|l| l.strip_prefix("flotilla_agent_desired_generation "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            match enforced {
                Some(g) if g >= generation as f64 => Ok(()),
                g => Err(format!("enforced generation {g:?}")),
            }
        },
    )
    .await
}

async fn wait_apps(fleet: &Fleet, set: &str, want: &[&str]) -> anyhow::Result<()> {
    eventually(&format!("{set} generates {want:?}"), CONVERGE, || async {
        let s = appset_json(fleet, set).map_err(|e| e.to_string())?;
        let apps: Vec<&str> = s["applications"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if apps == want {
            Ok(())
        } else {
            Err(format!("{apps:?}; conditions {}", s["conditions"]))
        }
    })
    .await
}

fn prod_set(repo_url: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: prod-marker
spec:
  generators:
  - clusters:
      selector:
        matchLabels:
          env: prod
  template:
    metadata:
      name: 'prod-marker-{{{{name}}}}'
    spec:
      project: default
      source:
        repoURL: {repo_url}
        targetRevision: HEAD
        path: prod-marker
      destination:
        name: '{{{{name}}}}'
        namespace: default
      syncPolicy:
        automated:
          prune: true
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_labels_drive_an_application_set() -> anyhow::Result<()> {
    let fleet = Fleet::start_with(
        FleetOptions::default(),
        ProcessOptions {
            agent_args: vec!["--health-listen".into(), "127.0.0.1:0".into()],
            ..ProcessOptions::default()
        },
    )
    .await?;
    let head = fleet.repo.commit_file(
        "prod-marker/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: prod-marker\ndata:\n  tier: prod\n",
        "prod marker",
    )?;
    let set_file = fleet.root.path().join("prod-set.yaml");
    std::fs::write(&set_file, prod_set(&fleet.repo.url()))?;
    let set_path = set_file.display().to_string();
    cli(&fleet, &["appset", "create", "-f", &set_path])?;
    wait_apps(&fleet, "prod-marker", &[]).await?;

    // Two clusters become prod: their applications appear and sync.
    cli(&fleet, &["cluster", "label", "sim-1", "env=prod"])?;
    cli(&fleet, &["cluster", "label", "sim-2", "env=prod"])?;
    wait_apps(
        &fleet,
        "prod-marker",
        &["prod-marker-sim-1", "prod-marker-sim-2"],
    )
    .await?;
    for c in ["sim-1", "sim-2"] {
        fleet
            .wait_synced(&format!("prod-marker-{c}"), c, &head, CONVERGE)
            .await?;
        wait_marker(&fleet, c, "prod-marker", true).await?;
    }
    assert!(!marker(&fleet, "sim-3", "prod-marker")?);

    // A third one.
    cli(&fleet, &["cluster", "label", "sim-3", "env=prod"])?;
    wait_apps(
        &fleet,
        "prod-marker",
        &[
            "prod-marker-sim-1",
            "prod-marker-sim-2",
            "prod-marker-sim-3",
        ],
    )
    .await?;
    fleet
        .wait_synced("prod-marker-sim-3", "sim-3", &head, CONVERGE)
        .await?;
    wait_marker(&fleet, "sim-3", "prod-marker", true).await?;
    let list = cli(&fleet, &["appset", "list"])?;
    assert!(list.contains("prod-marker"), "{list}");

    // The label goes: the application is deleted and, with prune, its
    // objects too (as Argo CD does with the resources finalizer).
    cli(&fleet, &["cluster", "label", "sim-3", "env-"])?;
    wait_apps(
        &fleet,
        "prod-marker",
        &["prod-marker-sim-1", "prod-marker-sim-2"],
    )
    .await?;
    wait_marker(&fleet, "sim-3", "prod-marker", false).await?;
    assert!(marker(&fleet, "sim-1", "prod-marker")?);

    // With preserveResourcesOnDeletion the application goes, its objects
    // stay.
    let preserving = prod_set(&fleet.repo.url()).replace(
        "  template:\n",
        "  syncPolicy:\n    preserveResourcesOnDeletion: true\n  template:\n",
    );
    std::fs::write(&set_file, preserving)?;
    let out = cli(
        &fleet,
        &[
            "appset", "create", "-f", &set_path, "--upsert", "-o", "json",
        ],
    )?;
    assert!(
        out.contains("\"preserveResourcesOnDeletion\": true"),
        "{out}"
    );
    // Removing a second cluster within the hour makes 2 of the 3 the set
    // had: over the deletion budget's window, so it is held (and still
    // listed) until confirmed, however slowly the clusters go one by one.
    cli(&fleet, &["cluster", "label", "sim-2", "env-"])?;
    eventually("prod-marker-sim-2 held", CONVERGE, || async {
        let s = appset_json(&fleet, "prod-marker").map_err(|e| e.to_string())?;
        if s["pendingDeletions"] == serde_json::json!(["prod-marker-sim-2"]) {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await?;
    let s = two_more_evaluations(&fleet, "prod-marker").await?;
    assert_eq!(
        s["applications"],
        serde_json::json!(["prod-marker-sim-1", "prod-marker-sim-2"])
    );
    assert!(s["conditions"].to_string().contains("DeletionHeld"), "{s}");
    fleet.app("prod-marker-sim-2").await?;
    cli(&fleet, &["appset", "confirm", "prod-marker"])?;
    wait_apps(&fleet, "prod-marker", &["prod-marker-sim-1"]).await?;
    eventually("prod-marker-sim-2 deleted", CONVERGE, || async {
        match fleet.app("prod-marker-sim-2").await {
            Err(_) => Ok(()),
            Ok(a) => Err(format!("still there: {a:?}")),
        }
    })
    .await?;
    // The hub is done with it, and sim-2's agent has enforced a state
    // without it: had the deletion pruned, the objects would be gone now.
    two_more_evaluations(&fleet, "prod-marker").await?;
    wait_agent_caught_up(&fleet, "sim-2").await?;
    assert!(
        marker(&fleet, "sim-2", "prod-marker")?,
        "preserveResourcesOnDeletion: the objects must stay"
    );

    // A git generator whose repository becomes unreachable deletes nothing.
    let addons_dir = fleet.root.path().join("addons-repo");
    let addons = ConfigRepo::from_examples(&addons_dir)?;
    addons.commit_file(
        "addons/addon-marker/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: addon-marker\n",
        "addon",
    )?;
    let addons_set = format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: addons
spec:
  generators:
  - git:
      repoURL: {url}
      revision: HEAD
      directories:
      - path: addons/*
  template:
    metadata:
      name: '{{{{path.basename}}}}-sim-1'
    spec:
      project: default
      source:
        repoURL: {url}
        targetRevision: HEAD
        path: '{{{{path}}}}'
      destination:
        name: sim-1
        namespace: default
      syncPolicy:
        automated:
          prune: true
"#,
        url = addons.url()
    );
    let addons_file = fleet.root.path().join("addons-set.yaml");
    std::fs::write(&addons_file, addons_set)?;
    cli(
        &fleet,
        &["appset", "create", "-f", &addons_file.display().to_string()],
    )?;
    wait_apps(&fleet, "addons", &["addon-marker-sim-1"]).await?;
    wait_marker(&fleet, "sim-1", "addon-marker", true).await?;
    std::fs::rename(&addons_dir, fleet.root.path().join("addons-moved"))?;
    eventually("ErrorOccurred on addons", CONVERGE, || async {
        let s = appset_json(&fleet, "addons").map_err(|e| e.to_string())?;
        let text = s["conditions"].to_string();
        if text.contains("ErrorOccurred") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await?;
    // Later evaluations (the error reused or fetched again) delete nothing
    // either, and sim-1's agent keeps the objects.
    let s = two_more_evaluations(&fleet, "addons").await?;
    assert_eq!(s["applications"], serde_json::json!(["addon-marker-sim-1"]));
    assert_eq!(s["pendingDeletions"], serde_json::json!([]));
    fleet.app("addon-marker-sim-1").await?;
    wait_agent_caught_up(&fleet, "sim-1").await?;
    assert!(marker(&fleet, "sim-1", "addon-marker")?);
    Ok(())
}
