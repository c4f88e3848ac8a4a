//! A whole fleet for end-to-end tests: simulated clusters (in-process
//! Kubernetes API simulator), the hub, one agent per cluster, and the CLI,
//! each a separate process over real mTLS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_proto::hub_api_client::HubApiClient;
use flotilla_proto::{
    AddRepositoryRequest, Application, GetApplicationRequest, HealthStatus, ListClustersRequest,
    SyncStatus,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::process::Proc;
use crate::repo::ConfigRepo;

/// How long a start-up step may take before the harness gives up.
pub const STARTUP: Duration = Duration::from_secs(60);

/// Options for [`Fleet::start`].
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub clusters: usize,
    /// Git poll interval of the hub, in seconds.
    pub poll_interval_secs: i64,
    /// Register the config repository with `apps/` as its Application path.
    pub register_repo: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            clusters: 3,
            poll_interval_secs: 1,
            register_repo: true,
        }
    }
}

/// Extra arguments and environment of the fleet's processes, for
/// [`Fleet::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Extra `flotilla-hub serve` arguments (kept across restarts).
    pub hub_args: Vec<String>,
    /// Extra arguments of every agent, e.g. `--health-listen 127.0.0.1:0`.
    pub agent_args: Vec<String>,
    /// Environment of the hub and the agents, e.g. `OTEL_*`.
    pub env: Vec<(String, String)>,
}

/// Adds `authorization: Bearer` to every HubApi call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A HubApi client with the admin token.
pub type Api = HubApiClient<InterceptedService<Channel, Bearer>>;

/// A running fleet. Everything stops when it is dropped.
pub struct Fleet {
    pub root: tempfile::TempDir,
    pub sim: flotilla_sim::SimHandle,
    pub repo: ConfigRepo,
    pub hub: Proc,
    pub hub_addr: String,
    pub agents: BTreeMap<String, Proc>,
    hub_restarts: usize,
    /// Extra `flotilla-hub serve` arguments, kept across restarts.
    hub_args: Vec<String>,
    /// Extra agent arguments and environment of hub and agents.
    agent_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Fleet {
    /// Starts simulated clusters, the hub, registers the config repository
    /// and the clusters, and starts one agent per cluster.
    ///
    /// # Errors
    /// Any part fails to start; the error carries its log tail.
    pub async fn start(opts: FleetOptions) -> anyhow::Result<Self> {
        Self::start_with_hub_args(opts, &[]).await
    }

    /// [`Fleet::start`] with extra `flotilla-hub serve` arguments (e.g.
    /// `--webhook-listen 127.0.0.1:0`).
    ///
    /// # Errors
    /// Any part fails to start; the error carries its log tail.
    pub async fn start_with_hub_args(
        opts: FleetOptions,
        hub_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_except(opts, hub_args, &[]).await
    }

    /// [`Fleet::start_with_hub_args`], leaving the simulated clusters in
    /// `unmanaged` unregistered and without an agent (e.g. for a test that
    /// enrolls one with a bootstrap token).
    ///
    /// # Errors
    /// Any part fails to start; the error carries its log tail.
    pub async fn start_except(
        opts: FleetOptions,
        hub_args: &[&str],
        unmanaged: &[&str],
    ) -> anyhow::Result<Self> {
        let procs = ProcessOptions {
            hub_args: hub_args.iter().map(|a| (*a).to_owned()).collect(),
            ..ProcessOptions::default()
        };
        Self::start_inner(opts, procs, unmanaged).await
    }

    /// [`Fleet::start`] with extra arguments and environment for the hub and
    /// the agents.
    ///
    /// # Errors
    /// Any part fails to start; the error carries its log tail.
    pub async fn start_with(opts: FleetOptions, procs: ProcessOptions) -> anyhow::Result<Self> {
        Self::start_inner(opts, procs, &[]).await
    }

    async fn start_inner(
        opts: FleetOptions,
        procs: ProcessOptions,
        unmanaged: &[&str],
    ) -> anyhow::Result<Self> {
        let ProcessOptions {
            hub_args,
            agent_args,
            env,
        } = procs;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let root = tempfile::Builder::new().prefix("flotilla-e2e-").tempdir()?;
        let kubeconfigs = root.path().join("kubeconfigs");
        let sim = flotilla_sim::Simulator::start(flotilla_sim::SimConfig {
            clusters: opts.clusters,
            listen: "127.0.0.1:0".parse()?,
            kubeconfig_dir: Some(kubeconfigs),
            ..Default::default()
        })
        .await
        .context("starting the Kubernetes API simulator")?;
        let repo = ConfigRepo::from_examples(&root.path().join("config-repo"))?;
        let data_dir = root.path().join("hub-data");
        let (hub, hub_addr) = start_hub(root.path(), &data_dir, "127.0.0.1:0", 0, &hub_args, &env)?;
        let mut fleet = Self {
            root,
            sim,
            repo,
            hub,
            hub_addr,
            agents: BTreeMap::new(),
            hub_restarts: 0,
            hub_args,
            agent_args,
            env,
        };
        let managed: Vec<String> = fleet
            .sim
            .cluster_names()
            .into_iter()
            .filter(|n| !unmanaged.contains(&n.as_str()))
            .collect();
        for name in &managed {
            fleet.add_cluster(name, &[("env", "dev")])?;
        }
        if opts.register_repo {
            let mut api = fleet.api().await?;
            api.add_repository(AddRepositoryRequest {
                url: fleet.repo.url(),
                revision: "HEAD".into(),
                apps_path: "apps".into(),
                poll_interval_secs: opts.poll_interval_secs,
                ..Default::default()
            })
            .await
            .context("registering the config repository")?;
        }
        for name in &managed {
            fleet.start_agent(name)?;
        }
        Ok(fleet)
    }

    /// `http://ADDR/api/webhook` when the hub was started with
    /// `--webhook-listen` (read from its log).
    pub fn webhook_url(&self) -> Option<String> {
        self.hub.lines().iter().rev().find_map(|l| {
            l.split("webhook listening on ")
                .nth(1)
                .map(|u| u.trim().to_owned())
        })
    }

    /// `http://ADDR` of the hub's `--metrics-listen` listener (from its log).
    pub fn hub_metrics_base(&self) -> Option<String> {
        listening_base(&self.hub, "flotilla-hub metrics listening on ")
    }

    /// `http://ADDR` of an agent's `--health-listen` listener (from its log).
    pub fn agent_health_base(&self, cluster: &str) -> Option<String> {
        listening_base(
            self.agents.get(cluster)?,
            "flotilla-agent health listening on ",
        )
    }

    /// The hub's data directory.
    pub fn hub_data(&self) -> PathBuf {
        self.root.path().join("hub-data")
    }

    /// The hub URL agents and the CLI use.
    pub fn hub_url(&self) -> String {
        format!("https://{}", self.hub_addr)
    }

    fn agent_dir(&self, cluster: &str) -> PathBuf {
        self.root.path().join("agents").join(cluster)
    }

    /// Registers a cluster with the CLI and writes its agent credentials.
    ///
    /// # Errors
    /// The CLI fails.
    pub fn add_cluster(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let dir = self.agent_dir(name);
        let mut args = vec!["cluster".to_owned(), "add".to_owned(), name.to_owned()];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.push("--out".into());
        args.push(dir.display().to_string());
        let out = self.cli(&args)?;
        if !out.status.success() {
            anyhow::bail!(
                "flotilla cluster add {name} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts (or restarts) the agent of `cluster`.
    ///
    /// # Errors
    /// The agent binary is missing or does not start.
    pub fn start_agent(&mut self, cluster: &str) -> anyhow::Result<()> {
        let kubeconfig = self
            .sim
            .kubeconfig_path(cluster)
            .ok_or_else(|| anyhow::anyhow!("no kubeconfig for {cluster}"))?;
        let args = vec![
            "--hub".to_owned(),
            self.hub_url(),
            "--state-dir".into(),
            self.agent_dir(cluster).display().to_string(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        let args: Vec<String> = args.into_iter().chain(self.agent_args.clone()).collect();
        let proc = Proc::spawn(
            &format!("agent-{cluster}"),
            &crate::bin("flotilla-agent")?,
            &args,
            &self.env,
            self.root.path().join(format!("agent-{cluster}.log")),
        )?;
        self.agents.insert(cluster.to_owned(), proc);
        Ok(())
    }

    /// Starts an agent for `cluster` against its simulated cluster with
    /// `--hub`, `--kubeconfig` and then `args`, under the name `name` (its
    /// log is `ROOT/NAME.log`); the caller owns the process.
    ///
    /// # Errors
    /// The agent binary is missing or does not start.
    pub fn spawn_agent(
        &self,
        name: &str,
        cluster: &str,
        args: &[String],
        envs: &[(String, String)],
    ) -> anyhow::Result<Proc> {
        let kubeconfig = self
            .sim
            .kubeconfig_path(cluster)
            .ok_or_else(|| anyhow::anyhow!("no kubeconfig for {cluster}"))?;
        let mut all = vec![
            "--hub".to_owned(),
            self.hub_url(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        Proc::spawn(
            name,
            &crate::bin("flotilla-agent")?,
            &all,
            envs,
            self.root.path().join(format!("{name}.log")),
        )
    }

    /// Stops the hub (SIGTERM) and starts it again on the same address and
    /// data directory.
    ///
    /// # Errors
    /// The hub does not come back.
    pub fn restart_hub(&mut self) -> anyhow::Result<()> {
        self.stop_hub();
        self.start_hub_again()
    }

    /// Stops the hub (SIGTERM); agents lose their link.
    pub fn stop_hub(&mut self) {
        self.hub.stop(Duration::from_secs(10));
    }

    /// Starts the hub again on the same address and data directory.
    ///
    /// # Errors
    /// The hub does not come back.
    pub fn start_hub_again(&mut self) -> anyhow::Result<()> {
        self.hub_restarts += 1;
        let (hub, addr) = start_hub(
            self.root.path(),
            &self.hub_data(),
            &self.hub_addr,
            self.hub_restarts,
            &self.hub_args,
            &self.env,
        )?;
        self.hub = hub;
        self.hub_addr = addr;
        Ok(())
    }

    /// Runs the `flotilla` CLI against this hub.
    ///
    /// # Errors
    /// The binary is missing.
    pub fn cli(&self, args: &[String]) -> anyhow::Result<std::process::Output> {
        let data = self.hub_data();
        Ok(Command::new(crate::bin("flotilla")?)
            .args(args)
            .env("FLOTILLA_HUB", self.hub_url())
            .env("FLOTILLA_CA_FILE", data.join("ca.crt"))
            .env("FLOTILLA_TOKEN_FILE", data.join("admin.token"))
            .output()?)
    }

    /// Runs the `flotilla` CLI against the hub and returns its stdout; a
    /// failed command is an error carrying its output.
    ///
    /// # Errors
    /// The CLI cannot be started or exits unsuccessfully.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let out = self.cli(&args)?;
        anyhow::ensure!(
            out.status.success(),
            "flotilla {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The `greeting` of the example guestbook's ConfigMap on `cluster`, as
    /// kubectl sees it.
    ///
    /// # Errors
    /// kubectl fails or the ConfigMap is missing.
    pub fn guestbook_greeting(&self, cluster: &str) -> Result<String, String> {
        let cm = self
            .kubectl_get(cluster, "configmap", "guestbook", "guestbook-config")
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "configmap missing".to_owned())?;
        Ok(cm["data"]["greeting"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Changes the example guestbook's ConfigMap on `cluster` by hand
    /// (kubectl patch): drift for the agent to find.
    ///
    /// # Errors
    /// kubectl fails.
    pub fn tamper_guestbook(&self, cluster: &str) -> anyhow::Result<()> {
        let out = self.kubectl(
            cluster,
            &[
                "patch",
                "configmap",
                "guestbook-config",
                "-n",
                "guestbook",
                "--type",
                "merge",
                "-p",
                r#"{"data":{"greeting":"changed by hand"}}"#,
            ],
        )?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl patch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Runs kubectl against a simulated cluster.
    ///
    /// # Errors
    /// kubectl cannot be started.
    pub fn kubectl(&self, cluster: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let kubeconfig = self
            .sim
            .kubeconfig_path(cluster)
            .ok_or_else(|| anyhow::anyhow!("no kubeconfig for {cluster}"))?;
        Ok(Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()?)
    }

    /// `kubectl get -o json` of one object, or `None` when it does not exist.
    ///
    /// # Errors
    /// kubectl fails for another reason than NotFound.
    pub fn kubectl_get(
        &self,
        cluster: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let out = self.kubectl(cluster, &["get", kind, name, "-n", namespace, "-o", "json"])?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("NotFound") || err.contains("not found") {
                return Ok(None);
            }
            anyhow::bail!("kubectl get {kind} {name} on {cluster}: {err}");
        }
        Ok(Some(serde_json::from_slice(&out.stdout)?))
    }

    /// A HubApi client authenticated with the admin token.
    ///
    /// # Errors
    /// The CA or token cannot be read, or the hub cannot be reached.
    pub async fn api(&self) -> anyhow::Result<Api> {
        api_client(&self.hub_url(), &self.hub_data()).await
    }

    /// The hub's view of one application.
    ///
    /// # Errors
    /// The call fails.
    pub async fn app(&self, name: &str) -> anyhow::Result<Application> {
        let mut api = self.api().await?;
        Ok(api
            .get_application(GetApplicationRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// What the hub shows for `app` on `cluster` (the agent's report, with
    /// the hub's view of the source applied).
    ///
    /// # Errors
    /// The application is unknown, or there is no status for `cluster` yet.
    pub async fn status(
        &self,
        app: &str,
        cluster: &str,
    ) -> anyhow::Result<flotilla_proto::AppStatus> {
        let a = self.app(app).await?;
        a.clusters
            .iter()
            .find(|c| c.cluster == cluster)
            .and_then(|c| c.status.clone())
            .ok_or_else(|| anyhow::anyhow!("no status of {app} on {cluster}"))
    }

    /// Waits until the hub reports `app` Synced and Healthy at `revision` on
    /// `cluster`.
    ///
    /// # Errors
    /// The deadline passes; the error shows the last status.
    pub async fn wait_synced(
        &self,
        app: &str,
        cluster: &str,
        revision: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        crate::eventually(
            &format!("{app} Synced/Healthy at {revision} on {cluster}"),
            timeout,
            || async {
                let a = self.app(app).await.map_err(|e| e.to_string())?;
                let Some(c) = a.clusters.iter().find(|c| c.cluster == cluster) else {
                    return Err(format!("no status for {cluster}: {a:?}"));
                };
                let Some(s) = &c.status else {
                    return Err(format!("no status yet; app error {:?}", a.error));
                };
                if s.revision == revision
                    && s.sync == SyncStatus::Synced as i32
                    && s.health == HealthStatus::Healthy as i32
                {
                    Ok(())
                } else {
                    Err(format!(
                        "revision {} sync {:?} health {:?} message {:?}",
                        s.revision,
                        SyncStatus::try_from(s.sync),
                        HealthStatus::try_from(s.health),
                        s.message
                    ))
                }
            },
        )
        .await
    }

    /// Waits until every cluster's agent is connected.
    ///
    /// # Errors
    /// The deadline passes.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let want = self.sim.cluster_names().len();
        crate::eventually("all agents connected", timeout, || async {
            let mut api = self.api().await.map_err(|e| e.to_string())?;
            let list = api
                .list_clusters(ListClustersRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let connected = list.clusters.iter().filter(|c| c.connected).count();
            if connected >= want {
                Ok(())
            } else {
                Err(format!("{connected}/{want} connected"))
            }
        })
        .await
    }
}

/// Connects a HubApi client using the hub data directory's CA and admin token.
///
/// # Errors
/// Files missing or connection refused.
pub async fn api_client(hub_url: &str, data_dir: &Path) -> anyhow::Result<Api> {
    let ca = std::fs::read_to_string(data_dir.join("ca.crt")).context("reading hub ca.crt")?;
    let token =
        std::fs::read_to_string(data_dir.join("admin.token")).context("reading hub admin.token")?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(hub_url.to_owned())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to hub at {hub_url}"))?;
    let value = format!("Bearer {}", token.trim()).parse()?;
    Ok(HubApiClient::with_interceptor(channel, Bearer(value)))
}

/// Starts a `flotilla-hub serve` process with its data in `data_dir`, its
/// log in `root/hub-GENERATION.log`, listening on `listen` (port 0: any);
/// returns it and the address it listens on.
///
/// # Errors
/// The binary is missing or the hub does not start.
pub fn start_hub(
    root: &Path,
    data_dir: &Path,
    listen: &str,
    generation: usize,
    extra: &[String],
    env: &[(String, String)],
) -> anyhow::Result<(Proc, String)> {
    let mut args = vec![
        "serve".to_owned(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        listen.to_owned(),
    ];
    args.extend(extra.iter().cloned());
    let mut hub = Proc::spawn(
        "hub",
        &crate::bin("flotilla-hub")?,
        &args,
        env,
        root.join(format!("hub-{generation}.log")),
    )?;
    let line = hub.wait_for_line(STARTUP, |l| {
        l.contains("flotilla-hub listening on https://")
    })?;
    let addr = line
        .rsplit("https://")
        .next()
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .ok_or_else(|| anyhow::anyhow!("unexpected hub line {line:?}"))?;
    Ok((hub, addr))
}

/// `http://HOST:PORT` from a `PREFIX http://HOST:PORT/...` log line.
fn listening_base(proc: &Proc, prefix: &str) -> Option<String> {
    proc.lines().iter().rev().find_map(|l| {
        let url = l.split(prefix).nth(1)?.trim();
        let rest = url.strip_prefix("http://")?;
        let hostport = rest.split('/').next()?;
        Some(format!("http://{hostport}"))
    })
}
