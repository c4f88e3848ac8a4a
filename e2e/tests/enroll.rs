//! Enrollment end to end: `flotilla cluster add` prints a manifest, kubectl
//! applies it to a simulated cluster, an agent enrolls with the token from
//! that manifest, connects and syncs; `cluster remove` cuts it off. Plus the
//! agent-side defences: pinning, single-use and expiring tokens, bound
//! names, and no secrets in logs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_e2e::http::get as http_get;
use flotilla_e2e::process::Proc;
use flotilla_proto::ListClustersRequest;
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(90);
const EXIT: Duration = Duration::from_secs(30);
const CUT_OFF: Duration = Duration::from_secs(10);

/// The bootstrap Secret's values from a `cluster add` manifest.
struct Bootstrap {
    token: String,
    hub_url: String,
    ca_pin: String,
}

fn bootstrap_from_manifest(manifest: &str) -> anyhow::Result<Bootstrap> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(manifest)?;
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .ok_or_else(|| anyhow::anyhow!("no Secret in the manifest"))?;
    let get = |k: &str| {
        secret["stringData"][k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("Secret lacks {k}"))
    };
    Ok(Bootstrap {
        token: get("token")?,
        hub_url: get("hub-url")?,
        ca_pin: get("ca-pin")?,
    })
}

/// `flotilla cluster add NAME --label env=dev --manifest-only ARGS`.
fn add_manifest(fleet: &Fleet, name: &str, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec![
        "cluster",
        "add",
        name,
        "--label",
        "env=dev",
        "--manifest-only",
    ];
    args.extend_from_slice(extra);
    fleet.cli_ok(&args)
}

fn kubectl_apply(fleet: &Fleet, cluster: &str, manifest: &str) -> anyhow::Result<String> {
    let kubeconfig = fleet
        .sim
        .kubeconfig_path(cluster)
        .ok_or_else(|| anyhow::anyhow!("no kubeconfig for {cluster}"))?;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "--server-side", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn agent(
    fleet: &Fleet,
    name: &str,
    cluster: &str,
    state_dir: &Path,
    b: &Bootstrap,
    pin: Option<&str>,
    log_level: &str,
) -> anyhow::Result<Proc> {
    fleet.spawn_agent(
        name,
        cluster,
        &["--state-dir".to_owned(), state_dir.display().to_string()],
        &[
            ("FLOTILLA_TOKEN".to_owned(), b.token.clone()),
            (
                "FLOTILLA_CA_PIN".to_owned(),
                pin.unwrap_or(&b.ca_pin).to_owned(),
            ),
            ("RUST_LOG".to_owned(), log_level.to_owned()),
        ],
    )
}

/// Waits for the process to exit; true when it exited unsuccessfully.
fn wait_exit(p: &mut Proc, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while p.is_running() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "agent still running after {timeout:?}: {}",
            p.tail(20)
        );
        std::thread::yield_now();
        // Poll: the line reader thread keeps collecting meanwhile.
        let _ = p.wait_for_line(Duration::from_millis(100), |_| false);
    }
    Ok(())
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

async fn connected(fleet: &Fleet, cluster: &str) -> Result<bool, String> {
    let mut api = fleet.api().await.map_err(|e| e.to_string())?;
    let list = api
        .list_clusters(ListClustersRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok(list
        .clusters
        .iter()
        .any(|c| c.name == cluster && c.connected))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_add_manifest_enrolls_syncs_and_remove_cuts_the_agent_off() -> anyhow::Result<()> {
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 2,
            ..Default::default()
        },
        &[],
        &["sim-2"],
    )
    .await?;
    let head = fleet.repo.head()?;

    // The printed manifest is accepted by the API server as is.
    let manifest = add_manifest(&fleet, "sim-2", &[])?;
    let applied = kubectl_apply(&fleet, "sim-2", &manifest)?;
    for object in [
        "namespace/flotilla-system",
        "serviceaccount/flotilla-agent",
        "secret/flotilla-agent-bootstrap",
        "clusterrole.rbac.authorization.k8s.io/flotilla-agent",
        "deployment.apps/flotilla-agent",
    ] {
        assert!(applied.contains(object), "{object} not in {applied}");
    }
    let secret = fleet
        .kubectl_get(
            "sim-2",
            "secret",
            "flotilla-system",
            "flotilla-agent-bootstrap",
        )?
        .ok_or_else(|| anyhow::anyhow!("bootstrap Secret missing"))?;
    assert!(
        secret["data"]["token"].is_string() || secret["stringData"]["token"].is_string(),
        "{secret}"
    );

    // The agent runs with the configuration from that manifest.
    let b = bootstrap_from_manifest(&manifest)?;
    assert_eq!(b.hub_url, fleet.hub_url());
    assert!(b.ca_pin.starts_with("sha256:"), "{}", b.ca_pin);
    let state = fleet.root.path().join("enrolled-sim-2");
    let mut a = agent(
        &fleet,
        "agent-enrolled-sim-2",
        "sim-2",
        &state,
        &b,
        None,
        "info",
    )?;
    a.wait_for_line(CONVERGE, |l| l.contains("enrolled"))?;
    assert_eq!(mode(&state.join("tls.key"))?, 0o600);
    fleet
        .wait_synced("guestbook-sim-2", "sim-2", &head, CONVERGE)
        .await?;
    assert!(
        fleet
            .kubectl_get("sim-2", "configmap", "guestbook", "guestbook-config")?
            .is_some()
    );

    // Removal cuts it off within seconds.
    let started = Instant::now();
    fleet.cli_ok(&["cluster", "remove", "sim-2", "-y"])?;
    eventually("hub reports sim-2 disconnected", CUT_OFF, || async {
        match connected(&fleet, "sim-2").await? {
            false => Ok(()),
            true => Err("still connected".to_owned()),
        }
    })
    .await?;
    // The agent is told, stops managing and idles (tests/removal.rs).
    a.wait_for_line(CUT_OFF, |l| l.contains("flotilla-agent removed"))?;
    assert!(started.elapsed() < CUT_OFF * 2);
    assert!(
        !connected(&fleet, "sim-2")
            .await
            .map_err(anyhow::Error::msg)?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_refuses_a_hub_whose_ca_does_not_match_the_pin() -> anyhow::Result<()> {
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    let b = bootstrap_from_manifest(&add_manifest(&fleet, "sim-1", &[])?)?;
    let state = fleet.root.path().join("pinned");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let mut a = agent(
        &fleet,
        "agent-wrong-pin",
        "sim-1",
        &state,
        &b,
        Some(&wrong),
        "info",
    )?;
    wait_exit(&mut a, EXIT)?;
    assert!(
        a.has_line(|l| l.contains("refusing to enroll")),
        "{}",
        a.tail(20)
    );
    assert!(!state.join("tls.key").exists() && !state.join("tls.crt").exists());
    // The token never reached the hub: it still enrolls under the right pin.
    let mut a = agent(&fleet, "agent-right-pin", "sim-1", &state, &b, None, "info")?;
    a.wait_for_line(CONVERGE, |l| l.contains("enrolled"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bootstrap_token_enrolls_only_once() -> anyhow::Result<()> {
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    let b = bootstrap_from_manifest(&add_manifest(&fleet, "sim-1", &[])?)?;
    let first = fleet.root.path().join("first");
    let mut a = agent(&fleet, "agent-first", "sim-1", &first, &b, None, "info")?;
    a.wait_for_line(CONVERGE, |l| l.contains("enrolled"))?;
    let second = fleet.root.path().join("second");
    let mut again = agent(&fleet, "agent-second", "sim-1", &second, &b, None, "info")?;
    wait_exit(&mut again, EXIT)?;
    assert!(
        again.has_line(|l| l.contains("invalid, used or expired bootstrap token")),
        "{}",
        again.tail(20)
    );
    assert!(!second.join("tls.crt").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_bootstrap_token_is_refused() -> anyhow::Result<()> {
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    let b = bootstrap_from_manifest(&add_manifest(&fleet, "sim-1", &["--ttl", "1s"])?)?;
    let issued = Instant::now();
    eventually("the token to expire", Duration::from_secs(5), || async {
        if issued.elapsed() > Duration::from_millis(1500) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await?;
    let state = fleet.root.path().join("late");
    let mut a = agent(&fleet, "agent-late", "sim-1", &state, &b, None, "info")?;
    wait_exit(&mut a, EXIT)?;
    assert!(
        a.has_line(|l| l.contains("invalid, used or expired bootstrap token")),
        "{}",
        a.tail(20)
    );
    assert!(!state.join("tls.crt").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_enrolls_only_the_cluster_it_was_issued_for() -> anyhow::Result<()> {
    // The token of sim-1, used by an agent in sim-2: the certificate names
    // sim-1 whatever the agent runs against; it cannot pick its identity.
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 2,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1", "sim-2"],
    )
    .await?;
    let b = bootstrap_from_manifest(&add_manifest(&fleet, "sim-1", &[])?)?;
    let state = fleet.root.path().join("other");
    let mut a = agent(&fleet, "agent-other", "sim-2", &state, &b, None, "info")?;
    a.wait_for_line(CONVERGE, |l| l.contains("enrolled"))?;
    let line = a.wait_for_line(CONVERGE, |l| l.contains("connected to"))?;
    assert!(line.contains("as sim-1"), "{line}");
    let crt = std::fs::read(state.join("tls.crt"))?;
    assert_eq!(
        flotilla_agent_cn(&crt).as_deref(),
        Some("sim-1"),
        "certificate subject"
    );
    eventually("sim-1 connected", CONVERGE, || async {
        if connected(&fleet, "sim-1").await? {
            Ok(())
        } else {
            Err("not connected".to_owned())
        }
    })
    .await?;
    assert!(
        !connected(&fleet, "sim-2")
            .await
            .map_err(anyhow::Error::msg)?
    );
    Ok(())
}

/// The subject CN of a PEM certificate (the last commonName in the DER).
fn flotilla_agent_cn(pem: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(pem);
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = decode_base64(&b64)?;
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let pos = der.windows(CN_OID.len()).rposition(|w| w == CN_OID)?;
    let rest = der.get(pos + CN_OID.len()..)?;
    let len = usize::from(*rest.get(1)?);
    String::from_utf8(rest.get(2..2 + len)?.to_vec()).ok()
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = u32::try_from(A.iter().position(|x| *x == c)?).ok()?;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buf >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_logs_at_trace_level_hold_no_token_or_key() -> anyhow::Result<()> {
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    let b = bootstrap_from_manifest(&add_manifest(&fleet, "sim-1", &[])?)?;
    let state = fleet.root.path().join("traced");
    let mut a = agent(&fleet, "agent-traced", "sim-1", &state, &b, None, "trace")?;
    a.wait_for_line(CONVERGE, |l| l.contains("enrolled"))?;
    a.wait_for_line(CONVERGE, |l| l.contains("connected to"))?;
    let log = std::fs::read_to_string(a.log_path())?;
    assert!(log.lines().count() > 20, "trace logging is on");
    let secret = b
        .token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("token"))?;
    assert!(
        !log.contains(secret),
        "the token secret is in the agent log"
    );
    let key = std::fs::read_to_string(state.join("tls.key"))?;
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!log.contains(line), "a key line is in the agent log");
    }
    assert!(!log.contains("PRIVATE KEY"));
    Ok(())
}

fn in_cluster_agent(
    fleet: &Fleet,
    name: &str,
    state_dir: &Path,
    b: &Bootstrap,
) -> anyhow::Result<Proc> {
    let kubeconfig = fleet
        .sim
        .kubeconfig_path("sim-1")
        .ok_or_else(|| anyhow::anyhow!("no kubeconfig"))?;
    // As in the Deployment: no --kubeconfig, POD_NAMESPACE set.
    Proc::spawn(
        name,
        &flotilla_e2e::bin("flotilla-agent")?,
        &[
            "--hub".to_owned(),
            b.hub_url.clone(),
            "--state-dir".to_owned(),
            state_dir.display().to_string(),
        ],
        &[
            ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
            ("POD_NAMESPACE".to_owned(), "flotilla-system".to_owned()),
            ("FLOTILLA_TOKEN".to_owned(), b.token.clone()),
            ("FLOTILLA_CA_PIN".to_owned(), b.ca_pin.clone()),
        ],
        fleet.root.path().join(format!("{name}.log")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_cluster_identity_lives_in_a_secret_and_survives_a_lost_state_dir() -> anyhow::Result<()>
{
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    let manifest = add_manifest(&fleet, "sim-1", &[])?;
    kubectl_apply(&fleet, "sim-1", &manifest)?;
    let b = bootstrap_from_manifest(&manifest)?;
    let state = fleet.root.path().join("pod-state");
    let mut a = in_cluster_agent(&fleet, "agent-pod-1", &state, &b)?;
    a.wait_for_line(CONVERGE, |l| l.contains("identity stored in the Secret"))?;
    a.wait_for_line(CONVERGE, |l| l.contains("connected to"))?;
    let secret = fleet
        .kubectl_get(
            "sim-1",
            "secret",
            "flotilla-system",
            "flotilla-agent-identity",
        )?
        .ok_or_else(|| anyhow::anyhow!("identity Secret missing"))?;
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(secret["data"][key].is_string(), "{key} in {secret}");
    }
    a.stop(Duration::from_secs(10));

    // A new pod: empty state dir, the bootstrap token already spent.
    std::fs::remove_dir_all(&state)?;
    let mut a = in_cluster_agent(&fleet, "agent-pod-2", &state, &b)?;
    a.wait_for_line(CONVERGE, |l| {
        l.contains("identity restored from the Secret")
    })?;
    a.wait_for_line(CONVERGE, |l| l.contains("connected to"))?;
    assert!(!a.has_line(|l| l.contains("enrolled")));
    assert_eq!(mode(&state.join("tls.key"))?, 0o600);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_replaces_key_and_certificate_and_retires_the_old_pair() -> anyhow::Result<()> {
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    let b = bootstrap_from_manifest(&add_manifest(&fleet, "sim-1", &[])?)?;
    let state = fleet.root.path().join("renewing");
    let mut a = agent(&fleet, "agent-renew-1", "sim-1", &state, &b, None, "info")?;
    a.wait_for_line(CONVERGE, |l| l.contains("connected to"))?;
    a.stop(Duration::from_secs(10));
    let old = fleet.root.path().join("old-identity");
    std::fs::create_dir_all(&old)?;
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::copy(state.join(f), old.join(f))?;
    }

    let out = Command::new(flotilla_e2e::bin("flotilla-agent")?)
        .args(["renew", "--hub", &b.hub_url, "--state-dir"])
        .arg(&state)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "flotilla-agent renew: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["tls.crt", "tls.key"] {
        assert_ne!(
            std::fs::read(state.join(f))?,
            std::fs::read(old.join(f))?,
            "{f}"
        );
    }
    assert_eq!(mode(&state.join("tls.key"))?, 0o600);

    // The new pair connects; its first use retires the old one.
    let mut a = agent(&fleet, "agent-renew-2", "sim-1", &state, &b, None, "info")?;
    a.wait_for_line(CONVERGE, |l| l.contains("connected to"))?;
    let mut stale = agent(&fleet, "agent-stale", "sim-1", &old, &b, None, "info")?;
    stale.wait_for_line(CUT_OFF, |l| {
        l.contains("link down") && l.contains("certificate revoked")
    })?;
    assert!(!stale.has_line(|l| l.contains("connected to")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hello_claiming_another_clusters_name_is_ignored() -> anyhow::Result<()> {
    use flotilla_proto::agent_link_client::AgentLinkClient;
    use flotilla_proto::{AgentMessage, Hello, agent_message, hub_message};
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    let mut fleet = Fleet::start(FleetOptions {
        clusters: 2,
        ..Default::default()
    })
    .await?;
    let head = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &head, CONVERGE)
        .await?;
    fleet
        .wait_synced("guestbook-sim-2", "sim-2", &head, CONVERGE)
        .await?;
    // sim-1's own agent steps aside; its credentials now claim sim-2.
    drop(fleet.agents.remove("sim-1"));
    let dir = fleet.root.path().join("agents").join("sim-1");
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")?))
        .identity(Identity::from_pem(read("tls.crt")?, read("tls.key")?))
        .domain_name("localhost");
    let channel = Channel::from_shared(fleet.hub_url())?
        .tls_config(tls)?
        .connect()
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(4);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_version: "impostor/1".into(),
            claimed_cluster: "sim-2".into(),
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = AgentLinkClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let desired = tokio::time::timeout(CONVERGE, async {
        loop {
            match inbound.message().await? {
                Some(m) => {
                    if let Some(hub_message::Kind::Desired(d)) = m.kind {
                        return anyhow::Ok(d);
                    }
                }
                None => anyhow::bail!("stream ended without a desired state"),
            }
        }
    })
    .await??;
    let names: Vec<&str> = desired.index.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"guestbook-sim-1"), "{names:?}");
    assert!(
        names.iter().all(|n| !n.ends_with("-sim-2")),
        "sim-1's certificate received sim-2's state: {names:?}"
    );
    for b in &desired.bundles {
        assert!(!b.name.ends_with("-sim-2"), "bundle {}", b.name);
    }
    // The hub keeps serving the real sim-2.
    assert!(
        connected(&fleet, "sim-2")
            .await
            .map_err(anyhow::Error::msg)?
    );
    drop(tx);
    Ok(())
}

/// The agent binds its health port before it enrolls: while the hub
/// cannot be reached (here an address that accepts connections and never
/// answers), the kubelet's probes and Prometheus already get answers —
/// `/healthz` 200, `/readyz` 503 — and the one-time token is not spent: it
/// still enrolls once the agent is pointed at the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_health_port_answers_while_enrollment_waits_for_the_hub() -> anyhow::Result<()> {
    let fleet = Fleet::start_except(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    let b = bootstrap_from_manifest(&add_manifest(&fleet, "sim-1", &[])?)?;
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let kubeconfig = fleet
        .sim
        .kubeconfig_path("sim-1")
        .ok_or_else(|| anyhow::anyhow!("no kubeconfig"))?;
    let state = fleet.root.path().join("blocked");
    let mut blocked = Proc::spawn(
        "agent-blocked",
        &flotilla_e2e::bin("flotilla-agent")?,
        &[
            "--hub".to_owned(),
            format!("https://{}", silent.local_addr()?),
            "--kubeconfig".to_owned(),
            kubeconfig.display().to_string(),
            "--state-dir".to_owned(),
            state.display().to_string(),
            "--health-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ],
        &[
            ("FLOTILLA_TOKEN".to_owned(), b.token.clone()),
            ("FLOTILLA_CA_PIN".to_owned(), b.ca_pin.clone()),
        ],
        fleet.root.path().join("agent-blocked.log"),
    )?;
    let line = blocked.wait_for_line(CONVERGE, |l| {
        l.starts_with("flotilla-agent health listening on http://")
    })?;
    let base = line
        .trim_start_matches("flotilla-agent health listening on ")
        .trim_end_matches("/healthz")
        .to_owned();
    eventually(
        "health port answers before enrollment",
        CONVERGE,
        || async {
            match (http_get(&base, "/healthz")?, http_get(&base, "/readyz")?) {
                ((200, _), (503, ready)) if ready.contains("never connected") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    let metrics = http_get(&base, "/metrics").map_err(anyhow::Error::msg)?;
    assert_eq!(metrics.0, 200);
    assert!(
        metrics.1.contains("flotilla_agent_connected 0"),
        "{}",
        metrics.1
    );
    // Still waiting for the hub: not enrolled, not exited.
    assert!(blocked.is_running(), "{}", blocked.tail(20));
    assert!(!state.join("tls.crt").exists());
    assert!(
        !blocked.has_line(|l| l.contains("enrolled")),
        "{}",
        blocked.tail(20)
    );
    blocked.stop(Duration::from_secs(10));
    drop(silent);

    // The token was not spent.
    let after = fleet.root.path().join("after");
    let mut a = agent(&fleet, "agent-after", "sim-1", &after, &b, None, "info")?;
    a.wait_for_line(CONVERGE, |l| l.contains("enrolled"))?;
    Ok(())
}
