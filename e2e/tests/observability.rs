//! Observability end to end: probes and Prometheus metrics of the hub and
//! the agents during a sync, and one OpenTelemetry trace from a commit's
//! render at the hub to its apply at an agent.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions, ProcessOptions};
use flotilla_e2e::http::get as http_get;
use flotilla_e2e::http::sample;

const CONVERGE: Duration = Duration::from_secs(90);

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
    // One info series per application and cluster, as argocd_app_info,
    // agreeing with the per-status counts.
    for cluster in fleet.sim.cluster_names() {
        let info = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "flotilla_app_info{{name=\"guestbook-{cluster}\",project=\"default\",cluster=\"{cluster}\","
                ))
            })
            .unwrap_or_else(|| panic!("no flotilla_app_info of guestbook-{cluster}: {text}"));
        assert!(
            info.contains("sync_status=\"Synced\"") && info.contains("repo=\"file://"),
            "{info}"
        );
        assert!(info.ends_with("} 1"), "{info}");
        assert!(
            !text.contains(&format!(
                "name=\"guestbook-{cluster}\",project=\"default\",cluster=\"sim-9"
            )),
            "{text}"
        );
    }
    assert_eq!(
        sum(&text, "flotilla_app_info"),
        sum(&text, "flotilla_applications"),
        "{text}"
    );

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
    let text = eventually("drift counted on sim-1", CONVERGE, || async {
        let (_, text) = http_get(&base, "/metrics")?;
        let drift = sample(
            &text,
            "flotilla_agent_drift_events_total{application=\"guestbook-sim-1\"}",
        );
        if drift.is_some_and(|n| n >= 1.0) {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await?;
    // Every agent family has a series by now, drift included.
    dashboard_agent_metrics_are_exported_and_documented(&text)?;
    Ok(())
}

/// Every agent metric (`flotilla_agent_*`) the Grafana dashboard in
/// charts/ queries is exported by a running agent (a histogram's
/// `_bucket`/`_sum`/`_count` and a counter's `_total` samples count as
/// their metric) and documented in docs/operations.md. The hub's are
/// checked by a unit test in hub/src/metrics.rs, where every family can be
/// given a series.
fn dashboard_agent_metrics_are_exported_and_documented(agent: &str) -> anyhow::Result<()> {
    let root = flotilla_e2e::workspace_root();
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("charts/flotilla-hub/dashboards/flotilla.json"),
    )?)?;
    let docs = std::fs::read_to_string(root.join("docs/operations.md"))?;
    let mut exprs = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        ("query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let types = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let agent_types = types(agent);
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("flotilla_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            used.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    assert!(
        used.contains("flotilla_agent_drift_events_total"),
        "{used:?}"
    );
    for name in used.iter().filter(|n| n.starts_with("flotilla_agent_")) {
        let exported = &agent_types;
        let base = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .chain([name.as_str()])
            .find(|b| exported.contains(*b));
        let Some(base) = base else {
            anyhow::bail!("the dashboard queries {name}, which is not exported: {exported:?}");
        };
        // The docs name histograms with their unit suffix and counters
        // with _total, as they are queried.
        assert!(
            docs.contains(&format!("| `{base}` |"))
                || docs.contains(&format!("| `{base}_total` |"))
                || docs.contains(&format!("| `{name}` |")),
            "{name} is not in the metric tables of docs/operations.md"
        );
    }
    Ok(())
}

mod otlp {
    //! A minimal in-process OTLP/gRPC trace receiver.

    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    /// One received span, flattened.
    #[derive(Clone, Debug)]
    pub struct Span {
        pub service: String,
        pub name: String,
        pub trace_id: String,
        pub attributes: Vec<(String, String)>,
    }

    impl Span {
        pub fn attr(&self, key: &str) -> Option<&str> {
            self.attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    #[derive(Clone, Default)]
    pub struct Receiver {
        pub spans: Arc<Mutex<Vec<Span>>>,
    }

    fn text(kv: &KeyValue) -> (String, String) {
        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            _ => String::new(),
        };
        (kv.key.clone(), v)
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut out = Vec::new();
            for rs in request.into_inner().resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .map(text)
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push(Span {
                            service: service.clone(),
                            name: s.name.clone(),
                            trace_id: s.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                            attributes: s.attributes.iter().map(text).collect(),
                        });
                    }
                }
            }
            if let Ok(mut spans) = self.spans.lock() {
                spans.extend(out);
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Serves on a free local port; returns the endpoint URL.
    pub async fn start(receiver: Receiver) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok(format!("http://{addr}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_covers_a_commits_render_at_the_hub_and_its_apply_at_the_agent()
-> anyhow::Result<()> {
    let receiver = otlp::Receiver::default();
    let endpoint = otlp::start(receiver.clone()).await?;
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
    ];
    let fleet = Fleet::start_with(
        FleetOptions {
            clusters: 1,
            ..FleetOptions::default()
        },
        ProcessOptions {
            env,
            ..ProcessOptions::default()
        },
    )
    .await?;
    let first = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &first, CONVERGE)
        .await?;

    let cm = fleet
        .repo
        .read("guestbook/configmap.yaml")?
        .replace("hello from git", "hello from a traced commit");
    let second = fleet
        .repo
        .commit_file("guestbook/configmap.yaml", &cm, "guestbook: traced")?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &second, CONVERGE)
        .await?;

    const WANT: [&str; 4] = [
        "flotilla-hub/git.pass",
        "flotilla-hub/git.fetch",
        "flotilla-hub/dispatch",
        "flotilla-agent/health",
    ];
    let (trace, names) = eventually(
        "one trace with the hub's render and the agent's apply of the commit",
        CONVERGE,
        || async {
            let spans = receiver.spans.lock().map_err(|e| e.to_string())?.clone();
            let applies: Vec<&otlp::Span> = spans
                .iter()
                .filter(|s| {
                    s.service == "flotilla-agent"
                        && s.name == "apply"
                        && s.attr("app") == Some("guestbook-sim-1")
                        && s.attr("revision") == Some(second.as_str())
                })
                .collect();
            for apply in &applies {
                let same: Vec<&otlp::Span> = spans
                    .iter()
                    .filter(|s| s.trace_id == apply.trace_id)
                    .collect();
                let render = same.iter().any(|s| {
                    s.service == "flotilla-hub"
                        && s.name == "render"
                        && s.attr("commit") == Some(second.as_str())
                        && s.attr("path") == Some("guestbook")
                });
                let names: Vec<String> = same
                    .iter()
                    .map(|s| format!("{}/{}", s.service, s.name))
                    .collect();
                // The pass's root span ends (and is exported) after the
                // render and the dispatch: wait for the whole trace.
                if render && WANT.iter().all(|w| names.iter().any(|n| n == w)) {
                    return Ok((apply.trace_id.clone(), names));
                }
            }
            let summary: Vec<String> = spans
                .iter()
                .map(|s| {
                    format!(
                        "{} {}/{} {:?}",
                        &s.trace_id[..8.min(s.trace_id.len())],
                        s.service,
                        s.name,
                        s.attributes
                    )
                })
                .collect();
            Err(format!(
                "{} apply spans of the commit; spans: {summary:#?}",
                applies.len()
            ))
        },
    )
    .await?;
    for want in WANT {
        assert!(
            names.iter().any(|n| n == want),
            "trace {trace} lacks {want}: {names:?}"
        );
    }
    Ok(())
}

/// A two-wave set (canary sim-1, then sim-2) of the `traced` path.
fn waves_set(repo_url: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: traced
spec:
  goTemplate: true
  generators:
    - list:
        elements:
          - cluster: sim-1
          - cluster: sim-2
  strategy:
    flotillaWaves:
      waves:
        - name: canary
          clusterSelector:
            matchLabels: {{ring: canary}}
        - name: rest
          clusterSelector:
            matchLabels: {{ring: rest}}
  template:
    metadata:
      name: '{{{{.cluster}}}}-traced'
    spec:
      project: default
      source:
        repoURL: {repo_url}
        targetRevision: HEAD
        path: traced
      destination:
        name: '{{{{.cluster}}}}'
        namespace: traced
      syncPolicy:
        automated: {{}}
        syncOptions: [CreateNamespace=true]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_covers_a_waves_rollout_from_its_start_to_the_last_apply() -> anyhow::Result<()> {
    let receiver = otlp::Receiver::default();
    let endpoint = otlp::start(receiver.clone()).await?;
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
    ];
    let fleet = Fleet::start_with(
        FleetOptions {
            clusters: 2,
            ..FleetOptions::default()
        },
        ProcessOptions {
            env,
            ..ProcessOptions::default()
        },
    )
    .await?;
    fleet.cli_ok(&["cluster", "label", "sim-1", "ring=canary"])?;
    fleet.cli_ok(&["cluster", "label", "sim-2", "ring=rest"])?;
    let cm = |greeting: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: traced\ndata:\n  greeting: {greeting}\n"
        )
    };
    let first = fleet
        .repo
        .commit_file("traced/cm.yaml", &cm("one"), "traced: one")?;
    let file = fleet.root.path().join("traced.yaml");
    std::fs::write(&file, waves_set(&fleet.repo.url()))?;
    fleet.cli_ok(&["appset", "create", "-f", &file.display().to_string()])?;
    for c in ["sim-1", "sim-2"] {
        fleet
            .wait_synced(&format!("{c}-traced"), c, &first, CONVERGE)
            .await?;
    }
    let second = fleet
        .repo
        .commit_file("traced/cm.yaml", &cm("two"), "traced: two")?;
    eventually("the rollout completed", CONVERGE, || async {
        let out = fleet
            .cli_ok(&["rollout", "get", "traced", "-o", "json"])
            .map_err(|e| e.to_string())?;
        let r: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        if r["phase"] == "Completed" && r["target"] == second.as_str() {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await?;

    // One root span for the rollout of `second`; every step of it (each
    // wave's start and end) and both clusters' applies in its trace.
    eventually("one trace for the whole rollout", CONVERGE, || async {
        let spans = receiver.spans.lock().map_err(|e| e.to_string())?.clone();
        let roots: Vec<&otlp::Span> = spans
            .iter()
            .filter(|s| {
                s.service == "flotilla-hub"
                    && s.name == "rollout"
                    && s.attr("appset") == Some("traced")
                    && s.attr("revision") == Some(second.as_str())
            })
            .collect();
        let [root] = roots.as_slice() else {
            let rollout: Vec<String> = spans
                .iter()
                .filter(|s| s.name.starts_with("rollout"))
                .map(|s| format!("{} {} {:?}", &s.trace_id[..8], s.name, s.attributes))
                .collect();
            return Err(format!(
                "{} root spans for the rollout of {second}; rollout spans: {rollout:#?}",
                roots.len()
            ));
        };
        let steps: Vec<&otlp::Span> = spans
            .iter()
            .filter(|s| s.name == "rollout.step" && s.attr("revision") == Some(second.as_str()))
            .collect();
        let events: Vec<&str> = steps.iter().filter_map(|s| s.attr("events")).collect();
        let other: Vec<&&otlp::Span> = steps
            .iter()
            .filter(|s| s.trace_id != root.trace_id)
            .collect();
        if !other.is_empty() {
            return Err(format!("steps outside the rollout's trace: {other:?}"));
        }
        for want in [
            "wave canary (1/2) started",
            "wave rest (2/2) started",
            "every wave Healthy",
        ] {
            if !events.iter().any(|e| e.contains(want)) {
                return Err(format!("no step {want:?} in {events:?}"));
            }
        }
        for app in ["sim-1-traced", "sim-2-traced"] {
            let applied = spans.iter().any(|s| {
                s.service == "flotilla-agent"
                    && s.name == "apply"
                    && s.attr("app") == Some(app)
                    && s.attr("revision") == Some(second.as_str())
                    && s.trace_id == root.trace_id
            });
            if !applied {
                return Err(format!("no apply of {app} in the rollout's trace"));
            }
        }
        Ok(())
    })
    .await?;
    Ok(())
}
