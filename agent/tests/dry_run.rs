//! `SyncNow` with `dry_run` against the Kubernetes API simulator: every
//! object's would-be result from a server-side dry run, per-object errors,
//! prune candidates only with prune, and a cluster left as it was. A real
//! sync records the hub's command id in its operation.

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::engine::SyncRequest;
use flotilla_proto::{ResourceResult, SyncResult};
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use tokio::sync::oneshot;

mod support;
use support::{Harness, harness, set_bundle};

fn configmap(name: &str, greeting: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"greeting": greeting}})
}

fn deployment(name: &str, replicas: i64, selector: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": selector}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})
}

fn bundle(digest: &str, objects: &[Value]) -> Bundle {
    Bundle {
        name: "web".into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        namespace: "web".into(),
        policy: Policy {
            // Manual: only sync requests change the cluster.
            automated: false,
            prune: false,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: objects.iter().map(Value::to_string).collect(),
        ..Bundle::default()
    }
}

/// Queues a request and runs one pass; a dry run returns its answer.
async fn request(h: &mut Harness, id: &str, dry_run: bool, prune: bool) -> Option<SyncResult> {
    let (reply, answer) = oneshot::channel();
    h.engine.sync_requests().lock().expect("lock").insert(
        "web".into(),
        SyncRequest {
            prune,
            dry_run,
            command_id: id.into(),
            reply: dry_run.then_some(reply),
        },
    );
    h.engine.pass().await;
    if dry_run {
        Some(
            answer
                .await
                .expect("the engine answers a dry run in its pass"),
        )
    } else {
        None
    }
}

fn row<'a>(r: &'a SyncResult, kind: &str, name: &str) -> &'a ResourceResult {
    r.resources
        .iter()
        .find(|x| {
            x.key
                .as_ref()
                .is_some_and(|k| k.kind == kind && k.name == name)
        })
        .unwrap_or_else(|| panic!("no {kind}/{name} in {r:#?}"))
}

fn api(h: &Harness, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(h.client.clone(), "web", &ar)
}

/// `metadata.generation` and `spec.replicas`: what a spec write changes
/// (the simulated controllers keep writing status, so the
/// resourceVersion moves on its own).
async fn spec_state(api: &Api<DynamicObject>, name: &str) -> Option<(i64, i64)> {
    let obj = api.get_opt(name).await.expect("get")?;
    let generation = obj.metadata.generation?;
    let replicas = obj.data.pointer("/spec/replicas")?.as_i64()?;
    Some((generation, replicas))
}

#[tokio::test]
async fn dry_run_reports_each_object_and_changes_nothing() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        bundle(
            "d1",
            &[
                deployment("web", 2, "web"),
                configmap("keep", "hi"),
                configmap("old", "bye"),
            ],
        ),
    );
    // A real sync: its operation carries the command id.
    assert!(request(&mut h, "cmd-real", false, false).await.is_none());
    let report = h.reports.borrow().clone().expect("report");
    let op = report.apps[0].operation.clone().expect("operation");
    assert_eq!(
        (op.phase.as_str(), op.command_id.as_str()),
        ("Succeeded", "cmd-real"),
        "{op:?}"
    );
    let deployments = api(&h, "apps", "v1", "Deployment", "deployments");
    let configmaps = api(&h, "", "v1", "ConfigMap", "configmaps");
    let before = spec_state(&deployments, "web").await.expect("applied");
    assert_eq!(before.1, 2);

    // Scale up, add a ConfigMap, drop one, and add an object the API server
    // refuses (its selector does not match its template).
    set_bundle(
        &h.cache,
        bundle(
            "d2",
            &[
                deployment("web", 3, "web"),
                configmap("keep", "hi"),
                configmap("new", "hello"),
                deployment("broken", 1, "other"),
            ],
        ),
    );
    let r = request(&mut h, "cmd-dry", true, false)
        .await
        .expect("answer");
    assert_eq!((r.command_id.as_str(), r.app.as_str()), ("cmd-dry", "web"));
    assert!(r.dry_run && r.error.is_empty(), "{r:#?}");
    assert_eq!(r.revision, "rev-d2");
    assert_eq!(row(&r, "Deployment", "web").action, "configured");
    assert_eq!(row(&r, "ConfigMap", "keep").action, "unchanged");
    assert_eq!(row(&r, "ConfigMap", "new").action, "created");
    let broken = row(&r, "Deployment", "broken");
    assert_eq!(broken.action, "failed");
    assert!(broken.error.contains("selector"), "{broken:?}");
    let old = row(&r, "ConfigMap", "old");
    assert_eq!(
        (old.action.as_str(), old.message.as_str()),
        ("prune-skipped", "ignored (requires pruning)")
    );
    // Nothing changed.
    assert_eq!(spec_state(&deployments, "web").await, Some(before));
    assert!(configmaps.get_opt("new").await.expect("get").is_none());
    assert!(configmaps.get_opt("broken").await.expect("get").is_none());
    // The dry run is no operation: the last one is still the real sync.
    let report = h.reports.borrow().clone().expect("report");
    let op = report.apps[0].operation.clone().expect("operation");
    assert_eq!(op.command_id, "cmd-real");

    // With prune, but the sync would fail: a real sync would not prune.
    let r = request(&mut h, "cmd-dry-2", true, true)
        .await
        .expect("answer");
    let old = row(&r, "ConfigMap", "old");
    assert_eq!(old.action, "prune-skipped");
    assert!(old.message.contains("would fail"), "{old:?}");

    // Without the broken object, prune reports the deletion.
    set_bundle(
        &h.cache,
        bundle(
            "d3",
            &[
                deployment("web", 3, "web"),
                configmap("keep", "hi"),
                configmap("new", "hello"),
            ],
        ),
    );
    let r = request(&mut h, "cmd-dry-3", true, true)
        .await
        .expect("answer");
    assert_eq!(row(&r, "ConfigMap", "old").action, "pruned");
    assert!(r.resources.iter().all(|x| x.error.is_empty()), "{r:#?}");
    assert!(configmaps.get_opt("old").await.expect("get").is_some());
    assert_eq!(spec_state(&deployments, "web").await, Some(before));
}

#[tokio::test]
async fn a_dry_run_in_a_namespace_the_sync_creates_is_not_refused() {
    let mut h = harness().await;
    set_bundle(&h.cache, bundle("n1", &[configmap("first", "hi")]));
    let r = request(&mut h, "cmd-ns", true, false)
        .await
        .expect("answer");
    assert_eq!(row(&r, "Namespace", "web").action, "created");
    let first = row(&r, "ConfigMap", "first");
    assert_eq!(first.action, "created");
    assert!(first.message.contains("namespace web"), "{first:?}");
    assert!(r.resources.iter().all(|x| x.error.is_empty()), "{r:#?}");
    let namespaces = Api::<DynamicObject>::all_with(
        h.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "Namespace"),
            "namespaces",
        ),
    );
    assert!(namespaces.get_opt("web").await.expect("get").is_none());
}
