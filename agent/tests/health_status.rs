//! An application's health from its objects' health, against the
//! simulator, as Argo CD aggregates it: an object annotated
//! `argocd.argoproj.io/ignore-healthcheck: "true"` does not count, and a
//! missing object does not count while others exist.

use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_proto::{AppStatus, HealthStatus, SyncStatus};
use serde_json::{Value, json};

mod support;
use support::{Harness, harness, set_bundle, status};

const DEADLINE: Duration = Duration::from_secs(60);

fn app(name: &str, objects: &[Value]) -> Bundle {
    Bundle {
        name: name.into(),
        digest: format!("{name}-1"),
        revision: format!("rev-{name}"),
        namespace: name.into(),
        policy: Policy {
            automated: true,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: objects.iter().map(Value::to_string).collect(),
        ..Bundle::default()
    }
}

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

fn resource<'a>(s: &'a AppStatus, kind: &str) -> &'a flotilla_proto::ResourceStatus {
    s.resources
        .iter()
        .find(|r| r.key.as_ref().is_some_and(|k| k.kind == kind))
        .unwrap_or_else(|| panic!("no {kind} in {s:#?}"))
}

#[tokio::test]
async fn an_ignored_degraded_object_leaves_its_app_healthy() {
    let mut h = harness().await;
    // The simulator never makes an `:fail` image available: the Deployment
    // exceeds its progress deadline and is Degraded.
    let flaky = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "flaky",
            "annotations": {"argocd.argoproj.io/ignore-healthcheck": "true"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "flaky"}},
            "template": {"metadata": {"labels": {"app": "flaky"}},
                "spec": {"containers": [{"name": "main", "image": "nginx:fail"}]}}}});
    let settings = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"}, "data": {"k": "v"}});
    set_bundle(&h.cache, app("guarded", &[settings, flaky]));
    let s = converge(&mut h, "guarded", "assessed Degraded", |s| {
        resource(s, "Deployment")
            .message
            .contains("assessed Degraded")
    })
    .await;
    let d = resource(&s, "Deployment");
    assert_eq!(d.health, HealthStatus::Healthy as i32, "{s:#?}");
    assert_eq!(
        d.message,
        "not counted (argocd.argoproj.io/ignore-healthcheck=true); assessed Degraded: \
         Deployment \"flaky\" exceeded its progress deadline"
    );
    assert_eq!(s.health, HealthStatus::Healthy as i32, "{s:#?}");
    assert_eq!(s.sync, SyncStatus::Synced as i32, "{s:#?}");
}

#[tokio::test]
async fn a_missing_object_does_not_count_while_others_exist() {
    let mut h = harness().await;
    // A kind the cluster does not serve: never created, reported Missing.
    let gadget = json!({"apiVersion": "example.com/v1", "kind": "Gadget",
        "metadata": {"name": "g"}, "spec": {}});
    let settings = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"}, "data": {"k": "v"}});
    set_bundle(&h.cache, app("partial", &[settings, gadget.clone()]));
    let s = converge(&mut h, "partial", "ConfigMap applied", |s| {
        resource(s, "ConfigMap").sync == SyncStatus::Synced as i32
    })
    .await;
    assert_eq!(resource(&s, "Gadget").health, HealthStatus::Missing as i32);
    assert_eq!(s.sync, SyncStatus::OutOfSync as i32, "{s:#?}");
    assert_eq!(s.health, HealthStatus::Healthy as i32, "{s:#?}");

    // Every object missing: the application is Missing.
    set_bundle(&h.cache, app("absent", &[gadget]));
    let s = converge(&mut h, "absent", "reported", |_| true).await;
    assert_eq!(s.health, HealthStatus::Missing as i32, "{s:#?}");
}
