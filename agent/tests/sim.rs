//! The sync engine against the Kubernetes API simulator: apply with our
//! field manager, no re-apply when nothing changed, drift and self-heal,
//! prune of tracked objects only, CRDs before their custom resources,
//! render errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::cache::Cache;
use flotilla_agent::cluster::Cluster;
use flotilla_agent::engine::Engine;
use flotilla_proto::{AppStatus, HealthStatus, SyncStatus};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

mod support;
use support::{Harness, harness, harness_with, set_bundle, status};

const DEADLINE: Duration = Duration::from_secs(30);

fn manifest(v: Value) -> String {
    v.to_string()
}

fn guestbook(digest: &str, replicas: i64, with_config: bool) -> Bundle {
    let mut manifests = vec![
        manifest(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "guestbook-ui"},
            "spec": {"replicas": replicas,
                "selector": {"matchLabels": {"app": "guestbook-ui"}},
                "template": {"metadata": {"labels": {"app": "guestbook-ui"}},
                    "spec": {"containers": [{"name": "ui", "image": "nginx:1.27",
                        "ports": [{"containerPort": 80}]}]}}}})),
        manifest(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "guestbook-ui"},
            "spec": {"selector": {"app": "guestbook-ui"}, "ports": [{"port": 80, "targetPort": 80}]}})),
    ];
    if with_config {
        manifests.push(manifest(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "guestbook-config"}, "data": {"greeting": "hello"}})));
    }
    Bundle {
        name: "guestbook".into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        namespace: "web".into(),
        policy: Policy {
            automated: true,
            prune: true,
            self_heal: true,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests,
        ..Bundle::default()
    }
}

/// Runs passes until `done` holds for the app's status, or fails at the deadline.
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn synced_healthy(s: &AppStatus) -> bool {
    s.sync == SyncStatus::Synced as i32 && s.health == HealthStatus::Healthy as i32
}

fn api(
    h: &Harness,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    match ns {
        Some(ns) => Api::namespaced_with(h.client.clone(), ns, &ar),
        None => Api::all_with(h.client.clone(), &ar),
    }
}

fn resource_version(o: &DynamicObject) -> String {
    o.metadata.resource_version.clone().unwrap_or_default()
}

#[tokio::test]
async fn applies_tracks_skips_heals_and_prunes() {
    let mut h = harness().await;
    set_bundle(&h.cache, guestbook("d1", 1, true));
    let s = converge(&mut h, "guestbook", "Synced/Healthy", synced_healthy).await;
    assert_eq!(s.revision, "rev-d1");
    assert_eq!(s.resources.len(), 3);
    assert!(s.last_applied_ms > 0);

    // Objects exist, tracked, under our field manager, in the default namespace.
    let namespaces = api(&h, "", "v1", "Namespace", "namespaces", None);
    namespaces
        .get("web")
        .await
        .expect("CreateNamespace=true made the namespace");
    let deployments = api(&h, "apps", "v1", "Deployment", "deployments", Some("web"));
    let configmaps = api(&h, "", "v1", "ConfigMap", "configmaps", Some("web"));
    let cm = configmaps.get("guestbook-config").await.expect("configmap");
    let managers: Vec<String> = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"flotilla".to_owned()), "{managers:?}");
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("flotilla.dev/app").map(String::as_str),
        Some("guestbook")
    );
    let annotations = cm.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("flotilla.dev/tracking-id")
            .map(String::as_str),
        Some("guestbook:/ConfigMap:web/guestbook-config")
    );

    // Same digest (a new commit that did not touch the app): nothing is re-applied.
    let before_cm = resource_version(&cm);
    let before_dep = resource_version(&deployments.get("guestbook-ui").await.expect("deployment"));
    let applied_at = s.last_applied_ms;
    for _ in 0..3 {
        h.engine.pass().await;
    }
    let cm = configmaps.get("guestbook-config").await.expect("configmap");
    assert_eq!(
        resource_version(&cm),
        before_cm,
        "unchanged app was re-applied"
    );
    let dep = deployments.get("guestbook-ui").await.expect("deployment");
    assert_eq!(
        resource_version(&dep),
        before_dep,
        "unchanged app was re-applied"
    );
    assert_eq!(
        status(&h, "guestbook").map(|s| s.last_applied_ms),
        Some(applied_at)
    );

    // A field added by another manager is not drift and stays.
    let other = PatchParams::apply("kubectl-edit").force();
    configmaps
        .patch(
            "guestbook-config",
            &other,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "guestbook-config", "annotations": {"team": "web"}}})),
        )
        .await
        .expect("other manager");
    h.engine.pass().await;
    let s = status(&h, "guestbook").expect("status");
    assert_eq!(s.sync, SyncStatus::Synced as i32, "{s:#?}");
    let cm = configmaps.get("guestbook-config").await.expect("configmap");
    assert_eq!(
        cm.metadata
            .annotations
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("web")
    );

    // Drift on a field we own is healed (selfHeal).
    deployments
        .patch(
            "guestbook-ui",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("drift");
    converge(&mut h, "guestbook", "healed", |s| {
        synced_healthy(s) && s.operation.as_ref().is_some_and(|o| o.phase == "Succeeded")
    })
    .await;
    let dep = deployments.get("guestbook-ui").await.expect("deployment");
    assert_eq!(dep.data["spec"]["replicas"], json!(1));

    // New digest without the ConfigMap: the tracked one is pruned, an
    // untracked look-alike with the same label is not.
    configmaps
        .patch(
            "lookalike",
            &PatchParams::apply("someone"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "lookalike", "labels": {"flotilla.dev/app": "guestbook"}}})),
        )
        .await
        .expect("lookalike");
    set_bundle(&h.cache, guestbook("d2", 2, false));
    converge(&mut h, "guestbook", "Synced/Healthy at d2", |s| {
        synced_healthy(s) && s.digest == "d2"
    })
    .await;
    let until = Instant::now() + DEADLINE;
    while configmaps
        .get_opt("guestbook-config")
        .await
        .expect("get")
        .is_some()
    {
        assert!(Instant::now() < until, "tracked configmap not pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        configmaps
            .get_opt("lookalike")
            .await
            .expect("get")
            .is_some()
    );
    let dep = deployments.get("guestbook-ui").await.expect("deployment");
    assert_eq!(dep.data["spec"]["replicas"], json!(2));
}

#[tokio::test]
async fn drift_without_self_heal_is_reported_not_reverted() {
    let mut h = harness().await;
    let mut b = guestbook("d1", 1, true);
    b.policy.self_heal = false;
    set_bundle(&h.cache, b);
    converge(&mut h, "guestbook", "Synced/Healthy", synced_healthy).await;
    let configmaps = api(&h, "", "v1", "ConfigMap", "configmaps", Some("web"));
    configmaps
        .patch(
            "guestbook-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "changed"}})),
        )
        .await
        .expect("drift");
    let s = converge(&mut h, "guestbook", "OutOfSync", |s| {
        s.sync == SyncStatus::OutOfSync as i32
    })
    .await;
    let res = s
        .resources
        .iter()
        .find(|r| r.key.as_ref().is_some_and(|k| k.kind == "ConfigMap"))
        .expect("configmap status");
    assert_eq!(res.sync, SyncStatus::OutOfSync as i32);
    assert!(
        res.drift.iter().any(|d| d.contains("/data/greeting")),
        "{:?}",
        res.drift
    );
    h.engine.pass().await;
    let cm = configmaps.get("guestbook-config").await.expect("configmap");
    assert_eq!(cm.data["data"]["greeting"], json!("changed"));

    // The hub's diff request shows the drifted object, live and desired.
    let bundle = h.cache.snapshot().apps["guestbook"].bundle.clone();
    let diffs = flotilla_agent::engine::diff_app(&Cluster::new(h.client.clone()), &bundle)
        .await
        .expect("diff");
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(
        diffs[0].key.as_ref().map(|k| k.name.as_str()),
        Some("guestbook-config")
    );
    assert!(diffs[0].live.contains("changed") && !diffs[0].live.contains("managedFields"));
    assert!(diffs[0].desired.contains("hello"));
}

#[tokio::test]
async fn crd_applies_before_its_custom_resources_and_render_errors_change_nothing() {
    let mut h = harness().await;
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]}});
    let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}});
    set_bundle(
        &h.cache,
        Bundle {
            name: "widgets".into(),
            digest: "w1".into(),
            namespace: "tools".into(),
            policy: Policy {
                automated: true,
                sync_options: vec!["CreateNamespace=true".into()],
                ..Policy::default()
            },
            // The custom resource comes first on purpose.
            manifests: vec![manifest(widget), manifest(crd)],
            ..Bundle::default()
        },
    );
    set_bundle(
        &h.cache,
        Bundle {
            name: "broken".into(),
            digest: "b1".into(),
            render_error: "apps/broken/deploy.yaml: line 3: mapping values are not allowed".into(),
            ..Bundle::default()
        },
    );
    let s = converge(&mut h, "widgets", "Synced/Healthy", synced_healthy).await;
    assert_eq!(s.resources.len(), 2);
    let widgets = api(&h, "example.com", "v1", "Widget", "widgets", Some("tools"));
    widgets
        .get("w1")
        .await
        .expect("widget applied in the default namespace");
    let broken = status(&h, "broken").expect("broken status");
    assert_eq!(broken.sync, SyncStatus::Unknown as i32);
    assert!(broken.message.contains("line 3"), "{}", broken.message);
}

fn app(name: &str, digest: &str, namespace: &str, manifests: Vec<Value>) -> Bundle {
    Bundle {
        name: name.into(),
        digest: digest.into(),
        namespace: namespace.into(),
        policy: Policy {
            automated: true,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: manifests.into_iter().map(manifest).collect(),
        ..Bundle::default()
    }
}

fn deployment(name: &str, image: &str, wave: Option<&str>) -> Value {
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]}}}});
    if let Some(w) = wave {
        d["metadata"]["annotations"] = json!({"argocd.argoproj.io/sync-wave": w});
    }
    d
}

#[tokio::test]
async fn later_wave_waits_for_earlier_wave_to_be_healthy() {
    let mut h = harness().await;
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "after", "annotations": {"argocd.argoproj.io/sync-wave": "1"}},
        "data": {"k": "v"}});
    set_bundle(
        &h.cache,
        app(
            "waves",
            "w1",
            "waves",
            vec![config, deployment("first", "nginx:1", None)],
        ),
    );
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}});
    set_bundle(&h.cache, app("other", "o1", "other", vec![other]));
    // One pass applies wave 0 and returns without waiting for it; the other
    // application is not held up.
    h.engine.pass().await;
    let s = status(&h, "waves").expect("status");
    let op = s.operation.clone().expect("operation");
    assert_eq!(op.phase, "Running", "{s:#?}");
    assert!(
        op.message.contains("waiting for sync wave 0"),
        "{}",
        op.message
    );
    let after = api(&h, "", "v1", "ConfigMap", "configmaps", Some("waves"));
    assert!(
        after.get_opt("after").await.expect("get").is_none(),
        "wave 1 applied before wave 0 was healthy"
    );
    assert!(status(&h, "other").is_some_and(|s| synced_healthy(&s)));
    converge(&mut h, "waves", "Synced/Healthy", synced_healthy).await;
    let dep = api(&h, "apps", "v1", "Deployment", "deployments", Some("waves"))
        .get("first")
        .await
        .expect("deployment");
    let cm = api(&h, "", "v1", "ConfigMap", "configmaps", Some("waves"))
        .get("after")
        .await
        .expect("configmap");
    let rv = |o: &DynamicObject| {
        resource_version(o)
            .parse::<u64>()
            .expect("numeric resourceVersion")
    };
    // The Deployment's last write (its controller marking it available)
    // happened before the next wave's ConfigMap was created.
    assert_eq!(dep.data["status"]["availableReplicas"], json!(1));
    assert!(
        rv(&dep) < rv(&cm),
        "deployment rv {} >= configmap rv {}",
        rv(&dep),
        rv(&cm)
    );
}

#[tokio::test]
async fn failing_deployment_turns_degraded_with_the_controller_message() {
    let mut h = harness().await;
    set_bundle(
        &h.cache,
        app(
            "failing",
            "f1",
            "failing",
            vec![deployment("bad", "nginx:fail", None)],
        ),
    );
    let s = converge(&mut h, "failing", "Degraded", |s| {
        s.health == HealthStatus::Degraded as i32
    })
    .await;
    let res = &s.resources[0];
    assert_eq!(res.health, HealthStatus::Degraded as i32);
    assert!(
        res.message.contains("exceeded its progress deadline"),
        "{}",
        res.message
    );
}

#[tokio::test]
async fn running_engine_reports_drift_within_seconds_through_watches() {
    let mut h = harness_with(true).await;
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"}, "data": {"mode": "blue"}});
    let mut bundle = app("watched", "x1", "watched", vec![config]);
    bundle.policy.self_heal = false;
    set_bundle(&h.cache, bundle);
    converge(&mut h, "watched", "Synced/Healthy", synced_healthy).await;
    let Harness {
        engine,
        mut reports,
        client,
        sim: _sim,
        dir: _dir,
        ..
    } = h;
    let running = tokio::spawn(engine.run());
    let configmaps: Api<DynamicObject> = Api::namespaced_with(
        client,
        "watched",
        &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
    );
    configmaps
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"mode": "green"}})),
        )
        .await
        .expect("drift");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let drift: Vec<String> = reports
            .borrow_and_update()
            .as_ref()
            .and_then(|r| r.apps.iter().find(|a| a.name == "watched").cloned())
            .map(|a| a.resources.into_iter().flat_map(|r| r.drift).collect())
            .unwrap_or_default();
        if drift
            .iter()
            .any(|d| d.contains("/data/mode") && d.contains("green"))
        {
            break;
        }
        assert!(Instant::now() < until, "drift not reported: {drift:?}");
        let _ = tokio::time::timeout(Duration::from_secs(1), reports.changed()).await;
    }
    running.abort();
}

#[tokio::test]
async fn failing_apply_retries_with_backoff_until_the_limit() {
    let mut h = harness().await;
    let unknown =
        json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}});
    let mut bundle = app("retrying", "r1", "retrying", vec![unknown]);
    bundle.policy.retry_limit = 2;
    bundle.policy.retry_backoff = flotilla_agent::bundle::RetryBackoff {
        duration: Duration::from_millis(300),
        factor: 2,
        max_duration: Duration::from_secs(2),
    };
    set_bundle(&h.cache, bundle);
    let first = converge(&mut h, "retrying", "Failed", |s| {
        s.operation.as_ref().is_some_and(|o| o.phase == "Failed")
    })
    .await;
    assert!(first.message.contains("not served"), "{}", first.message);
    let first_run = first.operation.clone().expect("operation");
    // Retried after the backoff, with a new operation, then given up.
    let s = converge(&mut h, "retrying", "given up", |s| {
        s.message.contains("retry limit 2 reached")
    })
    .await;
    let last_run = s.operation.expect("operation");
    assert!(last_run.started_ms > first_run.finished_ms);
    assert_eq!(s.sync, SyncStatus::OutOfSync as i32);
}

#[tokio::test]
async fn manual_app_applies_only_on_sync_request() {
    let mut h = harness().await;
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "manual"}});
    let mut bundle = app("manual", "m1", "manual", vec![config]);
    bundle.policy.automated = false;
    set_bundle(&h.cache, bundle);
    h.engine.pass().await;
    let s = status(&h, "manual").expect("status");
    assert_eq!(s.sync, SyncStatus::OutOfSync as i32);
    assert_eq!(s.health, HealthStatus::Missing as i32);
    h.engine.sync_requests().lock().expect("lock").insert(
        "manual".into(),
        flotilla_agent::engine::SyncRequest::default(),
    );
    converge(&mut h, "manual", "Synced after SyncNow", synced_healthy).await;
}

#[tokio::test]
async fn fresh_cache_still_prunes_from_the_inventory_in_the_cluster() {
    let mut h = harness().await;
    let inventory = || flotilla_agent::inventory::Inventory::new("flotilla-system");
    let cm =
        |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    let mut keep = app("keep", "k1", "inv", vec![cm("a"), cm("b")]);
    keep.policy.prune = true;
    let mut gone = app("gone", "g1", "inv", vec![cm("c")]);
    gone.policy.prune = true;
    set_bundle(&h.cache, keep.clone());
    set_bundle(&h.cache, gone);
    let (tx, _rx) = watch::channel(None);
    let cluster = Arc::new(Cluster::new(h.client.clone()));
    let mut first = Engine::new(
        cluster.clone(),
        h.cache.clone(),
        Arc::new(Notify::new()),
        tx,
    )
    .with_inventory(inventory());
    let configmaps = api(&h, "", "v1", "ConfigMap", "configmaps", Some("inv"));
    let until = Instant::now() + DEADLINE;
    while !first.pass().await || configmaps.get_opt("c").await.expect("get").is_none() {
        assert!(Instant::now() < until, "first agent never settled");
    }

    // A new agent on a new disk: `keep` lost object b, `gone` is no longer desired.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(Cache::open(dir.path()).expect("cache"));
    keep.digest = "k2".into();
    keep.manifests.truncate(1);
    set_bundle(&cache, keep);
    let (tx, reports) = watch::channel(None);
    h.engine = Engine::new(cluster, cache, Arc::new(Notify::new()), tx).with_inventory(inventory());
    h.reports = reports;
    converge(&mut h, "keep", "Synced at k2", |s| {
        synced_healthy(s) && s.digest == "k2"
    })
    .await;
    let until = Instant::now() + DEADLINE;
    loop {
        let b = configmaps.get_opt("b").await.expect("get");
        let c = configmaps.get_opt("c").await.expect("get");
        if b.is_none() && c.is_none() {
            break;
        }
        assert!(
            Instant::now() < until,
            "not pruned: b={} c={}",
            b.is_some(),
            c.is_some()
        );
        h.engine.pass().await;
    }
    assert!(configmaps.get_opt("a").await.expect("get").is_some());
}

#[tokio::test]
async fn defaulted_fields_never_show_as_drift() {
    let mut h = harness().await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"password": "hunter2"}});
    let mut dep = deployment("api", "nginx:1.27", None);
    dep["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "0.5", "memory": "64Mi"}});
    dep["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080}]);
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    let mut bundle = app("defaults", "d1", "defaults", vec![secret, dep, svc]);
    bundle.policy.self_heal = true;
    set_bundle(&h.cache, bundle);
    let s = converge(&mut h, "defaults", "Synced/Healthy", synced_healthy).await;
    let applied_at = s.last_applied_ms;
    // Keep watching while the simulated controllers write status: nothing
    // drifts and nothing is re-applied.
    for _ in 0..15 {
        h.engine.pass().await;
        let s = status(&h, "defaults").expect("status");
        let drift: Vec<&String> = s.resources.iter().flat_map(|r| &r.drift).collect();
        assert!(drift.is_empty(), "{drift:?}");
        assert_eq!(s.sync, SyncStatus::Synced as i32);
        assert_eq!(s.last_applied_ms, applied_at, "re-applied without drift");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn unreachable_cluster_is_unknown_not_out_of_sync() {
    let mut h = harness().await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
    set_bundle(&h.cache, app("reach", "r1", "reach", vec![cm]));
    converge(&mut h, "reach", "Synced/Healthy", synced_healthy).await;
    h.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            down: true,
            ..Default::default()
        },
    );
    let s = converge(&mut h, "reach", "Unknown", |s| {
        s.sync == SyncStatus::Unknown as i32
    })
    .await;
    assert_eq!(s.health, HealthStatus::Unknown as i32, "{s:#?}");
    h.sim.set_faults("sim-1", flotilla_sim::Faults::default());
    converge(&mut h, "reach", "Synced/Healthy again", synced_healthy).await;
}

#[tokio::test]
async fn two_applications_sharing_an_object_do_not_fight() {
    let mut h = harness().await;
    let shared = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"owner": v}});
    let mut a = app("team-a", "a1", "shared", vec![shared("a")]);
    a.policy.self_heal = true;
    let mut b = app("team-b", "b1", "shared", vec![shared("b")]);
    b.policy.self_heal = true;
    set_bundle(&h.cache, a);
    set_bundle(&h.cache, b);
    for _ in 0..3 {
        h.engine.pass().await;
    }
    let configmaps = api(&h, "", "v1", "ConfigMap", "configmaps", Some("shared"));
    let before = resource_version(&configmaps.get("shared").await.expect("configmap"));
    for _ in 0..10 {
        h.engine.pass().await;
    }
    let after = configmaps.get("shared").await.expect("configmap");
    assert_eq!(
        resource_version(&after),
        before,
        "the applications keep overwriting each other"
    );
    let owner = after.data["data"]["owner"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let loser = if owner == "a" { "team-b" } else { "team-a" };
    let s = status(&h, loser).expect("status");
    assert_eq!(s.sync, SyncStatus::OutOfSync as i32);
    assert!(
        s.resources[0]
            .message
            .contains("also managed by application team-"),
        "{}",
        s.resources[0].message
    );
}

#[tokio::test]
async fn restarted_agent_without_hub_enforces_from_its_cache() {
    let mut h = harness().await;
    set_bundle(&h.cache, guestbook("d1", 1, true));
    converge(&mut h, "guestbook", "Synced/Healthy", synced_healthy).await;
    // The agent restarts while the hub is unreachable: a new engine over
    // the same state directory, no link at all.
    let state = h.dir.path().join("state");
    let cache = Arc::new(Cache::open(&state).expect("reopen cache"));
    assert_eq!(
        cache.snapshot().apps["guestbook"].applied_digest.as_deref(),
        Some("d1")
    );
    let (tx, reports) = watch::channel(None);
    h.engine = Engine::new(
        Arc::new(Cluster::new(h.client.clone())),
        cache,
        Arc::new(Notify::new()),
        tx,
    );
    h.reports = reports;
    let configmaps = api(&h, "", "v1", "ConfigMap", "configmaps", Some("web"));
    configmaps
        .patch(
            "guestbook-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "manual change"}})),
        )
        .await
        .expect("drift");
    converge(&mut h, "guestbook", "healed from the cache", synced_healthy).await;
    let cm = configmaps.get("guestbook-config").await.expect("configmap");
    assert_eq!(cm.data["data"]["greeting"], json!("hello"));
}
