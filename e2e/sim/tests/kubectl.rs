//! The real kubectl binary against the simulator.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{fixture, poll, start};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_diff_wait_delete() {
    let env = start(1, Duration::from_millis(300)).await;
    let manifest = fixture("app.yaml");
    let m = manifest.to_str().unwrap();
    // The Widget needs its CRD established first, exactly as on a real cluster:
    // re-apply until everything goes through.
    poll("multi-document apply", 20, || async {
        env.kubectl("sim-1", &["apply", "--server-side", "-f", m])
            .await
            .status
            .success()
            .then_some(())
    })
    .await;

    // Defaults and managedFields.
    let d = json(
        &env.kubectl_ok(
            "sim-1",
            &[
                "get",
                "-n",
                "demo",
                "deployment/web",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        )
        .await,
    );
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["ports"][0]["protocol"], "TCP");
    let mf = &d["metadata"]["managedFields"][0];
    assert_eq!(mf["manager"], "kubectl");
    assert_eq!(mf["operation"], "Apply");
    assert!(mf["fieldsV1"]["f:spec"]["f:replicas"].is_object());
    assert!(
        mf["fieldsV1"]["f:spec"]
            .get("f:revisionHistoryLimit")
            .is_none(),
        "defaults are not owned"
    );
    let yaml = env
        .kubectl_ok("sim-1", &["get", "-n", "demo", "service/web", "-o", "yaml"])
        .await;
    assert!(yaml.contains("clusterIP: 10.96."), "{yaml}");
    assert!(yaml.contains("ipFamilyPolicy: SingleStack"));
    let w = json(
        &env.kubectl_ok(
            "sim-1",
            &["get", "-n", "demo", "widget/gadget", "-o", "json"],
        )
        .await,
    );
    assert_eq!(w["spec"]["size"], 3);

    // Rollout completes.
    env.kubectl_ok(
        "sim-1",
        &[
            "wait",
            "-n",
            "demo",
            "--for=condition=Available",
            "deployment/web",
            "--timeout=20s",
        ],
    )
    .await;

    // The Deployment owns a ReplicaSet, which owns one Pod per replica.
    let pods = poll("pods", 10, || async {
        let out = env
            .kubectl_ok("sim-1", &["get", "pods", "-n", "demo", "-o", "name"])
            .await;
        (out.lines().count() == 2).then_some(out)
    })
    .await;
    assert!(pods.lines().all(|l| l.starts_with("pod/web-")), "{pods}");

    // Human-readable tables carry the usual columns.
    let table = env
        .kubectl_ok("sim-1", &["get", "-n", "demo", "deployment/web"])
        .await;
    assert!(table.contains("READY") && table.contains("2/2"), "{table}");

    // diff: clean right after apply, different after another manager's change.
    let out = env
        .kubectl("sim-1", &["diff", "--server-side", "-f", m])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    env.kubectl_ok(
        "sim-1",
        &[
            "patch",
            "-n",
            "demo",
            "deployment/web",
            "-p",
            r#"{"spec":{"replicas":5}}"#,
        ],
    )
    .await;
    let out = env
        .kubectl(
            "sim-1",
            &["diff", "--server-side", "--force-conflicts", "-f", m],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("replicas: 5"));
    // Without --force-conflicts the server reports the conflict.
    let out = env
        .kubectl("sim-1", &["apply", "--server-side", "-f", m])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"conflict with "kubectl-patch""#));

    // Namespace deletion cascades.
    env.kubectl_ok("sim-1", &["delete", "namespace", "demo", "--timeout=20s"])
        .await;
    let left = env
        .kubectl_ok(
            "sim-1",
            &[
                "get",
                "deployments,replicasets,pods,services,configmaps,widgets",
                "-A",
                "-o",
                "name",
            ],
        )
        .await;
    assert!(left.trim().is_empty(), "left: {left}");
    let out = env.kubectl("sim-1", &["get", "namespace", "demo"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_patch_types_label_annotate() {
    let env = start(1, Duration::from_millis(200)).await;
    let manifest = fixture("app.yaml");
    let m = manifest.to_str().unwrap();
    poll("apply", 20, || async {
        env.kubectl("sim-1", &["apply", "--server-side", "-f", m])
            .await
            .status
            .success()
            .then_some(())
    })
    .await;
    let ns = ["-n", "demo"];
    let k = |args: &'static [&'static str]| {
        let mut v: Vec<&str> = ns.to_vec();
        v.extend_from_slice(args);
        v
    };
    env.kubectl_ok("sim-1", &k(&["patch", "deployment/web", "--type=strategic", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.28"}]}}}}"#])).await;
    env.kubectl_ok(
        "sim-1",
        &k(&[
            "patch",
            "deployment/web",
            "--type=merge",
            "-p",
            r#"{"spec":{"minReadySeconds":3}}"#,
        ]),
    )
    .await;
    env.kubectl_ok(
        "sim-1",
        &k(&[
            "patch",
            "deployment/web",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/paused","value":true}]"#,
        ]),
    )
    .await;
    env.kubectl_ok(
        "sim-1",
        &k(&[
            "patch",
            "widget/gadget",
            "--type=merge",
            "-p",
            r#"{"spec":{"color":"red"}}"#,
        ]),
    )
    .await;
    env.kubectl_ok("sim-1", &k(&["label", "deployment/web", "tier=frontend"]))
        .await;
    env.kubectl_ok("sim-1", &k(&["annotate", "deployment/web", "owner=team-a"]))
        .await;
    let d = json(
        &env.kubectl_ok(
            "sim-1",
            &k(&[
                "get",
                "deployment/web",
                "-o",
                "json",
                "--show-managed-fields",
            ]),
        )
        .await,
    );
    let c = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        c.as_array().unwrap().len(),
        1,
        "strategic merge keeps one container"
    );
    assert_eq!(c[0]["image"], "nginx:1.28");
    assert_eq!(
        c[0]["env"][0]["name"], "MODE",
        "strategic merge keeps unrelated fields"
    );
    assert_eq!(d["spec"]["minReadySeconds"], 3);
    assert_eq!(d["spec"]["paused"], true);
    assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(d["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(
        d["metadata"]["generation"], 4,
        "three spec patches, label and annotation do not count"
    );
    let managers: Vec<(String, String)> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_string(),
                e["operation"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for m in ["kubectl-patch", "kubectl-label", "kubectl-annotate"] {
        assert!(
            managers.contains(&(m.to_string(), "Update".to_string())),
            "{managers:?}"
        );
    }
    env.kubectl_ok("sim-1", &k(&["scale", "deployment/web", "--replicas=4"]))
        .await;
    let d = json(
        &env.kubectl_ok("sim-1", &k(&["get", "deployment/web", "-o", "json"]))
            .await,
    );
    assert_eq!(d["spec"]["replicas"], 4);
    let w = json(
        &env.kubectl_ok("sim-1", &k(&["get", "widget/gadget", "-o", "json"]))
            .await,
    );
    assert_eq!(w["spec"]["color"], "red");
    // Strategic merge patch is refused for custom resources, as in Kubernetes.
    let out = env
        .kubectl(
            "sim-1",
            &k(&[
                "patch",
                "widget/gadget",
                "--type=strategic",
                "-p",
                r#"{"spec":{"color":"x"}}"#,
            ]),
        )
        .await;
    assert!(!out.status.success());
    // Failing image: the rollout times out.
    env.kubectl_ok("sim-1", &k(&["patch", "deployment/web", "--type=merge", "-p", r#"{"spec":{"paused":false,"template":{"spec":{"containers":[{"name":"web","image":"nginx:fail"}]}}}}"#])).await;
    env.kubectl_ok("sim-1", &k(&["wait", "--for=jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}=ProgressDeadlineExceeded", "deployment/web", "--timeout=20s"])).await;
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_validated_against_the_crd_schema() {
    let env = start(1, Duration::from_millis(100)).await;
    let manifest = fixture("app.yaml");
    let m = manifest.to_str().unwrap();
    poll("apply", 20, || async {
        env.kubectl("sim-1", &["apply", "--server-side", "-f", m])
            .await
            .status
            .success()
            .then_some(())
    })
    .await;
    let dir = env.dir.path();
    let bad = dir.join("bad.yaml");
    // kubectl asks for fieldValidation=Strict: unknown fields are refused.
    std::fs::write(&bad, "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: gadget\n  namespace: demo\nspec:\n  size: 3\n  extra: 1\n").unwrap();
    let out = env
        .kubectl(
            "sim-1",
            &["apply", "--server-side", "-f", bad.to_str().unwrap()],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"unknown field "spec.extra""#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wrong types are Invalid.
    std::fs::write(&bad, "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: gadget\n  namespace: demo\nspec:\n  size: big\n").unwrap();
    let out = env
        .kubectl(
            "sim-1",
            &["apply", "--server-side", "-f", bad.to_str().unwrap()],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be of type integer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without strict validation unknown fields are pruned.
    let out = env.kubectl("sim-1", &["apply", "--server-side", "--validate=false", "-f", {
        std::fs::write(&bad, "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: gadget\n  namespace: demo\nspec:\n  size: 3\n  extra: 1\n").unwrap();
        bad.to_str().unwrap()
    }]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = json(
        &env.kubectl_ok(
            "sim-1",
            &["get", "-n", "demo", "widget/gadget", "-o", "json"],
        )
        .await,
    );
    assert!(w["spec"].get("extra").is_none(), "{w}");
    assert_eq!(w["spec"]["size"], 3);
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_generators_and_auth_can_i() {
    let env = start(1, Duration::from_millis(100)).await;
    // These commands send protobuf bodies.
    env.kubectl_ok("sim-1", &["create", "namespace", "gen"])
        .await;
    env.kubectl_ok(
        "sim-1",
        &[
            "create",
            "configmap",
            "c",
            "-n",
            "gen",
            "--from-literal=a=b",
        ],
    )
    .await;
    env.kubectl_ok(
        "sim-1",
        &[
            "create",
            "secret",
            "generic",
            "s",
            "-n",
            "gen",
            "--from-literal=p=q",
        ],
    )
    .await;
    let cm = json(
        &env.kubectl_ok(
            "sim-1",
            &["get", "configmap", "c", "-n", "gen", "-o", "json"],
        )
        .await,
    );
    assert_eq!(cm["data"]["a"], "b");
    let s = json(
        &env.kubectl_ok("sim-1", &["get", "secret", "s", "-n", "gen", "-o", "json"])
            .await,
    );
    assert_eq!(s["data"]["p"], "cQ==");
    assert_eq!(s["type"], "Opaque");
    let out = env
        .kubectl_ok("sim-1", &["auth", "can-i", "create", "deployments"])
        .await;
    assert_eq!(out.trim(), "yes");
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_client_side_apply_and_edit() {
    let env = start(1, Duration::from_millis(100)).await;
    let manifest = fixture("app.yaml");
    let m = manifest.to_str().unwrap();
    poll("client-side apply", 20, || async {
        env.kubectl("sim-1", &["apply", "-f", m])
            .await
            .status
            .success()
            .then_some(())
    })
    .await;
    // A second client-side apply is a no-op.
    let out = env.kubectl_ok("sim-1", &["apply", "-f", m]).await;
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    // kubectl edit with a scripted editor records a kubectl-edit Update.
    let out = env
        .kubectl_env(
            "sim-1",
            &["edit", "-n", "demo", "deployment/web"],
            &[("KUBE_EDITOR", "sed -i -e s/replicas:\\ 2/replicas:\\ 7/")],
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = json(
        &env.kubectl_ok(
            "sim-1",
            &[
                "get",
                "-n",
                "demo",
                "deployment/web",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        )
        .await,
    );
    assert_eq!(d["spec"]["replicas"], 7);
    let edit = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "kubectl-edit")
        .unwrap()
        .clone();
    assert_eq!(edit["operation"], "Update");
    assert!(
        edit["fieldsV1"]["f:spec"]["f:replicas"].is_object(),
        "{edit}"
    );
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_refuses_unknown_fields_in_built_ins() {
    let env = start(1, Duration::from_millis(100)).await;
    let f = env.dir.path().join("typo.yaml");
    std::fs::write(
        &f,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: t\nspec:\n  replica: 3\n  selector:\n    matchLabels: {app: t}\n  template:\n    metadata:\n      labels: {app: t}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        imagePullPolcy: Always\n",
    )
    .unwrap();
    let path = f.to_str().unwrap();
    let out = env
        .kubectl("sim-1", &["apply", "--server-side", "-f", path])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(r#"unknown field "spec.replica""#), "{err}");
    assert!(
        err.contains(r#"unknown field "spec.template.spec.containers[0].imagePullPolcy""#),
        "{err}"
    );
    // With validation off the unknown fields are dropped, as the API server does.
    env.kubectl_ok(
        "sim-1",
        &["apply", "--server-side", "--validate=false", "-f", path],
    )
    .await;
    let d = json(
        &env.kubectl_ok("sim-1", &["get", "deployment/t", "-o", "json"])
            .await,
    );
    assert!(d["spec"].get("replica").is_none());
    assert_eq!(d["spec"]["replicas"], 1);
    env.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_string_data_is_folded_into_data_on_every_write() {
    let env = start(1, Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.yaml");
    let write = |text: &str| std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    // Server-side apply: stringData wins over data for the same key.
    write(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: default\n\
         data:\n  user: YWRtaW4=\n  password: b2xk\nstringData:\n  password: hunter2\n",
    );
    env.kubectl_ok("sim-1", &["apply", "--server-side", "-f", p])
        .await;
    let s = json(
        &env.kubectl_ok("sim-1", &["get", "secret", "db", "-o", "json"])
            .await,
    );
    assert!(s.get("stringData").is_none(), "stringData returned: {s}");
    assert_eq!(s["data"]["user"], "YWRtaW4=");
    assert_eq!(s["data"]["password"], "aHVudGVyMg==", "{s}");
    assert_eq!(s["type"], "Opaque");
    // Client-side apply (create, then a patch) and create do the same.
    write(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: csa\n  namespace: default\n\
         stringData:\n  token: abc\n",
    );
    env.kubectl_ok("sim-1", &["apply", "-f", p]).await;
    write(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: csa\n  namespace: default\n\
         stringData:\n  token: xyz\n",
    );
    env.kubectl_ok("sim-1", &["apply", "-f", p]).await;
    let s = json(
        &env.kubectl_ok("sim-1", &["get", "secret", "csa", "-o", "json"])
            .await,
    );
    assert!(s.get("stringData").is_none(), "stringData returned: {s}");
    assert_eq!(s["data"]["token"], "eHl6", "{s}");
    // A merge patch that sets stringData.
    env.kubectl_ok(
        "sim-1",
        &[
            "patch",
            "secret",
            "csa",
            "--type=merge",
            "-p",
            r#"{"stringData":{"extra":"e"}}"#,
        ],
    )
    .await;
    let s = json(
        &env.kubectl_ok("sim-1", &["get", "secret", "csa", "-o", "json"])
            .await,
    );
    assert!(s.get("stringData").is_none(), "stringData returned: {s}");
    assert_eq!(s["data"]["extra"], "ZQ==", "{s}");
    assert_eq!(s["data"]["token"], "eHl6", "{s}");
    // A value that is not a string is refused, naming the field.
    write(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad\n  namespace: default\n\
         stringData:\n  port: 5432\n",
    );
    let out = env
        .kubectl("sim-1", &["apply", "--server-side", "-f", p])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Secret.stringData.port"), "{err}");
    let out = env
        .kubectl("sim-1", &["get", "secret", "bad", "-o", "name"])
        .await;
    assert!(!out.status.success(), "the refused Secret was stored");
}
