//! Shared helpers for the simulator's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use flotilla_sim::{SimConfig, SimHandle, Simulator};

pub struct Env {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
}

pub async fn start(clusters: usize, rollout_delay: Duration) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig {
        clusters,
        kubeconfig_dir: Some(dir.path().join("kube")),
        rollout_delay,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    Env { sim, dir }
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

impl Env {
    /// Runs the real kubectl against a cluster, with a private discovery cache.
    pub async fn kubectl(&self, cluster: &str, args: &[&str]) -> Output {
        self.kubectl_env(cluster, args, &[]).await
    }

    /// kubectl with extra environment variables.
    pub async fn kubectl_env(&self, cluster: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let kc = self.sim.kubeconfig_path(cluster).unwrap();
        let cache = self.dir.path().join(format!("cache-{cluster}"));
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("HOME", self.dir.path())
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap()
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn kubectl_ok(&self, cluster: &str, args: &[&str]) -> String {
        let out = self.kubectl(cluster, args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn client(&self, cluster: &str) -> kube::Client {
        self.client_with(cluster, true).await
    }

    /// A client; `retry` false turns off kube-rs' built-in 429/503 retries.
    pub async fn client_with(&self, cluster: &str, retry: bool) -> kube::Client {
        let kc = kube::config::Kubeconfig::from_yaml(&self.sim.kubeconfig_yaml(cluster)).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        let mut cfg = cfg;
        cfg.default_retry = retry;
        kube::Client::try_from(cfg).unwrap()
    }
}

/// Polls `f` until it returns Some, or panics after `secs` seconds.
pub async fn poll<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
