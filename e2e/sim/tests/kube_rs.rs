//! kube-rs (the agent's client) against the simulator.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{poll, start};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn deployment(
    name: &str,
    replicas: Option<i32>,
    env: &[(&str, &str)],
    labels: serde_json::Value,
) -> serde_json::Value {
    let env: Vec<_> = env
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "env": env}]}},
        },
    });
    if let Some(r) = replicas {
        d["spec"]["replicas"] = json!(r);
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_keeps_path_prefix_and_ssa_conflicts_and_force() {
    let env = start(2, Duration::from_millis(100)).await;
    let client = env.client("sim-2").await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.minor, "33");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
    cms.patch("c", &PatchParams::apply("flotilla"), &Patch::Apply(&cm))
        .await
        .unwrap();
    // The object went to sim-2 only: kube-rs kept the path prefix.
    let other: Api<ConfigMap> = Api::namespaced(env.client("sim-1").await, "default");
    assert!(other.get_opt("c").await.unwrap().is_none());

    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    cms.patch("c", &edit, &Patch::Merge(json!({"data": {"a": "9"}})))
        .await
        .unwrap();
    let err = cms
        .patch("c", &PatchParams::apply("flotilla"), &Patch::Apply(&cm))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("unexpected {err:?}")
    };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message
            .contains(r#"conflict with "kubectl-edit" using v1: .data.a"#),
        "{}",
        s.message
    );
    let causes = s.details.unwrap().causes;
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".data.a");

    let got = cms
        .patch(
            "c",
            &PatchParams::apply("flotilla").force(),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap();
    assert_eq!(got.data.unwrap()["a"], "1");
    let mf = got.metadata.managed_fields.unwrap();
    assert_eq!(mf.len(), 1, "kubectl-edit lost its only field: {mf:?}");
    assert_eq!(mf[0].manager.as_deref(), Some("flotilla"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));

    // A no-op apply does not bump resourceVersion.
    let rv = got.metadata.resource_version.clone();
    let again = cms
        .patch("c", &PatchParams::apply("flotilla"), &Patch::Apply(&cm))
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, rv);
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_reapply_removes_fields_no_longer_sent() {
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pp = PatchParams::apply("flotilla");
    let first = deployment(
        "app",
        Some(3),
        &[("A", "1"), ("B", "2")],
        json!({"app": "app", "team": "x"}),
    );
    deps.patch("app", &pp, &Patch::Apply(&first)).await.unwrap();
    let second = deployment("app", None, &[("A", "1")], json!({"app": "app"}));
    let d = deps
        .patch("app", &pp, &Patch::Apply(&second))
        .await
        .unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(1), "replicas removed, then defaulted");
    let env_vars = spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert_eq!(env_vars.len(), 1);
    assert_eq!(env_vars[0].name, "A");
    assert!(!d.metadata.labels.unwrap().contains_key("team"));
    assert_eq!(d.metadata.generation, Some(2));

    // A field another applier also owns survives its removal from our config.
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mine = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"a": "1", "b": "2"}});
    cms.patch("shared", &pp, &Patch::Apply(&mine))
        .await
        .unwrap();
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"b": "2"}});
    cms.patch(
        "shared",
        &PatchParams::apply("other"),
        &Patch::Apply(&theirs),
    )
    .await
    .unwrap();
    let mine = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"a": "1"}});
    let got = cms
        .patch("shared", &pp, &Patch::Apply(&mine))
        .await
        .unwrap();
    assert_eq!(got.data.unwrap().len(), 2);
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_dry_run_persists_nothing() {
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "d"}, "data": {"k": "v"}})).unwrap();
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let created = cms.create(&pp, &cm).await.unwrap();
    assert_eq!(created.data.unwrap()["k"], "v");
    assert!(cms.get_opt("d").await.unwrap().is_none());
    let apply = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}, "data": {"k": "v"}});
    cms.patch(
        "d",
        &PatchParams::apply("flotilla").dry_run(),
        &Patch::Apply(&apply),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("d").await.unwrap().is_none());
    cms.patch("d", &PatchParams::apply("flotilla"), &Patch::Apply(&apply))
        .await
        .unwrap();
    let before = cms.get("d").await.unwrap();
    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}, "data": {"k": "w"}});
    let preview = cms
        .patch(
            "d",
            &PatchParams::apply("flotilla").dry_run(),
            &Patch::Apply(&changed),
        )
        .await
        .unwrap();
    assert_eq!(preview.data.unwrap()["k"], "w");
    cms.patch(
        "d",
        &PatchParams {
            dry_run: true,
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"data": {"k": "x"}})),
    )
    .await
    .unwrap();
    let dp = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    cms.delete("d", &dp).await.unwrap();
    let after = cms.get("d").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.data.unwrap()["k"], "v");
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_status_subresource_and_generation() {
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let deps: Api<Deployment> = Api::namespaced(client, "default");
    let pp = PatchParams::apply("flotilla");
    let mut d = deployment("s", Some(1), &[], json!({"app": "s"}));
    d["status"] = json!({"replicas": 42});
    let got = deps.patch("s", &pp, &Patch::Apply(&d)).await.unwrap();
    assert_ne!(
        got.status.and_then(|s| s.replicas),
        Some(42),
        "spec writes ignore status"
    );
    assert_eq!(got.metadata.generation, Some(1));
    let ready = poll("rollout", 10, || async {
        let d = deps.get("s").await.ok()?;
        let st = d.status.clone()?;
        (st.available_replicas == Some(1) && st.observed_generation == Some(1)).then_some(d)
    })
    .await;
    assert_eq!(
        ready.metadata.generation,
        Some(1),
        "status updates do not bump generation"
    );
    let sp = PatchParams {
        field_manager: Some("test".into()),
        ..PatchParams::default()
    };
    let got = deps
        .patch_status(
            "s",
            &sp,
            &Patch::Merge(json!({"spec": {"replicas": 7}, "status": {"collisionCount": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(
        got.spec.unwrap().replicas,
        Some(1),
        "status writes ignore spec"
    );
    assert_eq!(got.status.unwrap().collision_count, Some(2));
    assert_eq!(got.metadata.generation, Some(1));
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_watcher_sees_events_and_recovers_from_410() {
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "w"}})).unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "w");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream_api = cms.clone();
    let task = tokio::spawn(async move {
        let mut s = watcher(stream_api, watcher::Config::default().any_semantic()).boxed();
        while let Some(ev) = s.next().await {
            let desc = match ev {
                Ok(watcher::Event::Apply(c)) => format!(
                    "apply {} {}",
                    c.metadata.name.unwrap_or_default(),
                    c.data
                        .unwrap_or_default()
                        .get("k")
                        .cloned()
                        .unwrap_or_default()
                ),
                Ok(watcher::Event::Delete(c)) => {
                    format!("delete {}", c.metadata.name.unwrap_or_default())
                }
                Ok(watcher::Event::Init) => "init".to_string(),
                Ok(watcher::Event::InitApply(c)) => {
                    format!("initapply {}", c.metadata.name.unwrap_or_default())
                }
                Ok(watcher::Event::InitDone) => "initdone".to_string(),
                Err(e) => format!("error {e}"),
            };
            if tx.send(desc).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let mut wait_for = async |want: &str, seen: &mut Vec<String>| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if seen.iter().any(|s| s == want) {
                return;
            }
            let ev = tokio::time::timeout_at(deadline, rx.recv()).await;
            match ev {
                Ok(Some(e)) => seen.push(e),
                _ => panic!("no {want:?} in {seen:?}"),
            }
        }
    };
    wait_for("initdone", &mut seen).await;
    let pp = PatchParams::apply("flotilla");
    let mk = |k: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}, "data": {"k": k}});
    cms.patch("one", &pp, &Patch::Apply(&mk("1")))
        .await
        .unwrap();
    wait_for("apply one 1", &mut seen).await;
    cms.patch("one", &pp, &Patch::Apply(&mk("2")))
        .await
        .unwrap();
    wait_for("apply one 2", &mut seen).await;
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    wait_for("delete one", &mut seen).await;

    // Make the watcher's resourceVersion too old, then cut its stream.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bump"}, "stringData": {"x": "y"}});
    secrets.patch("bump", &pp, &Patch::Apply(&s)).await.unwrap();
    env.sim.compact("sim-1");
    seen.clear();
    env.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            drop_watches: true,
            ..Default::default()
        },
    );
    wait_for("init", &mut seen).await;
    wait_for("initdone", &mut seen).await;
    assert!(
        seen.iter()
            .any(|s| s.contains("410") || s.contains("too old")),
        "{seen:?}"
    );
    cms.patch(
        "two",
        &PatchParams::apply("flotilla"),
        &Patch::Apply(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two"}}),
        ),
    )
    .await
    .unwrap();
    wait_for("apply two ", &mut seen).await;
    task.abort();
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_selector_watch_sees_label_removal_as_delete() {
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut s = watcher(cms.clone(), watcher::Config::default().labels("app=x")).boxed();
    let mut next = async || loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(c) | watcher::Event::InitApply(c) => {
                return format!("apply {}", c.metadata.name.unwrap());
            }
            watcher::Event::Delete(c) => return format!("delete {}", c.metadata.name.unwrap()),
            _ => {}
        }
    };
    let pp = PatchParams::apply("flotilla");
    let with = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l", "labels": {"app": "x"}}});
    cms.patch("l", &pp, &Patch::Apply(&with)).await.unwrap();
    assert_eq!(next().await, "apply l");
    let without = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l"}});
    cms.patch("l", &pp, &Patch::Apply(&without)).await.unwrap();
    assert_eq!(next().await, "delete l");
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_discovery_finds_crds_once_established() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::discovery::{Discovery, Scope};
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.example.org"},
        "spec": {"group": "example.org", "scope": "Cluster", "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    crds.patch(
        "gizmos.example.org",
        &PatchParams::apply("flotilla"),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    poll("Established", 10, || async {
        let c = crds.get("gizmos.example.org").await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    let d = Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = d
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "Gizmo")
        .unwrap();
    assert_eq!(caps.scope, Scope::Cluster);
    // Aggregated discovery (apidiscovery.k8s.io/v2) sees the same.
    let agg = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert!(
        agg.groups()
            .flat_map(|g| g.recommended_resources())
            .any(|(ar, _)| ar.kind == "Gizmo")
    );
    assert!(
        agg.groups()
            .flat_map(|g| g.recommended_resources())
            .any(|(ar, c)| ar.kind == "Deployment" && c.scope == Scope::Namespaced)
    );
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj = json!({"apiVersion": "example.org/v1", "kind": "Gizmo", "metadata": {"name": "g1"}, "spec": {"any": 1}});
    api.patch("g1", &PatchParams::apply("flotilla"), &Patch::Apply(&obj))
        .await
        .unwrap();
    assert_eq!(api.get("g1").await.unwrap().data["spec"]["any"], 1);
    // Deleting the CRD removes its objects and its API.
    crds.delete("gizmos.example.org", &DeleteParams::default())
        .await
        .unwrap();
    let err = api.get("g1").await.unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err:?}")
    };
    assert_eq!(s.code, 404);
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_concurrent_appliers_lose_nothing() {
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let cms = cms.clone();
            tokio::spawn(async move {
                let key = format!("k{i}");
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "race"}, "data": {key: "v"}});
                cms.patch("race", &PatchParams::apply(&format!("m{i}")), &Patch::Apply(&cm)).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let got = cms.get("race").await.unwrap();
    assert_eq!(got.data.unwrap().len(), 20);
    assert_eq!(got.metadata.managed_fields.unwrap().len(), 20);
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_streaming_list_watcher() {
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PatchParams::apply("flotilla");
    let cm = |n: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n}});
    cms.patch("before", &pp, &Patch::Apply(&cm("before")))
        .await
        .unwrap();
    let mut s = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&"initdone".to_string()) {
        match tokio::time::timeout_at(deadline, s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(c) => seen.push(c.metadata.name.unwrap()),
            watcher::Event::InitDone => seen.push("initdone".into()),
            _ => {}
        }
    }
    assert!(seen.contains(&"before".to_string()), "{seen:?}");
    cms.patch("after", &pp, &Patch::Apply(&cm("after")))
        .await
        .unwrap();
    loop {
        if let watcher::Event::Apply(c) = tokio::time::timeout_at(deadline, s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            && c.metadata.name.as_deref() == Some("after")
        {
            break;
        }
    }
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_finalizers_and_garbage_collection() {
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let pp = PatchParams::apply("flotilla");

    // Finalizers hold deletion until removed.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fin", "finalizers": ["example.com/hold"]}});
    cms.patch("fin", &pp, &Patch::Apply(&cm)).await.unwrap();
    cms.delete("fin", &DeleteParams::default()).await.unwrap();
    let held = cms.get("fin").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let edit = PatchParams {
        field_manager: Some("ctl".into()),
        ..PatchParams::default()
    };
    cms.patch(
        "fin",
        &edit,
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("fin").await.unwrap().is_none());

    // Background deletion removes dependents; Orphan keeps them without the owner reference.
    for (owner, policy) in [
        ("owner-bg", DeleteParams::background()),
        ("owner-fg", DeleteParams::foreground()),
        ("owner-orphan", DeleteParams::orphan()),
    ] {
        let o = cms
            .patch(
                owner,
                &pp,
                &Patch::Apply(
                    &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": owner}}),
                ),
            )
            .await
            .unwrap();
        let uid = o.metadata.uid.unwrap();
        let dep = format!("{owner}-dep");
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": dep,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": uid}]}});
        secrets.patch(&dep, &pp, &Patch::Apply(&s)).await.unwrap();
        cms.delete(owner, &policy).await.unwrap();
        let left = poll("garbage collection", 10, || async {
            let s = secrets.get_opt(&dep).await.unwrap();
            match (owner, s) {
                ("owner-bg" | "owner-fg", None) => Some(None),
                ("owner-orphan", Some(s))
                    if s.metadata
                        .owner_references
                        .as_ref()
                        .is_none_or(Vec::is_empty) =>
                {
                    Some(Some(s))
                }
                _ => None,
            }
        })
        .await;
        assert_eq!(left.is_some(), owner == "owner-orphan");
        poll("owner gone", 10, || async {
            cms.get_opt(owner).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_immutable_fields_are_refused() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let env = start(1, Duration::from_millis(100)).await;
    let client = env.client("sim-1").await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pp = PatchParams::apply("flotilla");
    let mk = |svc: &str, image: &str| {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"serviceName": svc, "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": image}]}}}})
    };
    sts.patch("db", &pp, &Patch::Apply(&mk("db", "postgres:16")))
        .await
        .unwrap();
    sts.patch("db", &pp, &Patch::Apply(&mk("db", "postgres:17")))
        .await
        .unwrap();
    let err = sts
        .patch("db", &pp, &Patch::Apply(&mk("other", "postgres:17")))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err:?}")
    };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.contains("Forbidden: updates to statefulset spec"),
        "{}",
        s.message
    );
    let deps: Api<Deployment> = Api::namespaced(client, "default");
    deps.patch(
        "d",
        &pp,
        &Patch::Apply(&deployment("d", Some(1), &[], json!({"app": "d"}))),
    )
    .await
    .unwrap();
    let mut changed = deployment("d", Some(1), &[], json!({"app": "d"}));
    changed["spec"]["selector"]["matchLabels"]["tier"] = json!("x");
    changed["spec"]["template"]["metadata"]["labels"]["tier"] = json!("x");
    let err = deps
        .patch("d", &pp, &Patch::Apply(&changed))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err:?}")
    };
    assert_eq!(s.code, 422);
    assert!(s.message.contains("field is immutable"), "{}", s.message);
    env.sim.shutdown().await;
}
