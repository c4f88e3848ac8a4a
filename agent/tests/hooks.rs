//! Argo CD sync semantics in the engine, against the Kubernetes API
//! simulator: resource hooks in their phases, delete policies, SyncFail,
//! generateName, resuming after a restart, hook deadlines, superseded
//! operations, terminated operations, and shared resources.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::cache::Cache;
use flotilla_agent::cluster::Cluster;
use flotilla_agent::engine::Engine;
use flotilla_proto::{AppStatus, HealthStatus, OperationState, SyncStatus};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

mod support;
use support::{Harness, harness, set_bundle, status};

const DEADLINE: Duration = Duration::from_secs(40);

async fn converge(
    h: &mut Harness,
    app: &str,
    what: &str,
    done: impl Fn(&AppStatus) -> bool,
) -> AppStatus {
    let until = Instant::now() + DEADLINE;
    loop {
        h.engine.pass().await;
        if let Some(s) = status(h, app)
            && done(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < until,
            "{app} never became {what}: {:#?}",
            status(h, app)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn op(s: &AppStatus) -> OperationState {
    s.operation.clone().unwrap_or_default()
}

fn finished(phase: &str) -> impl Fn(&AppStatus) -> bool + '_ {
    move |s| op(s).phase == phase
}

fn app(name: &str, digest: &str, manifests: Vec<Value>) -> Bundle {
    Bundle {
        name: name.into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        namespace: "web".into(),
        policy: Policy {
            automated: true,
            prune: true,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: manifests.into_iter().map(|v| v.to_string()).collect(),
        ..Bundle::default()
    }
}

fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}}}})
}

/// A Job hook; `name` ending in `-` is a generateName.
fn job(name: &str, hook: &str, policy: Option<&str>, image: &str) -> Value {
    let mut j = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"annotations": {"argocd.argoproj.io/hook": hook}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": image}]}}}});
    if name.ends_with('-') {
        j["metadata"]["generateName"] = json!(name);
    } else {
        j["metadata"]["name"] = json!(name);
    }
    if let Some(p) = policy {
        j["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"] = json!(p);
    }
    j
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn jobs(h: &Harness) -> Api<DynamicObject> {
    Api::namespaced_with(
        h.client.clone(),
        "web",
        &resource("batch", "v1", "Job", "jobs"),
    )
}

fn deployments(h: &Harness) -> Api<DynamicObject> {
    Api::namespaced_with(
        h.client.clone(),
        "web",
        &resource("apps", "v1", "Deployment", "deployments"),
    )
}

fn configmaps(h: &Harness, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        h.client.clone(),
        ns,
        &resource("", "v1", "ConfigMap", "configmaps"),
    )
}

async fn job_names(h: &Harness) -> Vec<String> {
    let mut names: Vec<String> = jobs(h)
        .list(&ListParams::default())
        .await
        .expect("list jobs")
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    names.sort();
    names
}

fn rv(o: &DynamicObject) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .unwrap_or("0")
        .parse()
        .expect("numeric resourceVersion")
}

fn hook<'a>(o: &'a OperationState, phase: &str) -> &'a flotilla_proto::HookResult {
    o.hooks
        .iter()
        .find(|h| h.phase == phase)
        .unwrap_or_else(|| panic!("no {phase} hook in {o:#?}"))
}

#[tokio::test]
async fn presync_runs_first_postsync_after_health_and_hooks_are_never_resources() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                deployment("web"),
                job("migrate", "PreSync", Some("HookSucceeded"), "busybox:1"),
                job("smoke", "PostSync", Some("HookSucceeded"), "busybox:1"),
            ],
        ),
    );
    // The first pass creates the PreSync hook and nothing else.
    h.engine.pass().await;
    let s = status(&h, "web").expect("status");
    let o = op(&s);
    assert_eq!(o.phase, "Running", "{s:#?}");
    assert_eq!(o.sync_phase, "PreSync");
    assert_eq!(
        o.message, "waiting for completion of hook batch/Job/migrate",
        "{o:#?}"
    );
    assert_eq!(hook(&o, "PreSync").status, "Running");
    assert!(deployments(&h).get_opt("web").await.expect("get").is_none());
    assert_eq!(job_names(&h).await, vec!["migrate"]);
    let presync = jobs(&h).get("migrate").await.expect("presync job");
    assert_eq!(
        presync.metadata.annotations.as_ref().expect("annotations")["flotilla.dev/hook"],
        "web:batch/Job:web/migrate"
    );
    assert!(
        !presync
            .metadata
            .annotations
            .as_ref()
            .expect("annotations")
            .contains_key("flotilla.dev/tracking-id"),
        "a hook carries no tracking id"
    );
    // Watch the order in which things happen from the engine's side.
    let mut deployment_seen_while_presync_ran = false;
    let mut postsync_created_at = None;
    let until = Instant::now() + DEADLINE;
    let s = loop {
        h.engine.pass().await;
        let names = job_names(&h).await;
        let dep = deployments(&h).get_opt("web").await.expect("get");
        if let Some(j) = jobs(&h).get_opt("migrate").await.expect("get")
            && j.data["status"]["conditions"].is_null()
            && dep.is_some()
        {
            deployment_seen_while_presync_ran = true;
        }
        if postsync_created_at.is_none() && names.contains(&"smoke".to_owned()) {
            let d = dep.expect("the Deployment exists when PostSync starts");
            assert_eq!(
                d.data["status"]["availableReplicas"],
                json!(1),
                "PostSync started before the Deployment was healthy"
            );
            postsync_created_at = Some(rv(&jobs(&h).get("smoke").await.expect("smoke")));
            assert!(rv(&d) < postsync_created_at.unwrap_or(0));
        }
        let s = status(&h, "web").expect("status");
        if op(&s).phase != "Running" {
            break s;
        }
        assert!(Instant::now() < until, "never finished: {s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!deployment_seen_while_presync_ran);
    assert!(postsync_created_at.is_some(), "PostSync never ran");
    let o = op(&s);
    assert_eq!(o.phase, "Succeeded", "{s:#?}");
    assert_eq!(o.sync_phase, "PostSync");
    for phase in ["PreSync", "PostSync"] {
        let r = hook(&o, phase);
        assert_eq!(r.status, "Succeeded", "{r:?}");
        assert!(r.deleted, "{phase} hook kept despite HookSucceeded: {r:?}");
    }
    // Both deleted per HookSucceeded; neither is a resource of the app.
    assert!(job_names(&h).await.is_empty(), "{:?}", job_names(&h).await);
    let s = converge(&mut h, "web", "Synced/Healthy", |s| {
        s.sync == SyncStatus::Synced as i32 && s.health == HealthStatus::Healthy as i32
    })
    .await;
    let kinds: Vec<String> = s
        .resources
        .iter()
        .map(|r| r.key.clone().unwrap_or_default().kind)
        .collect();
    assert_eq!(kinds, vec!["Deployment"], "{s:#?}");
    let inventory = &h.cache.snapshot().apps["web"].inventory;
    assert!(inventory.iter().all(|k| k.kind != "Job"), "{inventory:?}");
    assert!(h.cache.snapshot().apps["web"].operation.is_none());
}

#[tokio::test]
async fn failed_presync_hook_stops_the_sync_and_runs_syncfail_hooks() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                deployment("web"),
                job("check", "PreSync", Some("HookFailed"), "busybox:fail"),
                job("rollback-note", "SyncFail", None, "busybox:1"),
                job("smoke", "PostSync", None, "busybox:1"),
            ],
        ),
    );
    let s = converge(&mut h, "web", "Failed", finished("Failed")).await;
    let o = op(&s);
    assert!(
        o.message.starts_with(
            "PreSync hook batch/Job web/check failed: Job has reached the specified backoff limit"
        ),
        "{}",
        o.message
    );
    assert_eq!(o.sync_phase, "SyncFail");
    assert_eq!(hook(&o, "SyncFail").status, "Succeeded");
    assert!(hook(&o, "PreSync").deleted, "HookFailed hook kept");
    // Nothing else was touched: no Deployment, no PostSync hook; the
    // SyncFail hook ran and stays (BeforeHookCreation by default).
    assert!(deployments(&h).get_opt("web").await.expect("get").is_none());
    assert_eq!(job_names(&h).await, vec!["rollback-note"]);
    assert!(o.hooks.iter().all(|r| r.phase != "PostSync"));
    assert_eq!(s.message, o.message);
}

#[tokio::test]
async fn generate_name_hooks_are_created_anew_on_every_sync() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                deployment("web"),
                job("report-", "PostSync", None, "busybox:1"),
            ],
        ),
    );
    let s = converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
    let first = hook(&op(&s), "PostSync")
        .key
        .clone()
        .unwrap_or_default()
        .name;
    assert!(first.starts_with("report-") && first.len() == "report-".len() + 5);
    assert_eq!(job_names(&h).await, vec![first.clone()]);
    // A sync request runs the hooks again: a new name, the previous one
    // deleted first (BeforeHookCreation, the default).
    h.engine.sync_requests().lock().expect("lock").insert(
        "web".into(),
        flotilla_agent::engine::SyncRequest {
            command_id: "c2".into(),
            ..Default::default()
        },
    );
    let s = converge(&mut h, "web", "second sync Succeeded", |s| {
        let o = op(s);
        o.command_id == "c2" && o.phase == "Succeeded"
    })
    .await;
    let second = hook(&op(&s), "PostSync")
        .key
        .clone()
        .unwrap_or_default()
        .name;
    assert_ne!(first, second);
    assert_eq!(job_names(&h).await, vec![second]);
}

#[tokio::test]
async fn generate_name_on_a_resource_is_refused_naming_the_object() {
    let mut h = harness().await;
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"generateName": "settings-"}, "data": {"k": "v"}});
    let named = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}});
    set_bundle(&h.cache, app("web", "d1", vec![named.clone(), cm.clone()]));
    let s = converge(&mut h, "web", "refused", |s| {
        s.sync == SyncStatus::Unknown as i32
    })
    .await;
    assert_eq!(
        s.message,
        "/ConfigMap settings-: from settings-: cannot use generate name with apply (metadata.generateName is only supported for hooks)"
    );
    // Nothing of it was applied.
    assert!(
        configmaps(&h, "web")
            .get_opt("other")
            .await
            .expect("get")
            .is_none()
    );
    // As a hook it is fine.
    cm["metadata"]["annotations"] = json!({"argocd.argoproj.io/hook": "Sync"});
    set_bundle(&h.cache, app("web", "d2", vec![named, cm]));
    converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
    let cms = configmaps(&h, "web")
        .list(&ListParams::default())
        .await
        .expect("list");
    let names: Vec<String> = cms
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(names.contains(&"other".to_owned()), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("settings-")),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_restarted_agent_resumes_without_rerunning_a_finished_phase() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                deployment("web"),
                job("pre-", "PreSync", Some("HookFailed"), "busybox:1"),
                job("post-", "PostSync", Some("HookFailed"), "busybox:1"),
            ],
        ),
    );
    // Run until the PostSync hook runs (PreSync finished), then restart.
    converge(&mut h, "web", "in PostSync", |s| {
        op(s).phase == "Running" && op(s).sync_phase == "PostSync"
    })
    .await;
    let persisted = h.cache.snapshot().apps["web"]
        .operation
        .clone()
        .expect("the running operation is persisted");
    assert_eq!(persisted.hooks.len(), 2);
    let state = h.dir.path().join("state");
    let (tx, reports) = watch::channel(None);
    let cache = Arc::new(Cache::open(&state).expect("reopen cache"));
    h.engine = Engine::new(
        Arc::new(Cluster::new(h.client.clone())),
        cache.clone(),
        Arc::new(Notify::new()),
        tx,
    );
    h.reports = reports;
    h.cache = cache;
    let s = converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
    let o = op(&s);
    assert_eq!(o.hooks.len(), 2, "{o:#?}");
    assert_eq!(
        o.started_ms, persisted.started_ms,
        "a new operation started"
    );
    // One PreSync and one PostSync Job ever (kept by HookFailed).
    let names = job_names(&h).await;
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("pre-")).count(), 1);
}

#[tokio::test]
async fn a_hook_that_never_finishes_is_deleted_at_its_deadline() {
    let mut h = harness().await;
    let (tx, reports) = watch::channel(None);
    h.engine = Engine::new(
        Arc::new(Cluster::new(h.client.clone())),
        h.cache.clone(),
        Arc::new(Notify::new()),
        tx,
    )
    .with_hook_timeout(Duration::from_secs(3));
    h.reports = reports;
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                deployment("web"),
                job("wait", "PreSync", None, "busybox:never-ready"),
            ],
        ),
    );
    let s = converge(&mut h, "web", "Failed", finished("Failed")).await;
    let o = op(&s);
    assert_eq!(
        o.message, "waiting for completion of hook batch/Job/wait: not finished within 3s",
        "{o:#?}"
    );
    assert_eq!(hook(&o, "PreSync").status, "Terminating");
    assert!(job_names(&h).await.is_empty());
    assert!(deployments(&h).get_opt("web").await.expect("get").is_none());
}

#[tokio::test]
async fn a_new_desired_state_ends_the_running_operation_and_its_hooks() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                deployment("web"),
                job("wait", "PreSync", None, "busybox:never-ready"),
            ],
        ),
    );
    converge(&mut h, "web", "waiting on the hook", |s| {
        op(s).phase == "Running" && op(s).hooks.len() == 1
    })
    .await;
    assert_eq!(job_names(&h).await, vec!["wait"]);
    // The fix arrives from Git: the hook is gone from the desired state.
    set_bundle(&h.cache, app("web", "d2", vec![deployment("web")]));
    converge(&mut h, "web", "Synced/Healthy", |s| {
        s.sync == SyncStatus::Synced as i32 && op(s).phase == "Succeeded"
    })
    .await;
    assert!(job_names(&h).await.is_empty(), "the old hook still runs");
}

#[tokio::test]
async fn a_job_applied_before_it_became_a_hook_is_replaced_not_pruned() {
    let mut h = harness().await;
    let mut migrate = job("migrate", "PreSync", Some("HookSucceeded"), "busybox:1");
    if let Some(a) = migrate["metadata"]["annotations"].as_object_mut() {
        a.clear();
    }
    // An older agent applied the Job as an ordinary resource.
    set_bundle(
        &h.cache,
        app("web", "d1", vec![deployment("web"), migrate.clone()]),
    );
    converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
    let before = jobs(&h).get("migrate").await.expect("job");
    // Now it is a PreSync hook (with another image: its template is
    // immutable, applying it would fail forever).
    let mut hooked = job("migrate", "PreSync", Some("HookSucceeded"), "busybox:2");
    hooked["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
    set_bundle(&h.cache, app("web", "d2", vec![deployment("web"), hooked]));
    let s = converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
    let o = op(&s);
    let r = hook(&o, "PreSync");
    assert_eq!(r.status, "Succeeded", "{o:#?}");
    assert!(r.deleted);
    assert!(jobs(&h).get_opt("migrate").await.expect("get").is_none());
    assert!(before.metadata.uid.is_some());
    let inventory = &h.cache.snapshot().apps["web"].inventory;
    assert!(inventory.iter().all(|k| k.kind != "Job"), "{inventory:?}");
}

#[tokio::test]
async fn helm_hooks_run_in_their_argo_cd_phases_and_test_hooks_are_not_applied() {
    let mut h = harness().await;
    let mut pre = job("db-init", "x", None, "busybox:1");
    pre["metadata"]["annotations"] = json!({"helm.sh/hook": "pre-install,pre-upgrade",
        "helm.sh/hook-weight": "-5", "helm.sh/hook-delete-policy": "hook-succeeded"});
    let mut test = job("chart-test", "x", None, "busybox:1");
    test["metadata"]["annotations"] = json!({"helm.sh/hook": "test"});
    set_bundle(
        &h.cache,
        app("web", "d1", vec![deployment("web"), pre, test]),
    );
    h.engine.pass().await;
    assert_eq!(job_names(&h).await, vec!["db-init"]);
    let s = converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
    let o = op(&s);
    assert_eq!(o.hooks.len(), 1, "{o:#?}");
    assert!(hook(&o, "PreSync").deleted);
    assert!(job_names(&h).await.is_empty());
    assert_eq!(s.resources.len(), 1, "{s:#?}");
}

#[tokio::test]
async fn shared_resources_warn_fail_on_request_and_are_never_pruned_by_the_other_app() {
    let mut h = harness().await;
    let ns =
        |name: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let cm = |name: &str, v: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "shared"}, "data": {"v": v}})
    };
    set_bundle(
        &h.cache,
        app("team-a", "a1", vec![ns("shared"), cm("a", "1")]),
    );
    converge(&mut h, "team-a", "Succeeded", finished("Succeeded")).await;
    // A second application declares the same Namespace.
    set_bundle(
        &h.cache,
        app("team-b", "b1", vec![ns("shared"), cm("b", "1")]),
    );
    let s = converge(&mut h, "team-b", "Succeeded", finished("Succeeded")).await;
    assert_eq!(s.conditions.len(), 1, "{s:#?}");
    assert_eq!(s.conditions[0].r#type, "SharedResourceWarning");
    assert_eq!(
        s.conditions[0].message,
        "Namespace/shared is part of applications team-b and team-a"
    );
    let namespaces = Api::<DynamicObject>::all_with(
        h.client.clone(),
        &resource("", "v1", "Namespace", "namespaces"),
    );
    let live = namespaces.get("shared").await.expect("namespace");
    assert_eq!(
        live.metadata.annotations.as_ref().expect("annotations")["flotilla.dev/tracking-id"],
        "team-a:/Namespace:/shared",
        "the second application took the Namespace over"
    );
    // With FailOnSharedResource the sync fails and applies nothing.
    let mut strict = app("team-c", "c1", vec![ns("shared"), cm("c", "1")]);
    strict
        .policy
        .sync_options
        .push("FailOnSharedResource=true".into());
    set_bundle(&h.cache, strict);
    let s = converge(&mut h, "team-c", "Failed", finished("Failed")).await;
    assert_eq!(
        op(&s).message,
        "Shared resource found: Namespace/shared is part of applications team-c and team-a"
    );
    assert!(
        configmaps(&h, "shared")
            .get_opt("c")
            .await
            .expect("get")
            .is_none()
    );
    // team-b stops being desired (e.g. no longer generated): its own
    // ConfigMap is pruned, the Namespace team-a owns stays.
    h.cache
        .update(|s| {
            let index = ["team-a", "team-c"]
                .iter()
                .map(|n| flotilla_proto::AppRef {
                    name: (*n).into(),
                    digest: s.apps[*n].bundle.digest.clone(),
                    ..Default::default()
                })
                .collect();
            s.merge(flotilla_proto::DesiredState {
                generation: s.generation + 1,
                index,
                ..Default::default()
            })
            .expect("merge");
        })
        .expect("update");
    let until = Instant::now() + DEADLINE;
    while configmaps(&h, "shared")
        .get_opt("b")
        .await
        .expect("get")
        .is_some()
    {
        assert!(Instant::now() < until, "team-b's ConfigMap never pruned");
        h.engine.pass().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(namespaces.get_opt("shared").await.expect("get").is_some());
    assert!(
        configmaps(&h, "shared")
            .get_opt("a")
            .await
            .expect("get")
            .is_some()
    );
}

/// Takes `app` out of the desired state, as the link does when the hub's
/// index no longer lists it.
fn remove_from_index(h: &Harness, app: &str) {
    h.cache
        .update(|s| {
            let index = s
                .apps
                .iter()
                .filter(|(name, _)| name.as_str() != app)
                .map(|(name, a)| flotilla_proto::AppRef {
                    name: name.clone(),
                    digest: a.bundle.digest.clone(),
                    ..Default::default()
                })
                .collect();
            s.merge(flotilla_proto::DesiredState {
                generation: s.generation + 1,
                index,
                ..Default::default()
            })
            .expect("merge");
        })
        .expect("update");
}

#[tokio::test]
async fn a_removed_application_runs_predelete_prunes_then_runs_postdelete() {
    let mut h = harness().await;
    let data = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data"}});
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                data,
                job("before", "PreDelete", Some("HookSucceeded"), "busybox:1"),
                job("after", "PostDelete", Some("HookSucceeded"), "busybox:1"),
                job("notify-", "PostDelete", None, "busybox:1"),
                job("left", "PostSync", None, "busybox:1"),
            ],
        ),
    );
    converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
    // Deletion hooks do not run in a sync; the PostSync hook stays.
    assert_eq!(job_names(&h).await, vec!["left"]);
    remove_from_index(&h, "web");
    h.engine.pass().await;
    assert_eq!(job_names(&h).await, vec!["before", "left"]);
    assert!(
        configmaps(&h, "web")
            .get_opt("data")
            .await
            .expect("get")
            .is_some()
    );
    let until = Instant::now() + DEADLINE;
    let mut before_finished = false;
    while h.cache.snapshot().removed.contains_key("web") {
        let names = job_names(&h).await;
        let data_left = configmaps(&h, "web")
            .get_opt("data")
            .await
            .expect("get")
            .is_some();
        if let Some(j) = jobs(&h).get_opt("before").await.expect("get")
            && !j.data["status"]["conditions"].is_null()
        {
            before_finished = true;
        }
        assert!(
            data_left || before_finished || !names.contains(&"before".to_owned()),
            "pruned before the PreDelete hook finished"
        );
        assert!(
            !data_left
                || !names
                    .iter()
                    .any(|n| n == "after" || n.starts_with("notify-")),
            "PostDelete ran before the objects were gone: {names:?}"
        );
        assert!(
            Instant::now() < until,
            "removal never finished: {:#?}",
            h.cache.snapshot().removed
        );
        h.engine.pass().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        configmaps(&h, "web")
            .get_opt("data")
            .await
            .expect("get")
            .is_none()
    );
    // HookSucceeded deletion hooks and the sync hook's leftover are gone;
    // the PostDelete hook without a policy stays, as in Argo CD.
    let names = job_names(&h).await;
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("notify-"), "{names:?}");
}

#[tokio::test]
async fn a_dry_run_lists_hooks_as_created_and_creates_nothing() {
    let mut h = harness().await;
    let mut bundle = app(
        "web",
        "d1",
        vec![
            deployment("web"),
            job("migrate-", "PreSync", None, "busybox:1"),
            job("cleanup", "SyncFail", None, "busybox:1"),
        ],
    );
    bundle.policy.automated = false;
    set_bundle(&h.cache, bundle);
    let (reply, answer) = tokio::sync::oneshot::channel();
    h.engine.sync_requests().lock().expect("lock").insert(
        "web".into(),
        flotilla_agent::engine::SyncRequest {
            dry_run: true,
            command_id: "d".into(),
            reply: Some(reply),
            ..Default::default()
        },
    );
    h.engine.pass().await;
    let result = answer.await.expect("answered");
    let rows: Vec<(String, String, String)> = result
        .resources
        .iter()
        .map(|r| {
            let k = r.key.clone().unwrap_or_default();
            (k.name, r.action.clone(), r.message.clone())
        })
        .collect();
    assert!(
        rows.contains(&(
            "migrate-".into(),
            "created".into(),
            "PreSync hook, created when the sync runs".into()
        )),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(
            "cleanup".into(),
            "created".into(),
            "SyncFail hook, created if the sync fails".into()
        )),
        "{rows:?}"
    );
    assert!(job_names(&h).await.is_empty());
}

#[tokio::test]
async fn a_hook_created_just_before_a_crash_is_found_not_created_twice() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                deployment("web"),
                job("pre-", "PreSync", Some("HookFailed"), "busybox:1"),
            ],
        ),
    );
    h.engine.pass().await;
    let created = job_names(&h).await;
    assert_eq!(created.len(), 1, "{created:?}");
    // The agent dies after creating the hook but before it recorded that:
    // the saved operation has not applied the step and knows no hook.
    h.cache
        .update(|s| {
            if let Some(op) = s.apps.get_mut("web").and_then(|a| a.operation.as_mut()) {
                op.applied = 0;
                op.hooks.clear();
            }
        })
        .expect("update");
    let state = h.dir.path().join("state");
    let (tx, reports) = watch::channel(None);
    let cache = Arc::new(Cache::open(&state).expect("reopen cache"));
    h.engine = Engine::new(
        Arc::new(Cluster::new(h.client.clone())),
        cache.clone(),
        Arc::new(Notify::new()),
        tx,
    );
    h.reports = reports;
    h.cache = cache;
    let s = converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
    let o = op(&s);
    let r = hook(&o, "PreSync");
    assert_eq!(r.key.clone().unwrap_or_default().name, created[0]);
    assert_eq!(job_names(&h).await, created, "a second PreSync Job");
}

#[tokio::test]
async fn a_terminated_operation_is_marked_terminating_then_ends_failed_and_is_not_retried() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        app(
            "web",
            "d1",
            vec![
                deployment("web"),
                job(
                    "wait",
                    "PreSync",
                    Some("HookSucceeded"),
                    "busybox:never-ready",
                ),
            ],
        ),
    );
    let running = converge(&mut h, "web", "waiting on the hook", |s| {
        op(s).phase == "Running" && op(s).hooks.len() == 1
    })
    .await;
    let started_ms = op(&running).started_ms;
    h.engine
        .terminations()
        .lock()
        .expect("lock")
        .insert("web".into());
    // The pass that takes the request reports Terminating and goes no
    // further.
    h.engine.pass().await;
    let s = status(&h, "web").expect("status");
    assert_eq!(op(&s).phase, "Terminating", "{:#?}", op(&s));
    assert_eq!(job_names(&h).await, vec!["wait"]);
    // Terminating is persisted: a restarted agent ends the operation.
    let (tx, reports) = watch::channel(None);
    h.engine = Engine::new(
        Arc::new(Cluster::new(h.client.clone())),
        h.cache.clone(),
        Arc::new(Notify::new()),
        tx,
    );
    h.reports = reports;
    h.engine.pass().await;
    let s = status(&h, "web").expect("status");
    let o = op(&s);
    assert_eq!(
        (o.phase.as_str(), o.message.as_str(), o.started_ms),
        ("Failed", "Operation terminated", started_ms),
        "{o:#?}"
    );
    assert_eq!(hook(&o, "PreSync").status, "Terminating");
    assert!(
        job_names(&h).await.is_empty(),
        "the running hook was not deleted"
    );
    assert!(deployments(&h).get_opt("web").await.expect("get").is_none());
    // Automated sync does not try the same desired state again, and a
    // request with nothing running changes nothing.
    h.engine
        .terminations()
        .lock()
        .expect("lock")
        .insert("web".into());
    for _ in 0..5 {
        h.engine.pass().await;
        let o = op(&status(&h, "web").expect("status"));
        assert_eq!((o.phase.as_str(), o.started_ms), ("Failed", started_ms));
        assert!(job_names(&h).await.is_empty());
    }
    // A new desired state syncs again.
    set_bundle(&h.cache, app("web", "d2", vec![deployment("web")]));
    converge(&mut h, "web", "Succeeded", finished("Succeeded")).await;
}
