//! The Helm charts in `charts/`: rendered as `helm template` would (see
//! `flotilla_e2e::helm`), checked field by field, and applied to a simulated
//! cluster with the real `kubectl apply --server-side`.
//!
//! Run: `cargo test -p flotilla-e2e --test charts`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flotilla_e2e::helm::{self, Chart, Release};
use flotilla_e2e::kubectl::run as kubectl;
use serde_json::{Value, json};

fn chart_dir(name: &str) -> PathBuf {
    flotilla_e2e::workspace_root().join("charts").join(name)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/charts")
        .join(name)
}

/// Rendered objects, by `Kind/name`.
struct Rendered {
    text: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn render(chart: &str, release: &Release, values: &[PathBuf]) -> Result<Self> {
        let text = helm::template(&chart_dir(chart), release, values)?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("rendered {chart} is not YAML:\n{text}"))?;
        let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
        for doc in &docs {
            check_schema(doc)?;
        }
        Ok(Self { text, docs })
    }

    fn ids(&self) -> BTreeSet<String> {
        self.docs
            .iter()
            .map(|d| {
                let ns = d["metadata"]["namespace"].as_str().unwrap_or("");
                format!(
                    "{}/{}/{}",
                    d["kind"].as_str().unwrap_or("?"),
                    ns,
                    d["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind}/{name} in:\n{}", self.text))
    }
}

/// Checks `doc` against the Kubernetes API types: it must deserialize into
/// the typed object for its kind, and serializing that back must give the
/// same document, so a misspelt or misplaced field (which the simulator
/// accepts silently for built-in kinds) or a wrong type fails here.
fn check_schema(doc: &Value) -> Result<()> {
    use k8s_openapi::api::{
        apps::v1 as apps, core::v1 as core, networking::v1 as net, policy::v1 as policy,
        rbac::v1 as rbac,
    };
    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<Value> {
        let typed: T = serde_json::from_value(doc.clone())
            .with_context(|| format!("{} does not fit its type:\n{doc:#}", doc["kind"]))?;
        Ok(serde_json::to_value(typed)?)
    }
    let back = match doc["kind"].as_str().unwrap_or_default() {
        "Namespace" => round_trip::<core::Namespace>(doc),
        "ServiceAccount" => round_trip::<core::ServiceAccount>(doc),
        "Service" => round_trip::<core::Service>(doc),
        "Secret" => round_trip::<core::Secret>(doc),
        "ConfigMap" => round_trip::<core::ConfigMap>(doc),
        "StatefulSet" => round_trip::<apps::StatefulSet>(doc),
        "Deployment" => round_trip::<apps::Deployment>(doc),
        "Ingress" => round_trip::<net::Ingress>(doc),
        "NetworkPolicy" => round_trip::<net::NetworkPolicy>(doc),
        "PodDisruptionBudget" => round_trip::<policy::PodDisruptionBudget>(doc),
        "Role" => round_trip::<rbac::Role>(doc),
        "RoleBinding" => round_trip::<rbac::RoleBinding>(doc),
        "ClusterRole" => round_trip::<rbac::ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(doc),
        // Prometheus Operator kinds have no typed API here: the simulator
        // checks them against the CRDs in fixtures/charts/monitoring-crds.yaml
        // (see `apply_to_simulator`).
        "ServiceMonitor" | "PodMonitor" | "PrometheusRule"
            if doc["apiVersion"] == "monitoring.coreos.com/v1" =>
        {
            return Ok(());
        }
        other => bail!("no schema check for kind {other}"),
    }?;
    let mut back = back;
    // The PersistentVolumeClaim type always writes apiVersion and kind, which
    // a StatefulSet's claim templates leave out.
    if let Some(claims) = back
        .pointer_mut("/spec/volumeClaimTemplates")
        .and_then(Value::as_array_mut)
    {
        for claim in claims.iter_mut().filter_map(Value::as_object_mut) {
            claim.remove("apiVersion");
            claim.remove("kind");
        }
    }
    if let Some(diff) = difference(doc, &back, "") {
        bail!(
            "{} {} changed in a round trip through its API type (a field is unknown or mistyped): {diff}",
            doc["kind"],
            doc["metadata"]["name"]
        );
    }
    Ok(())
}

/// The first path where `a` and `b` differ, with both values.
fn difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (x, y))| difference(x, y, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: rendered {a}, typed {b}")),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {pod_spec}"))
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `flag` is followed by `value` somewhere in `args`.
fn has_flag(args: &[String], flag: &str, value: &str) -> bool {
    args.windows(2).any(|w| w[0] == flag && w[1] == value)
}

fn port(c: &Value, name: &str) -> i64 {
    c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no port {name} in {c}"))
}

fn assert_hardened(pod_spec: &Value, c: &Value) {
    assert_eq!(pod_spec["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{sc}");
}

fn assert_probes(c: &Value, port_name: &str) {
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{c}");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], port_name, "{c}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{c}");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], port_name, "{c}");
}

fn env_secret_key<'a>(c: &'a Value, name: &str) -> (&'a str, &'a str) {
    let var = c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no env {name} in {c}"));
    let r = &var["valueFrom"]["secretKeyRef"];
    (
        r["name"].as_str().unwrap_or_default(),
        r["key"].as_str().unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------
// The hub chart

#[test]
fn hub_chart_default_values() -> Result<()> {
    let r = Rendered::render(
        "flotilla-hub",
        &Release::new("flotilla-hub", "flotilla-system"),
        &[],
    )?;
    assert_eq!(
        r.ids(),
        set(&[
            "ServiceAccount/flotilla-system/flotilla-hub",
            "Service/flotilla-system/flotilla-hub",
            "Service/flotilla-system/flotilla-hub-metrics",
            "Service/flotilla-system/flotilla-hub-headless",
            "StatefulSet/flotilla-system/flotilla-hub",
        ]),
        "{}",
        r.text
    );
    let sts = r.get("StatefulSet", "flotilla-hub");
    assert_eq!(sts["spec"]["replicas"], 1);
    assert_eq!(sts["spec"]["serviceName"], "flotilla-hub-headless");
    let pod = &sts["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_null(), "no CA or token supplied");
    let hub = container(pod, "hub");
    assert_eq!(hub["image"], "ghcr.io/flotilla-gitops/flotilla-hub:0.1.0");
    let a = args(hub);
    assert_eq!(a[0], "serve");
    assert!(!a.iter().any(|x| x == "--ssh-known-hosts"), "{a:?}");
    assert!(has_flag(&a, "--data-dir", "/var/lib/flotilla"), "{a:?}");
    assert!(has_flag(&a, "--listen", "0.0.0.0:7443"), "{a:?}");
    assert!(has_flag(&a, "--metrics-listen", "0.0.0.0:9090"), "{a:?}");
    assert!(
        has_flag(&a, "--advertise-host", "flotilla-hub.flotilla-system.svc"),
        "{a:?}"
    );
    assert_eq!(port(hub, "agent"), 7443);
    assert_eq!(port(hub, "metrics"), 9090);
    assert_hardened(pod, hub);
    assert_probes(hub, "metrics");
    assert_eq!(hub["resources"]["requests"]["memory"], "128Mi");
    let mounts = hub["volumeMounts"].to_string();
    assert!(mounts.contains("/var/lib/flotilla"), "{mounts}");
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "data");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
    assert!(claim["spec"]["storageClassName"].is_null());

    let svc = r.get("Service", "flotilla-hub");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(
        svc["spec"]["ports"],
        json!([
            {"name": "agent", "port": 7443, "targetPort": "agent", "protocol": "TCP", "appProtocol": "grpc"},
        ])
    );
    assert_eq!(
        svc["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"]
    );
    let metrics = r.get("Service", "flotilla-hub-metrics");
    assert_eq!(metrics["spec"]["type"], "ClusterIP");
    assert_eq!(
        metrics["spec"]["ports"],
        json!([
            {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"},
        ])
    );
    assert_eq!(
        metrics["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        metrics["metadata"]["labels"]["flotilla.dev/service"],
        "metrics"
    );
    // Nothing operator-specific is created unless asked for.
    assert!(pod["priorityClassName"].is_null() && pod["topologySpreadConstraints"].is_null());
    Ok(())
}

#[test]
fn hub_chart_custom_values() -> Result<()> {
    let r = Rendered::render(
        "flotilla-hub",
        &Release::new("prod", "flotilla"),
        &[fixture("hub-values.yaml")],
    )?;
    assert_eq!(
        r.ids(),
        set(&[
            "ServiceAccount/flotilla/fleet-hub",
            "Service/flotilla/fleet-hub",
            "Service/flotilla/fleet-hub-metrics",
            "Service/flotilla/fleet-hub-headless",
            "StatefulSet/flotilla/fleet-hub",
            "Ingress/flotilla/fleet-hub",
            "Secret/flotilla/fleet-hub-ca",
            "Secret/flotilla/fleet-hub-admin-token",
            "ConfigMap/flotilla/fleet-hub-ssh-known-hosts",
        ]),
        "{}",
        r.text
    );
    let sts = r.get("StatefulSet", "fleet-hub");
    let pod = &sts["spec"]["template"]["spec"];
    let hub = container(pod, "hub");
    assert_eq!(hub["image"], "registry.example.com/flotilla/hub:0.2.0-test");
    assert_eq!(hub["imagePullPolicy"], "Always");
    let a = args(hub);
    assert!(has_flag(&a, "--listen", "0.0.0.0:8443"), "{a:?}");
    assert!(has_flag(&a, "--metrics-listen", "0.0.0.0:9100"), "{a:?}");
    assert!(
        has_flag(&a, "--advertise-host", "flotilla.example.com"),
        "{a:?}"
    );
    assert!(
        has_flag(&a, "--advertise-host", "hub.internal.example.com"),
        "{a:?}"
    );
    assert!(
        has_flag(
            &a,
            "--repo",
            "https://git.example.com/platform/config.git#apps"
        ),
        "{a:?}"
    );
    assert!(has_flag(&a, "--revision", "main"), "{a:?}");
    assert!(has_flag(&a, "--poll-interval", "30s"), "{a:?}");
    assert_eq!(a.last().map(String::as_str), Some("--some-future-flag"));
    assert_eq!(port(hub, "agent"), 8443);
    assert_eq!(port(hub, "metrics"), 9100);
    assert_probes(hub, "metrics");
    assert_hardened(pod, hub);
    assert_eq!(
        hub["resources"],
        json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}})
    );
    let env = hub["env"].to_string();
    assert!(env.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{env}");
    assert!(env.contains("\"debug\""), "{env}");
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"][0]["value"], "flotilla");

    // The supplied CA and token are copied into the data directory first.
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], "seed-data-dir");
    assert_hardened(pod, init);
    let init_mounts = init["volumeMounts"].to_string();
    assert!(init_mounts.contains("/seed/ca") && init_mounts.contains("/seed/admin"));
    let volumes = pod["volumes"].to_string();
    assert!(volumes.contains("fleet-hub-ca") && volumes.contains("fleet-hub-admin-token"));

    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "50Gi");
    assert_eq!(claim["spec"]["storageClassName"], "fast-ssd");

    let svc = r.get("Service", "fleet-hub");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    // The plain-HTTP metrics port is never on the load balancer.
    assert_eq!(svc["spec"]["ports"].as_array().map(Vec::len), Some(1));
    assert_eq!(svc["metadata"]["annotations"]["example.com/lb"], "internal");
    let metrics = r.get("Service", "fleet-hub-metrics");
    assert_eq!(metrics["spec"]["type"], "ClusterIP");
    assert_eq!(metrics["spec"]["ports"][0]["port"], 9200);
    assert!(metrics["metadata"]["annotations"].is_null());

    let ing = r.get("Ingress", "fleet-hub");
    assert_eq!(ing["spec"]["ingressClassName"], "nginx");
    assert_eq!(ing["spec"]["rules"][0]["host"], "flotilla.example.com");
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"],
        json!({"name": "fleet-hub", "port": {"name": "agent"}})
    );

    let ca = r.get("Secret", "fleet-hub-ca");
    let crt = ca["data"]["ca.crt"].as_str().unwrap_or_default();
    assert!(!crt.is_empty() && ca["data"]["ca.key"].is_string());
    let token = r.get("Secret", "fleet-hub-admin-token");
    assert_eq!(token["data"]["admin.token"], "dGVzdC1hZG1pbi10b2tlbg==");

    // ssh known hosts: a ConfigMap, mounted read-only, named by the flag.
    let known = r.get("ConfigMap", "fleet-hub-ssh-known-hosts");
    let hosts = known["data"]["ssh_known_hosts"]
        .as_str()
        .unwrap_or_default();
    assert!(hosts.starts_with("git.example.com ssh-ed25519 "), "{hosts}");
    assert!(
        has_flag(&a, "--ssh-known-hosts", "/etc/flotilla/ssh/ssh_known_hosts"),
        "{a:?}"
    );
    let mounts = hub["volumeMounts"].to_string();
    assert!(mounts.contains("/etc/flotilla/ssh"), "{mounts}");
    assert!(volumes.contains("fleet-hub-ssh-known-hosts"), "{volumes}");
    Ok(())
}

#[test]
fn hub_chart_refuses_ca_without_key() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("v.yaml");
    std::fs::write(&values, "ca:\n  enabled: true\n  cert: x\n").unwrap();
    let err = helm::template(
        &chart_dir("flotilla-hub"),
        &Release::new("h", "ns"),
        &[values],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("flotilla-hub/templates/secret.yaml"), "{err}");
    assert!(err.contains("ca.key is required"), "{err}");
}

#[test]
fn hub_chart_mounts_the_credentials_key_apart_from_the_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = "ab".repeat(32);
    let by_value = dir.path().join("value.yaml");
    std::fs::write(&by_value, format!("credentialsKey:\n  value: {key}\n"))?;
    let r = Rendered::render("flotilla-hub", &Release::new("h", "ns"), &[by_value])?;
    let secret = r.get("Secret", "h-flotilla-hub-credentials-key");
    assert_eq!(
        secret["data"]["credentials.key"],
        // base64 of the key.
        json!(
            "YWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYg=="
        )
    );
    let sts = r.get("StatefulSet", "h-flotilla-hub");
    let pod = &sts["spec"]["template"]["spec"];
    let hub = container(pod, "hub");
    let a = args(hub);
    assert!(
        has_flag(
            &a,
            "--credentials-key-file",
            "/etc/flotilla/credentials/credentials.key"
        ),
        "{a:?}"
    );
    let mounts = hub["volumeMounts"].to_string();
    assert!(mounts.contains("/etc/flotilla/credentials"), "{mounts}");
    let volumes = pod["volumes"].to_string();
    assert!(
        volumes.contains("h-flotilla-hub-credentials-key"),
        "{volumes}"
    );

    let existing = dir.path().join("existing.yaml");
    std::fs::write(&existing, "credentialsKey:\n  existingSecret: vault-key\n")?;
    let r = Rendered::render("flotilla-hub", &Release::new("h", "ns"), &[existing])?;
    assert!(
        !r.ids().iter().any(|id| id.starts_with("Secret/")),
        "{}",
        r.text
    );
    let pod = &r.get("StatefulSet", "h-flotilla-hub")["spec"]["template"]["spec"];
    assert!(pod["volumes"].to_string().contains("vault-key"));

    // Without either, the hub keeps the key in its data directory.
    let r = Rendered::render("flotilla-hub", &Release::new("h", "ns"), &[])?;
    let a = args(container(
        &r.get("StatefulSet", "h-flotilla-hub")["spec"]["template"]["spec"],
        "hub",
    ));
    assert!(!a.iter().any(|x| x == "--credentials-key-file"), "{a:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// The agent chart

#[test]
fn agent_chart_default_values() -> Result<()> {
    let r = Rendered::render(
        "flotilla-agent",
        &Release::new("flotilla-agent", "flotilla-system"),
        &[],
    )?;
    assert_eq!(
        r.ids(),
        set(&[
            "ServiceAccount/flotilla-system/flotilla-agent",
            "Secret/flotilla-system/flotilla-agent-bootstrap",
            "Role/flotilla-system/flotilla-agent-self",
            "RoleBinding/flotilla-system/flotilla-agent-self",
            "ClusterRole//flotilla-agent",
            "ClusterRoleBinding//flotilla-agent",
            "Deployment/flotilla-system/flotilla-agent",
        ]),
        "{}",
        r.text
    );
    let cr = r.get("ClusterRole", "flotilla-agent");
    assert_eq!(
        cr["rules"],
        json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    );
    let crb = r.get("ClusterRoleBinding", "flotilla-agent");
    assert_eq!(
        crb["subjects"],
        json!([{"kind": "ServiceAccount", "name": "flotilla-agent", "namespace": "flotilla-system"}])
    );
    let own = r.get("Role", "flotilla-agent-self");
    assert!(own["rules"][0]["resources"].to_string().contains("secrets"));

    let secret = r.get("Secret", "flotilla-agent-bootstrap");
    assert_eq!(
        secret["stringData"],
        json!({"token": "", "hub-url": "https://flotilla-hub.flotilla-system.svc:7443", "ca-pin": ""})
    );

    let dep = r.get("Deployment", "flotilla-agent");
    assert_eq!(dep["spec"]["replicas"], 1);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "flotilla-agent");
    let agent = container(pod, "agent");
    assert_eq!(
        agent["image"],
        "ghcr.io/flotilla-gitops/flotilla-agent:0.1.0"
    );
    let a = args(agent);
    assert!(has_flag(&a, "--hub", "$(FLOTILLA_HUB)"), "{a:?}");
    assert!(
        has_flag(&a, "--state-dir", "/var/lib/flotilla-agent"),
        "{a:?}"
    );
    assert!(has_flag(&a, "--health-listen", "0.0.0.0:8081"), "{a:?}");
    assert!(
        has_flag(&a, "--inventory-namespace", "flotilla-system"),
        "{a:?}"
    );
    for (var, key) in [
        ("FLOTILLA_HUB", "hub-url"),
        ("FLOTILLA_TOKEN", "token"),
        ("FLOTILLA_CA_PIN", "ca-pin"),
    ] {
        assert_eq!(
            env_secret_key(agent, var),
            ("flotilla-agent-bootstrap", key)
        );
    }
    assert_eq!(port(agent, "health"), 8081);
    assert_probes(agent, "health");
    assert_hardened(pod, agent);
    let state = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "state"))
        .context("no state volume")?;
    assert_eq!(state["emptyDir"], json!({}));
    Ok(())
}

#[test]
fn agent_chart_namespace_scoped() -> Result<()> {
    let r = Rendered::render(
        "flotilla-agent",
        &Release::new("edge", "flotilla-system"),
        &[fixture("agent-values.yaml")],
    )?;
    assert_eq!(
        r.ids(),
        set(&[
            "ServiceAccount/flotilla-system/edge-flotilla-agent",
            "Secret/flotilla-system/edge-flotilla-agent-bootstrap",
            "Role/flotilla-system/edge-flotilla-agent-self",
            "RoleBinding/flotilla-system/edge-flotilla-agent-self",
            "Role/team-a/edge-flotilla-agent",
            "RoleBinding/team-a/edge-flotilla-agent",
            "Role/team-b/edge-flotilla-agent",
            "RoleBinding/team-b/edge-flotilla-agent",
            "Deployment/flotilla-system/edge-flotilla-agent",
        ]),
        "{}",
        r.text
    );
    for doc in r.docs.iter().filter(|d| d["kind"] == "Role") {
        if doc["metadata"]["namespace"] == "flotilla-system" {
            continue;
        }
        assert_eq!(
            doc["rules"][0],
            json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})
        );
        assert_eq!(
            doc["rules"][1]["apiGroups"],
            json!(["apiextensions.k8s.io"])
        );
    }
    for doc in r.docs.iter().filter(|d| d["kind"] == "RoleBinding") {
        assert_eq!(doc["subjects"][0]["namespace"], "flotilla-system");
        assert_eq!(doc["subjects"][0]["name"], "edge-flotilla-agent");
    }
    let secret = r.get("Secret", "edge-flotilla-agent-bootstrap");
    assert_eq!(secret["stringData"]["token"], "flt_test.0123456789abcdef");
    assert_eq!(
        secret["stringData"]["hub-url"],
        "https://flotilla.example.com:443"
    );
    assert!(
        secret["stringData"]["ca-pin"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sha256:")
    );

    let dep = r.get("Deployment", "edge-flotilla-agent");
    let pod = &dep["spec"]["template"]["spec"];
    let agent = container(pod, "agent");
    assert!(has_flag(&args(agent), "--health-listen", "0.0.0.0:9081"));
    assert_eq!(port(agent, "health"), 9081);
    assert_probes(agent, "health");
    assert_hardened(pod, agent);
    assert_eq!(
        agent["resources"]["limits"],
        json!({"cpu": "1", "memory": "512Mi"})
    );
    assert!(agent["env"].to_string().contains("HTTPS_PROXY"));
    Ok(())
}

#[test]
fn agent_chart_rejects_unknown_scope_and_missing_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "rbac:\n  scope: everywhere\n",
            [
                r#"values don't meet the schema of chart flotilla-agent (values.schema.json): rbac.scope: must be one of "cluster", "namespace", not "everywhere""#,
                "",
            ],
        ),
        (
            "rbac:\n  scope: namespace\n",
            [
                "flotilla-agent/templates/rbac.yaml",
                "rbac.namespaces must list",
            ],
        ),
    ] {
        let values = dir.path().join("v.yaml");
        std::fs::write(&values, text).unwrap();
        let err = helm::template(
            &chart_dir("flotilla-agent"),
            &Release::new("a", "ns"),
            &[values],
        )
        .unwrap_err()
        .to_string();
        assert!(expected.iter().all(|e| err.contains(e)), "{err}");
    }
}

/// Values are checked against each chart's values.schema.json before
/// anything renders, as `helm template` does: a typo or a wrong type is
/// refused with the value named, not silently ignored.
#[test]
fn values_are_checked_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    for (chart, text, expected) in [
        (
            "flotilla-hub",
            "service:\n  type: Public\n",
            r#"service.type: must be one of "ClusterIP", "NodePort", "LoadBalancer", not "Public""#,
        ),
        (
            "flotilla-hub",
            "hub:\n  agentPort: \"7443\"\n",
            "hub.agentPort: got string, want integer",
        ),
        (
            "flotilla-hub",
            "metrics:\n  serviceMonitor:\n    enable: true\n",
            "metrics.serviceMonitor.enable: is not a value of this chart (known here: additionalLabels, annotations, enabled,",
        ),
        (
            "flotilla-hub",
            "credentialsKey:\n  value: not-hex\n",
            "credentialsKey.value: \"not-hex\" does not match the pattern",
        ),
        (
            "flotilla-hub",
            "extraEnv:\n  - value: x\n",
            "extraEnv[0].name: is required",
        ),
        (
            "flotilla-agent",
            "agent:\n  healthPort: 0\n",
            "agent.healthPort: must be at least 1, not 0",
        ),
        (
            "flotilla-agent",
            "bootstrap:\n  caPin: sha256:abc\n",
            "bootstrap.caPin: \"sha256:abc\" does not match the pattern",
        ),
        (
            "flotilla-agent",
            "podMonitor:\n  enabled: true\n",
            "podMonitor: is not a value of this chart",
        ),
    ] {
        let values = dir.path().join("v.yaml");
        std::fs::write(&values, text).unwrap();
        let err = helm::template(&chart_dir(chart), &Release::new("a", "ns"), &[values])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "values don't meet the schema of chart {chart} (values.schema.json): "
            )),
            "{err}"
        );
        assert!(err.contains(expected), "{chart} {text}: {err}");
    }
    // `global`, which Helm passes to every chart, is always accepted.
    let values = dir.path().join("v.yaml");
    std::fs::write(&values, "global:\n  imageRegistry: r.example.com\n").unwrap();
    for chart in ["flotilla-hub", "flotilla-agent"] {
        helm::template(
            &chart_dir(chart),
            &Release::new("a", "ns"),
            std::slice::from_ref(&values),
        )
        .unwrap();
    }
}

/// The agent keeps its inventory ConfigMaps in the namespace it is
/// installed into, where its own Role lets it write them.
#[test]
fn agent_inventory_namespace_follows_the_release() -> Result<()> {
    let r = Rendered::render(
        "flotilla-agent",
        &Release::new("flotilla-agent", "gitops"),
        &[],
    )?;
    let a = args(container(
        &r.get("Deployment", "flotilla-agent")["spec"]["template"]["spec"],
        "agent",
    ));
    assert!(has_flag(&a, "--inventory-namespace", "gitops"), "{a:?}");
    let own = r.get("Role", "flotilla-agent-self");
    assert_eq!(own["metadata"]["namespace"], "gitops");
    assert!(own["rules"].to_string().contains("configmaps"));
    Ok(())
}

// ---------------------------------------------------------------------------
// What an operator turns on: monitoring, network policy, disruption budget,
// webhooks, render tools, scheduling and extra volumes

/// The alert names of the `groups:` block in docs/operations.md.
fn documented_alerts() -> Result<BTreeSet<String>> {
    let doc = std::fs::read_to_string(flotilla_e2e::workspace_root().join("docs/operations.md"))?;
    let start = doc
        .find("```yaml\ngroups:")
        .context("no alert rules block in docs/operations.md")?;
    let block = &doc[start + "```yaml\n".len()..];
    let block = &block[..block.find("```").context("unterminated block")?];
    let rules: Value = serde_saphyr::from_str(block)?;
    Ok(rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect())
}

/// The rules of a rendered PrometheusRule, by alert name.
fn alert_rules(rule: &Value) -> std::collections::BTreeMap<String, Value> {
    rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["alert"].as_str()?.to_owned(), r)))
        .collect()
}

#[test]
fn hub_chart_operator_values() -> Result<()> {
    let r = Rendered::render(
        "flotilla-hub",
        &Release::new("flotilla-hub", "flotilla-system"),
        &[fixture("hub-operator-values.yaml")],
    )?;
    assert_eq!(
        r.ids(),
        set(&[
            "NetworkPolicy/flotilla-system/flotilla-hub",
            "PodDisruptionBudget/flotilla-system/flotilla-hub",
            "ServiceAccount/flotilla-system/flotilla-hub",
            "Secret/flotilla-system/flotilla-hub-webhook",
            "Service/flotilla-system/flotilla-hub",
            "Service/flotilla-system/flotilla-hub-metrics",
            "Service/flotilla-system/flotilla-hub-webhook",
            "Service/flotilla-system/flotilla-hub-headless",
            "StatefulSet/flotilla-system/flotilla-hub",
            "Ingress/flotilla-system/flotilla-hub-webhook",
            "PrometheusRule/flotilla-system/flotilla-hub",
            "ServiceMonitor/flotilla-system/flotilla-hub",
        ]),
        "{}",
        r.text
    );
    let sts = r.get("StatefulSet", "flotilla-hub");
    let pod = &sts["spec"]["template"]["spec"];
    let selector = &sts["spec"]["selector"]["matchLabels"];

    // Metrics: own ClusterIP Service, a ServiceMonitor selecting only it.
    let lb = r.get("Service", "flotilla-hub");
    assert_eq!(lb["spec"]["type"], "LoadBalancer");
    assert_eq!(
        lb["spec"]["ports"],
        json!([{"name": "agent", "port": 7443, "targetPort": "agent", "protocol": "TCP", "appProtocol": "grpc"}])
    );
    let metrics = r.get("Service", "flotilla-hub-metrics");
    assert_eq!(metrics["spec"]["type"], "ClusterIP");
    assert_eq!(
        metrics["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    let sm = r.get("ServiceMonitor", "flotilla-hub");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!(["flotilla-system"])
    );
    let want = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("selector")?;
    let svc_labels = metrics["metadata"]["labels"]
        .as_object()
        .context("labels")?;
    assert!(
        want.iter().all(|(k, v)| svc_labels.get(k) == Some(v)),
        "the ServiceMonitor selects the metrics Service: {want:?} / {svc_labels:?}"
    );
    assert_ne!(
        lb["metadata"]["labels"]["flotilla.dev/service"], "metrics",
        "and not the load balancer"
    );
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{
            "port": "metrics", "path": "/metrics", "scheme": "http", "interval": "15s",
            "scrapeTimeout": "10s", "honorLabels": false,
            "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "flotilla_hub_connection_timeouts_total"}],
        }])
    );

    // Alerts: those of docs/operations.md that concern the hub, scoped to
    // this release, minus the disabled one, plus the additional rule.
    let rule = r.get("PrometheusRule", "flotilla-hub");
    let rules = alert_rules(rule);
    let names: BTreeSet<String> = rules.keys().cloned().collect();
    let mut expected: BTreeSet<String> = documented_alerts()?
        .into_iter()
        .filter(|a| !a.starts_with("FlotillaAgent"))
        .collect();
    expected.remove("FlotillaHubConnectionsRejected");
    expected.insert("FlotillaTooManyClusters".into());
    assert_eq!(names, expected);
    for (name, rule) in &rules {
        if name == "FlotillaTooManyClusters" {
            assert_eq!(rule["labels"], json!({"severity": "info"}));
            continue;
        }
        let expr = rule["expr"].as_str().unwrap_or_default();
        assert!(
            expr.contains(r#"namespace="flotilla-system", service="flotilla-hub-metrics""#),
            "{name}: {expr}"
        );
        assert_eq!(rule["labels"]["team"], "platform", "{name}");
        assert!(
            ["warning", "critical"]
                .contains(&rule["labels"]["severity"].as_str().unwrap_or_default()),
            "{name}"
        );
        assert!(rule["annotations"]["summary"].is_string(), "{name}");
    }
    assert_eq!(
        rules["FlotillaHubStoreNotWritable"]["expr"],
        r#"flotilla_hub_store_writable{namespace="flotilla-system", service="flotilla-hub-metrics"} == 0"#
    );
    assert_eq!(rules["FlotillaHubDown"]["for"], "5m");
    assert_eq!(
        rules["FlotillaHubRepositorySecretsInvalid"]["expr"],
        r#"flotilla_hub_repository_secret_errors{namespace="flotilla-system", service="flotilla-hub-metrics"} > 0"#
    );

    // NetworkPolicy: the hub pod, every port admitted from its sources.
    let np = r.get("NetworkPolicy", "flotilla-hub");
    assert_eq!(&np["spec"]["podSelector"]["matchLabels"], selector);
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = np["spec"]["ingress"].as_array().context("ingress")?;
    assert_eq!(ingress.len(), 3);
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "agent", "protocol": "TCP"}])
    );
    assert!(ingress[0]["from"].is_null(), "agents come from anywhere");
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(ingress[2]["ports"][0]["port"], "webhook");
    assert_eq!(np["spec"]["egress"][1]["ports"][0]["port"], 443);

    let pdb = r.get("PodDisruptionBudget", "flotilla-hub");
    assert_eq!(
        pdb["spec"],
        json!({"selector": {"matchLabels": selector}, "minAvailable": 1})
    );

    // Webhooks: listener, secret, own Service and a TLS-terminating Ingress.
    let hub = container(pod, "hub");
    let a = args(hub);
    assert!(has_flag(&a, "--webhook-listen", "0.0.0.0:8088"), "{a:?}");
    assert_eq!(port(hub, "webhook"), 8088);
    assert_eq!(
        env_secret_key(hub, "FLOTILLA_WEBHOOK_SECRET"),
        ("flotilla-hub-webhook", "webhook.secret")
    );
    assert_eq!(
        r.get("Secret", "flotilla-hub-webhook")["data"]["webhook.secret"],
        "aG9vay1zZWNyZXQ="
    );
    let hook_svc = r.get("Service", "flotilla-hub-webhook");
    assert_eq!(hook_svc["spec"]["type"], "ClusterIP");
    assert_eq!(
        hook_svc["spec"]["ports"],
        json!([{"name": "webhook", "port": 80, "targetPort": "webhook", "protocol": "TCP", "appProtocol": "http"}])
    );
    let hook_ing = r.get("Ingress", "flotilla-hub-webhook");
    assert_eq!(hook_ing["spec"]["ingressClassName"], "nginx");
    assert_eq!(hook_ing["spec"]["tls"][0]["secretName"], "hooks-tls");
    assert_eq!(
        hook_ing["spec"]["rules"],
        json!([{"host": "hooks.example.com", "http": {"paths": [{
            "path": "/api/webhook", "pathType": "Exact",
            "backend": {"service": {"name": "flotilla-hub-webhook", "port": {"name": "webhook"}}},
        }]}}])
    );

    // Render tools: copied by an init container into a directory on PATH.
    let inits = pod["initContainers"]
        .as_array()
        .context("init containers")?;
    let names: Vec<&str> = inits.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["render-tools", "wait-for-git"]);
    let tools = &inits[0];
    assert_eq!(
        tools["image"],
        "registry.example.com/tools/helm-kustomize:1"
    );
    assert_eq!(
        tools["command"],
        json!([
            "cp",
            "/usr/local/bin/helm",
            "/usr/local/bin/kustomize",
            "/opt/flotilla/tools/"
        ])
    );
    assert_hardened(pod, tools);
    let env = hub["env"].as_array().context("env")?;
    assert!(
        env.contains(&json!({"name": "PATH", "value": "/opt/flotilla/tools"})),
        "{env:?}"
    );
    assert!(hub["volumeMounts"].as_array().context("mounts")?.contains(
        &json!({"name": "render-tools", "mountPath": "/opt/flotilla/tools", "readOnly": true})
    ));

    // Scheduling and extra volumes.
    assert_eq!(pod["priorityClassName"], "platform-critical");
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    let volumes = pod["volumes"].as_array().context("volumes")?;
    assert!(volumes.contains(&json!({"name": "git-ca", "configMap": {"name": "git-ca"}})));
    assert!(volumes.contains(&json!({"name": "render-tools", "emptyDir": {}})));
    assert!(hub["volumeMounts"].as_array().context("mounts")?.contains(
        &json!({"name": "git-ca", "mountPath": "/etc/flotilla/git-ca", "readOnly": true})
    ));
    Ok(())
}

#[test]
fn agent_chart_operator_values() -> Result<()> {
    let r = Rendered::render(
        "flotilla-agent",
        &Release::new("flotilla-agent", "flotilla-system"),
        &[fixture("agent-operator-values.yaml")],
    )?;
    assert_eq!(
        r.ids(),
        set(&[
            "NetworkPolicy/flotilla-system/flotilla-agent",
            "PodDisruptionBudget/flotilla-system/flotilla-agent",
            "ServiceAccount/flotilla-system/flotilla-agent",
            "Secret/flotilla-system/flotilla-agent-bootstrap",
            "Role/flotilla-system/flotilla-agent-self",
            "RoleBinding/flotilla-system/flotilla-agent-self",
            "ClusterRole//flotilla-agent",
            "ClusterRoleBinding//flotilla-agent",
            "Deployment/flotilla-system/flotilla-agent",
            "PodMonitor/flotilla-system/flotilla-agent",
            "PrometheusRule/flotilla-system/flotilla-agent",
        ]),
        "{}",
        r.text
    );
    let dep = r.get("Deployment", "flotilla-agent");
    let pod = &dep["spec"]["template"]["spec"];
    let selector = &dep["spec"]["selector"]["matchLabels"];

    let pm = r.get("PodMonitor", "flotilla-agent");
    assert_eq!(&pm["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(pm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(
        pm["spec"]["podMetricsEndpoints"],
        json!([{
            "port": "health", "path": "/metrics", "scheme": "http", "interval": "30s",
            "honorLabels": false,
            "relabelings": [{"targetLabel": "cluster", "replacement": "prod-eu-1"}],
        }])
    );
    let rules = alert_rules(r.get("PrometheusRule", "flotilla-agent"));
    let expected: BTreeSet<String> = documented_alerts()?
        .into_iter()
        .filter(|a| a.starts_with("FlotillaAgent"))
        .collect();
    assert_eq!(rules.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        rules["FlotillaAgentDisconnected"]["expr"],
        r#"flotilla_agent_connected{namespace="flotilla-system", pod=~"flotilla-agent-.*"} == 0"#
    );
    for rule in rules.values() {
        // alertLabels replace the chart's severity.
        assert_eq!(rule["labels"], json!({"severity": "page"}));
    }
    assert!(rules["FlotillaAgentRetrying"]["for"].is_null());
    assert_eq!(
        rules["FlotillaAgentClusterCacheWriteFailing"]["expr"],
        r#"increase(flotilla_agent_cluster_cache_errors_total{operation="write", namespace="flotilla-system", pod=~"flotilla-agent-.*"}[15m]) > 0"#
    );
    assert_eq!(rules["FlotillaAgentClusterCacheWriteFailing"]["for"], "15m");
    // Every metric an agent alert reads is one the agent registers
    // (counters get `_total` in the exposition).
    let registered =
        std::fs::read_to_string(flotilla_e2e::workspace_root().join("agent/src/metrics.rs"))?;
    for (name, rule) in &rules {
        let expr = rule["expr"].as_str().unwrap_or_default();
        let metrics: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("flotilla_agent_"))
            .collect();
        assert!(!metrics.is_empty(), "{name}: {expr}");
        for m in metrics {
            let bare = m.trim_start_matches("flotilla_agent_");
            let bare = bare.strip_suffix("_total").unwrap_or(bare);
            assert!(
                registered.contains(&format!("\"{bare}\"")),
                "{name}: {m} is not registered in agent/src/metrics.rs"
            );
        }
    }

    let np = r.get("NetworkPolicy", "flotilla-agent");
    assert_eq!(&np["spec"]["podSelector"]["matchLabels"], selector);
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"ports": [{"port": "health", "protocol": "TCP"}], "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]}])
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let pdb = r.get("PodDisruptionBudget", "flotilla-agent");
    assert_eq!(
        pdb["spec"],
        json!({"selector": {"matchLabels": selector}, "maxUnavailable": 1})
    );

    assert_eq!(pod["priorityClassName"], "platform-critical");
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    assert_eq!(pod["initContainers"][0]["name"], "wait");
    let agent = container(pod, "agent");
    assert!(
        agent["volumeMounts"]
            .as_array()
            .context("mounts")?
            .contains(&json!({"name": "health-checks", "mountPath": "/etc/flotilla/health", "readOnly": true}))
    );
    assert!(
        pod["volumes"].as_array().context("volumes")?.contains(
            &json!({"name": "health-checks", "configMap": {"name": "lua-health-checks"}})
        )
    );
    Ok(())
}

/// Values that cannot work are refused with the value named.
#[test]
fn operator_values_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (chart, text, file, expected) in [
        (
            "flotilla-hub",
            "podDisruptionBudget:\n  enabled: true\n  minAvailable: 1\n  maxUnavailable: 1\n",
            "poddisruptionbudget.yaml",
            "set only one of podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable",
        ),
        (
            "flotilla-agent",
            "podDisruptionBudget:\n  enabled: true\n  minAvailable: 1\n  maxUnavailable: 0\n",
            "poddisruptionbudget.yaml",
            "set only one of podDisruptionBudget.minAvailable",
        ),
        (
            "flotilla-hub",
            "renderTools:\n  enabled: true\n",
            "statefulset.yaml",
            "renderTools.image is required",
        ),
        (
            "flotilla-hub",
            "webhook:\n  enabled: true\n  ingress:\n    enabled: true\n    hosts: []\n",
            "ingress.yaml",
            "webhook.ingress.hosts must list at least one host",
        ),
    ] {
        let values = dir.path().join("v.yaml");
        std::fs::write(&values, text).unwrap();
        let err = helm::template(&chart_dir(chart), &Release::new("a", "ns"), &[values])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{chart}/templates/{file}")), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

/// A PodDisruptionBudget that allows no eviction is possible, but only when
/// asked for: maxUnavailable 0 is kept, not mistaken for "unset".
#[test]
fn disruption_budget_keeps_an_explicit_zero() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("v.yaml");
    std::fs::write(
        &values,
        "podDisruptionBudget:\n  enabled: true\n  maxUnavailable: 0\n",
    )?;
    let r = Rendered::render(
        "flotilla-hub",
        &Release::new("flotilla-hub", "ns"),
        &[values],
    )?;
    let pdb = r.get("PodDisruptionBudget", "flotilla-hub");
    assert_eq!(pdb["spec"]["maxUnavailable"], 0);
    assert!(pdb["spec"]["minAvailable"].is_null());
    Ok(())
}

// ---------------------------------------------------------------------------
// The renderer itself

fn inline_chart(dir: &Path, templates: &[(&str, &str)]) -> Result<Chart> {
    std::fs::create_dir_all(dir.join("templates"))?;
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: c\nversion: 1.2.3\nappVersion: \"9\"\n",
    )?;
    std::fs::write(
        dir.join("values.yaml"),
        "m:\n  z: 1\n  a: [true, x]\ns: hi\n",
    )?;
    for (name, text) in templates {
        std::fs::write(dir.join("templates").join(name), text)?;
    }
    Ok(Chart::load(dir)?)
}

#[test]
fn renderer_include_tpl_nindent_and_sorted_to_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let c = inline_chart(
        dir.path(),
        &[
            (
                "_helpers.tpl",
                r#"{{- define "c.name" -}}{{ .Chart.Name }}-{{ .Chart.AppVersion }}-{{ .Release.Name }}{{- end -}}
{{- define "c.outer" -}}outer({{ include "c.name" . }}){{- end -}}"#,
            ),
            (
                "a.yaml",
                "name: {{ include \"c.outer\" . }}\nm:{{ toYaml .Values.m | nindent 2 }}\nmissing: \"{{ .Values.nope }}\"\nt: {{ tpl \"{{ .Values.s }}\" . }}\nk: {{ .Capabilities.KubeVersion.Version }}\n",
            ),
            ("b.yaml", "---\n# only a comment\n---\n"),
            ("NOTES.txt", "ignored {{ .Values.s }}"),
        ],
    ).unwrap();
    let out = helm::render(&c, &Release::new("r", "ns"), c.values.clone()).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    assert_eq!(
        docs,
        vec![
            json!({"name": "outer(c-9-r)", "m": {"a": [true, "x"], "z": 1}, "missing": "", "t": "hi", "k": "v1.33.0"})
        ],
        "{out}"
    );
    assert!(
        out.starts_with("---\n# Source: c/templates/a.yaml\n"),
        "{out}"
    );
    // Keys sorted, as Helm's toYaml writes them.
    let a = out.find("  a:").unwrap();
    let z = out.find("  z: 1").unwrap();
    assert!(a < z, "{out}");
}

#[test]
fn renderer_merges_values_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = inline_chart(dir.path(), &[("a.yaml", "v: {{ toJson .Values }}\n")]).unwrap();
    let one = dir.path().join("one.yaml");
    let two = dir.path().join("two.yaml");
    std::fs::write(&one, "m:\n  z: 2\n  y: 3\ns: one\n").unwrap();
    std::fs::write(&two, "m:\n  y: 4\n  a: null\ns: two\n").unwrap();
    let out = helm::template(&c.dir, &Release::new("r", "ns"), &[one, two]).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    assert_eq!(docs[0]["v"], json!({"m": {"z": 2, "y": 4}, "s": "two"}));
}

#[test]
fn renderer_refuses_self_include() {
    let dir = tempfile::tempdir().unwrap();
    let c = inline_chart(
        dir.path(),
        &[
            (
                "_h.tpl",
                r#"{{- define "loop" -}}{{ include "loop" . }}{{- end -}}"#,
            ),
            ("a.yaml", "x: {{ include \"loop\" . }}\n"),
        ],
    )
    .unwrap();
    let err = helm::render(&c, &Release::new("r", "ns"), c.values.clone()).unwrap_err();
    assert!(err.to_string().contains("nesting deeper"), "{err}");
    assert!(err.to_string().contains("c/templates/a.yaml"), "{err}");
}

// ---------------------------------------------------------------------------
// Applying to a simulated cluster

/// Applies `rendered` to a fresh simulated cluster after creating
/// `namespaces`, and checks `kubectl get` returns every object.
async fn apply_to_simulator(rendered: &Rendered, namespaces: &[&str]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = flotilla_sim::Simulator::start(flotilla_sim::SimConfig {
        clusters: 1,
        listen: "127.0.0.1:0".parse()?,
        kubeconfig_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await?;
    let kubeconfig = sim
        .kubeconfig_path("sim-1")
        .context("simulator wrote no kubeconfig for sim-1")?;
    // `kubectl create namespace` sends protobuf, which the simulator does
    // not speak (e2e/sim/README.md); a Namespace document says the same.
    for ns in namespaces {
        let doc = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
        kubectl(
            &kubeconfig,
            &["apply", "--server-side", "-f", "-"],
            Some(&doc),
        )
        .await?;
    }
    // The Prometheus Operator's kinds need their CRDs first, as in a
    // cluster with the operator installed.
    if rendered
        .docs
        .iter()
        .any(|d| d["apiVersion"] == "monitoring.coreos.com/v1")
    {
        let crds = std::fs::read_to_string(fixture("monitoring-crds.yaml"))?;
        kubectl(
            &kubeconfig,
            &["apply", "--server-side", "-f", "-"],
            Some(&crds),
        )
        .await?;
    }
    let applied = kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "--field-manager=helm-chart-test",
            "-f",
            "-",
        ],
        Some(&rendered.text),
    )
    .await?;
    assert_eq!(
        applied.lines().count(),
        rendered.docs.len(),
        "one line per object:\n{applied}"
    );
    let listed = kubectl(
        &kubeconfig,
        &["get", "-f", "-", "-o", "json", "--show-managed-fields"],
        Some(&rendered.text),
    )
    .await?;
    let listed: Value = serde_json::from_str(&listed)?;
    let items = listed["items"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![listed.clone()]);
    let live: BTreeSet<String> = items
        .iter()
        .map(|d| {
            format!(
                "{}/{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(live, rendered.ids());
    // Custom resources come back as rendered: the CRD's schema neither
    // pruned an unknown field nor refused a mistyped one.
    for doc in rendered
        .docs
        .iter()
        .filter(|d| d["apiVersion"] == "monitoring.coreos.com/v1")
    {
        let item = items
            .iter()
            .find(|i| i["kind"] == doc["kind"] && i["metadata"]["name"] == doc["metadata"]["name"])
            .context("custom resource not listed")?;
        if let Some(diff) = difference(&doc["spec"], &item["spec"], ".spec") {
            bail!("{} {}: {diff}", doc["kind"], doc["metadata"]["name"]);
        }
    }
    // Install order, as helm prints it: dependencies before their users.
    let kinds: Vec<&str> = rendered
        .docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default())
        .collect();
    let rank = |k: &str| {
        [
            "NetworkPolicy",
            "PodDisruptionBudget",
            "ServiceAccount",
            "Secret",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "StatefulSet",
            "Ingress",
            // Kinds Helm does not know come last, by name.
            "PodMonitor",
            "PrometheusRule",
            "ServiceMonitor",
        ]
        .iter()
        .position(|x| *x == k)
    };
    assert!(
        kinds.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
        "not in install order: {kinds:?}"
    );
    // Server-side apply recorded our field manager on every object.
    for item in &items {
        let managers = item["metadata"]["managedFields"].to_string();
        assert!(
            managers.contains("helm-chart-test"),
            "{}: {managers}",
            item["metadata"]["name"]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_chart_applies_to_simulator() -> Result<()> {
    let ns = "flotilla-system";
    let r = Rendered::render("flotilla-hub", &Release::new("flotilla-hub", ns), &[])?;
    apply_to_simulator(&r, &[ns]).await?;
    let r = Rendered::render(
        "flotilla-hub",
        &Release::new("prod", "flotilla"),
        &[fixture("hub-values.yaml")],
    )?;
    apply_to_simulator(&r, &["flotilla"]).await?;
    let r = Rendered::render(
        "flotilla-hub",
        &Release::new("flotilla-hub", ns),
        &[fixture("hub-operator-values.yaml")],
    )?;
    apply_to_simulator(&r, &[ns]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_chart_applies_to_simulator() -> Result<()> {
    let ns = "flotilla-system";
    let r = Rendered::render("flotilla-agent", &Release::new("flotilla-agent", ns), &[])?;
    apply_to_simulator(&r, &[ns]).await?;
    let r = Rendered::render(
        "flotilla-agent",
        &Release::new("edge", ns),
        &[fixture("agent-values.yaml")],
    )?;
    apply_to_simulator(&r, &[ns, "team-a", "team-b"]).await?;
    let r = Rendered::render(
        "flotilla-agent",
        &Release::new("flotilla-agent", ns),
        &[fixture("agent-operator-values.yaml")],
    )?;
    apply_to_simulator(&r, &[ns]).await
}

// ---------------------------------------------------------------------------
// Documentation

/// Dotted paths of the values that carry a `# --` comment in values.yaml.
fn documented_values(values_yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut commented = false;
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = (line.len() - trimmed.len()) / 2;
        if trimmed.starts_with("# --") {
            commented = true;
            continue;
        }
        if trimmed.starts_with('#') || trimmed.is_empty() || trimmed.starts_with('-') {
            continue;
        }
        if let Some((key, _)) = trimmed.split_once(':') {
            stack.truncate(indent);
            stack.push(key.to_owned());
            if commented {
                out.push(stack.join("."));
            }
        }
        commented = false;
    }
    out
}

/// Every leaf value (or value whose default is a whole object or list) is
/// documented in values.yaml and listed in the chart README's table.
#[test]
fn every_value_is_documented() -> Result<()> {
    for chart in ["flotilla-hub", "flotilla-agent"] {
        let dir = chart_dir(chart);
        let values_text = std::fs::read_to_string(dir.join("values.yaml"))?;
        let readme = std::fs::read_to_string(dir.join("README.md"))?;
        let documented = documented_values(&values_text);
        let values: Value = serde_saphyr::from_str(&values_text)?;
        let mut leaves = Vec::new();
        collect_leaves(&values, "", &mut leaves);
        for leaf in &leaves {
            assert!(
                documented
                    .iter()
                    .any(|d| leaf == d || leaf.starts_with(&format!("{d}."))),
                "{chart}: {leaf} has no `# --` comment in values.yaml"
            );
        }
        for d in &documented {
            assert!(
                readme.contains(&format!("| `{d}` |")),
                "{chart}: {d} is missing from the README values table"
            );
        }
    }
    Ok(())
}

fn collect_leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(v, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

/// With existing Secrets named, neither chart creates its own, and the
/// workloads refer to the named ones.
#[test]
fn existing_secrets_are_used_not_created() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub_values = dir.path().join("hub.yaml");
    std::fs::write(
        &hub_values,
        "ca:\n  enabled: true\n  existingSecret: my-ca\nadminToken:\n  existingSecret: my-token\n",
    )?;
    let r = Rendered::render(
        "flotilla-hub",
        &Release::new("flotilla-hub", "flotilla-system"),
        &[hub_values],
    )?;
    assert!(
        !r.ids().iter().any(|id| id.starts_with("Secret/")),
        "{}",
        r.text
    );
    let pod = &r.get("StatefulSet", "flotilla-hub")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].to_string();
    assert!(
        volumes.contains("\"my-ca\"") && volumes.contains("\"my-token\""),
        "{volumes}"
    );
    assert_eq!(pod["initContainers"][0]["name"], "seed-data-dir");

    let agent_values = dir.path().join("agent.yaml");
    std::fs::write(&agent_values, "bootstrap:\n  existingSecret: enroll\n")?;
    let r = Rendered::render(
        "flotilla-agent",
        &Release::new("flotilla-agent", "flotilla-system"),
        &[agent_values],
    )?;
    assert!(
        !r.ids().iter().any(|id| id.starts_with("Secret/")),
        "{}",
        r.text
    );
    let agent = container(
        &r.get("Deployment", "flotilla-agent")["spec"]["template"]["spec"],
        "agent",
    );
    assert_eq!(env_secret_key(agent, "FLOTILLA_TOKEN"), ("enroll", "token"));
    assert_eq!(
        env_secret_key(agent, "FLOTILLA_CA_PIN"),
        ("enroll", "ca-pin")
    );
    Ok(())
}

/// `required` fails on a missing value and the empty string only, as in
/// Helm; `template` and `.Template.Name` work as there.
#[test]
fn renderer_required_and_template_match_helm() {
    let dir = tempfile::tempdir().unwrap();
    let c = inline_chart(
        dir.path(),
        &[
            ("_h.tpl", r#"{{- define "c.x" -}}x={{ .Values.s }}{{- end -}}"#),
            (
                "a.yaml",
                "l: {{ required \"l\" (list) | len }}\nz: {{ required \"z\" 0 }}\nx: {{ template \"c.x\" . }}\nn: {{ .Template.Name }}\n",
            ),
        ],
    )
    .unwrap();
    let out = helm::render(&c, &Release::new("r", "ns"), c.values.clone()).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    assert_eq!(
        docs,
        vec![json!({"l": 0, "z": 0, "x": "x=hi", "n": "c/templates/a.yaml"})]
    );
    for missing in [
        "{{ required \"need it\" .Values.nope }}",
        "{{ required \"need it\" \"\" }}",
    ] {
        std::fs::write(
            dir.path().join("templates/a.yaml"),
            format!("v: {missing}\n"),
        )
        .unwrap();
        let c = Chart::load(dir.path()).unwrap();
        let err = helm::render(&c, &Release::new("r", "ns"), c.values.clone()).unwrap_err();
        assert!(err.to_string().contains("need it"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// The contract with `flotilla cluster add`

/// The parts of an agent install that must be the same whether it came from
/// this chart or from the manifest `flotilla cluster add` prints: object
/// names and kinds, the container's command line, environment, probes,
/// security context and mounts, the Secret's keys and the RBAC rules. Labels,
/// the image tag and Helm's bookkeeping may differ.
fn agent_install_essentials(docs: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        let id = format!(
            "{kind}/{}/{}",
            d["metadata"]["namespace"].as_str().unwrap_or(""),
            d["metadata"]["name"].as_str().unwrap_or("")
        );
        let essential = match kind {
            "Deployment" => {
                let pod = &d["spec"]["template"]["spec"];
                let c = &pod["containers"][0];
                json!({
                    "replicas": d["spec"]["replicas"],
                    "serviceAccountName": pod["serviceAccountName"],
                    "podSecurityContext": pod["securityContext"],
                    "args": c["args"],
                    "env": c["env"],
                    "ports": c["ports"],
                    "livenessProbe": c["livenessProbe"]["httpGet"],
                    "readinessProbe": c["readinessProbe"]["httpGet"],
                    "securityContext": c["securityContext"],
                    "volumeMounts": c["volumeMounts"],
                    "volumes": pod["volumes"],
                })
            }
            "Secret" => {
                let keys: BTreeSet<&String> = d["stringData"]
                    .as_object()
                    .into_iter()
                    .chain(d["data"].as_object())
                    .flat_map(|m| m.keys())
                    .collect();
                json!({ "keys": keys })
            }
            "Role" | "ClusterRole" => json!({ "rules": d["rules"] }),
            "RoleBinding" | "ClusterRoleBinding" => {
                json!({ "roleRef": d["roleRef"], "subjects": d["subjects"] })
            }
            _ => json!({}),
        };
        out.insert(id, essential);
    }
    Value::Object(out)
}

/// What `flotilla cluster add` prints is the agent chart: its manifest,
/// after the Namespace, equals the chart rendered here from `charts/` for
/// release `flotilla-agent` in `flotilla-system` with the same values,
/// document by document and field by field, for both RBAC scopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_chart_is_the_cluster_add_contract() -> Result<()> {
    agent_chart_essentials()?;
    let fleet = flotilla_e2e::fleet::Fleet::start_except(
        flotilla_e2e::fleet::FleetOptions {
            clusters: 1,
            register_repo: false,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    let cases: [(&str, &[&str], &str); 2] = [
        ("sim-1", &[], ""),
        (
            "scoped",
            &["--rbac-scope", "namespace", "--namespaces", "apps,web"],
            "rbac:\n  scope: namespace\n  namespaces: [apps, web]\n",
        ),
    ];
    for (name, flags, rbac) in cases {
        let mut args: Vec<String> = [
            "cluster",
            "add",
            name,
            "--manifest-only",
            "--hub-url",
            "https://hub.example.com:7443",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        args.extend(flags.iter().map(|a| (*a).to_owned()));
        let out = fleet.cli(&args)?;
        if !out.status.success() {
            bail!("cluster add: {}", String::from_utf8_lossy(&out.stderr));
        }
        let printed: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout)?)?;
        let mut printed: Vec<Value> = printed.into_iter().filter(|d| !d.is_null()).collect();
        let namespace = printed.remove(0);
        assert_eq!(
            namespace,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flotilla-system"}})
        );
        let secret = printed
            .iter()
            .find(|d| d["kind"] == "Secret")
            .context("no Secret printed")?;
        let token = secret["stringData"]["token"].as_str().context("token")?;
        let pin = secret["stringData"]["ca-pin"].as_str().context("ca-pin")?;
        assert!(token.starts_with("flt1.") && pin.starts_with("sha256:"));
        let dir = tempfile::tempdir()?;
        let values = dir.path().join("v.yaml");
        std::fs::write(
            &values,
            format!(
                "hub:\n  url: https://hub.example.com:7443\nbootstrap:\n  token: {token}\n  caPin: \"{pin}\"\n{rbac}"
            ),
        )?;
        let chart = Rendered::render(
            "flotilla-agent",
            &Release::new("flotilla-agent", "flotilla-system"),
            &[values],
        )?;
        for doc in &printed {
            check_schema(doc)?;
        }
        assert_eq!(
            agent_install_essentials(&printed),
            agent_install_essentials(&chart.docs),
            "{name}: essentials"
        );
        assert_eq!(printed, chart.docs, "{name}: every field of every document");
    }
    Ok(())
}

/// The fields of the agent chart that matter, for the default cluster-wide
/// install: the chart's output for release `flotilla-agent` in
/// `flotilla-system`.
fn agent_chart_essentials() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("v.yaml");
    std::fs::write(
        &values,
        format!(
            "hub:\n  url: https://hub.example.com:7443\nbootstrap:\n  token: t\n  caPin: sha256:{}\n",
            "0".repeat(64)
        ),
    )?;
    let r = Rendered::render(
        "flotilla-agent",
        &Release::new("flotilla-agent", "flotilla-system"),
        &[values],
    )?;
    let essentials = agent_install_essentials(&r.docs);
    let ids: Vec<&String> = essentials
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        [
            "ServiceAccount/flotilla-system/flotilla-agent",
            "Secret/flotilla-system/flotilla-agent-bootstrap",
            "ClusterRole//flotilla-agent",
            "ClusterRoleBinding//flotilla-agent",
            "Role/flotilla-system/flotilla-agent-self",
            "RoleBinding/flotilla-system/flotilla-agent-self",
            "Deployment/flotilla-system/flotilla-agent",
        ]
    );
    let dep = &essentials["Deployment/flotilla-system/flotilla-agent"];
    assert_eq!(
        dep["args"],
        json!([
            "--hub",
            "$(FLOTILLA_HUB)",
            "--state-dir",
            "/var/lib/flotilla-agent",
            "--health-listen",
            "0.0.0.0:8081",
            "--inventory-namespace",
            "flotilla-system"
        ])
    );
    assert_eq!(
        essentials["Secret/flotilla-system/flotilla-agent-bootstrap"]["keys"],
        json!(["ca-pin", "hub-url", "token"])
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// operate: repositories declared as Secrets
// ---------------------------------------------------------------------------

/// The hub chart renders declared repositories and credential templates as
/// Argo CD-shaped Secrets that the hub's own reader accepts, mounts them
/// (and existing ones) where `--repository-secrets` looks, rolls the pod
/// when they change, and the result applies to a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_chart_declares_repositories_as_secrets() -> Result<()> {
    use flotilla_hub::repo_secrets::{self, SecretKind};
    use flotilla_hub::store::credential_templates::{CredentialTemplate, matching_template};
    let ns = "flotilla";
    let values = fixture("hub-repository-values.yaml");
    let r = Rendered::render("flotilla-hub", &Release::new("h", ns), &[values])?;
    let mut declared = Vec::new();
    for (name, kind) in [
        ("h-flotilla-hub-repo-private", "repository"),
        ("h-flotilla-hub-repo-charts", "repository"),
        ("h-flotilla-hub-repo-templated", "repository"),
        ("h-flotilla-hub-repo-creds-platform", "repo-creds"),
    ] {
        let secret = r.get("Secret", name);
        assert_eq!(
            secret["metadata"]["labels"]["argocd.argoproj.io/secret-type"],
            kind
        );
        declared.push(
            repo_secrets::from_document(secret, "chart")
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
        );
    }
    assert_eq!(declared[1].kind, SecretKind::Repository);
    assert_eq!(declared[3].kind, SecretKind::RepoCreds);
    // Each repository's own credentials, else the matching template's, as
    // the hub picks them at fetch time.
    let templates: Vec<CredentialTemplate> = declared
        .iter()
        .filter(|d| d.kind == SecretKind::RepoCreds)
        .filter_map(|d| {
            Some(CredentialTemplate {
                url: d.url.clone(),
                secret: d.secret.clone(),
                credentials: d.credentials.as_ref()?.to_store(),
            })
        })
        .collect();
    let passwords: Vec<(&str, Option<String>)> = declared
        .iter()
        .filter(|d| d.kind == SecretKind::Repository)
        .map(|d| {
            let password = match &d.credentials {
                Some(c) => Some(c.password.clone()),
                None => {
                    matching_template(&templates, &d.url).map(|t| t.credentials.password.clone())
                }
            };
            (d.url.as_str(), password)
        })
        .collect();
    assert_eq!(
        passwords,
        [
            (
                "https://git.example.com/platform/private.git",
                Some("repo-token".to_owned())
            ),
            ("https://charts.example.com/stable", None),
            (
                "https://git.example.com/platform/team/app.git",
                Some("org-token".to_owned())
            ),
        ]
    );

    let sts = r.get("StatefulSet", "h-flotilla-hub");
    let pod = &sts["spec"]["template"]["spec"];
    let hub = container(pod, "hub");
    let a = args(hub);
    assert!(
        has_flag(&a, "--repository-secrets", "/etc/flotilla/repositories"),
        "{a:?}"
    );
    let mounts: BTreeSet<String> = hub["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mountPath"].as_str())
        .filter(|p| p.starts_with("/etc/flotilla/repositories"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        mounts,
        set(&[
            "/etc/flotilla/repositories/repository/private",
            "/etc/flotilla/repositories/repository/charts",
            "/etc/flotilla/repositories/repository/templated",
            "/etc/flotilla/repositories/repo-creds/platform",
            "/etc/flotilla/repositories/repository/argocd-repo-legacy",
        ])
    );
    let volumes = pod["volumes"].to_string();
    for secret in ["h-flotilla-hub-repo-private", "argocd-repo-legacy"] {
        assert!(volumes.contains(secret), "{volumes}");
    }
    let checksum =
        &sts["spec"]["template"]["metadata"]["annotations"]["checksum/repository-secrets"];
    assert!(
        checksum.as_str().is_some_and(|c| c.len() == 64),
        "{checksum}"
    );

    // Without any, nothing is rendered or passed.
    let plain = Rendered::render("flotilla-hub", &Release::new("h", ns), &[])?;
    assert!(!plain.text.contains("secret-type"), "{}", plain.text);
    assert!(!plain.text.contains("--repository-secrets"));

    apply_to_simulator(&r, &[ns]).await
}
