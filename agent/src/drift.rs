//! Drift: does the live object still hold what the agent applied?
//!
//! The comparison is a pure function over the applied object and the live
//! one: every field the agent set must be present in the live object with
//! the same value. Fields only the live object has (server defaults, other
//! managers' fields, status) are not drift. Lists of maps are matched by
//! their `name` key when every element has one (containers, ports, env),
//! positionally otherwise.

use serde_json::{Map, Value};

use crate::redact;

/// Metadata the server owns; never compared.
const IGNORED_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
];

/// One field whose live value differs from what was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDrift {
    /// JSON-pointer-like path, e.g. `/spec/replicas`.
    pub path: String,
    /// What was applied, as JSON.
    pub desired: String,
    /// What is live, as JSON (`<absent>` when missing).
    pub live: String,
}

impl std::fmt::Display for FieldDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.path, self.desired, self.live)
    }
}

/// Lists the fields where `live` departs from the applied object `desired`.
/// `ignore` holds JSON pointers (from `ignoreDifferences.jsonPointers`)
/// that are skipped.
///
/// Secrets are compared with their values masked ([`redact::secret_pair`]:
/// `stringData` folded into `data` as the server stores it, equal values
/// under equal masks), so a drift line names the key that changed and
/// never holds a value.
#[must_use]
pub fn diff(desired: &Value, live: &Value, ignore: &[String]) -> Vec<FieldDrift> {
    let mut out = Vec::new();
    let masked = (redact::is_secret(desired) || redact::is_secret(live))
        .then(|| redact::secret_pair(desired, Some(live)));
    let (desired, live) = match &masked {
        Some((d, Some(l))) => (d, l),
        _ => (desired, live),
    };
    let (Some(d), Some(l)) = (desired.as_object(), live.as_object()) else {
        return out;
    };
    for (k, dv) in d {
        match k.as_str() {
            "status" => {}
            "metadata" => {
                let empty = Value::Object(Map::new());
                let lv = l.get(k).unwrap_or(&empty);
                if let (Some(dm), Some(lm)) = (dv.as_object(), lv.as_object()) {
                    for (mk, mv) in dm {
                        if IGNORED_METADATA.contains(&mk.as_str()) {
                            continue;
                        }
                        let path = format!("/metadata/{}", escape(mk));
                        compare(&path, mv, lm.get(mk), ignore, &mut out);
                    }
                }
            }
            _ => compare(&format!("/{}", escape(k)), dv, l.get(k), ignore, &mut out),
        }
    }
    out
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn compare(
    path: &str,
    desired: &Value,
    live: Option<&Value>,
    ignore: &[String],
    out: &mut Vec<FieldDrift>,
) {
    if ignore
        .iter()
        .any(|p| path == p || path.starts_with(&format!("{p}/")))
    {
        return;
    }
    let Some(live) = live else {
        // An empty value applied is indistinguishable from an absent one
        // once the server has stored it.
        if !is_empty(desired) {
            out.push(FieldDrift {
                path: path.to_owned(),
                desired: desired.to_string(),
                live: "<absent>".to_owned(),
            });
        }
        return;
    };
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (k, dv) in d {
                compare(&format!("{path}/{}", escape(k)), dv, l.get(k), ignore, out);
            }
        }
        (Value::Array(d), Value::Array(l)) => compare_lists(path, d, l, ignore, out),
        // Metadata is never canonicalised by the server: compare exactly.
        (d, l) if path.starts_with("/metadata/") && d == l => {}
        (d, l) if !path.starts_with("/metadata/") && scalar_eq(d, l) => {}
        (Value::Null, _) => {}
        (d, l) => out.push(FieldDrift {
            path: path.to_owned(),
            desired: d.to_string(),
            live: l.to_string(),
        }),
    }
}

/// Scalars compare by value; numbers by numeric value (1 == 1.0); and
/// resource quantities by amount, since the API server canonicalises them
/// (`0.5` is stored as `500m`, `1000Mi` stays, `2000m` becomes `2`).
fn scalar_eq(d: &Value, l: &Value) -> bool {
    match (d, l) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) if a == b => true,
        (Value::String(_) | Value::Number(_), Value::String(_) | Value::Number(_)) => {
            match (quantity(d), quantity(l)) {
                (Some(a), Some(b)) => (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs()).max(1.0),
                _ => false,
            }
        }
        _ => d == l,
    }
}

/// A Kubernetes resource quantity as a number (`500m`, `1Gi`, `1e3`, `2`).
fn quantity(v: &Value) -> Option<f64> {
    let s = match v {
        Value::Number(n) => return n.as_f64(),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((s, 1.0));
    // Only plain decimal numbers (with an optional exponent) are quantities;
    // "inf", "NaN" and the like are not.
    if number.is_empty()
        || !number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'))
    {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn name_of(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

fn compare_lists(
    path: &str,
    d: &[Value],
    l: &[Value],
    ignore: &[String],
    out: &mut Vec<FieldDrift>,
) {
    let keyed = !d.is_empty() && d.iter().all(|v| v.is_object() && name_of(v).is_some());
    if keyed {
        for dv in d {
            let name = name_of(dv).unwrap_or("");
            let lv = l.iter().find(|v| name_of(v) == Some(name));
            compare(&format!("{path}[name={name}]"), dv, lv, ignore, out);
        }
        return;
    }
    let all_maps = d.iter().all(Value::is_object);
    if !all_maps && d.len() != l.len() {
        out.push(FieldDrift {
            path: path.to_owned(),
            desired: Value::Array(d.to_vec()).to_string(),
            live: Value::Array(l.to_vec()).to_string(),
        });
        return;
    }
    if all_maps && l.len() < d.len() {
        out.push(FieldDrift {
            path: path.to_owned(),
            desired: format!("{} items", d.len()),
            live: format!("{} items", l.len()),
        });
        return;
    }
    for (i, dv) in d.iter().enumerate() {
        compare(&format!("{path}/{i}"), dv, l.get(i), ignore, out);
    }
}

/// The strings listed under `list` (`jsonPointers`, `jqPathExpressions`,
/// `managedFieldsManagers`) by the `ignoreDifferences` entries (JSON
/// objects) that apply to an object of the given group, kind, namespace and
/// name. An entry without a group or kind matches any; an empty namespace
/// or name matches any.
#[must_use]
pub fn ignored_list(
    entries: &[String],
    list: &str,
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for entry in entries {
        let Ok(v) = serde_json::from_str::<Value>(entry) else {
            continue;
        };
        let field = |f: &str| v.get(f).and_then(Value::as_str);
        let matches = field("group").is_none_or(|g| g == group)
            && field("kind").is_none_or(|k| k == kind)
            && field("namespace").is_none_or(|n| n.is_empty() || n == namespace)
            && field("name").is_none_or(|n| n.is_empty() || n == name);
        if matches && let Some(items) = v.get(list).and_then(Value::as_array) {
            out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    out
}

/// The JSON pointers of `ignoreDifferences` entries that apply to an
/// object of the given group, kind, namespace and name.
#[must_use]
pub fn ignored_pointers(
    entries: &[String],
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Vec<String> {
    ignored_list(entries, "jsonPointers", group, kind, namespace, name)
}

/// The `managedFieldsManagers` of `ignoreDifferences` entries that apply to
/// an object: fields those managers own are not drift.
#[must_use]
pub fn ignored_managers(
    entries: &[String],
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Vec<String> {
    ignored_list(
        entries,
        "managedFieldsManagers",
        group,
        kind,
        namespace,
        name,
    )
}

/// The paths (in this module's notation) of the fields the given managers
/// own in a live object, read from its `managedFields` (`fieldsV1`).
#[must_use]
pub fn managed_paths(live: &Value, managers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(entries) = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return out;
    };
    for entry in entries {
        let manager = entry.get("manager").and_then(Value::as_str).unwrap_or("");
        if !managers.iter().any(|m| m == manager) {
            continue;
        }
        if let Some(fields) = entry.get("fieldsV1").and_then(Value::as_object) {
            walk_fields("", fields, &mut out);
        }
    }
    out
}

fn walk_fields(prefix: &str, node: &Map<String, Value>, out: &mut Vec<String>) {
    for (k, v) in node {
        if k == "." {
            continue;
        }
        let path = if let Some(field) = k.strip_prefix("f:") {
            format!("{prefix}/{}", escape(field))
        } else if let Some(item) = k.strip_prefix("k:") {
            let name = serde_json::from_str::<Value>(item)
                .ok()
                .and_then(|key| key.get("name").and_then(Value::as_str).map(str::to_owned));
            match name {
                Some(n) => format!("{prefix}[name={n}]"),
                // Keys other than `name` are matched by position here; own
                // the whole list rather than guess.
                None => {
                    out.push(prefix.to_owned());
                    continue;
                }
            }
        } else if let Some(i) = k.strip_prefix("i:") {
            format!("{prefix}/{i}")
        } else {
            // `v:` set members: the list as a whole.
            out.push(prefix.to_owned());
            continue;
        };
        match v.as_object() {
            Some(children) if children.keys().any(|c| c != ".") => {
                walk_fields(&path, children, out)
            }
            _ => out.push(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "web", "image": image, "ports": [{"containerPort": 80}]}
            ]}}}
        })
    }

    #[test]
    fn server_additions_are_not_drift() {
        let desired = deployment(2, "nginx:1");
        let mut live = deployment(2, "nginx:1");
        live["metadata"]["resourceVersion"] = json!("42");
        live["metadata"]["managedFields"] = json!([{"manager": "flotilla"}]);
        live["metadata"]["labels"]["other"] = json!("x");
        live["spec"]["strategy"] = json!({"type": "RollingUpdate"});
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            json!("IfNotPresent");
        live["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
        live["status"] = json!({"replicas": 2});
        assert_eq!(diff(&desired, &live, &[]), vec![]);
    }

    #[test]
    fn changed_fields_are_reported_with_paths() {
        let desired = deployment(2, "nginx:1");
        let live = deployment(3, "nginx:2");
        let drift = diff(&desired, &live, &[]);
        let paths: Vec<&str> = drift.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/spec/replicas",
                "/spec/template/spec/containers[name=web]/image"
            ]
        );
        assert_eq!(drift[0].to_string(), "/spec/replicas: 2 -> 3");
    }

    #[test]
    fn fields_of_ignored_managers_are_not_drift() {
        let desired = deployment(2, "nginx:1");
        let mut live = deployment(5, "nginx:2");
        live["metadata"]["managedFields"] = json!([
            {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {
                "f:spec": {"f:replicas": {}}}},
            {"manager": "flotilla", "operation": "Apply", "fieldsV1": {
                "f:spec": {"f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}}}}}}
        ]);
        let entries = vec![r#"{"group":"apps","kind":"Deployment","managedFieldsManagers":["kube-controller-manager"]}"#.to_owned()];
        let managers = ignored_managers(&entries, "apps", "Deployment", "default", "web");
        assert_eq!(managers, vec!["kube-controller-manager".to_owned()]);
        let ignore = managed_paths(&live, &managers);
        assert_eq!(ignore, vec!["/spec/replicas".to_owned()]);
        let drift = diff(&desired, &live, &ignore);
        assert_eq!(drift.len(), 1);
        assert_eq!(
            drift[0].path,
            "/spec/template/spec/containers[name=web]/image"
        );
        let theirs = managed_paths(&live, &["flotilla".to_owned()]);
        assert_eq!(
            theirs,
            vec!["/spec/template/spec/containers[name=web]/image".to_owned()]
        );
    }

    #[test]
    fn quantities_compare_by_amount() {
        let desired = json!({"spec": {"cpu": "0.5", "mem": "1Gi", "n": 2, "big": "2000m"}});
        let live = json!({"spec": {"cpu": "500m", "mem": "1024Mi", "n": "2", "big": "2"}});
        assert_eq!(diff(&desired, &live, &[]), vec![]);
        let live = json!({"spec": {"cpu": "600m", "mem": "1Gi", "n": 2, "big": "2"}});
        assert_eq!(diff(&desired, &live, &[]).len(), 1);
        // Words are not quantities.
        let desired = json!({"spec": {"policy": "Always"}});
        let live = json!({"spec": {"policy": "Never"}});
        assert_eq!(diff(&desired, &live, &[]).len(), 1);
    }

    #[test]
    fn secret_string_data_compares_as_data() {
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringData": {"password": "hunter2", "a": "ab"}});
        let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"password": "aHVudGVyMg==", "a": "YWI="}, "type": "Opaque"});
        assert_eq!(diff(&desired, &live, &[]), vec![]);
        let changed = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"password": "b3RoZXI=", "a": "YWI="}});
        assert_eq!(diff(&desired, &changed, &[])[0].path, "/data/password");
        // A server that keeps stringData as written compares the same.
        let kept = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringData": {"password": "hunter2", "a": "ab"}});
        assert_eq!(diff(&desired, &kept, &[]), vec![]);
    }

    #[test]
    fn secret_drift_names_the_key_never_the_value() {
        let desired = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "n"},
            "stringData": {"password": "hunter2", "user": "admin"}});
        let mut live = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "n", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration":
                    "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"data\":{\"password\":\"b2xk\"}}"}},
            "data": {"password": "cm90YXRlZC1pbi1jbHVzdGVy", "user": "YWRtaW4="}});
        let drift = diff(&desired, &live, &[]);
        let lines: Vec<String> = drift.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![r#"/data/password: "++++++++" -> "++++++++++++""#]
        );
        // A key removed in the cluster.
        live["data"] = json!({"user": "YWRtaW4="});
        let lines: Vec<String> = diff(&desired, &live, &[])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines, vec![r#"/data/password: "++++++++" -> <absent>"#]);
        // All data gone.
        live.as_object_mut().expect("object").remove("data");
        let lines: Vec<String> = diff(&desired, &live, &[])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            vec![r#"/data: {"password":"++++++++","user":"++++++++"} -> <absent>"#]
        );
    }

    #[test]
    fn ignored_pointers_skip_fields() {
        let desired = deployment(2, "nginx:1");
        let live = deployment(5, "nginx:1");
        let entries = vec![
            r#"{"group":"apps","kind":"Deployment","jsonPointers":["/spec/replicas"]}"#.to_owned(),
        ];
        let ignore = ignored_pointers(&entries, "apps", "Deployment", "default", "web");
        assert_eq!(diff(&desired, &live, &ignore), vec![]);
        assert!(ignored_pointers(&entries, "", "Service", "default", "web").is_empty());
    }

    #[test]
    fn scalar_lists_compare_whole_and_missing_fields_count() {
        let desired = json!({"spec": {"args": ["a", "b"], "empty": {}}});
        let live = json!({"spec": {"args": ["a"]}});
        let drift = diff(&desired, &live, &[]);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].path, "/spec/args");
        let live = json!({"spec": {}});
        assert_eq!(
            diff(&json!({"data": {"k": "v"}}), &live, &[])[0].live,
            "<absent>"
        );
    }
}
