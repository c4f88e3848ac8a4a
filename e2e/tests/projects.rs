//! tenancy: AppProjects enforced by the hub, end to end (hub → agents →
//! simulator, kubectl observing). Two teams' projects on a shared fleet,
//! declared in Git next to their Applications. Team A's applications that
//! render a ClusterRoleBinding, put an object in team B's namespace, target
//! a cluster outside team A's destinations or use a repository outside its
//! sourceRepos are refused with a condition naming the rule, and nothing
//! of them reaches a cluster; an application naming a project that does
//! not exist is not deployed; team A's and team B's permitted applications
//! deploy. The agent's own check of a crafted bundle is in
//! `agent/tests/project.rs`.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};

const CONVERGE: Duration = Duration::from_secs(120);

fn projects(repo: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: team-a
spec:
  description: team A, on sim-1 only
  sourceRepos:
  - {repo}
  destinations:
  - name: sim-1
    namespace: team-a
---
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: team-b
spec:
  sourceRepos:
  - '*'
  destinations:
  - name: '*'
    namespace: team-b
  namespaceResourceWhitelist:
  - group: ''
    kind: ConfigMap
"
    )
}

fn application(
    name: &str,
    project: &str,
    repo: &str,
    path: &str,
    cluster: &str,
    ns: &str,
) -> String {
    format!(
        "---
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  project: {project}
  source:
    repoURL: {repo}
    path: {path}
  destination:
    name: {cluster}
    namespace: {ns}
  syncPolicy:
    automated:
      prune: true
    syncOptions:
    - CreateNamespace=true
"
    )
}

fn config_map(name: &str, namespace: Option<&str>) -> String {
    let ns = namespace.map_or(String::new(), |n| format!("  namespace: {n}\n"));
    format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n{ns}data:\n  team: a\n"
    )
}

const ROOT_BINDING: &str = "---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: team-a-root
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- kind: ServiceAccount
  name: default
  namespace: team-a
";

/// Waits until the hub shows `app`'s error containing every `parts`.
async fn refused(fleet: &Fleet, app: &str, parts: &[&str]) -> anyhow::Result<String> {
    eventually(&format!("{app} refused"), CONVERGE, || async {
        let a = fleet.app(app).await.map_err(|e| e.to_string())?;
        if parts.iter().all(|p| a.error.contains(p)) {
            Ok(a.error)
        } else {
            Err(format!("error is {:?}", a.error))
        }
    })
    .await
}

fn absent(fleet: &Fleet, cluster: &str, kind: &str, ns: &str, name: &str) -> anyhow::Result<()> {
    if let Some(o) = fleet.kubectl_get(cluster, kind, ns, name)? {
        anyhow::bail!("{kind} {ns}/{name} reached {cluster}: {o}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projects_fence_team_applications_on_a_shared_fleet() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 2,
        ..Default::default()
    })
    .await?;
    let repo = fleet.repo.url();
    let a = |name: &str, project: &str, path: &str, cluster: &str, ns: &str| {
        application(name, project, &repo, path, cluster, ns)
    };
    let team_a_apps = [
        a("a-good", "team-a", "team-a/good", "sim-1", "team-a"),
        a("a-root", "team-a", "team-a/root", "sim-1", "team-a"),
        a("a-into-b", "team-a", "team-a/into-b", "sim-1", "team-a"),
        a("a-on-sim-2", "team-a", "team-a/good", "sim-2", "team-a"),
        a("a-no-project", "team-z", "team-a/lost", "sim-2", "lost"),
        application(
            "a-foreign-repo",
            "team-a",
            "https://git.invalid/elsewhere/apps.git",
            "x",
            "sim-1",
            "team-a",
        ),
    ]
    .concat();
    let commit = fleet.repo.commit_files(
        &[
            ("apps/projects.yaml", &projects(&repo)),
            ("apps/team-a.yaml", &team_a_apps),
            (
                "apps/team-b.yaml",
                &a("b-good", "team-b", "team-b", "sim-1", "team-b"),
            ),
            ("team-a/good/cm.yaml", &config_map("team-a-settings", None)),
            (
                "team-a/root/all.yaml",
                &format!("{}{ROOT_BINDING}", config_map("root-settings", None)),
            ),
            (
                "team-a/into-b/cm.yaml",
                &config_map("planted", Some("team-b")),
            ),
            ("team-a/lost/cm.yaml", &config_map("lost", None)),
            ("team-b/cm.yaml", &config_map("team-b-settings", None)),
        ],
        "two teams",
    )?;

    // What the projects permit deploys.
    fleet
        .wait_synced("a-good", "sim-1", &commit, CONVERGE)
        .await?;
    fleet
        .wait_synced("b-good", "sim-1", &commit, CONVERGE)
        .await?;
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "team-a", "team-a-settings")?
            .is_some()
    );

    // The rest is refused, naming the rule, in Argo CD's words.
    refused(
        &fleet,
        "a-root",
        &[
            "InvalidSpecError",
            "ClusterRoleBinding/team-a-root: resource rbac.authorization.k8s.io:ClusterRoleBinding is not permitted in project team-a",
        ],
    )
    .await?;
    refused(
        &fleet,
        "a-into-b",
        &["ConfigMap/planted: namespace team-b is not permitted in project 'team-a'"],
    )
    .await?;
    refused(
        &fleet,
        "a-on-sim-2",
        &["application destination name 'sim-2' and namespace 'team-a' do not match any of the allowed destinations in project 'team-a'"],
    )
    .await?;
    refused(
        &fleet,
        "a-no-project",
        &["Application referencing project team-z which does not exist"],
    )
    .await?;
    // Refused before any fetch: the error is the project's, not a fetch
    // failure of the unreachable host.
    let e = refused(
        &fleet,
        "a-foreign-repo",
        &["application repo https://git.invalid/elsewhere/apps.git is not permitted in project 'team-a'"],
    )
    .await?;
    assert!(!e.contains("fetch"), "{e}");

    // Nothing of them reached a cluster (kubectl against the simulator).
    absent(
        &fleet,
        "sim-1",
        "clusterrolebinding",
        "default",
        "team-a-root",
    )?;
    absent(&fleet, "sim-1", "configmap", "team-a", "root-settings")?;
    absent(&fleet, "sim-1", "configmap", "team-b", "planted")?;
    absent(&fleet, "sim-2", "configmap", "team-a", "team-a-settings")?;
    absent(&fleet, "sim-2", "configmap", "lost", "lost")?;
    absent(&fleet, "sim-2", "namespace", "default", "lost")?;

    // The projects are listed, with the applications that name them.
    let list: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["proj", "list", "-o", "json"])?)?;
    let names: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["default", "team-a", "team-b"], "{list}");
    let team_a = list[1]["applications"].to_string();
    assert!(
        team_a.contains("a-root") && !team_a.contains("b-good"),
        "{team_a}"
    );
    // A project in use is not deleted.
    let out = fleet.cli(&["proj".into(), "delete".into(), "team-a".into()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("referenced by"),
        "{err}"
    );

    // Widening team A's destinations through the CLI lets the application
    // on sim-2 deploy (it was refused for the destination alone).
    fleet.cli_ok(&[
        "proj",
        "add-destination",
        "team-a",
        "sim-2",
        "team-a",
        "--name",
    ])?;
    fleet
        .wait_synced("a-on-sim-2", "sim-2", &commit, CONVERGE)
        .await?;
    assert!(
        fleet
            .kubectl_get("sim-2", "configmap", "team-a", "team-a-settings")?
            .is_some()
    );
    // The others stay refused.
    absent(
        &fleet,
        "sim-1",
        "clusterrolebinding",
        "default",
        "team-a-root",
    )?;
    Ok(())
}
