//! tenancy: the agent's own project check, against the simulator. A bundle
//! crafted as a compromised hub would send it (a team's application with a
//! ClusterRoleBinding and an object in another team's namespace) is
//! refused before anything is applied, each object reported; the same
//! bundle without rules (an older hub) applies as before; and prune never
//! deletes an object the project does not allow the application to own.

use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::project::ProjectRules;
use flotilla_proto::AppStatus;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use serde_json::json;

mod support;
use support::{Harness, harness, set_bundle, status};

const DEADLINE: Duration = Duration::from_secs(30);

fn team_a_rules() -> ProjectRules {
    ProjectRules::from(flotilla_proto::ProjectRules {
        project: "team-a".into(),
        source_repos: vec!["*".into()],
        destinations: vec![flotilla_proto::ProjectDestination {
            name: "*".into(),
            namespace: "team-a".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn config_map(name: &str, namespace: Option<&str>) -> String {
    let mut m = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"k": "v"}});
    if let Some(ns) = namespace {
        m["metadata"]["namespace"] = json!(ns);
    }
    m.to_string()
}

fn root_binding() -> String {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "team-a-root"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "team-a"}]})
    .to_string()
}

fn bundle(digest: &str, manifests: Vec<String>, rules: Option<ProjectRules>) -> Bundle {
    Bundle {
        name: "team-a-app".into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        namespace: "team-a".into(),
        policy: Policy {
            automated: true,
            prune: true,
            self_heal: true,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests,
        project_rules: rules,
        ..Bundle::default()
    }
}

async fn converge(h: &mut Harness, what: &str, done: impl Fn(&AppStatus) -> bool) -> AppStatus {
    let until = Instant::now() + DEADLINE;
    loop {
        h.engine.pass().await;
        if let Some(s) = status(h, "team-a-app")
            && done(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < until,
            "never {what}: {:#?}",
            status(h, "team-a-app")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn api(h: &Harness, group: &str, kind: &str, plural: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: if group.is_empty() {
            "v1".into()
        } else {
            format!("{group}/v1")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    match ns {
        Some(ns) => Api::namespaced_with(h.client.clone(), ns, &ar),
        None => Api::all_with(h.client.clone(), &ar),
    }
}

async fn exists(api: &Api<DynamicObject>, name: &str) -> bool {
    api.get_opt(name)
        .await
        .expect("read from the simulator")
        .is_some()
}

#[tokio::test]
async fn a_crafted_bundle_outside_its_project_is_refused_and_nothing_is_applied() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        bundle(
            "d1",
            vec![
                config_map("settings", None),
                root_binding(),
                config_map("spy", Some("team-b")),
            ],
            Some(team_a_rules()),
        ),
    );
    let s = converge(&mut h, "refused", |s| s.message.contains("not permitted")).await;
    assert!(
        s.message
            .contains("2 object(s) not permitted in project team-a"),
        "{}",
        s.message
    );
    let refused: Vec<(&str, &str)> = s
        .resources
        .iter()
        .map(|r| {
            (
                r.key.as_ref().map_or("", |k| k.name.as_str()),
                r.message.as_str(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (
                "team-a-root",
                "resource rbac.authorization.k8s.io:ClusterRoleBinding is not permitted in project team-a"
            ),
            (
                "spy",
                "namespace team-b is not permitted in project 'team-a'"
            ),
        ]
    );
    assert!(
        s.conditions.iter().all(|c| c.r#type == "InvalidSpecError") && s.conditions.len() == 2,
        "{:?}",
        s.conditions
    );
    // More passes change nothing: not even the permitted ConfigMap is
    // applied (the application is refused as a whole, as Argo CD fails the
    // whole sync).
    for _ in 0..3 {
        h.engine.pass().await;
    }
    let bindings = api(
        &h,
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
        None,
    );
    assert!(
        !exists(&bindings, "team-a-root").await,
        "the ClusterRoleBinding was applied"
    );
    assert!(
        !exists(
            &api(&h, "", "ConfigMap", "configmaps", Some("team-b")),
            "spy"
        )
        .await
    );
    assert!(
        !exists(
            &api(&h, "", "ConfigMap", "configmaps", Some("team-a")),
            "settings"
        )
        .await
    );
}

#[tokio::test]
async fn without_rules_an_older_hubs_bundle_applies_as_before() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        bundle(
            "d1",
            vec![config_map("settings", None), root_binding()],
            None,
        ),
    );
    converge(&mut h, "applied", |s| {
        s.last_applied_ms > 0 && s.resources.len() == 2
    })
    .await;
    let bindings = api(
        &h,
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
        None,
    );
    assert!(exists(&bindings, "team-a-root").await);
}

#[tokio::test]
async fn prune_never_deletes_an_object_the_project_does_not_allow() {
    let mut h = harness().await;
    // Applied while no rules were known (an older hub): the binding is in
    // the application's inventory.
    set_bundle(
        &h.cache,
        bundle(
            "d1",
            vec![config_map("settings", None), root_binding()],
            None,
        ),
    );
    converge(&mut h, "applied", |s| {
        s.last_applied_ms > 0 && s.resources.len() == 2
    })
    .await;
    let bindings = api(
        &h,
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
        None,
    );
    assert!(exists(&bindings, "team-a-root").await);

    // Now the project is known and the binding left the desired state:
    // a prune would delete it, but the project does not let the
    // application own it, so it stays (a cluster admin's call).
    let configs = api(&h, "", "ConfigMap", "configmaps", Some("team-a"));
    set_bundle(
        &h.cache,
        bundle(
            "d2",
            vec![config_map("settings", None), config_map("extra", None)],
            Some(team_a_rules()),
        ),
    );
    converge(&mut h, "synced at d2", |s| {
        s.digest == "d2" && s.operation.as_ref().is_some_and(|o| o.phase != "Running")
    })
    .await;
    for _ in 0..3 {
        h.engine.pass().await;
    }
    assert!(exists(&configs, "extra").await, "d2 was not applied");
    assert!(
        exists(&bindings, "team-a-root").await,
        "prune deleted an object outside the project"
    );
}
