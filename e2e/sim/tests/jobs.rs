//! Jobs and run-to-completion Pods, `metadata.generateName` and the `all`
//! category, checked with the real kubectl.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Env, poll, start};

fn write(env: &Env, name: &str, yaml: &str) -> String {
    let path = env.dir.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

fn is_generated(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|s| {
        s.len() == 5 && s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_name_on_create_and_never_on_apply() {
    let env = start(1, Duration::from_millis(300)).await;
    let file = write(
        &env,
        "gen.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: settings-\n  namespace: default\ndata:\n  k: v\n",
    );
    let first = env
        .kubectl_ok("sim-1", &["create", "-f", &file, "-o", "name"])
        .await;
    let second = env
        .kubectl_ok("sim-1", &["create", "-f", &file, "-o", "name"])
        .await;
    let (first, second) = (first.trim(), second.trim());
    assert!(
        is_generated(first, "configmap/settings-"),
        "generated name {first:?}"
    );
    assert!(is_generated(second, "configmap/settings-"), "{second:?}");
    assert_ne!(first, second, "each create generates a new name");
    let names = env
        .kubectl_ok(
            "sim-1",
            &["get", "configmaps", "-n", "default", "-o", "name"],
        )
        .await;
    assert!(names.contains(first) && names.contains(second), "{names}");

    // Apply needs a name: kubectl refuses client-side and server-side, and
    // the API server refuses a PATCH without a name (the collection URL).
    for args in [
        vec!["apply", "-f", file.as_str()],
        vec!["apply", "--server-side", "-f", file.as_str()],
    ] {
        let out = env.kubectl("sim-1", &args).await;
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("generate name"), "{args:?}: {err}");
    }
    let client = env.client("sim-1").await;
    let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"generateName": "settings-"}});
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps?fieldManager=test")
        .header("content-type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    match client.request::<serde_json::Value>(req).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 405, "{s:?}"),
        other => panic!("PATCH without a name: {other:?}"),
    }
    // Nothing else was created.
    let count = env
        .kubectl_ok(
            "sim-1",
            &["get", "configmaps", "-n", "default", "-o", "name"],
        )
        .await
        .lines()
        .filter(|l| l.starts_with("configmap/settings-"))
        .count();
    assert_eq!(count, 2);
}

const JOBS: &str = r"
apiVersion: batch/v1
kind: Job
metadata: {name: ok, namespace: default}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox:1.36}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: bad, namespace: default}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox:fail}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: forever, namespace: default}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: 'busybox:never-ready'}]
---
apiVersion: v1
kind: Pod
metadata: {name: once, namespace: default}
spec:
  restartPolicy: Never
  containers: [{name: main, image: busybox:1.36}]
---
apiVersion: v1
kind: Pod
metadata: {name: crash, namespace: default}
spec:
  restartPolicy: OnFailure
  containers: [{name: main, image: busybox:fail}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_pods_run_to_completion_fail_or_hang() {
    let env = start(1, Duration::from_millis(300)).await;
    let file = write(&env, "jobs.yaml", JOBS);
    env.kubectl_ok("sim-1", &["apply", "--server-side", "-f", &file])
        .await;
    env.kubectl_ok(
        "sim-1",
        &[
            "wait",
            "--for=condition=complete",
            "job/ok",
            "-n",
            "default",
            "--timeout=30s",
        ],
    )
    .await;
    env.kubectl_ok(
        "sim-1",
        &[
            "wait",
            "--for=condition=failed",
            "job/bad",
            "-n",
            "default",
            "--timeout=30s",
        ],
    )
    .await;
    for (pod, phase) in [("once", "Succeeded"), ("crash", "Failed")] {
        env.kubectl_ok(
            "sim-1",
            &[
                "wait",
                &format!("--for=jsonpath={{.status.phase}}={phase}"),
                &format!("pod/{pod}"),
                "-n",
                "default",
                "--timeout=30s",
            ],
        )
        .await;
    }
    // Each Job owns one pod, labelled with its name, that ends with it.
    for (job, phase) in [
        ("ok", "Succeeded"),
        ("bad", "Failed"),
        ("forever", "Running"),
    ] {
        let selector = format!("job-name={job}");
        let got =
            poll(&format!("the pod of job {job} {phase}"), 30, || async {
                let out = env
                .kubectl_ok(
                    "sim-1",
                    &[
                        "get", "pods", "-n", "default", "-l", &selector, "-o",
                        "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}",
                    ],
                )
                .await;
                let lines: Vec<String> = out.lines().map(str::to_owned).collect();
                (lines.len() == 1 && lines[0].ends_with(phase)).then_some(lines)
            })
            .await;
        let name = got[0].split(' ').next().unwrap_or_default();
        assert!(is_generated(name, &format!("{job}-")), "{name}");
    }
    // The hanging Job stays active: well past the rollout delay, no
    // condition and one active pod.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let forever = env
        .kubectl_ok(
            "sim-1",
            &["get", "job", "forever", "-n", "default", "-o", "json"],
        )
        .await;
    let forever: serde_json::Value = serde_json::from_str(&forever).unwrap();
    assert_eq!(forever["status"]["active"], 1, "{forever}");
    assert!(forever["status"]["conditions"].is_null(), "{forever}");
    // Deleting a Job deletes its pod.
    env.kubectl_ok("sim-1", &["delete", "job", "ok", "-n", "default"])
        .await;
    let left = env
        .kubectl_ok(
            "sim-1",
            &[
                "get",
                "pods",
                "-n",
                "default",
                "-l",
                "job-name=ok",
                "-o",
                "name",
            ],
        )
        .await;
    assert!(left.trim().is_empty(), "{left}");
}

const WEB: &str = r"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx:1.27}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web, namespace: default}
data: {k: v}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: default}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox:1.36}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_all_lists_the_workload_kinds() {
    let env = start(1, Duration::from_millis(300)).await;
    let file = write(&env, "web.yaml", WEB);
    env.kubectl_ok("sim-1", &["apply", "--server-side", "-f", &file])
        .await;
    let names = poll("every kind of `all`", 30, || async {
        let out = env
            .kubectl_ok("sim-1", &["get", "all", "-n", "default", "-o", "name"])
            .await;
        let names: Vec<String> = out.lines().map(str::to_owned).collect();
        let has = |p: &str| names.iter().any(|n| n.starts_with(p));
        (has("pod/web-")
            && has("pod/once-")
            && has("replicaset.apps/web-")
            && names.contains(&"deployment.apps/web".to_owned())
            && names.contains(&"service/web".to_owned())
            && names.contains(&"job.batch/once".to_owned()))
        .then_some(names)
    })
    .await;
    assert!(
        !names.iter().any(|n| n.starts_with("configmap/")),
        "ConfigMaps are not in `all`: {names:?}"
    );
    // The table form works too, one block per kind.
    let table = env
        .kubectl_ok("sim-1", &["get", "all", "-n", "default"])
        .await;
    for header in ["deployment.apps/web", "service/web", "job.batch/once"] {
        assert!(table.contains(header), "{table}");
    }
}
