//! The engine against the Kubernetes API simulator, fed desired states as
//! the link merges them: an index that moves an application to a new
//! commit without a bundle (reported, not applied), and deletions with
//! cascade (what Argo CD deletes and what it keeps) or without.

use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_proto::{AppDeletion, AppRef, AppStatus, DesiredState};
use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::json;

mod support;
use support::{Harness, harness, set_bundle, status};

const DEADLINE: Duration = Duration::from_secs(30);

fn configmap(name: &str, annotations: serde_json::Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "annotations": annotations},
           "data": {"k": "v"}})
    .to_string()
}

fn bundle(name: &str, manifests: Vec<String>, prune: bool) -> Bundle {
    Bundle {
        name: name.into(),
        digest: format!("sha256:{name}"),
        revision: "r1".into(),
        namespace: "life".into(),
        policy: Policy {
            automated: true,
            prune,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests,
        ..Bundle::default()
    }
}

fn configmaps(h: &Harness) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
    };
    Api::namespaced_with(h.client.clone(), "life", &ar)
}

async fn converge(h: &mut Harness, app: &str, done: impl Fn(&AppStatus) -> bool) -> AppStatus {
    let until = Instant::now() + DEADLINE;
    loop {
        h.engine.pass().await;
        if let Some(s) = status(h, app)
            && done(&s)
        {
            return s;
        }
        assert!(Instant::now() < until, "{app}: {:#?}", status(h, app));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Merges a desired state as the link does.
fn merge(h: &Harness, desired: DesiredState) {
    h.cache
        .update(|s| s.merge(desired))
        .expect("cache written")
        .expect("complete");
}

fn index(h: &Harness, revisions: &[(&str, &str)]) -> Vec<AppRef> {
    let state = h.cache.snapshot();
    revisions
        .iter()
        .map(|(name, revision)| AppRef {
            name: (*name).into(),
            digest: state.apps[*name].bundle.digest.clone(),
            revision: (*revision).into(),
        })
        .collect()
}

#[tokio::test]
async fn a_new_commit_with_the_same_content_is_reported_not_applied() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        bundle("steady", vec![configmap("steady", json!({}))], true),
    );
    let first = converge(&mut h, "steady", |s| s.last_applied_ms > 0).await;
    assert_eq!(first.revision, "r1");
    let before = configmaps(&h).get("steady").await.expect("applied");

    let generation = h.cache.snapshot().generation + 1;
    merge(
        &h,
        DesiredState {
            generation,
            index: index(&h, &[("steady", "r2")]),
            ..Default::default()
        },
    );
    let moved = converge(&mut h, "steady", |s| s.revision == "r2").await;
    assert_eq!(
        moved.last_applied_ms, first.last_applied_ms,
        "applied again"
    );
    assert_eq!(moved.operation, first.operation);
    assert_eq!(moved.sync, first.sync);
    let after = configmaps(&h).get("steady").await.expect("still there");
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
}

#[tokio::test]
async fn deletions_cascade_or_orphan_as_the_hub_says() {
    let mut h = harness().await;
    // Deleted without cascade although its policy prunes: everything stays.
    set_bundle(
        &h.cache,
        bundle("kept", vec![configmap("kept", json!({}))], true),
    );
    // Deleted with cascade although its policy does not prune: Argo CD
    // deletes with the resources finalizer whatever the sync policy; an
    // object's Prune=false does not stop it, Delete=false and Helm's keep
    // do.
    set_bundle(
        &h.cache,
        bundle(
            "gone",
            vec![
                configmap("plain", json!({})),
                configmap(
                    "no-prune",
                    json!({"argocd.argoproj.io/sync-options": "Prune=false"}),
                ),
                configmap(
                    "no-delete",
                    json!({"argocd.argoproj.io/sync-options": "Delete=false"}),
                ),
                configmap("helm-keep", json!({"helm.sh/resource-policy": "keep"})),
            ],
            false,
        ),
    );
    converge(&mut h, "kept", |s| s.last_applied_ms > 0).await;
    converge(&mut h, "gone", |s| s.last_applied_ms > 0).await;
    let cms = configmaps(&h);
    for name in ["kept", "plain", "no-prune", "no-delete", "helm-keep"] {
        cms.get(name).await.expect("applied");
    }
    let kept_before = cms.get("kept").await.expect("kept");

    let generation = h.cache.snapshot().generation + 1;
    merge(
        &h,
        DesiredState {
            generation,
            deletions: vec![
                AppDeletion {
                    name: "kept".into(),
                    propagation_policy: "orphan".into(),
                },
                AppDeletion {
                    name: "gone".into(),
                    propagation_policy: "foreground".into(),
                },
            ],
            ..Default::default()
        },
    );
    let until = Instant::now() + DEADLINE;
    loop {
        h.engine.pass().await;
        if h.cache.snapshot().removed.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "{:#?}", h.cache.snapshot().removed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = cms
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    for gone in ["plain", "no-prune"] {
        assert!(!names.contains(&gone.to_owned()), "{gone} left: {names:?}");
    }
    for stays in ["kept", "no-delete", "helm-keep"] {
        assert!(
            names.contains(&stays.to_owned()),
            "{stays} deleted: {names:?}"
        );
    }
    // Not cascading: the object is untouched, tracking label and all.
    let kept_after = cms.get("kept").await.expect("kept");
    assert_eq!(
        kept_after.metadata.resource_version,
        kept_before.metadata.resource_version
    );
    assert_eq!(kept_after.metadata.labels, kept_before.metadata.labels);
    assert_eq!(
        kept_after.metadata.annotations,
        kept_before.metadata.annotations
    );
}
