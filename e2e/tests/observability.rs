//! Observability end to end: probes and Prometheus metrics of the hub and
//! the agents during a sync, and one OpenTelemetry trace from a commit's
//! render at the hub to its apply at an agent.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions, ProcessOptions};

const CONVERGE: Duration = Duration::from_secs(90);

/// `GET base+path` over plain HTTP/1.0: (status, body).
fn http_get(base: &str, path: &str) -> Result<(u16, String), String> {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Value of the sample `series` (name with labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Sum of every sample of a metric name (all label sets).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hub_and_agents_expose_probes_and_metrics_during_a_sync() -> anyhow::Result<()> {
    let fleet = Fleet::start_with(
        FleetOptions::default(),
        ProcessOptions {
            hub_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
            agent_args: vec!["--health-listen".into(), "127.0.0.1:0".into()],
            ..ProcessOptions::default()
        },
    )
    .await?;
    let hub = fleet
        .hub_metrics_base()
        .ok_or_else(|| anyhow::anyhow!("hub printed no metrics address"))?;
    assert_eq!(
        http_get(&hub, "/healthz").map_err(anyhow::Error::msg)?.0,
        200
    );
    eventually("hub ready", CONVERGE, || async {
        match http_get(&hub, "/readyz")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    })
    .await?;

    let head = fleet.repo.head()?;
    for cluster in fleet.sim.cluster_names() {
        fleet
            .wait_synced(&format!("guestbook-{cluster}"), &cluster, &head, CONVERGE)
            .await?;
    }

    // The hub: three clusters connected, synced applications, Git fetches,
    // renders and sends observed.
    let text = eventually("hub metrics after the sync", CONVERGE, || async {
        let (code, text) = http_get(&hub, "/metrics")?;
        let connected = sample(&text, "flotilla_clusters_connected");
        let synced = sum(
            &text
                .lines()
                .filter(|l| l.contains("sync_status=\"Synced\""))
                .collect::<Vec<_>>()
                .join("\n"),
            "flotilla_applications",
        );
        if code == 200 && connected == Some(3.0) && synced >= 3.0 {
            Ok(text)
        } else {
            Err(format!(
                "{code}: connected {connected:?} synced {synced}\n{text}"
            ))
        }
    })
    .await?;
    assert_eq!(sample(&text, "flotilla_clusters"), Some(3.0), "{text}");
    assert!(
        sum(&text, "flotilla_render_duration_seconds_count") > 0.0,
        "{text}"
    );
    assert!(
        sum(&text, "flotilla_git_fetch_duration_seconds_count") > 0.0,
        "{text}"
    );
    assert!(
        text.contains("flotilla_git_fetch_errors_total{repo=\""),
        "{text}"
    );
    assert_eq!(sum(&text, "flotilla_git_fetch_errors_total"), 0.0, "{text}");
    let sends = sum(&text, "flotilla_stream_send_lag_seconds_count");
    assert!(sends >= 3.0, "one send per cluster at least: {text}");
    let lag = sum(&text, "flotilla_stream_send_lag_seconds_sum") / sends;
    assert!((0.0..30.0).contains(&lag), "mean send lag {lag}s: {text}");
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(name.starts_with("flotilla_"), "{line}");
    }

    // Every agent: connected, holding a generation, applications Synced and
    // Healthy, applies timed.
    for cluster in fleet.sim.cluster_names() {
        let base = fleet
            .agent_health_base(&cluster)
            .ok_or_else(|| anyhow::anyhow!("agent {cluster} printed no health address"))?;
        assert_eq!(
            http_get(&base, "/healthz").map_err(anyhow::Error::msg)?.0,
            200
        );
        assert_eq!(
            http_get(&base, "/readyz").map_err(anyhow::Error::msg)?.0,
            200
        );
        let text = eventually(&format!("agent {cluster} metrics"), CONVERGE, || async {
            let (_, text) = http_get(&base, "/metrics")?;
            let healthy = sample(
                &text,
                "flotilla_agent_applications{sync_status=\"Synced\",health_status=\"Healthy\"}",
            );
            if healthy.is_some_and(|n| n >= 2.0) {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await?;
        assert_eq!(
            sample(&text, "flotilla_agent_connected"),
            Some(1.0),
            "{text}"
        );
        assert!(
            sample(&text, "flotilla_agent_desired_generation").is_some_and(|g| g >= 1.0),
            "{text}"
        );
        let applies = sample(
            &text,
            &format!(
                "flotilla_agent_apply_duration_seconds_count{{application=\"guestbook-{cluster}\"}}"
            ),
        );
        assert!(applies.is_some_and(|n| n >= 1.0), "{text}");
        assert!(
            text.contains("# TYPE flotilla_agent_sync_retries counter"),
            "{text}"
        );
    }

    // A change made by hand on one cluster is a drift event (and healed).
    let out = fleet.kubectl(
        "sim-1",
        &[
            "-n",
            "guestbook",
            "patch",
            "configmap",
            "guestbook-config",
            "--type=merge",
            "-p",
            r#"{"data":{"greeting":"edited by hand"}}"#,
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = fleet
        .agent_health_base("sim-1")
        .ok_or_else(|| anyhow::anyhow!("no health address"))?;
    eventually("drift counted on sim-1", CONVERGE, || async {
        let (_, text) = http_get(&base, "/metrics")?;
        let drift = sample(
            &text,
            "flotilla_agent_drift_events_total{application=\"guestbook-sim-1\"}",
        );
        if drift.is_some_and(|n| n >= 1.0) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await?;
    Ok(())
}
