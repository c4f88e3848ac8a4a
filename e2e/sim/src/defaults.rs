//! Defaulting as the API server does it for the common kinds. The table in
//! README.md lists what is covered.

use serde_json::{Map, Value, json};

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

fn child<'a>(m: &'a mut Map<String, Value>, k: &str) -> Option<&'a mut Map<String, Value>> {
    obj(m.entry(k.to_string()).or_insert(Value::Null))
}

/// Pull policy Kubernetes picks from an image reference.
pub fn pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container(c: &mut Value) {
    let Some(m) = c.as_object_mut() else { return };
    set_default(m, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(m, "terminationMessagePolicy", json!("File"));
    let image = m
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    set_default(m, "imagePullPolicy", json!(pull_policy(&image)));
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
        }
    }
}

/// Pod spec defaults.
pub fn pod_spec(spec: &mut Map<String, Value>, restart: &str) {
    set_default(spec, "restartPolicy", json!(restart));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            cs.iter_mut().for_each(container);
        }
    }
}

fn template(spec: &mut Map<String, Value>, restart: &str) {
    if let Some(t) = child(spec, "template")
        && let Some(ps) = child(t, "spec")
    {
        pod_spec(ps, restart);
    }
}

/// A Secret's `stringData` is write-only: the API server merges it into
/// `data` (base64, replacing a key of the same name) and never stores or
/// returns it. Values that are not strings stay for validation to refuse.
fn fold_string_data(root: &mut Map<String, Value>) {
    use base64::Engine as _;
    match root.get("stringData") {
        Some(Value::Object(_)) => {}
        Some(Value::Null) => {
            root.remove("stringData");
            return;
        }
        _ => return,
    }
    let Some(Value::Object(string_data)) = root.remove("stringData") else {
        return;
    };
    let mut refused = Map::new();
    for (k, v) in string_data {
        match v {
            Value::String(s) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
                if let Some(data) = child(root, "data") {
                    data.insert(k, json!(encoded));
                }
            }
            other => {
                refused.insert(k, other);
            }
        }
    }
    if !refused.is_empty() {
        root.insert("stringData".into(), Value::Object(refused));
    }
}

/// Applies the defaults for `kind` to an object. `ip` allocates a cluster IP.
pub fn apply(kind: &str, o: &mut Value, ip: &mut dyn FnMut() -> String) {
    let Some(root) = o.as_object_mut() else {
        return;
    };
    match kind {
        "Deployment" => {
            let Some(spec) = child(root, "spec") else {
                return;
            };
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            if let Some(s) = child(spec, "strategy") {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type") == Some(&json!("RollingUpdate"))
                    && let Some(ru) = child(s, "rollingUpdate")
                {
                    set_default(ru, "maxUnavailable", json!("25%"));
                    set_default(ru, "maxSurge", json!("25%"));
                }
            }
            template(spec, "Always");
        }
        "ReplicaSet" => {
            let Some(spec) = child(root, "spec") else {
                return;
            };
            set_default(spec, "replicas", json!(1));
            template(spec, "Always");
        }
        "StatefulSet" => {
            let Some(spec) = child(root, "spec") else {
                return;
            };
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted":"Retain","whenScaled":"Retain"}),
            );
            if let Some(s) = child(spec, "updateStrategy") {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type") == Some(&json!("RollingUpdate")) {
                    set_default(s, "rollingUpdate", json!({"partition": 0}));
                }
            }
            template(spec, "Always");
        }
        "DaemonSet" => {
            let Some(spec) = child(root, "spec") else {
                return;
            };
            set_default(spec, "revisionHistoryLimit", json!(10));
            if let Some(s) = child(spec, "updateStrategy") {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type") == Some(&json!("RollingUpdate")) {
                    set_default(
                        s,
                        "rollingUpdate",
                        json!({"maxSurge": 0, "maxUnavailable": 1}),
                    );
                }
            }
            template(spec, "Always");
        }
        "Job" => {
            let Some(spec) = child(root, "spec") else {
                return;
            };
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "completions", json!(1));
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "manualSelector", json!(false));
            set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            template(spec, "Never");
        }
        "CronJob" => {
            let Some(spec) = child(root, "spec") else {
                return;
            };
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(jt) = child(spec, "jobTemplate")
                && let Some(js) = child(jt, "spec")
            {
                template(js, "Never");
            }
        }
        "Pod" => {
            if let Some(spec) = child(root, "spec") {
                pod_spec(spec, "Always");
                set_default(spec, "enableServiceLinks", json!(true));
                set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
                set_default(spec, "priority", json!(0));
            }
        }
        "Service" => {
            let Some(spec) = child(root, "spec") else {
                return;
            };
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            let ty = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if ty != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                if spec.get("clusterIP").is_none_or(Value::is_null) {
                    let a = ip();
                    spec.insert("clusterIP".into(), json!(a));
                }
                let cip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
                set_default(spec, "clusterIPs", json!([cip]));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            }
            if ty == "LoadBalancer" || ty == "NodePort" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if ty == "LoadBalancer" {
                set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                for (i, p) in ports
                    .iter_mut()
                    .filter_map(Value::as_object_mut)
                    .enumerate()
                {
                    set_default(p, "protocol", json!("TCP"));
                    let port = p.get("port").cloned().unwrap_or(Value::Null);
                    set_default(p, "targetPort", port);
                    if ty == "LoadBalancer" || ty == "NodePort" {
                        set_default(p, "nodePort", json!(30000 + i));
                    }
                }
            }
        }
        "Namespace" => {
            let name = root["metadata"]["name"].clone();
            if let Some(md) = child(root, "metadata")
                && let Some(labels) = child(md, "labels")
            {
                labels.insert("kubernetes.io/metadata.name".into(), name);
            }
            if let Some(spec) = child(root, "spec") {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(st) = child(root, "status") {
                set_default(st, "phase", json!("Active"));
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(spec) = child(root, "spec") {
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(st) = child(root, "status") {
                set_default(st, "phase", json!("Pending"));
            }
        }
        "Secret" => {
            if root
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                root.insert("type".into(), json!("Opaque"));
            }
            fold_string_data(root);
        }
        "CustomResourceDefinition" => {
            if let Some(spec) = child(root, "spec")
                && let Some(c) = child(spec, "conversion")
            {
                set_default(c, "strategy", json!("None"));
            }
        }
        _ => {}
    }
}
