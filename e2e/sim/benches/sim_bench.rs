//! Simulator benchmark: idle memory per virtual cluster, and server-side
//! apply throughput through kube-rs versus `kubectl apply --server-side`.
//!
//! Run: `cargo bench -p flotilla-sim --bench sim-bench` (release), or
//! `cargo test -p flotilla-sim --bench sim-bench --profile dev` for a quick look.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use flotilla_sim::{SimConfig, Simulator};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn set(i: usize, image: &str) -> Vec<Value> {
    let name = format!("app-{i}");
    vec![
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "web", "image": image,
                    "ports": [{"containerPort": 8080}], "env": [{"name": "MODE", "value": "prod"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": {"config.yaml": "greeting: hello\nlevel: info\n"}}),
    ]
}

fn api_resource(obj: &Value) -> (ApiResource, String) {
    let kind = obj["kind"].as_str().unwrap();
    let av = obj["apiVersion"].as_str().unwrap();
    let (group, version) = av.split_once('/').unwrap_or(("", av));
    let plural = format!("{}s", kind.to_lowercase());
    (
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: av.into(),
            kind: kind.into(),
            plural,
        },
        obj["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

#[tokio::main]
async fn main() {
    let clusters: usize = std::env::var("SIM_BENCH_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let sets: usize = std::env::var("SIM_BENCH_SETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);

    // Idle memory.
    let before = rss_kib();
    let big = Simulator::start(SimConfig {
        clusters,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    let per_cluster = (after.saturating_sub(before)) as f64 / clusters as f64;
    big.shutdown().await;

    // SSA throughput through kube-rs.
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig {
        kubeconfig_dir: Some(dir.path().to_path_buf()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_yaml("sim-1")).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let pp = PatchParams::apply("flotilla").force();
    let mut kube_rates = Vec::new();
    for (round, image) in [(0, "nginx:1.27"), (1, "nginx:1.28")] {
        let start = Instant::now();
        let mut n = 0;
        for i in 0..sets {
            for obj in set(i, image) {
                let (ar, name) = api_resource(&obj);
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
                api.patch(&name, &pp, &Patch::Apply(&obj)).await.unwrap();
                n += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        kube_rates.push((round, n, secs));
    }

    // The same work through kubectl (one invocation per round, all sets in one file).
    let mut kubectl_rates = Vec::new();
    for (round, image) in [(0, "nginx:1.29"), (1, "nginx:1.30")] {
        let docs: Vec<String> = (0..sets)
            .flat_map(|i| set(i, image))
            .map(|o| o.to_string())
            .collect();
        let file = dir.path().join(format!("round-{round}.yaml"));
        std::fs::write(&file, docs.join("\n---\n")).unwrap();
        let start = Instant::now();
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(sim.kubeconfig_path("sim-1").unwrap())
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(&file)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        kubectl_rates.push((round, sets * 3, start.elapsed().as_secs_f64()));
    }
    sim.shutdown().await;

    println!("| measurement | value |");
    println!("| --- | --- |");
    println!(
        "| idle RSS for {clusters} virtual clusters | {:.1} MiB total, {:.1} KiB per cluster |",
        (after.saturating_sub(before)) as f64 / 1024.0,
        per_cluster
    );
    let label = ["create", "update"];
    for (round, n, secs) in kube_rates {
        println!(
            "| kube-rs SSA ({} {n} objects, sequential) | {:.0} objects/s ({:.2} s) |",
            label[round],
            n as f64 / secs,
            secs
        );
    }
    for (round, n, secs) in kubectl_rates {
        println!(
            "| kubectl apply --server-side ({} {n} objects, one invocation) | {:.0} objects/s ({:.2} s) |",
            label[round],
            n as f64 / secs,
            secs
        );
    }
}
