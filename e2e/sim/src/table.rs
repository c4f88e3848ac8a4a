//! `meta.k8s.io/v1` Table responses, so `kubectl get` prints the usual
//! columns for the common kinds.

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn age(ts: &Value) -> String {
    let Some(t) = ts
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn columns(kind: &str) -> Vec<(&'static str, &'static str)> {
    let mut c = vec![("Name", "string")];
    c.extend(match kind {
        "Deployment" => vec![
            ("Ready", "string"),
            ("Up-to-date", "integer"),
            ("Available", "integer"),
        ],
        "StatefulSet" => vec![("Ready", "string")],
        "ReplicaSet" => vec![
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
        ],
        "DaemonSet" => vec![
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
            ("Up-to-date", "integer"),
            ("Available", "integer"),
        ],
        "Service" => vec![
            ("Type", "string"),
            ("Cluster-IP", "string"),
            ("External-IP", "string"),
            ("Port(s)", "string"),
        ],
        "Namespace" | "PersistentVolumeClaim" => vec![("Status", "string")],
        "Pod" => vec![
            ("Ready", "string"),
            ("Status", "string"),
            ("Restarts", "string"),
        ],
        "ConfigMap" => vec![("Data", "integer")],
        "Secret" => vec![("Type", "string"), ("Data", "integer")],
        "Job" => vec![("Status", "string"), ("Completions", "string")],
        _ => vec![],
    });
    c.push(("Age", "string"));
    c
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let s = &o["status"];
    let spec = &o["spec"];
    let mut c = vec![o["metadata"]["name"].clone()];
    c.extend(match kind {
        "Deployment" => vec![
            json!(format!(
                "{}/{}",
                num(&s["readyReplicas"]),
                num(&spec["replicas"])
            )),
            json!(num(&s["updatedReplicas"])),
            json!(num(&s["availableReplicas"])),
        ],
        "StatefulSet" => vec![json!(format!(
            "{}/{}",
            num(&s["readyReplicas"]),
            num(&spec["replicas"])
        ))],
        "ReplicaSet" => vec![
            json!(num(&spec["replicas"])),
            json!(num(&s["replicas"])),
            json!(num(&s["readyReplicas"])),
        ],
        "DaemonSet" => vec![
            json!(num(&s["desiredNumberScheduled"])),
            json!(num(&s["currentNumberScheduled"])),
            json!(num(&s["numberReady"])),
            json!(num(&s["updatedNumberScheduled"])),
            json!(num(&s["numberAvailable"])),
        ],
        "Service" => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["nodePort"].as_i64() {
                    Some(np) => format!(
                        "{}:{}/{}",
                        num(&p["port"]),
                        np,
                        p["protocol"].as_str().unwrap_or("TCP")
                    ),
                    None => format!(
                        "{}/{}",
                        num(&p["port"]),
                        p["protocol"].as_str().unwrap_or("TCP")
                    ),
                })
                .collect();
            let external = s["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    if spec["type"] == "LoadBalancer" {
                        "<pending>".into()
                    } else {
                        "<none>".into()
                    }
                });
            vec![
                spec["type"].clone(),
                spec["clusterIP"].clone(),
                json!(external),
                json!(ports.join(",")),
            ]
        }
        "Namespace" | "PersistentVolumeClaim" => vec![s["phase"].clone()],
        "Pod" => {
            let n = spec["containers"].as_array().map_or(0, Vec::len);
            let ready = s["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            vec![
                json!(format!("{}/{n}", if ready { n } else { 0 })),
                s["phase"].clone(),
                json!("0"),
            ]
        }
        "ConfigMap" => vec![json!(
            o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len())
        )],
        "Secret" => vec![
            o["type"].clone(),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
        ],
        "Job" => {
            let done = s["conditions"].as_array().and_then(|c| {
                c.iter()
                    .find(|c| {
                        c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed")
                    })
                    .map(|c| c["type"].clone())
            });
            vec![
                done.unwrap_or(json!("Running")),
                json!(format!(
                    "{}/{}",
                    num(&s["succeeded"]),
                    num(&spec["completions"])
                )),
            ]
        }
        _ => vec![],
    });
    c.push(json!(age(&o["metadata"]["creationTimestamp"])));
    c
}

/// A Table of `items`.
pub fn table(rd: &ResourceDef, items: &[Value], rv: Option<u64>) -> Value {
    let cols: Vec<Value> = columns(&rd.kind)
        .iter()
        .map(|(n, t)| json!({"name": n, "type": t, "format": if *n == "Name" { "name" } else { "" }, "description": "", "priority": 0}))
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": cells(&rd.kind, o), "object": o}))
        .collect();
    let mut md = json!({});
    if let Some(rv) = rv {
        md["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": cols, "rows": rows})
}
