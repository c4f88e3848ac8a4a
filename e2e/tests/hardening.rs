//! Fault and attack cases against real processes on loopback, with real
//! TLS: hostile peers that do not authenticate (oversized and half-sent
//! enrollments, thousands of stalled TLS handshakes, a token spammer behind
//! the agent's address), a full disk under the hub's store and under an
//! agent's cache, and what is left on disk (modes, credentials).
//!
//! Every request loop is bounded. The full-disk cases mount a small tmpfs
//! and need root; they are skipped, saying so, when not run as root.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_e2e::http::get as http_get;
use flotilla_e2e::process::Proc;
use flotilla_proto::ListClustersRequest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Value of one sample (name with labels as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    flotilla_e2e::http::sample(text, series).unwrap_or(0.0)
}

const CONVERGE: Duration = Duration::from_secs(90);

// ---- helpers ----

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_status_kib(pid, "VmRSS:")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn hub_pid(fleet: &Fleet) -> anyhow::Result<u32> {
    fleet
        .hub
        .pid()
        .ok_or_else(|| anyhow::anyhow!("hub not running"))
}

/// A bootstrap token for `cluster` (registered by this call).
fn bootstrap_token(fleet: &Fleet, cluster: &str) -> anyhow::Result<String> {
    let out = fleet.cli_ok(&["cluster", "add", cluster, "--bootstrap-token", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["bootstrapToken"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no bootstrapToken in {out}"))
}

async fn cluster_connected(fleet: &Fleet, cluster: &str) -> Result<(), String> {
    let mut api = fleet.api().await.map_err(|e| e.to_string())?;
    let list = api
        .list_clusters(ListClustersRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    match list.clusters.iter().find(|c| c.name == cluster) {
        Some(c) if c.connected => Ok(()),
        Some(_) => Err(format!("{cluster} not connected")),
        None => Err(format!("{cluster} not registered")),
    }
}

/// An HTTP/2 connection to the hub over TLS (no client certificate), as a
/// hostile peer would open it: by hand, so it can send half a message.
async fn h2_connect(
    hub_addr: &str,
    ca_pem: &str,
) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(hub_addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = connector.connect(name, tcp).await?;
    let (send, conn) = h2::client::handshake(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// What a half-sent enrollment saw.
#[derive(Debug)]
struct HalfSent {
    /// `grpc-status` of the answer, if one came.
    grpc_status: Option<String>,
    /// Bytes of message body the hub let us send.
    sent: usize,
}

/// The client's half of a half-sent call, kept open until dropped.
struct Held(
    #[allow(dead_code)] h2::client::SendRequest<Bytes>,
    #[allow(dead_code)] h2::SendStream<Bytes>,
);

/// Opens `AgentLink.Enroll`, sends a gRPC prefix declaring `declared`
/// bytes, then up to `body` bytes of it (respecting flow control), and
/// waits up to `wait` for an answer without ever finishing the message.
async fn half_sent_enroll(
    mut send: h2::client::SendRequest<Bytes>,
    declared: u32,
    body: usize,
    wait: Duration,
) -> anyhow::Result<(HalfSent, Held)> {
    let req = http::Request::post("https://localhost/flotilla.v1.AgentLink/Enroll")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    send = send.ready().await?;
    let (resp, mut stream) = send.send_request(req, false)?;
    let keep = send.clone();
    let mut resp = Box::pin(resp);
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&declared.to_be_bytes());
    stream.send_data(Bytes::from(prefix), false)?;
    let mut sent = 0usize;
    let deadline = tokio::time::Instant::now() + wait;
    let answer = loop {
        if sent >= body {
            break tokio::time::timeout_at(deadline, &mut resp).await.ok();
        }
        stream.reserve_capacity((body - sent).min(1 << 20));
        tokio::select! {
            r = &mut resp => break Some(r),
            cap = std::future::poll_fn(|cx| stream.poll_capacity(cx)) => match cap {
                Some(Ok(n)) if n > 0 => {
                    let n = n.min(body - sent);
                    if stream.send_data(Bytes::from(vec![7u8; n]), false).is_err() {
                        break tokio::time::timeout_at(deadline, &mut resp).await.ok();
                    }
                    sent += n;
                }
                Some(Ok(_)) => {}
                _ => break tokio::time::timeout_at(deadline, &mut resp).await.ok(),
            },
            () = tokio::time::sleep_until(deadline) => break None,
        }
    };
    let grpc_status = match answer {
        Some(Ok(r)) => r
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| Some(format!("http {}", r.status()))),
        Some(Err(e)) => Some(format!("stream error: {e}")),
        None => None,
    };
    Ok((HalfSent { grpc_status, sent }, Held(keep, stream)))
}

// ---- unauthenticated peers ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_oversized_enrollments_are_refused_without_growing_the_hub() -> anyhow::Result<()>
{
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        register_repo: false,
        ..Default::default()
    })
    .await?;
    let pid = hub_pid(&fleet)?;
    let ca = std::fs::read_to_string(fleet.hub_data().join("ca.crt"))?;
    let before = rss_kib(pid)?;
    // Eight peers each declare a 60 MiB enrollment and try to send 24 MiB
    // of it, never finishing: 192 MiB the hub would hold.
    const PEERS: usize = 8;
    const BODY: usize = 24 << 20;
    let mut tasks = Vec::new();
    for _ in 0..PEERS {
        let send = h2_connect(&fleet.hub_addr, &ca).await?;
        tasks.push(tokio::spawn(half_sent_enroll(
            send,
            60 << 20,
            BODY,
            Duration::from_secs(20),
        )));
    }
    let mut results = Vec::new();
    let mut held = Vec::new();
    for t in tasks {
        let (r, h) = t.await??;
        results.push(r);
        held.push(h);
    }
    // Measured while every call is still open, half sent.
    let after = rss_kib(pid)?;
    eprintln!("hub RSS {before} KiB -> {after} KiB; {results:?}");
    for r in &results {
        // RESOURCE_EXHAUSTED, answered on the prefix: at most the first
        // flow-control window got through.
        assert_eq!(r.grpc_status.as_deref(), Some("8"), "{results:?}");
        assert!(r.sent < (2 << 20), "{results:?}");
    }
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 48,
        "hub RSS grew by {grown_mib} MiB ({before} -> {after} KiB) for {PEERS} half-sent enrollments: {results:?}"
    );
    drop(held);
    // The hub still serves: the agent connects.
    eventually("the agent connected", CONVERGE, || {
        cluster_connected(&fleet, "sim-1")
    })
    .await?;
    Ok(())
}

/// Opens `n` TCP connections to `addr`, `n / sources.len()` from each source
/// in a row, and sends the first 5 bytes of a TLS ClientHello record on
/// each.
async fn stalled_client_hellos(
    addr: SocketAddr,
    sources: &[IpAddr],
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let source = sources[i * sources.len() / n];
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(addr).await {
            Ok(mut s) => {
                // Handshake record, TLS 1.0 framing, 512 bytes announced.
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
                conns.push(s);
            }
            // A refused connect is the hub protecting itself too.
            Err(e) => eprintln!("connect {i} from {source}: {e}"),
        }
    }
    Ok(conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_tls_handshakes_are_closed_while_agents_and_the_api_keep_working()
-> anyhow::Result<()> {
    let fleet = Fleet::start_with_hub_args(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[
            "--tls-handshake-timeout",
            "3s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    eventually("the agent connected", CONVERGE, || {
        cluster_connected(&fleet, "sim-1")
    })
    .await?;
    let pid = hub_pid(&fleet)?;
    let metrics = fleet
        .hub_metrics_base()
        .ok_or_else(|| anyhow::anyhow!("no metrics listener"))?;
    let addr: SocketAddr = fleet.hub_addr.parse()?;
    // 2,000 connections from 20 loopback addresses (the admin and the
    // agent use 127.0.0.1).
    let sources: Vec<IpAddr> = (0..20u8)
        .map(|i| IpAddr::from([127, 0, 1, 1 + i]))
        .collect();
    let started = Instant::now();
    let conns = stalled_client_hellos(addr, &sources, 2_000).await?;
    let opened = conns.len();
    assert!(opened > 1_500, "only {opened} connections opened");
    let fds_during = fd_count(pid);

    // Meanwhile the API answers a new connection and the agent stays
    // connected.
    let api_started = Instant::now();
    cluster_connected(&fleet, "sim-1")
        .await
        .map_err(anyhow::Error::msg)?;
    let api_took = api_started.elapsed();
    assert!(api_took < Duration::from_secs(10), "API took {api_took:?}");
    let agent = fleet
        .agents
        .get("sim-1")
        .ok_or_else(|| anyhow::anyhow!("no agent"))?;
    assert!(
        !agent.has_line(|l| l.contains("link down")),
        "the agent lost its link: {}",
        agent.tail(20)
    );

    // Every stalled connection is closed: refused at once past the caps,
    // or by the 3 s handshake timeout.
    let mut readers = tokio::task::JoinSet::new();
    for mut c in conns {
        readers.spawn(async move {
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            closed.is_ok()
        });
    }
    let mut still_open = 0;
    while let Some(closed) = readers.join_next().await {
        if !closed? {
            still_open += 1;
        }
    }
    let all_closed_after = started.elapsed();
    assert_eq!(
        still_open, 0,
        "{still_open} of {opened} stalled connections still open"
    );
    // At most the pending table (512) plus what the hub had: the hub did
    // not hold a descriptor per stalled peer.
    assert!(
        fds_during < 800,
        "hub had {fds_during} descriptors open during the flood"
    );

    let (status, text) = http_get(&metrics, "/metrics").map_err(anyhow::Error::msg)?;
    assert_eq!(status, 200);
    // Past 64 from one address they were refused; past the pending table
    // (512) the oldest handshakes were dropped.
    let per_source = sample(
        &text,
        r#"flotilla_hub_connections_rejected_total{listener="grpc",reason="pending_per_source"}"#,
    );
    let evicted = sample(
        &text,
        r#"flotilla_hub_connections_rejected_total{listener="grpc",reason="pending_evicted"}"#,
    );
    let timeouts = sample(
        &text,
        r#"flotilla_hub_connection_timeouts_total{listener="grpc",reason="handshake"}"#,
    );
    assert!(
        per_source > 0.0 && evicted > 0.0 && timeouts > 0.0,
        "{text}"
    );
    // Thousands of refusals, a handful of log lines.
    let lines = fleet
        .hub
        .lines()
        .iter()
        .filter(|l| l.contains("refused or closed by a limit"))
        .count();
    assert!(lines < 30, "{lines} log lines about refused connections");
    cluster_connected(&fleet, "sim-1")
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "{opened} stalled handshakes: API answered in {api_took:?}, all closed after {all_closed_after:?}, hub descriptors during the flood {fds_during}, refused per source {per_source}, evicted {evicted}, handshake timeouts {timeouts}"
    );
    Ok(())
}

async fn enroll_client(
    hub_url: &str,
    ca_pem: &str,
) -> anyhow::Result<flotilla_proto::agent_link_client::AgentLinkClient<tonic::transport::Channel>> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(hub_url.to_owned())?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(flotilla_proto::agent_link_client::AgentLinkClient::new(
        channel,
    ))
}

fn spawn_enrolling_agent(
    fleet: &Fleet,
    name: &str,
    token: &str,
) -> anyhow::Result<(Proc, PathBuf)> {
    let state = fleet.root.path().join(name);
    let agent = fleet.spawn_agent(
        name,
        "sim-1",
        &["--state-dir".to_owned(), state.display().to_string()],
        &[("FLOTILLA_TOKEN".to_owned(), token.to_owned())],
    )?;
    Ok((agent, state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_behind_the_address_of_a_token_spammer_enrolls() -> anyhow::Result<()> {
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
    let token = bootstrap_token(&fleet, "sim-1")?;
    let ca = std::fs::read_to_string(fleet.hub_data().join("ca.crt"))?;
    // Another client on 127.0.0.1 (one NAT) sends invalid tokens until the
    // hub tells it to back off.
    let mut spammer = enroll_client(&fleet.hub_url(), &ca).await?;
    let mut codes = Vec::new();
    for i in 0..30 {
        let bogus = format!("flt1.{:064x}.{}", i, "00".repeat(32));
        let err = spammer
            .enroll(flotilla_proto::EnrollRequest {
                token: bogus,
                csr_der: vec![],
                agent_version: "spam".into(),
            })
            .await
            .expect_err("a bogus token enrolls nothing");
        codes.push(err.code());
    }
    assert_eq!(codes.first(), Some(&tonic::Code::Unauthenticated));
    assert_eq!(
        codes.last(),
        Some(&tonic::Code::ResourceExhausted),
        "{codes:?}"
    );

    // The real agent, same address, is not locked out: it enrolls at once.
    let (mut agent, state) = spawn_enrolling_agent(&fleet, "agent-nat", &token)?;
    agent.wait_for_line(CONVERGE, |l| l.contains("enrolled"))?;
    assert!(
        !agent.has_line(|l| l.contains("enrollment failed")),
        "{}",
        agent.tail(20)
    );
    assert!(state.join("tls.crt").exists());
    eventually("the agent connected", CONVERGE, || {
        cluster_connected(&fleet, "sim-1")
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_retries_enrollment_after_a_rate_limit() -> anyhow::Result<()> {
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
    let token = bootstrap_token(&fleet, "sim-1")?;
    let ca = std::fs::read_to_string(fleet.hub_data().join("ca.crt"))?;
    // Eight enrollments in flight from 127.0.0.1 (the cap per address),
    // stalled after two bytes, until the hub's 10 s deadline ends them.
    let send = h2_connect(&fleet.hub_addr, &ca).await?;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut send = send.clone().ready().await?;
        let req = http::Request::post("https://localhost/flotilla.v1.AgentLink/Enroll")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let (resp, mut stream) = send.send_request(req, false)?;
        stream.send_data(Bytes::from_static(&[0, 0]), false)?;
        held.push((resp, stream));
    }
    let (mut agent, state) = spawn_enrolling_agent(&fleet, "agent-retry", &token)?;
    let refused = agent.wait_for_line(CONVERGE, |l| l.contains("enrollment failed; retrying"))?;
    assert!(refused.contains("ResourceExhausted"), "{refused}");
    // The held calls time out; the agent's next attempt gets through.
    agent.wait_for_line(CONVERGE, |l| l.contains("enrolled"))?;
    assert!(agent.is_running(), "{}", agent.tail(20));
    assert!(state.join("tls.crt").exists());
    drop(held);
    eventually("the agent connected", CONVERGE, || {
        cluster_connected(&fleet, "sim-1")
    })
    .await?;
    Ok(())
}

// ---- full disk ----

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A small tmpfs mounted over a directory, with what the directory held
/// copied in; unmounted (lazily) on drop.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    fn over(dir: &Path, size: &str) -> anyhow::Result<Self> {
        let saved = dir.with_extension("saved");
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir)
            .arg(&saved)
            .status()?;
        anyhow::ensure!(status.success(), "cp -a {}", dir.display());
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()?;
        anyhow::ensure!(status.success(), "mount tmpfs on {}", dir.display());
        let disk = Self {
            mount: dir.to_owned(),
        };
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", saved.display()))
            .arg(dir)
            .status()?;
        anyhow::ensure!(status.success(), "copy into the tmpfs");
        Ok(disk)
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> anyhow::Result<u64> {
        let mut f = std::fs::File::create(self.filler())?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Single bytes, to the last block.
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {
            written += 1;
        }
        Ok(written)
    }

    fn free(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.filler())?;
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_probes_and_the_store_recovers_when_space_returns()
-> anyhow::Result<()> {
    if !is_root() {
        eprintln!(
            "skipped: mounting a small tmpfs for the hub's data needs root (CI runs as root)"
        );
        return Ok(());
    }
    let mut fleet = Fleet::start_with_hub_args(
        FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await?;
    eventually("the agent connected", CONVERGE, || {
        cluster_connected(&fleet, "sim-1")
    })
    .await?;
    fleet.stop_hub();
    let disk = SmallDisk::over(&fleet.hub_data(), "24m")?;
    fleet.start_hub_again()?;
    let metrics = fleet
        .hub_metrics_base()
        .ok_or_else(|| anyhow::anyhow!("no metrics listener"))?;
    eventually("the hub ready and the agent back", CONVERGE, || async {
        let (status, body) = http_get(&metrics, "/readyz")?;
        if status != 200 {
            return Err(body);
        }
        cluster_connected(&fleet, "sim-1").await
    })
    .await?;

    let filled = disk.fill()?;
    eprintln!("filled the hub's disk with {filled} bytes");
    // Writes fail (each API write flushes), the readiness probe fails, and
    // the liveness probe fails once reopening the store failed too. The
    // store's log may still have room in blocks it allocated before, so
    // the writes are large: applications with 512 KiB of Helm values.
    let values = "x".repeat(512 * 1024);
    let manifest_dir = fleet.root.path().join("big-apps");
    std::fs::create_dir_all(&manifest_dir)?;
    let mut failed = None;
    for n in 0..200 {
        let file = manifest_dir.join(format!("big-{n}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: big-{n}\nspec:\n  source:\n    repoURL: https://git.invalid/none.git\n    path: none\n    helm:\n      values: {values}\n  destination:\n    name: sim-1\n    namespace: big\n"
            ),
        )?;
        let out = fleet.cli(&[
            "app".into(),
            "create".into(),
            "-f".into(),
            file.display().to_string(),
        ])?;
        if !out.status.success() {
            failed = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let failed =
        failed.ok_or_else(|| anyhow::anyhow!("200 large writes on a full disk all succeeded"))?;
    eprintln!("write on the full disk: {failed}");
    eventually("/readyz and /healthz to fail", CONVERGE, || async {
        let (ready, rbody) = http_get(&metrics, "/readyz")?;
        let (live, lbody) = http_get(&metrics, "/healthz")?;
        if ready == 503 && live == 503 {
            Ok(())
        } else {
            Err(format!(
                "readyz {ready} {rbody:?}, healthz {live} {lbody:?}"
            ))
        }
    })
    .await?;

    disk.free()?;
    // Without a restart: the store is reopened, the probes pass, writes
    // work and the agent is connected again.
    eventually("the store to recover", CONVERGE, || async {
        let (ready, rbody) = http_get(&metrics, "/readyz")?;
        let (live, lbody) = http_get(&metrics, "/healthz")?;
        if ready == 200 && live == 200 {
            Ok(())
        } else {
            Err(format!(
                "readyz {ready} {rbody:?}, healthz {live} {lbody:?}"
            ))
        }
    })
    .await?;
    fleet.cli_ok(&["cluster", "add", "after-full", "--bootstrap-token"])?;
    fleet.cli_ok(&["cluster", "label", "sim-1", "disk=recovered"])?;
    eventually("the agent connected again", CONVERGE, || {
        cluster_connected(&fleet, "sim-1")
    })
    .await?;
    let (_, text) = http_get(&metrics, "/metrics").map_err(anyhow::Error::msg)?;
    assert!(
        sample(&text, "flotilla_hub_store_reopens_total") >= 1.0,
        "{text}"
    );
    assert!(
        fleet.hub.is_running(),
        "the hub exited: {}",
        fleet.hub.tail(20)
    );
    fleet.stop_hub();
    drop(disk);
    Ok(())
}

/// Generation of the agent's cache file.
fn cached_generation(state_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(state_dir.join("desired-state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["generation"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_cache_write_that_failed_for_lack_of_space_is_retried() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!(
            "skipped: mounting a small tmpfs for the agent's state needs root (CI runs as root)"
        );
        return Ok(());
    }
    let mut fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let revision = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &revision, CONVERGE)
        .await?;
    let state = fleet.root.path().join("agents").join("sim-1");
    if let Some(a) = fleet.agents.get_mut("sim-1") {
        a.stop(Duration::from_secs(10));
    }
    let disk = SmallDisk::over(&state, "4m")?;
    fleet.start_agent("sim-1")?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &revision, CONVERGE)
        .await?;
    let before = cached_generation(&state).ok_or_else(|| anyhow::anyhow!("no cache"))?;

    disk.fill()?;
    // A new commit: the agent receives it, cannot write its cache, and
    // keeps enforcing it from memory.
    let configmap = fleet.repo.read("guestbook/configmap.yaml")?;
    let changed = configmap.replace("hello from git", "hello from a full disk");
    anyhow::ensure!(changed != configmap, "unexpected configmap: {configmap}");
    let new_revision = fleet.repo.commit_file(
        "guestbook/configmap.yaml",
        &changed,
        "change on a full disk",
    )?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &new_revision, CONVERGE)
        .await?;
    let agent = &fleet.agents["sim-1"];
    assert!(
        agent.has_line(|l| l.contains("could not persist the desired state")),
        "{}",
        agent.tail(30)
    );
    assert_eq!(cached_generation(&state), Some(before));
    let received = eventually("the generation the agent received", CONVERGE, || async {
        let mut api = fleet.api().await.map_err(|e| e.to_string())?;
        let list = api
            .list_clusters(ListClustersRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        list.clusters
            .iter()
            .find(|c| c.name == "sim-1" && c.acked_generation > before)
            .map(|c| c.acked_generation)
            .ok_or_else(|| format!("{list:?}"))
    })
    .await?;

    // The hub goes away; space returns; the cache catches up by itself.
    fleet.stop_hub();
    disk.free()?;
    eventually("the cache written again", CONVERGE, || async {
        match cached_generation(&state) {
            Some(g) if g >= received => Ok(()),
            other => Err(format!("cache generation {other:?}, want {received}")),
        }
    })
    .await?;
    // A restart during the hub outage starts from the newer generation.
    if let Some(a) = fleet.agents.get_mut("sim-1") {
        a.stop(Duration::from_secs(10));
    }
    fleet.start_agent("sim-1")?;
    let started = fleet
        .agents
        .get_mut("sim-1")
        .ok_or_else(|| anyhow::anyhow!("no agent"))?
        .wait_for_line(CONVERGE, |l| l.contains("flotilla-agent starting"))?;
    assert!(
        started.contains(&format!("cached_generation={received}")),
        "{started}"
    );
    if let Some(a) = fleet.agents.get_mut("sim-1") {
        a.stop(Duration::from_secs(10));
    }
    drop(disk);
    Ok(())
}

// ---- at rest ----

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_are_private_and_credentials_never_show_or_rest_in_clear() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let revision = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &revision, CONVERGE)
        .await?;
    const PASSWORD: &str = "Pa55-w0rd-in-url-7731";
    const USER: &str = "deploy-bot-5520";
    let url_with = format!("https://{USER}:{PASSWORD}@127.0.0.1:9/platform/private.git");
    let added = fleet.cli_ok(&["repo", "add", &url_with, "--skip-check", "-o", "json"])?;
    let added: serde_json::Value = serde_json::from_str(&added)?;
    assert_eq!(added["url"], "https://127.0.0.1:9/platform/private.git");
    assert_eq!(added["hasCredentials"], true);

    let ro = fleet.cli_ok(&["token", "create", "viewer", "--read-only", "-o", "json"])?;
    let ro: serde_json::Value = serde_json::from_str(&ro)?;
    let ro = ro["token"].as_str().unwrap_or_default().to_owned();
    let listed_admin = fleet.cli_ok(&["repo", "list", "-o", "json"])?;
    let listed_ro = fleet.cli_ok(&["--token", &ro, "repo", "list", "-o", "json"])?;
    for listed in [&listed_admin, &listed_ro] {
        assert!(
            !listed.contains(PASSWORD) && !listed.contains(USER),
            "{listed}"
        );
        assert!(
            listed.contains("https://127.0.0.1:9/platform/private.git"),
            "{listed}"
        );
    }
    // The fetch fails (nothing listens there); its error names the URL
    // without the credentials.
    eventually("the failed fetch recorded", CONVERGE, || async {
        let listed = fleet
            .cli_ok(&["repo", "list", "-o", "json"])
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&listed).map_err(|e| e.to_string())?;
        let private = v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|r| r["url"].as_str().is_some_and(|u| u.contains("private")))
            })
            .cloned()
            .unwrap_or_default();
        if private["lastError"].as_str().is_some_and(|e| !e.is_empty()) {
            Ok(())
        } else {
            Err(listed)
        }
    })
    .await?;

    let data = fleet.hub_data();
    let agent_state = fleet.root.path().join("agents").join("sim-1");
    fleet.stop_hub();
    if let Some(a) = fleet.agents.get_mut("sim-1") {
        a.stop(Duration::from_secs(10));
    }
    for l in fleet.hub.lines() {
        assert!(!l.contains(PASSWORD), "hub log line: {l}");
    }

    // Nothing under the data directory is readable by others; the store,
    // the keys and the tokens are 0600.
    assert_eq!(mode(&data)?, 0o700);
    let mut db_bytes = Vec::new();
    for entry in walk(&data)? {
        let m = mode(&entry)?;
        assert_eq!(m & 0o077, 0, "{} has mode {m:o}", entry.display());
        if entry.starts_with(data.join("db")) && entry.is_file() {
            assert_eq!(m, 0o600, "{} has mode {m:o}", entry.display());
            db_bytes.extend(std::fs::read(&entry)?);
        }
    }
    for f in ["ca.key", "hub.key", "admin.token", "credentials.key"] {
        assert_eq!(mode(&data.join(f))?, 0o600, "{f}");
    }
    // The raw database holds no credential in clear.
    assert!(!db_bytes.is_empty());
    assert!(!contains(&db_bytes, PASSWORD));
    assert!(!contains(&db_bytes, USER));

    // The agent's state: 0700, its cache and key 0600.
    assert_eq!(mode(&agent_state)?, 0o700);
    assert_eq!(mode(&agent_state.join("desired-state.json"))?, 0o600);
    assert_eq!(mode(&agent_state.join("tls.key"))?, 0o600);
    Ok(())
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if std::fs::symlink_metadata(&p)?.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    Ok(out)
}
