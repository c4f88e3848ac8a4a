//! Simulated controllers: workload rollouts, Jobs, Pods, PVCs, LoadBalancers
//! (switchable), plus the API server's own namespace and CRD lifecycle
//! (always on).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::resources::ResourceDef;
use crate::store::{Cluster, Key, State, WriteOpts, rd_for};

/// Controller timing.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Whether workload controllers run.
    pub enabled: bool,
    /// Time until a rollout becomes available.
    pub rollout_delay: Duration,
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Whether any container image of a pod template never becomes ready.
pub fn failing(template_spec: &Value) -> bool {
    run_outcome(template_spec) != Outcome::Succeed
}

/// How a pod that runs to completion (a Job's, or one with `restartPolicy`
/// Never or OnFailure) ends, from its container images: `:fail` fails,
/// `:never-ready` never finishes, anything else succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exits 0 after the rollout delay.
    Succeed,
    /// Exits 1 after the rollout delay.
    Fail,
    /// Keeps running.
    Hang,
}

/// The outcome of a pod spec's containers (a failing image wins over a
/// hanging one).
pub fn run_outcome(spec: &Value) -> Outcome {
    let images: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| spec[l].as_array().into_iter().flatten())
        .map(|c| c["image"].as_str().unwrap_or_default())
        .collect();
    if images.iter().any(|image| {
        image
            .rsplit('/')
            .next()
            .is_some_and(|n| n.ends_with(":fail"))
    }) {
        Outcome::Fail
    } else if images.iter().any(|image| image.contains(":never-ready")) {
        Outcome::Hang
    } else {
        Outcome::Succeed
    }
}

fn hash(v: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| {
            let idx = ((h >> (i * 6)) % ALPHA.len() as u64) as usize;
            char::from(ALPHA.get(idx).copied().unwrap_or(b'x'))
        })
        .collect()
}

fn cond(ty: &str, status: &str, reason: &str, message: &str, old: &Value) -> Value {
    // Keep transition times stable while the status does not change.
    let prev = old["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty).cloned());
    let (lt, lu) = match &prev {
        Some(p) if p["status"] == status && p["reason"] == reason => {
            (p["lastTransitionTime"].clone(), p["lastUpdateTime"].clone())
        }
        Some(p) if p["status"] == status => (p["lastTransitionTime"].clone(), json!(now())),
        _ => (json!(now()), json!(now())),
    };
    json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": lt, "lastUpdateTime": lu})
}

/// Runs one reconcile pass; returns whether more work is pending (a rollout
/// still in progress).
pub fn reconcile(cluster: &Cluster, t: Timing) -> bool {
    let keys: Vec<Key> = {
        let mut st = cluster.lock();
        st.dirty = false;
        lifecycle(cluster, &mut st);
        if !t.enabled {
            return false;
        }
        children(cluster, &mut st);
        st.objects
            .keys()
            .filter(|k| HANDLED.contains(&k.0.as_str()))
            .cloned()
            .collect()
    };
    let mut pending = false;
    let now_i = Instant::now();
    let mut live_uids = std::collections::HashSet::new();
    // One lock per object, so API requests interleave with a long pass.
    for k in keys {
        let mut st = cluster.lock();
        let rv_now = st
            .objects
            .get(&k)
            .map(|o| o["metadata"]["resourceVersion"].clone());
        if let Some(Value::String(rv)) = &rv_now
            && st.settled.get(&k) == Some(rv)
        {
            if let Some(uid) = st
                .objects
                .get(&k)
                .and_then(|o| o["metadata"]["uid"].as_str())
            {
                live_uids.insert(uid.to_string());
            }
            continue;
        }
        let pending_before = pending;
        pending = false;
        let Some(obj) = st.objects.get(&k).cloned() else {
            continue;
        };
        let Some(rd) = rd_for(&st, &k.0) else {
            continue;
        };
        if obj["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        live_uids.insert(uid.clone());
        let generation = obj["metadata"]["generation"].as_i64().unwrap_or(0);
        let start = match st.rollouts.get(&uid) {
            Some((g, s)) if *g == generation => *s,
            _ => {
                st.rollouts.insert(uid.clone(), (generation, now_i));
                now_i
            }
        };
        let elapsed = now_i.saturating_duration_since(start);
        let ready = elapsed >= t.rollout_delay;
        let status = match (rd.group.as_str(), rd.kind.as_str()) {
            ("apps", "Deployment") => deployment(&obj, ready, elapsed, t, &mut pending),
            ("apps", "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
                workload(&rd, &obj, ready, &mut pending)
            }
            ("batch", "Job") => job(&obj, ready, &mut pending),
            ("", "Pod") => pod(&obj, ready, &mut pending),
            ("", "PersistentVolumeClaim") => Some(
                json!({"phase": "Bound", "accessModes": obj["spec"]["accessModes"], "capacity": obj["spec"]["resources"]["requests"]}),
            ),
            ("", "Service") if obj["spec"]["type"] == "LoadBalancer" => {
                let n = st.objects.len() % 250 + 1;
                let mut s = obj["status"].clone();
                if s["loadBalancer"]["ingress"].is_array() {
                    None
                } else {
                    s["loadBalancer"] =
                        json!({"ingress": [{"ip": format!("172.18.255.{n}"), "ipMode": "VIP"}]});
                    Some(s)
                }
            }
            _ => None,
        };
        let changed = status.as_ref().is_some_and(|s| obj["status"] != *s);
        if let Some(s) = status
            && changed
        {
            let mut new = obj;
            new["status"] = s;
            cluster.commit(&mut st, &rd, k, new, "MODIFIED");
        } else if !pending && let Some(Value::String(rv)) = rv_now {
            st.settled.insert(k, rv);
        }
        pending |= pending_before;
    }
    {
        let mut st = cluster.lock();
        st.rollouts.retain(|u, _| live_uids.contains(u));
        let State {
            settled, objects, ..
        } = &mut *st;
        settled.retain(|k, _| objects.contains_key(k));
    }
    pending
}

/// Stored group/resources the status controllers look at.
const HANDLED: &[&str] = &[
    "apps/deployments",
    "apps/replicasets",
    "apps/statefulsets",
    "apps/daemonsets",
    "batch/jobs",
    "/pods",
    "/persistentvolumeclaims",
    "/services",
];

fn deployment(
    obj: &Value,
    ready: bool,
    elapsed: Duration,
    t: Timing,
    pending: &mut bool,
) -> Option<Value> {
    let spec = &obj["spec"];
    let replicas = spec["replicas"].as_i64().unwrap_or(1);
    let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let rs = format!("{name}-{}", hash(&spec["template"]));
    let fails = failing(&spec["template"]["spec"]) && replicas > 0;
    let deadline_s = spec["progressDeadlineSeconds"].as_u64().unwrap_or(600);
    let deadline = Duration::from_secs(deadline_s).min(t.rollout_delay * 3);
    let was_available = obj["status"]["availableReplicas"].as_i64().unwrap_or(0);
    let mut s = json!({"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas});
    if replicas == 0 || (ready && !fails) {
        s["readyReplicas"] = json!(replicas);
        s["availableReplicas"] = json!(replicas);
        if replicas == 0
            && let Some(m) = s.as_object_mut()
        {
            m.remove("readyReplicas");
            m.remove("availableReplicas");
            m.remove("updatedReplicas");
        }
        s["conditions"] = json!([
            cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                obj
            ),
            cond(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &format!("ReplicaSet \"{rs}\" has successfully progressed."),
                obj
            ),
        ]);
    } else {
        *pending = true;
        let avail = was_available.min(replicas);
        if avail > 0 {
            s["readyReplicas"] = json!(avail);
            s["availableReplicas"] = json!(avail);
        }
        s["unavailableReplicas"] = json!(replicas - avail);
        // New pods count as updated only once they exist and are failing;
        // a healthy rollout in progress has none updated yet, so clients
        // (kubectl rollout status, health checks) keep waiting.
        if !fails && let Some(m) = s.as_object_mut() {
            m.remove("updatedReplicas");
        }
        let available = if avail > 0 {
            cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                obj,
            )
        } else {
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                obj,
            )
        };
        let progressing = if fails && elapsed >= deadline {
            *pending = false;
            cond(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{rs}\" has timed out progressing."),
                obj,
            )
        } else {
            cond(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                &format!("ReplicaSet \"{rs}\" is progressing."),
                obj,
            )
        };
        s["conditions"] = json!([available, progressing]);
    }
    Some(s)
}

fn workload(rd: &ResourceDef, obj: &Value, ready: bool, pending: &mut bool) -> Option<Value> {
    let spec = &obj["spec"];
    let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1);
    let replicas = if rd.kind == "DaemonSet" {
        1
    } else {
        spec["replicas"].as_i64().unwrap_or(1)
    };
    let ok = ready && !failing(&spec["template"]["spec"]);
    if !ok && !failing(&spec["template"]["spec"]) {
        *pending = true;
    }
    let n = if ok { replicas } else { 0 };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let rev = format!("{name}-{}", hash(&spec["template"]));
    Some(match rd.kind.as_str() {
        "DaemonSet" => json!({
            "observedGeneration": generation, "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
            "numberMisscheduled": 0, "numberReady": n, "numberAvailable": n, "updatedNumberScheduled": 1,
            "numberUnavailable": 1 - n,
        }),
        "StatefulSet" => json!({
            "observedGeneration": generation, "replicas": replicas, "readyReplicas": n, "availableReplicas": n,
            "currentReplicas": replicas, "updatedReplicas": replicas, "currentRevision": rev, "updateRevision": rev,
            "collisionCount": 0,
        }),
        _ => json!({
            "observedGeneration": generation, "replicas": replicas, "fullyLabeledReplicas": replicas,
            "readyReplicas": n, "availableReplicas": n,
        }),
    })
}

fn job(obj: &Value, ready: bool, pending: &mut bool) -> Option<Value> {
    let mut s = obj["status"].clone();
    if s["completionTime"].is_string()
        || s["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Failed"))
    {
        return None;
    }
    if !s["startTime"].is_string() {
        s["startTime"] = json!(now());
    }
    if !ready {
        *pending = true;
        s["active"] = json!(1);
        s["ready"] = json!(0);
        s["terminating"] = json!(0);
        s["uncountedTerminatedPods"] = json!({});
        return Some(s);
    }
    let outcome = run_outcome(&obj["spec"]["template"]["spec"]);
    if outcome == Outcome::Hang {
        // Runs forever: active, and settled (nothing changes any more).
        s["active"] = json!(1);
        s["ready"] = json!(1);
        return Some(s);
    }
    let m = s.as_object_mut()?;
    m.remove("active");
    m.insert("ready".into(), json!(0));
    if outcome == Outcome::Fail {
        m.insert("failed".into(), json!(1));
        m.insert(
            "conditions".into(),
            json!([
                cond(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    obj
                ),
                cond(
                    "Failed",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    obj
                ),
            ]),
        );
    } else {
        let completions = obj["spec"]["completions"].as_i64().unwrap_or(1);
        m.insert("succeeded".into(), json!(completions));
        m.insert("completionTime".into(), json!(now()));
        m.insert(
            "conditions".into(),
            json!([
                cond(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    obj
                ),
                cond(
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    obj
                ),
            ]),
        );
    }
    Some(s)
}

fn pod(obj: &Value, ready: bool, pending: &mut bool) -> Option<Value> {
    // A Job's pods follow their Job (see `job_pods`).
    if controller_kind(obj) == Some("Job") {
        return None;
    }
    let fails = failing(&obj["spec"]);
    if !ready {
        *pending = true;
        return Some(json!({"phase": "Pending", "qosClass": "BestEffort"}));
    }
    if obj["spec"]["restartPolicy"] != "Always" {
        return Some(finished_pod(obj, run_outcome(&obj["spec"])));
    }
    let r = if fails { "False" } else { "True" };
    Some(json!({
        "phase": "Running", "qosClass": "BestEffort", "podIP": "10.244.0.10", "hostIP": "172.18.0.2",
        "startTime": obj["metadata"]["creationTimestamp"],
        "conditions": [
            cond("PodScheduled", "True", "", "", obj),
            cond("Initialized", "True", "", "", obj),
            cond("ContainersReady", r, "", "", obj),
            cond("Ready", r, "", "", obj),
        ],
    }))
}

fn controller_kind(obj: &Value) -> Option<&str> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)?["kind"]
        .as_str()
}

/// The status of a pod that runs to completion, `outcome` once its
/// containers have had their time.
fn finished_pod(obj: &Value, outcome: Outcome) -> Value {
    let started = obj["metadata"]["creationTimestamp"].clone();
    let containers: Vec<&Value> = obj["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let (phase, ready, state) = match outcome {
        Outcome::Hang => (
            "Running",
            "True",
            json!({"running": {"startedAt": started}}),
        ),
        Outcome::Succeed => (
            "Succeeded",
            "False",
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now()}}),
        ),
        Outcome::Fail => (
            "Failed",
            "False",
            json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": started, "finishedAt": now()}}),
        ),
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({"name": c["name"], "image": c["image"], "ready": ready == "True",
                "restartCount": 0, "started": outcome == Outcome::Hang, "state": state})
        })
        .collect();
    let reason = if outcome == Outcome::Hang {
        ""
    } else {
        "PodCompleted"
    };
    // Keep the times of an already finished pod.
    if obj["status"]["phase"] == phase {
        return obj["status"].clone();
    }
    json!({
        "phase": phase, "qosClass": "BestEffort", "podIP": "10.244.0.11", "hostIP": "172.18.0.2",
        "startTime": started,
        "conditions": [
            cond("PodScheduled", "True", "", "", obj),
            cond("Initialized", "True", reason, "", obj),
            cond("ContainersReady", ready, reason, "", obj),
            cond("Ready", ready, reason, "", obj),
        ],
        "containerStatuses": statuses,
    })
}

/// Namespace termination and CRD establishment (API server behaviour).
fn lifecycle(cluster: &Cluster, st: &mut State) {
    cluster.collect_garbage(st);
    let crds: Vec<Key> = st
        .objects
        .iter()
        .filter(|(k, o)| {
            k.0 == "apiextensions.k8s.io/customresourcedefinitions"
                && !o["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in crds {
        let Some(mut o) = st.objects.get(&k).cloned() else {
            continue;
        };
        let Some(rd) = rd_for(st, &k.0) else { continue };
        let versions: Vec<Value> = o["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["storage"] == true)
            .map(|v| v["name"].clone())
            .collect();
        o["status"] = json!({
            "acceptedNames": o["spec"]["names"],
            "storedVersions": versions,
            "conditions": [
                cond("NamesAccepted", "True", "NoConflicts", "no conflicts found", &o),
                cond("Established", "True", "InitialNamesAccepted", "the initial names have been accepted", &o),
            ],
        });
        cluster.commit(st, &rd, k, o, "MODIFIED");
    }
    let terminating: Vec<Key> = st
        .objects
        .iter()
        .filter(|(k, o)| k.0 == "/namespaces" && o["metadata"]["deletionTimestamp"].is_string())
        .map(|(k, _)| k.clone())
        .collect();
    for nk in terminating {
        let ns = nk.2.clone();
        let contents: Vec<Key> = st.objects.keys().filter(|k| k.1 == ns).cloned().collect();
        for k in contents {
            let Some(o) = st.objects.get(&k) else {
                continue;
            };
            if o["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let Some(rd) = rd_for(st, &k.0) else { continue };
            let _ = cluster.delete_in(st, &rd, &ns, &k.2, &WriteOpts::default(), &Value::Null);
        }
        if !st.objects.keys().any(|k| k.1 == ns) {
            cluster.remove_key(st, &nk);
        }
    }
}

/// Objects of `gr` by the uid of their controller owner.
fn by_controller(st: &State, gr: &str) -> std::collections::HashMap<String, Vec<Key>> {
    let mut m: std::collections::HashMap<String, Vec<Key>> = std::collections::HashMap::new();
    for (k, o) in st.objects.iter().filter(|(k, _)| k.0 == gr) {
        let owner = o["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["controller"] == true))
            .and_then(|r| r["uid"].as_str());
        if let Some(u) = owner {
            m.entry(u.to_string()).or_default().push(k.clone());
        }
    }
    m
}

fn owner_ref(o: &Value, kind: &str, api_version: &str) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": o["metadata"]["name"], "uid": o["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true}])
}

fn new_child(cluster: &Cluster, st: &mut State, gr: &str, ns: &str, name: &str, mut obj: Value) {
    let Some(rd) = rd_for(st, gr) else { return };
    obj["metadata"]["name"] = json!(name);
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    obj["metadata"]["creationTimestamp"] = json!(now());
    if rd.generation {
        obj["metadata"]["generation"] = json!(1);
    }
    cluster.commit(
        st,
        &rd,
        (gr.to_string(), ns.to_string(), name.to_string()),
        obj,
        "ADDED",
    );
}

/// Deployments own one ReplicaSet per pod template; ReplicaSets own Pods.
fn children(cluster: &Cluster, st: &mut State) {
    let deployments: Vec<(Key, Value)> = st
        .objects
        .iter()
        .filter(|(k, o)| {
            k.0 == "apps/deployments" && !o["metadata"]["deletionTimestamp"].is_string()
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    let mut sets_by_owner = by_controller(st, "apps/replicasets");
    for (k, d) in deployments {
        let uid = d["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let hash = hash(&d["spec"]["template"]);
        let rs_name = format!("{}-{hash}", k.2);
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let owned: Vec<(Key, Value)> = sets_by_owner
            .remove(&uid)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|k| st.objects.get(&k).cloned().map(|o| (k, o)))
            .collect();
        for (rk, mut rs) in owned.iter().cloned() {
            let want = if rk.2 == rs_name { replicas } else { 0 };
            if rs["spec"]["replicas"].as_i64() != Some(want) {
                rs["spec"]["replicas"] = json!(want);
                if let Some(rd) = rd_for(st, "apps/replicasets") {
                    cluster.commit(st, &rd, rk, rs, "MODIFIED");
                }
            }
        }
        if !owned.iter().any(|(rk, _)| rk.2 == rs_name) {
            let mut template = d["spec"]["template"].clone();
            template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let revision = owned.len() + 1;
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"labels": template["metadata"]["labels"], "ownerReferences": owner_ref(&d, "Deployment", "apps/v1"),
                    "annotations": {"deployment.kubernetes.io/revision": revision.to_string(),
                        "deployment.kubernetes.io/desired-replicas": replicas.to_string()}},
                "spec": {"replicas": replicas, "selector": selector, "template": template},
            });
            new_child(cluster, st, "apps/replicasets", &k.1, &rs_name, rs);
        }
    }
    let sets: Vec<(Key, Value)> = st
        .objects
        .iter()
        .filter(|(k, o)| {
            k.0 == "apps/replicasets" && !o["metadata"]["deletionTimestamp"].is_string()
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    let mut pods_by_owner = by_controller(st, "/pods");
    for (k, rs) in sets {
        let uid = rs["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let want = usize::try_from(rs["spec"]["replicas"].as_i64().unwrap_or(1)).unwrap_or(0);
        let pods: Vec<Key> = pods_by_owner.remove(&uid).unwrap_or_default();
        for extra in pods.iter().skip(want) {
            cluster.remove_key(st, extra);
        }
        for _ in pods.len()..want {
            let suffix: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .take(5)
                .collect();
            let template = &rs["spec"]["template"];
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"labels": template["metadata"]["labels"], "ownerReferences": owner_ref(&rs, "ReplicaSet", "apps/v1")},
                "spec": template["spec"],
                "status": {"phase": "Pending", "qosClass": "BestEffort"},
            });
            new_child(
                cluster,
                st,
                "/pods",
                &k.1,
                &format!("{}-{suffix}", k.2),
                pod,
            );
        }
    }
    job_pods(cluster, st);
}

/// Each Job owns one Pod (`JOB-xxxxx`, labelled `job-name`), Pending, then
/// Running while the Job is active, then Succeeded or Failed with it.
fn job_pods(cluster: &Cluster, st: &mut State) {
    let jobs: Vec<(Key, Value)> = st
        .objects
        .iter()
        .filter(|(k, o)| k.0 == "batch/jobs" && !o["metadata"]["deletionTimestamp"].is_string())
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    let mut pods_by_owner = by_controller(st, "/pods");
    for (k, job) in jobs {
        let uid = job["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let status = &job["status"];
        let finished = status["conditions"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| {
                    (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
                })
                .map(|c| c["type"].clone())
        });
        let outcome = match finished.as_ref().and_then(Value::as_str) {
            Some("Complete") => Some(Outcome::Succeed),
            Some(_) => Some(Outcome::Fail),
            // Active: the pod runs.
            None if status["active"].as_i64().unwrap_or(0) > 0 => Some(Outcome::Hang),
            None => None,
        };
        match pods_by_owner.remove(&uid).unwrap_or_default().first() {
            None => {
                if finished.is_some() {
                    continue;
                }
                let template = &job["spec"]["template"];
                let mut labels = template["metadata"]["labels"].clone();
                if !labels.is_object() {
                    labels = json!({});
                }
                for (l, v) in [
                    ("batch.kubernetes.io/controller-uid", uid.as_str()),
                    ("batch.kubernetes.io/job-name", k.2.as_str()),
                    ("controller-uid", uid.as_str()),
                    ("job-name", k.2.as_str()),
                ] {
                    labels[l] = json!(v);
                }
                let pod = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"labels": labels, "ownerReferences": owner_ref(&job, "Job", "batch/v1")},
                    "spec": template["spec"],
                    "status": {"phase": "Pending", "qosClass": "BestEffort"},
                });
                let name = format!("{}-{}", k.2, crate::store::random_suffix());
                new_child(cluster, st, "/pods", &k.1, &name, pod);
            }
            Some(pk) => {
                let Some(pod) = st.objects.get(pk).cloned() else {
                    continue;
                };
                let new = outcome.map_or_else(
                    || json!({"phase": "Pending", "qosClass": "BestEffort"}),
                    |o| finished_pod(&pod, o),
                );
                if pod["status"] != new
                    && let Some(rd) = rd_for(st, "/pods")
                {
                    let mut updated = pod;
                    updated["status"] = new;
                    cluster.commit(st, &rd, pk.clone(), updated, "MODIFIED");
                }
            }
        }
    }
}
