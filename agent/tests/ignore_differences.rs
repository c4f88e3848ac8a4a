//! `ignoreDifferences.jqPathExpressions` (a table test from YAML fixtures
//! in `fixtures/jq/`, then against the Kubernetes API simulator) and
//! `PruneLast` against the simulator.

use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_proto::{AppStatus, HealthStatus, SyncStatus};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

mod support;
use support::{Harness, harness, set_bundle, status};

#[test]
fn jq_fixture_table() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jq");
    let read = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).expect("fixture");
        serde_saphyr::from_str::<Value>(&text).expect("yaml")
    };
    let cases = read("cases.yaml");
    let cases = cases.as_array().expect("list of cases");
    assert!(cases.len() >= 5);
    for case in cases {
        let expr = case["expression"].as_str().expect("expression");
        let object = read(case["object"].as_str().expect("object"));
        let mut got = object.clone();
        let result = flotilla_agent::jq::strip(&mut got, &[expr.to_owned()]);
        if let Some(want) = case.get("error").and_then(Value::as_str) {
            let err = result.expect_err(expr);
            assert!(err.contains(want), "{expr}: {err}");
            continue;
        }
        result.unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut want = object;
        for ptr in case["removed"].as_array().expect("removed") {
            let ptr = ptr.as_str().expect("pointer");
            let (parent, last) = ptr.rsplit_once('/').expect("pointer");
            match want.pointer_mut(parent).expect("parent") {
                Value::Object(m) => {
                    m.remove(last).expect("present");
                }
                Value::Array(a) => {
                    a.remove(last.parse::<usize>().expect("index"));
                }
                other => panic!("{ptr}: parent {other}"),
            }
        }
        assert_eq!(got, want, "{expr}");
    }
}

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs passes until `done` holds for the app's status, or fails at the
/// deadline.
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
        tokio::task::yield_now().await;
    }
}

fn synced_healthy(s: &AppStatus) -> bool {
    s.sync == SyncStatus::Synced as i32 && s.health == HealthStatus::Healthy as i32
}

fn api(h: &Harness, group: &str, kind: &str, plural: &str, ns: &str) -> Api<DynamicObject> {
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
    Api::namespaced_with(h.client.clone(), ns, &ar)
}

fn app(name: &str, digest: &str, manifests: Vec<Value>) -> Bundle {
    Bundle {
        name: name.into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        namespace: name.into(),
        policy: Policy {
            automated: true,
            prune: true,
            self_heal: true,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: manifests.into_iter().map(|m| m.to_string()).collect(),
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
async fn jq_ignored_replicas_changed_by_another_manager_stay_synced_and_unhealed() {
    let mut h = harness().await;
    let mut b = app("scaled", "s1", vec![deployment("web", "nginx:1", None)]);
    b.ignore_differences = vec![
        json!({"group": "apps", "kind": "Deployment", "jqPathExpressions": [".spec.replicas"]})
            .to_string(),
    ];
    set_bundle(&h.cache, b);
    let s = converge(&mut h, "scaled", "Synced/Healthy", synced_healthy).await;
    let applied_at = s.last_applied_ms;
    let deployments = api(&h, "apps", "Deployment", "deployments", "scaled");
    // An autoscaler (another field manager) takes replicas over.
    deployments
        .patch(
            "web",
            &PatchParams::apply("hpa-controller").force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"}, "spec": {"replicas": 3}})),
        )
        .await
        .expect("other manager scales");
    for _ in 0..5 {
        h.engine.pass().await;
        let s = status(&h, "scaled").expect("status");
        assert_eq!(s.sync, SyncStatus::Synced as i32, "{s:#?}");
        assert!(
            s.resources
                .iter()
                .all(|r| r.sync == SyncStatus::Synced as i32),
            "{s:#?}"
        );
    }
    let s = status(&h, "scaled").expect("status");
    assert_eq!(s.last_applied_ms, applied_at, "selfHeal re-applied");
    let dep = deployments.get("web").await.expect("deployment");
    assert_eq!(dep.data["spec"]["replicas"], json!(3));
}

#[tokio::test]
async fn invalid_jq_expression_is_an_application_error_naming_it() {
    let mut h = harness().await;
    let mut b = app("broken", "b1", vec![deployment("web", "nginx:1", None)]);
    b.ignore_differences =
        vec![json!({"kind": "Deployment", "jqPathExpressions": [".spec.replicas["]}).to_string()];
    set_bundle(&h.cache, b);
    h.engine.pass().await;
    let s = status(&h, "broken").expect("status");
    assert_eq!(s.sync, SyncStatus::Unknown as i32, "{s:#?}");
    assert!(s.message.contains("`.spec.replicas[`"), "{}", s.message);
    assert!(
        s.message.contains("invalid jqPathExpressions"),
        "{}",
        s.message
    );
}

/// Wave 0 (`keep`) is healthy; wave 1 (`late`) is new and Progressing for
/// a while; `old` is no longer desired.
fn prune_last_bundles(app_option: bool, annotated: bool) -> (Bundle, Bundle) {
    let mut old = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "old"}, "data": {"k": "v"}});
    if annotated {
        old["metadata"]["annotations"] =
            json!({"argocd.argoproj.io/sync-options": "PruneLast=true"});
    }
    let keep = deployment("keep", "nginx:1", None);
    let first = app("pl", "p1", vec![keep.clone(), old]);
    let mut second = app(
        "pl",
        "p2",
        vec![keep, deployment("late", "nginx:2", Some("1"))],
    );
    if app_option {
        second.policy.sync_options.push("PruneLast=true".into());
    }
    (first, second)
}

async fn prune_last_case(app_option: bool, annotated: bool) {
    let mut h = harness().await;
    let (first, second) = prune_last_bundles(app_option, annotated);
    set_bundle(&h.cache, first);
    converge(&mut h, "pl", "Synced/Healthy", synced_healthy).await;
    let configmaps = api(&h, "", "ConfigMap", "configmaps", "pl");
    let deployments = api(&h, "apps", "Deployment", "deployments", "pl");
    assert!(configmaps.get_opt("old").await.expect("get").is_some());

    set_bundle(&h.cache, second);
    // One pass applies every wave; the last one is not healthy yet.
    h.engine.pass().await;
    let late = deployments.get("late").await.expect("wave 1 applied");
    assert_ne!(late.data["status"]["availableReplicas"], json!(1));
    let s = status(&h, "pl").expect("status");
    let op = s.operation.clone().expect("operation");
    assert_eq!(op.phase, "Running", "{s:#?}");
    assert!(
        op.message.contains("waiting for sync wave 1"),
        "{}",
        op.message
    );
    assert!(
        configmaps.get_opt("old").await.expect("get").is_some(),
        "PruneLast object pruned before the last wave was healthy"
    );

    let until = Instant::now() + DEADLINE;
    while configmaps.get_opt("old").await.expect("get").is_some() {
        assert!(Instant::now() < until, "PruneLast object never pruned");
        h.engine.pass().await;
        tokio::task::yield_now().await;
    }
    // It went only once every wave was applied and healthy.
    let late = deployments.get("late").await.expect("deployment");
    assert_eq!(late.data["status"]["availableReplicas"], json!(1));
    converge(&mut h, "pl", "Synced/Healthy at p2", |s| {
        synced_healthy(s) && s.digest == "p2"
    })
    .await;
}

#[tokio::test]
async fn prune_last_annotation_prunes_after_every_wave_is_healthy() {
    prune_last_case(false, true).await;
}

#[tokio::test]
async fn prune_last_sync_option_prunes_after_every_wave_is_healthy() {
    prune_last_case(true, false).await;
}

#[tokio::test]
async fn without_prune_last_pruning_follows_the_last_apply() {
    let mut h = harness().await;
    let (first, second) = prune_last_bundles(false, false);
    set_bundle(&h.cache, first);
    converge(&mut h, "pl", "Synced/Healthy", synced_healthy).await;
    let configmaps = api(&h, "", "ConfigMap", "configmaps", "pl");
    set_bundle(&h.cache, second);
    // Every wave is applied (earlier ones healthy), then stale objects are
    // pruned in the same pass, without waiting for the last wave.
    h.engine.pass().await;
    assert!(configmaps.get_opt("old").await.expect("get").is_none());
}
