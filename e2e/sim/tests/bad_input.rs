//! Bad requests get Kubernetes `Status` errors, the server keeps serving and
//! no state changes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::start;
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// method, path, content type, body, expected code, expected reason.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    ct: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(kube::client::Body::from(body))
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn assert_status(got: &(u16, Value), code: u16, reason: &str) {
    assert_eq!(got.0, code, "{}", got.1);
    assert_eq!(got.1["kind"], "Status", "{}", got.1);
    assert_eq!(got.1["status"], "Failure");
    assert_eq!(got.1["code"], code);
    assert_eq!(got.1["reason"], reason, "{}", got.1);
}

async fn rv(client: &kube::Client) -> String {
    // A fresh list in every resource used below reports the cluster-wide resourceVersion.
    let (_, v) = raw(
        client,
        "GET",
        "/api/v1/configmaps",
        "application/json",
        vec![],
    )
    .await;
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_errors_and_change_nothing() {
    let env = start(1, Duration::from_millis(100)).await;
    let c = env.client("sim-1").await;
    let j = "application/json";
    let cm = |name: &str, ns: &str| {
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"a": "b"}})).unwrap()
    };
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        j,
        cm("keep", "default"),
    )
    .await;
    assert_eq!(code, 201);
    let before = rv(&c).await;

    let cases: Vec<Case> = vec![
        ("POST", "/api/v1/namespaces/default/configmaps", j, b"{not json".to_vec(), 400, "BadRequest"),
        ("POST", "/api/v1/namespaces/default/configmaps", "application/yaml", b"a: [unclosed".to_vec(), 400, "BadRequest"),
        ("POST", "/api/v1/namespaces/default/configmaps", j, br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#.to_vec(), 400, "BadRequest"),
        ("POST", "/api/v1/namespaces/default/configmaps", j, cm("x", "other"), 400, "BadRequest"),
        ("POST", "/api/v1/namespaces/missing/configmaps", j, cm("x", "missing"), 404, "NotFound"),
        ("POST", "/api/v1/namespaces/default/configmaps", j, cm("keep", "default"), 409, "AlreadyExists"),
        ("POST", "/api/v1/namespaces/default/configmaps", j, cm("Bad_Name", "default"), 422, "Invalid"),
        ("POST", "/apis/example.com/v1/namespaces/default/gizmos", j, br#"{"apiVersion":"example.com/v1","kind":"Gizmo","metadata":{"name":"g"}}"#.to_vec(), 404, "NotFound"),
        ("PATCH", "/apis/example.com/v1/namespaces/default/gizmos/g?fieldManager=t", "application/apply-patch+yaml", br#"{"apiVersion":"example.com/v1","kind":"Gizmo","metadata":{"name":"g"}}"#.to_vec(), 404, "NotFound"),
        // Wrong scope: cluster-scoped kind under a namespace, namespaced kind without one.
        ("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/clusterroles", j, br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"r"}}"#.to_vec(), 404, "NotFound"),
        ("GET", "/api/v1/configmaps/keep", j, vec![], 404, "NotFound"),
        ("PUT", "/api/v1/namespaces/default/configmaps", j, cm("keep", "default"), 405, "MethodNotAllowed"),
        ("PUT", "/api/v1/namespaces/default/configmaps/keep", j, serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep", "resourceVersion": "1"}, "data": {}})).unwrap(), 409, "Conflict"),
        ("PATCH", "/api/v1/namespaces/default/configmaps/keep", "application/json-patch+json", br#"[{"op":"remove","path":"/nope"}]"#.to_vec(), 422, "Invalid"),
        ("PATCH", "/api/v1/namespaces/default/configmaps/keep", "application/merge-patch+json", b"[1,2]".to_vec(), 400, "BadRequest"),
        ("PATCH", "/api/v1/namespaces/default/configmaps/keep", "application/apply-patch+yaml", cm("keep", "default"), 422, "Invalid"),
        ("POST", "/api/v1/namespaces/default/configmaps?dryRun=Some", j, cm("y", "default"), 400, "BadRequest"),
        ("POST", "/apis/apps/v1/namespaces/default/deployments", j, serde_json::to_vec(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})).unwrap(), 422, "Invalid"),
    ];
    for (method, path, ct, body, code, reason) in cases {
        let got = raw(&c, method, path, ct, body).await;
        assert_eq!(got.0, code, "{method} {path}: {}", got.1);
        assert_status(&got, code, reason);
    }
    // Oversized bodies: 413, and the connection pool keeps working afterwards.
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"x": "a".repeat(4 * 1024 * 1024)}});
    let got = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        j,
        serde_json::to_vec(&big).unwrap(),
    )
    .await;
    assert_status(&got, 413, "RequestEntityTooLarge");

    assert_eq!(rv(&c).await, before, "no state changed");
    let (code, v) = raw(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps/keep",
        j,
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["data"]["a"], "b");
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_and_restart() {
    let env = start(1, Duration::from_millis(100)).await;
    let c = env.client_with("sim-1", false).await;
    env.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            error_rate: 1.0,
            error_code: 429,
            ..Default::default()
        },
    );
    let req = http::Request::builder()
        .uri("/api/v1/namespaces")
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    env.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            down: true,
            ..Default::default()
        },
    );
    assert!(c.apiserver_version().await.is_err());
    env.sim.set_faults("sim-1", flotilla_sim::Faults::default());
    let c = env.client("sim-1").await;
    c.apiserver_version().await.unwrap();
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"s"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 201);
    let stats = env.sim.stats("sim-1").unwrap();
    assert!(stats["requests"].as_u64().unwrap() >= 4, "{stats}");
    assert_eq!(stats["writes"], 1);
    env.sim.restart("sim-1", true);
    assert_eq!(
        raw(
            &c,
            "GET",
            "/api/v1/namespaces/default/configmaps/s",
            "application/json",
            vec![]
        )
        .await
        .0,
        200
    );
    env.sim.restart("sim-1", false);
    assert_eq!(
        raw(
            &c,
            "GET",
            "/api/v1/namespaces/default/configmaps/s",
            "application/json",
            vec![]
        )
        .await
        .0,
        404
    );
    assert_eq!(
        raw(
            &c,
            "GET",
            "/api/v1/namespaces/default",
            "application/json",
            vec![]
        )
        .await
        .0,
        200
    );
    env.sim.shutdown().await;
}

/// Polls the `held` counter until it is `n`.
async fn wait_held(env: &common::Env, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held = env.sim.stats("sim-1").unwrap()["held"].as_u64().unwrap();
        if held == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "held is {held}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn create_cm(name: &str) -> Vec<u8> {
    format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#)
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_wait_for_the_next_setting() {
    let env = start(1, Duration::from_millis(100)).await;
    let c = env.client_with("sim-1", false).await;
    let post = |name: &'static str| {
        let c = c.clone();
        async move {
            raw(
                &c,
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                create_cm(name),
            )
            .await
            .0
        }
    };
    let get = |name: &'static str| {
        let c = c.clone();
        async move {
            raw(
                &c,
                "GET",
                &format!("/api/v1/namespaces/default/configmaps/{name}"),
                "application/json",
                vec![],
            )
            .await
            .0
        }
    };
    // One request goes through, the second is held before it is carried
    // out; released, it is carried out.
    env.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            hold_after_requests: Some(1),
            ..Default::default()
        },
    );
    assert_eq!(post("first").await, 201);
    let second = tokio::spawn(post("second"));
    wait_held(&env, 1).await;
    env.sim.set_faults("sim-1", flotilla_sim::Faults::default());
    assert_eq!(second.await.unwrap(), 201);
    wait_held(&env, 0).await;
    assert_eq!(get("second").await, 200);

    // Held before it is carried out and released as down: never happened.
    env.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            hold_after_requests: Some(0),
            ..Default::default()
        },
    );
    let lost = tokio::spawn(post("lost"));
    wait_held(&env, 1).await;
    env.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            down: true,
            ..Default::default()
        },
    );
    let client_saw = tokio::time::timeout(Duration::from_secs(20), lost)
        .await
        .unwrap();
    assert!(client_saw.is_err(), "the client got an answer");
    wait_held(&env, 0).await;
    env.sim.set_faults("sim-1", flotilla_sim::Faults::default());
    assert_eq!(get("lost").await, 404);

    // Held after it was carried out: the write happened, the client never
    // hears of it.
    env.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            hold_after_requests: Some(0),
            hold_processed: true,
            ..Default::default()
        },
    );
    let unanswered = tokio::spawn(post("unanswered"));
    wait_held(&env, 1).await;
    unanswered.abort();
    env.sim.set_faults("sim-1", flotilla_sim::Faults::default());
    wait_held(&env, 0).await;
    assert_eq!(get("unanswered").await, 200);
    env.sim.shutdown().await;
}
