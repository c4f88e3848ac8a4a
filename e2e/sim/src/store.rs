//! One virtual cluster: objects, resourceVersions, watch history and the
//! write paths (create, update, patch, apply, delete).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::defaults;
use crate::error::{ApiError, ApiResult};
use crate::fields::{self, FieldSet, Scope};
use crate::resources::{self, ResourceDef};

/// Events kept for watches resuming from an older resourceVersion.
pub const HISTORY: usize = 1000;

/// A watch event.
#[derive(Debug, Clone)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// group/resource.
    pub gr: String,
    /// Namespace ("" for cluster scoped).
    pub ns: String,
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// The object after the change.
    pub obj: Value,
    /// The object before a MODIFIED change (selector watches turn label
    /// changes into ADDED/DELETED as Kubernetes does).
    pub prev: Option<Value>,
}

impl Event {
    /// The event type a watch filtered by `matches` sees, if any.
    pub fn seen_as(&self, matches: &dyn Fn(&Value) -> bool) -> Option<&'static str> {
        let now = matches(&self.obj);
        if self.kind != "MODIFIED" {
            return now.then_some(self.kind);
        }
        let before = self.prev.as_ref().map_or(now, matches);
        match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        }
    }
}

/// Storage key: (group/resource, namespace, name).
pub type Key = (String, String, String);

/// Mutable state of a cluster.
#[derive(Default)]
pub struct State {
    /// Last resourceVersion handed out.
    pub rv: u64,
    /// All objects.
    pub objects: BTreeMap<Key, Value>,
    /// Recent events, oldest first.
    pub history: VecDeque<Arc<Event>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub floor: u64,
    next_ip: u32,
    /// Servable resources (built-ins and established CRDs).
    pub resources: Vec<ResourceDef>,
    /// Rollout start per object uid: (generation, start).
    pub rollouts: HashMap<String, (i64, tokio::time::Instant)>,
    /// Set on every write; the controllers and persistence clear it.
    pub dirty: bool,
    /// Objects whose status the controllers found final, by the
    /// resourceVersion they had then (skipped until they change).
    pub settled: HashMap<Key, String>,
}

/// Options shared by writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Field manager name.
    pub manager: String,
    /// `force=true` for apply.
    pub force: bool,
    /// `fieldValidation=Strict`: unknown fields of custom resources are an error
    /// (otherwise they are pruned).
    pub strict: bool,
}

/// Fault injection settings for a cluster.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added latency per request.
    pub latency_ms: u64,
    /// Fraction of API requests (0..=1) answered with `error_code`.
    pub error_rate: f64,
    /// 500, 503 or 429 (429 carries Retry-After: 1).
    pub error_code: u16,
    /// One-shot: end every open watch stream now.
    pub drop_watches: bool,
    /// Refuse requests (the connection is closed without a response).
    pub down: bool,
    /// Let this many API requests through after the setting, then hold
    /// every further one until the faults are set again: a test sees a
    /// client stopped at an exact request (`held` in the stats) and
    /// decides what happens next. Released requests are carried out
    /// unless the new setting has `down` (then their connection closes).
    pub hold_after_requests: Option<u64>,
    /// With `hold_after_requests`: hold the response of a request that was
    /// already carried out (a client that never learns its write happened)
    /// instead of the request before it is carried out.
    pub hold_processed: bool,
}

/// A virtual cluster.
pub struct Cluster {
    /// Name, e.g. `sim-1`.
    pub name: String,
    state: Mutex<State>,
    /// Watch event fan-out.
    pub tx: broadcast::Sender<Arc<Event>>,
    /// Fault settings.
    pub faults: Mutex<Faults>,
    /// Bumped to end every open watch.
    pub watch_epoch: tokio::sync::watch::Sender<u64>,
    /// API requests received (including refused and failed ones).
    pub requests: std::sync::atomic::AtomicU64,
    /// Mutating API requests (POST, PUT, PATCH, DELETE) received.
    pub writes: std::sync::atomic::AtomicU64,
    /// Requests that reached the hold point since the faults were set.
    pub passed: std::sync::atomic::AtomicU64,
    /// Requests held now (`Faults::hold_after_requests`).
    pub held: std::sync::atomic::AtomicU64,
    /// Bumped whenever the faults are set: held requests go on.
    pub fault_epoch: tokio::sync::watch::Sender<u64>,
}

/// Longest object name (a DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;

/// Five characters from the alphabet Kubernetes uses for generated names
/// (no vowels, no look-alike digits).
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let i = rand::random_range(0..ALPHABET.len());
            char::from(ALPHABET.get(i).copied().unwrap_or(b'x'))
        })
        .collect()
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Display name of a resource in messages: `deployments.apps`.
pub fn res_name(rd: &ResourceDef) -> String {
    if rd.group.is_empty() {
        rd.plural.clone()
    } else {
        format!("{}.{}", rd.plural, rd.group)
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A managedFields entry.
#[derive(Debug, Clone)]
struct Managed {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    set: FieldSet,
}

fn read_managed(obj: &Value) -> Vec<Managed> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Managed {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or_default().to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            subresource: e["subresource"].as_str().map(str::to_string),
            set: FieldSet::from_json(&e["fieldsV1"]),
        })
        .collect()
}

fn write_managed(obj: &mut Value, entries: &[Managed]) {
    let arr: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut m = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": e.set.to_json(),
            });
            if let Some(s) = &e.subresource {
                m["subresource"] = json!(s);
            }
            m
        })
        .collect();
    if let Some(md) = obj["metadata"].as_object_mut() {
        if arr.is_empty() {
            md.remove("managedFields");
        } else {
            md.insert("managedFields".into(), Value::Array(arr));
        }
    }
}

fn scope_sub(scope: Scope) -> Option<String> {
    (scope == Scope::Status).then(|| "status".to_string())
}

fn set_entry(
    entries: &mut Vec<Managed>,
    manager: &str,
    op: &str,
    api_version: &str,
    scope: Scope,
    set: FieldSet,
) {
    let sub = scope_sub(scope);
    if let Some(e) = entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == op && e.subresource == sub)
    {
        if e.set != set || e.api_version != api_version {
            e.set = set;
            e.time = now();
            e.api_version = api_version.to_string();
        }
    } else {
        entries.push(Managed {
            manager: manager.into(),
            operation: op.into(),
            api_version: api_version.into(),
            time: now(),
            subresource: sub,
            set,
        });
    }
}

/// Records an Update operation by `manager` that turned `old` into `new`.
fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    kind: &str,
    scope: Scope,
) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let new_set = fields::fieldset_of(new, kind, scope);
    let empty = Value::Null;
    let old_obj = old.unwrap_or(&empty);
    let old_set = fields::fieldset_of(old_obj, kind, scope);
    let mut changed = FieldSet::default();
    for p in new_set.members() {
        let is_item = p.last().is_some_and(|l| l.starts_with("k:"));
        let differs = if is_item {
            fields::get_path(old_obj, &p).is_none()
        } else {
            fields::get_path(old_obj, &p) != fields::get_path(new, &p)
        };
        if differs {
            changed.insert(&p);
        }
    }
    let removed: Vec<_> = old_set
        .members()
        .into_iter()
        .filter(|p| !new_set.contains(p))
        .collect();
    let sub = scope_sub(scope);
    for e in entries.iter_mut().filter(|e| e.subresource == sub) {
        for p in changed.members().iter().chain(removed.iter()) {
            e.set.remove(p);
        }
    }
    if !changed.is_empty() {
        let mut mine = entries
            .iter()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
            .map(|e| e.set.clone())
            .unwrap_or_default();
        for p in changed.members() {
            mine.insert(&p);
        }
        set_entry(&mut entries, manager, "Update", api_version, scope, mine);
    }
    write_managed(new, &entries);
}

fn strip_for_compare(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(md) = v["metadata"].as_object_mut() {
        md.remove("managedFields");
        md.remove("resourceVersion");
        md.remove("generation");
    }
    v
}

fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl Cluster {
    /// A new, empty cluster.
    pub fn new(name: &str) -> Self {
        let (tx, _) = broadcast::channel(256);
        let st = State {
            resources: resources::builtin(),
            next_ip: 10,
            ..State::default()
        };
        Self {
            name: name.to_string(),
            state: Mutex::new(st),
            tx,
            faults: Mutex::new(Faults::default()),
            watch_epoch: tokio::sync::watch::channel(0).0,
            requests: Default::default(),
            writes: Default::default(),
            passed: Default::default(),
            held: Default::default(),
            fault_epoch: tokio::sync::watch::channel(0).0,
        }
    }

    /// Locks the state.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Finds a resource by group, version and plural.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.lock()
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// Replaces the whole state (restart, load).
    pub fn reset(&self, objects: BTreeMap<Key, Value>, rv: u64) {
        let mut st = self.lock();
        st.objects = objects;
        st.rv = st.rv.max(rv);
        st.floor = st.rv;
        st.history.clear();
        st.rollouts.clear();
        st.dirty = true;
        refresh_resources(&mut st);
        drop(st);
        self.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Drops the watch history so resuming watches get 410 Gone.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.floor = st.rv;
        st.history.clear();
    }

    /// Emits an event and stores it in history.
    pub fn emit(&self, st: &mut State, ev: Event) {
        let ev = Arc::new(ev);
        st.history.push_back(ev.clone());
        while st.history.len() > HISTORY {
            if let Some(old) = st.history.pop_front() {
                st.floor = old.rv;
            }
        }
        st.dirty = true;
        let _ = self.tx.send(ev);
    }

    fn next_rv(st: &mut State) -> u64 {
        st.rv += 1;
        st.rv
    }

    /// Stores `obj` under `key` with a fresh resourceVersion and emits an event.
    pub fn commit(
        &self,
        st: &mut State,
        rd: &ResourceDef,
        key: Key,
        mut obj: Value,
        kind: &'static str,
    ) -> Value {
        let rv = Self::next_rv(st);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let prev = st.objects.insert(key.clone(), obj.clone());
        if rd.kind == "CustomResourceDefinition" && rd.group == "apiextensions.k8s.io" {
            refresh_resources(st);
        }
        self.emit(
            st,
            Event {
                rv,
                gr: key.0,
                ns: key.1,
                kind,
                obj: obj.clone(),
                prev: if kind == "MODIFIED" { prev } else { None },
            },
        );
        obj
    }

    /// Removes an object for good, emitting DELETED.
    pub fn remove_key(&self, st: &mut State, key: &Key) -> Option<Value> {
        self.remove(st, key)
    }

    fn remove(&self, st: &mut State, key: &Key) -> Option<Value> {
        let mut obj = st.objects.remove(key)?;
        let rv = Self::next_rv(st);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if key.0 == "apiextensions.k8s.io/customresourcedefinitions" {
            let group = obj["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let plural = obj["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let gr = format!("{group}/{plural}");
            let keys: Vec<Key> = st.objects.keys().filter(|k| k.0 == gr).cloned().collect();
            for k in keys {
                self.remove(st, &k);
            }
            refresh_resources(st);
        }
        self.emit(
            st,
            Event {
                rv,
                gr: key.0.clone(),
                ns: key.1.clone(),
                kind: "DELETED",
                prev: None,
                obj: obj.clone(),
            },
        );
        Some(obj)
    }

    fn key(rd: &ResourceDef, ns: &str, name: &str) -> Key {
        (
            rd.group_resource(),
            if rd.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    fn with_version(rd: &ResourceDef, mut obj: Value) -> Value {
        obj["apiVersion"] = json!(rd.api_version());
        obj
    }

    /// GET one object.
    ///
    /// # Errors
    /// NotFound.
    pub fn get(&self, rd: &ResourceDef, ns: &str, name: &str) -> ApiResult<Value> {
        let st = self.lock();
        st.objects
            .get(&Self::key(rd, ns, name))
            .cloned()
            .map(|o| Self::with_version(rd, o))
            .ok_or_else(|| ApiError::not_found(&res_name(rd), name))
    }

    /// LIST objects; `ns` empty means all namespaces.
    pub fn list(
        &self,
        rd: &ResourceDef,
        ns: &str,
        filter: &dyn Fn(&Value) -> bool,
    ) -> (Vec<Value>, u64) {
        let st = self.lock();
        let gr = rd.group_resource();
        let items = st
            .objects
            .iter()
            .filter(|(k, _)| k.0 == gr && (ns.is_empty() || k.1 == ns))
            .filter(|(_, o)| filter(o))
            .map(|(_, o)| Self::with_version(rd, o.clone()))
            .collect();
        (items, st.rv)
    }

    fn check_namespace(st: &State, rd: &ResourceDef, ns: &str, creating: bool) -> ApiResult<()> {
        if !rd.namespaced {
            return Ok(());
        }
        match st
            .objects
            .get(&("/namespaces".to_string(), String::new(), ns.to_string()))
        {
            None => Err(ApiError::not_found("namespaces", ns)),
            Some(n) if creating && n["metadata"]["deletionTimestamp"].is_string() => {
                Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        res_name(rd)
                    ),
                ))
            }
            Some(_) => Ok(()),
        }
    }

    fn check_body(rd: &ResourceDef, ns: &str, body: &Value) -> ApiResult<()> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
            ));
        }
        let kind = body["kind"].as_str().unwrap_or_default();
        let av = body["apiVersion"].as_str().unwrap_or_default();
        if kind.is_empty() || av.is_empty() {
            return Err(ApiError::bad_request(
                "Object 'Kind' is missing in request body",
            ));
        }
        if kind != rd.kind || av.split('/').rev().nth(1).unwrap_or("") != rd.group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rd.api_version()
            )));
        }
        if let Some(bns) = body["metadata"]["namespace"].as_str()
            && rd.namespaced
            && !bns.is_empty()
            && bns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Ok(())
    }

    /// Validates and prunes a custom resource against its CRD schema.
    fn validate_custom(
        st: &State,
        rd: &ResourceDef,
        obj: &mut Value,
        strict: bool,
    ) -> ApiResult<()> {
        let key = (
            "apiextensions.k8s.io/customresourcedefinitions".to_string(),
            String::new(),
            format!("{}.{}", rd.plural, rd.group),
        );
        let schema = st
            .objects
            .get(&key)
            .and_then(|crd| resources::crd_schema(crd, &rd.version));
        let builtin =
            rd.group.is_empty() || rd.group.ends_with(".k8s.io") || !rd.group.contains('.');
        let Some(schema) = schema.or_else(|| {
            builtin
                .then(|| crate::builtin_schema::schema(&rd.kind))
                .flatten()
        }) else {
            return Ok(());
        };
        let mut report = crate::schema::Report::default();
        crate::schema::check(&schema, obj, "", true, &mut report);
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if strict && !report.unknown.is_empty() {
            let fields: Vec<String> = report
                .unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                fields.join(", ")
            )));
        }
        if !report.invalid.is_empty() {
            let causes: Vec<(&str, String)> = report
                .invalid
                .iter()
                .map(|(p, m)| (p.as_str(), m.clone()))
                .collect();
            return Err(ApiError::invalid(
                &format!("{}.{}", rd.kind, rd.group),
                &name,
                &causes,
            ));
        }
        Ok(())
    }

    fn validate(rd: &ResourceDef, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if !is_dns_subdomain(name) {
            return Err(ApiError::invalid(
                &rd.kind,
                name,
                &[(
                    "metadata.name",
                    format!(
                        "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                    ),
                )],
            ));
        }
        if rd.kind == "StatefulSet" {
            // Only these spec fields may change on a StatefulSet.
            let strip = |v: &Value| {
                let mut spec = v["spec"].clone();
                if let Some(m) = spec.as_object_mut() {
                    for k in [
                        "replicas",
                        "ordinals",
                        "template",
                        "updateStrategy",
                        "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds",
                    ] {
                        m.remove(k);
                    }
                }
                spec
            };
            if let Some(o) = old
                && strip(o) != strip(obj)
            {
                return Err(ApiError::invalid(&rd.kind, name, &[(
                        "spec",
                        "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
                    )]));
            }
        }
        match rd.kind.as_str() {
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
                let sel = &obj["spec"]["selector"];
                if !sel.is_object() {
                    return Err(ApiError::invalid(
                        &rd.kind,
                        name,
                        &[("spec.selector", "Required value".into())],
                    ));
                }
                let labels = &obj["spec"]["template"]["metadata"]["labels"];
                if let Some(ml) = sel["matchLabels"].as_object()
                    && ml.iter().any(|(k, v)| labels.get(k) != Some(v))
                {
                    return Err(ApiError::invalid(
                        &rd.kind,
                        name,
                        &[(
                            "spec.template.metadata.labels",
                            format!(
                                "Invalid value: {labels}: `selector` does not match template `labels`"
                            ),
                        )],
                    ));
                }
                if obj["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                {
                    return Err(ApiError::invalid(
                        &rd.kind,
                        name,
                        &[("spec.template.spec.containers", "Required value".into())],
                    ));
                }
                if let Some(o) = old
                    && o["spec"]["selector"] != *sel
                {
                    return Err(ApiError::invalid(
                        &rd.kind,
                        name,
                        &[(
                            "spec.selector",
                            format!("Invalid value: {sel}: field is immutable"),
                        )],
                    ));
                }
            }
            "Job" if old.is_some() => {
                for f in ["template", "selector", "completionMode"] {
                    if let Some(o) = old
                        && o["spec"][f] != obj["spec"][f]
                    {
                        return Err(ApiError::invalid(
                            &rd.kind,
                            name,
                            &[(
                                &format!("spec.{f}"),
                                format!("Invalid value: {}: field is immutable", obj["spec"][f]),
                            )],
                        ));
                    }
                }
            }
            "Service" => {
                if let Some(o) = old {
                    let (a, b) = (&o["spec"]["clusterIP"], &obj["spec"]["clusterIP"]);
                    if a.is_string() && a != b {
                        return Err(ApiError::invalid(
                            &rd.kind,
                            name,
                            &[(
                                "spec.clusterIPs[0]",
                                format!("Invalid value: {b}: may not change once set"),
                            )],
                        ));
                    }
                }
            }
            "ConfigMap" | "Secret" => {
                // What defaulting could not fold into `data`.
                if rd.kind == "Secret"
                    && let Some(left) = obj.get("stringData")
                {
                    let (what, field) = match left.as_object().and_then(|m| m.iter().next()) {
                        Some((k, v)) => (json_type(v), format!("Secret.stringData.{k}")),
                        None => (json_type(left), "Secret.stringData".to_owned()),
                    };
                    return Err(ApiError::bad_request(format!(
                        "Secret in version \"v1\" cannot be handled as a Secret: json: cannot unmarshal {what} into Go struct field {field} of type string"
                    )));
                }
                if let Some(o) = old
                    && o["immutable"] == true
                    && (o["data"] != obj["data"] || o["binaryData"] != obj["binaryData"])
                {
                    return Err(ApiError::invalid(
                        &rd.kind,
                        name,
                        &[(
                            "data",
                            "Forbidden: field is immutable when `immutable` is set".into(),
                        )],
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn default_obj(st: &mut State, rd: &ResourceDef, obj: &mut Value) {
        let used: std::collections::HashSet<String> = if rd.kind == "Service" {
            st.objects
                .iter()
                .filter(|(k, _)| k.0 == "/services")
                .filter_map(|(_, o)| o["spec"]["clusterIP"].as_str().map(str::to_string))
                .collect()
        } else {
            Default::default()
        };
        let mut ip = || {
            // Sequential from 10.96.0.11, skipping addresses in use (also after a reload).
            for _ in 0..65_536 {
                st.next_ip = if st.next_ip >= 65_534 {
                    10
                } else {
                    st.next_ip + 1
                };
                let n = st.next_ip;
                let a = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                if n & 0xff != 0 && !used.contains(&a) {
                    return a;
                }
            }
            "10.96.255.254".to_string()
        };
        defaults::apply(&rd.kind, obj, &mut ip);
    }

    /// POST (create). `apply_set` marks an apply-create.
    ///
    /// # Errors
    /// BadRequest, NotFound (namespace), AlreadyExists, Invalid.
    pub fn create(
        &self,
        rd: &ResourceDef,
        ns: &str,
        mut body: Value,
        opts: &WriteOpts,
        apply_set: Option<FieldSet>,
    ) -> ApiResult<Value> {
        Self::check_body(rd, ns, &body)?;
        let mut st = self.lock();
        Self::check_namespace(&st, rd, ns, true)?;
        let md = body["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata is required"))?;
        if md
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            match md.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => {
                    // As the API server's name generator: the prefix cut to
                    // leave room for five random characters.
                    let prefix: String = g.chars().take(MAX_NAME_LEN - 5).collect();
                    md.insert("name".into(), json!(format!("{prefix}{}", random_suffix())));
                }
                _ => {
                    return Err(ApiError::invalid(
                        &rd.kind,
                        "",
                        &[(
                            "metadata.name",
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            }
        }
        let name = md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            md.remove(k);
        }
        if rd.namespaced {
            md.insert("namespace".into(), json!(ns));
        } else {
            md.remove("namespace");
        }
        md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        md.insert("creationTimestamp".into(), json!(now()));
        if rd.generation {
            md.insert("generation".into(), json!(1));
        }
        let key = Self::key(rd, ns, &name);
        if st.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&res_name(rd), &name));
        }
        if rd.status
            && rd.kind != "Namespace"
            && let Some(m) = body.as_object_mut()
        {
            m.remove("status");
        }
        Self::default_obj(&mut st, rd, &mut body);
        Self::validate(rd, &body, None)?;
        Self::validate_custom(&st, rd, &mut body, opts.strict)?;
        match apply_set {
            Some(set) => {
                let mut e = Vec::new();
                set_entry(
                    &mut e,
                    &opts.manager,
                    "Apply",
                    &rd.api_version(),
                    Scope::Main,
                    set,
                );
                write_managed(&mut body, &e);
            }
            None => track_update(
                None,
                &mut body,
                &opts.manager,
                &rd.api_version(),
                &rd.kind,
                Scope::Main,
            ),
        }
        body["apiVersion"] = json!(rd.api_version());
        if opts.dry_run {
            body["metadata"]["resourceVersion"] = json!("");
            return Ok(body);
        }
        Ok(self.commit(&mut st, rd, key, body, "ADDED"))
    }

    /// Finishes an update of `old` into `new` (defaulting, validation,
    /// generation, no-op detection, finalizer-driven deletion) and commits.
    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &self,
        st: &mut State,
        rd: &ResourceDef,
        key: Key,
        old: &Value,
        mut new: Value,
        scope: Scope,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        // System metadata always comes from the stored object.
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        new["apiVersion"] = json!(rd.api_version());
        new["kind"] = json!(rd.kind);
        if scope == Scope::Main {
            Self::default_obj(st, rd, &mut new);
            if rd.status {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
        }
        Self::validate(rd, &new, Some(old))?;
        Self::validate_custom(st, rd, &mut new, opts.strict)?;
        if rd.generation && spec_part(old) != spec_part(&new) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let mut result = Self::with_version(rd, old.clone());
        let unchanged = strip_for_compare(&Self::with_version(rd, old.clone()))
            == strip_for_compare(&new)
            && old["metadata"]["managedFields"] == new["metadata"]["managedFields"];
        if unchanged {
            return Ok(result);
        }
        let finalizers_done = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        if new["metadata"]["deletionTimestamp"].is_string()
            && finalizers_done
            && rd.kind != "Namespace"
        {
            if opts.dry_run {
                return Ok(new);
            }
            st.objects.insert(key.clone(), new);
            result = self.remove(st, &key).unwrap_or(result);
            self.collect_garbage(st);
            return Ok(result);
        }
        if opts.dry_run {
            return Ok(new);
        }
        Ok(self.commit(st, rd, key, new, "MODIFIED"))
    }

    /// PUT (update), with optimistic concurrency.
    ///
    /// # Errors
    /// BadRequest, NotFound, Conflict, Invalid.
    pub fn update(
        &self,
        rd: &ResourceDef,
        ns: &str,
        name: &str,
        mut body: Value,
        opts: &WriteOpts,
        scope: Scope,
    ) -> ApiResult<Value> {
        Self::check_body(rd, ns, &body)?;
        if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let mut st = self.lock();
        Self::check_namespace(&st, rd, ns, false)?;
        let key = Self::key(rd, ns, name);
        let Some(old) = st.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&res_name(rd), name));
        };
        if let Some(rv) = body["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            && old["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::conflict(format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    res_name(rd)
                )).with_details(json!({"name": name, "kind": rd.plural})));
        }
        if scope == Scope::Status {
            let mut merged = old.clone();
            merged["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            body = merged;
        }
        body["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        let mut tracked = body.clone();
        if scope == Scope::Main {
            Self::default_obj(&mut st, rd, &mut tracked);
        }
        track_update(
            Some(&old),
            &mut tracked,
            &opts.manager,
            &rd.api_version(),
            &rd.kind,
            scope,
        );
        body["metadata"]["managedFields"] = tracked["metadata"]["managedFields"].clone();
        self.finish_update(&mut st, rd, key, &old, body, scope, opts)
    }

    /// PATCH with a non-apply patch; `f` turns the live object into the new one.
    ///
    /// # Errors
    /// NotFound, the patch's error, Invalid, Conflict.
    pub fn patch(
        &self,
        rd: &ResourceDef,
        ns: &str,
        name: &str,
        opts: &WriteOpts,
        scope: Scope,
        f: &dyn Fn(&mut Value) -> ApiResult<()>,
    ) -> ApiResult<Value> {
        let mut st = self.lock();
        Self::check_namespace(&st, rd, ns, false)?;
        let key = Self::key(rd, ns, name);
        let Some(old) = st.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&res_name(rd), name));
        };
        let mut new = Self::with_version(rd, old.clone());
        f(&mut new)?;
        if !new.is_object() {
            return Err(ApiError::bad_request("patched object is not an object"));
        }
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
            && old["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::conflict(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res_name(rd)
            )));
        }
        if scope == Scope::Status {
            let mut merged = old.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            new = merged;
        }
        new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        let mut tracked = new.clone();
        if scope == Scope::Main {
            Self::default_obj(&mut st, rd, &mut tracked);
        }
        track_update(
            Some(&old),
            &mut tracked,
            &opts.manager,
            &rd.api_version(),
            &rd.kind,
            scope,
        );
        new["metadata"]["managedFields"] = tracked["metadata"]["managedFields"].clone();
        self.finish_update(&mut st, rd, key, &old, new, scope, opts)
    }

    /// Server-side apply.
    ///
    /// # Errors
    /// BadRequest, Conflict (with causes), Invalid, NotFound (namespace).
    pub fn apply(
        &self,
        rd: &ResourceDef,
        ns: &str,
        name: &str,
        applied: Value,
        opts: &WriteOpts,
        scope: Scope,
    ) -> ApiResult<Value> {
        Self::check_body(rd, ns, &applied)?;
        if applied["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(
                "metadata.name in the applied configuration must match the name on the URL",
            ));
        }
        if opts.manager.is_empty() {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io",
                "",
                &[(
                    "fieldManager",
                    "Required value: is required for apply patch".into(),
                )],
            ));
        }
        let key = Self::key(rd, ns, name);
        let applied_set = fields::fieldset_of(&applied, &rd.kind, scope);
        let mut st = self.lock();
        let live = st.objects.get(&key).cloned();
        let Some(live) = live else {
            drop(st);
            if scope == Scope::Status {
                return Err(ApiError::not_found(&res_name(rd), name));
            }
            let mut base = json!({"apiVersion": rd.api_version(), "kind": rd.kind, "metadata": {"name": name}});
            fields::merge_apply(&mut base, &applied, &rd.kind, &mut Vec::new());
            return match self.create(rd, ns, base, opts, Some(applied_set)) {
                // Lost a race with another creator: apply onto what they made.
                Err(e) if e.reason == "AlreadyExists" => {
                    self.apply(rd, ns, name, applied, opts, scope)
                }
                other => other,
            };
        };
        let mut entries = read_managed(&live);
        let sub = scope_sub(scope);
        // Conflicts: leaves we set to a different value that another manager owns.
        let mut conflicts: Vec<(String, String)> = Vec::new();
        for p in applied_set.leaves() {
            let differs = fields::get_path(&live, &p) != fields::get_path(&applied, &p);
            if !differs {
                continue;
            }
            for e in &entries {
                let mine = e.manager == opts.manager && e.operation == "Apply";
                if !mine && e.subresource == sub && e.set.contains(&p) {
                    conflicts.push((e.manager.clone(), fields::path_string(&p)));
                }
            }
            if opts.force {
                for e in entries.iter_mut() {
                    let mine = e.manager == opts.manager && e.operation == "Apply";
                    if !mine && e.subresource == sub {
                        e.set.remove(&p);
                    }
                }
            }
        }
        if !conflicts.is_empty() && !opts.force {
            let av = rd.api_version();
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {av}"), "field": f}))
                .collect();
            let msg = if conflicts.len() == 1 {
                format!(
                    "Apply failed with 1 conflict: conflict with \"{}\" using {av}: {}",
                    conflicts[0].0, conflicts[0].1
                )
            } else {
                let lines: Vec<String> = conflicts
                    .iter()
                    .map(|(m, f)| format!("conflict with \"{m}\" using {av}: {f}"))
                    .collect();
                format!(
                    "Apply failed with {} conflicts: {}",
                    conflicts.len(),
                    lines.join("\n")
                )
            };
            return Err(ApiError::conflict(msg).with_details(
                json!({"name": name, "group": rd.group, "kind": rd.plural, "causes": causes}),
            ));
        }
        let previous = entries
            .iter()
            .find(|e| e.manager == opts.manager && e.operation == "Apply" && e.subresource == sub)
            .map(|e| e.set.clone())
            .unwrap_or_default();
        let mut new = Self::with_version(rd, live.clone());
        let mut applied_body = applied.clone();
        if let Some(m) = applied_body.as_object_mut() {
            match scope {
                Scope::Main => {
                    m.remove("status");
                }
                Scope::Status => m.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind"),
            }
            if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                md.retain(|k, _| {
                    matches!(
                        k.as_str(),
                        "labels" | "annotations" | "finalizers" | "ownerReferences"
                    )
                });
            }
        }
        fields::merge_apply(&mut new, &applied_body, &rd.kind, &mut Vec::new());
        // Remove what this manager owned before, no longer applies, and nobody else owns.
        let mut dropped = previous.members();
        dropped.retain(|p| !applied_set.contains(p));
        // Parents first: removing a list item removes its fields with it.
        for p in dropped {
            if is_key_field(&p) {
                continue;
            }
            let others = entries.iter().any(|e| {
                !(e.manager == opts.manager && e.operation == "Apply")
                    && e.subresource == sub
                    && e.set.contains_prefix(&p)
            });
            if !others {
                fields::remove_path(&mut new, &p);
            }
        }
        set_entry(
            &mut entries,
            &opts.manager,
            "Apply",
            &rd.api_version(),
            scope,
            applied_set,
        );
        write_managed(&mut new, &entries);
        if let Some(rv) = applied["metadata"]["resourceVersion"].as_str()
            && live["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::conflict(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res_name(rd)
            )));
        }
        self.finish_update(&mut st, rd, key, &live, new, scope, opts)
    }

    /// DELETE one object.
    ///
    /// # Errors
    /// NotFound, Conflict (preconditions).
    pub fn delete(
        &self,
        rd: &ResourceDef,
        ns: &str,
        name: &str,
        opts: &WriteOpts,
        body: &Value,
    ) -> ApiResult<Value> {
        let mut st = self.lock();
        self.delete_in(&mut st, rd, ns, name, opts, body)
    }

    /// DELETE with the state already locked.
    ///
    /// # Errors
    /// NotFound, Conflict (preconditions).
    pub fn delete_in(
        &self,
        st: &mut State,
        rd: &ResourceDef,
        ns: &str,
        name: &str,
        opts: &WriteOpts,
        body: &Value,
    ) -> ApiResult<Value> {
        let key = Self::key(rd, ns, name);
        let Some(old) = st.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&res_name(rd), name));
        };
        let pre = &body["preconditions"];
        for (field, what) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(want) = pre[field].as_str()
                && old["metadata"][field].as_str() != Some(want)
            {
                return Err(ApiError::conflict(format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what} in precondition: {want}, {what} in object meta: {}",
                    res_name(rd),
                    old["metadata"][field].as_str().unwrap_or_default()
                )));
            }
        }
        let policy = body["propagationPolicy"]
            .as_str()
            .unwrap_or("Background")
            .to_string();
        let old = Self::with_version(rd, old);
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if rd.kind == "Namespace" || has_finalizers || policy == "Foreground" {
            if old["metadata"]["deletionTimestamp"].is_string() {
                return Ok(old);
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if rd.kind == "Namespace" {
                new["status"]["phase"] = json!("Terminating");
            }
            if policy == "Foreground" && rd.kind != "Namespace" {
                let f = new["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !f.contains(&json!("foregroundDeletion")) {
                    let mut f = f;
                    f.push(json!("foregroundDeletion"));
                    new["metadata"]["finalizers"] = Value::Array(f);
                }
            }
            if opts.dry_run {
                return Ok(new);
            }
            let out = self.commit(st, rd, key, new, "MODIFIED");
            // A foreground deletion without dependents finishes at once.
            self.collect_garbage(st);
            return Ok(out);
        }
        if opts.dry_run {
            return Ok(old);
        }
        if policy == "Orphan" {
            let uid = old["metadata"]["uid"].clone();
            let orphans: Vec<Key> = st
                .objects
                .iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["uid"] == uid))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in orphans {
                if let Some(mut o) = st.objects.get(&k).cloned() {
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != uid);
                    }
                    let ord = rd_for(st, &k.0);
                    if let Some(ord) = ord {
                        self.commit(st, &ord, k, o, "MODIFIED");
                    }
                }
            }
        }
        let out = self.remove(st, &key).unwrap_or(old);
        self.collect_garbage(st);
        Ok(out)
    }

    /// Deletes (or marks for deletion) objects whose owners are all gone,
    /// and finishes foreground deletions whose dependents are gone.
    pub fn collect_garbage(&self, st: &mut State) {
        loop {
            let uids: std::collections::HashSet<String> = st
                .objects
                .values()
                .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_string))
                .collect();
            let mut orphaned: Vec<Key> = Vec::new();
            let mut fg_done: Vec<Key> = Vec::new();
            let mut owners_fg: std::collections::HashSet<String> = std::collections::HashSet::new();
            for o in st.objects.values() {
                if o["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.contains(&json!("foregroundDeletion")))
                    && let Some(u) = o["metadata"]["uid"].as_str()
                {
                    owners_fg.insert(u.to_string());
                }
            }
            for (k, o) in &st.objects {
                let refs = o["metadata"]["ownerReferences"].as_array();
                if let Some(refs) = refs {
                    let dangling = !refs.is_empty()
                        && refs
                            .iter()
                            .all(|r| r["uid"].as_str().is_none_or(|u| !uids.contains(u)));
                    let fg_owner = refs
                        .iter()
                        .any(|r| r["uid"].as_str().is_some_and(|u| owners_fg.contains(u)));
                    if (dangling || fg_owner) && !o["metadata"]["deletionTimestamp"].is_string() {
                        orphaned.push(k.clone());
                    }
                }
            }
            for (k, o) in &st.objects {
                let Some(u) = o["metadata"]["uid"].as_str() else {
                    continue;
                };
                if owners_fg.contains(u) {
                    let has_dependents = st.objects.values().any(|d| {
                        d["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|r| r["uid"] == u))
                    });
                    if !has_dependents {
                        fg_done.push(k.clone());
                    }
                }
            }
            if orphaned.is_empty() && fg_done.is_empty() {
                return;
            }
            for k in orphaned {
                let Some(o) = st.objects.get(&k).cloned() else {
                    continue;
                };
                let has_finalizers = o["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if has_finalizers {
                    let mut n = o;
                    n["metadata"]["deletionTimestamp"] = json!(now());
                    if let Some(rd) = rd_for(st, &k.0) {
                        self.commit(st, &rd, k, n, "MODIFIED");
                    }
                } else {
                    self.remove(st, &k);
                }
            }
            for k in fg_done {
                let Some(mut o) = st.objects.get(&k).cloned() else {
                    continue;
                };
                if let Some(f) = o["metadata"]["finalizers"].as_array_mut() {
                    f.retain(|x| x != "foregroundDeletion");
                }
                let done = o["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty);
                if done {
                    st.objects.insert(k.clone(), o);
                    self.remove(st, &k);
                } else if let Some(rd) = rd_for(st, &k.0) {
                    self.commit(st, &rd, k, o, "MODIFIED");
                }
            }
        }
    }

    /// Snapshot of all objects for persistence.
    pub fn snapshot(&self) -> Value {
        let st = self.lock();
        let objects: Vec<Value> = st
            .objects
            .iter()
            .map(|(k, o)| json!({"gr": k.0, "ns": k.1, "name": k.2, "object": o}))
            .collect();
        json!({"rv": st.rv, "objects": objects})
    }

    /// Loads a snapshot written by [`Cluster::snapshot`].
    pub fn load(&self, snap: &Value) {
        let mut objects = BTreeMap::new();
        for e in snap["objects"].as_array().into_iter().flatten() {
            let k = (
                e["gr"].as_str().unwrap_or_default().to_string(),
                e["ns"].as_str().unwrap_or_default().to_string(),
                e["name"].as_str().unwrap_or_default().to_string(),
            );
            objects.insert(k, e["object"].clone());
        }
        self.reset(objects, snap["rv"].as_u64().unwrap_or(0));
    }
}

/// Whether a path names a key field of a keyed list item (kept while the item lives).
fn is_key_field(p: &[String]) -> bool {
    let n = p.len();
    match (n.checked_sub(2).and_then(|i| p.get(i)), p.last()) {
        (Some(parent), Some(last)) => {
            let (Some(k), Some(f)) = (parent.strip_prefix("k:"), last.strip_prefix("f:")) else {
                return false;
            };
            serde_json::from_str::<Map<String, Value>>(k).is_ok_and(|m| m.contains_key(f))
        }
        _ => false,
    }
}

/// The resource definition for a stored group/resource.
pub fn rd_for(st: &State, gr: &str) -> Option<ResourceDef> {
    st.resources
        .iter()
        .find(|r| r.group_resource() == gr)
        .cloned()
}

/// Recomputes the servable resources from built-ins and established CRDs.
pub fn refresh_resources(st: &mut State) {
    let mut rs = resources::builtin();
    for ((gr, _, _), o) in &st.objects {
        if gr == "apiextensions.k8s.io/customresourcedefinitions" {
            rs.extend(resources::from_crd(o));
        }
    }
    st.resources = rs;
}

/// The JSON type name Go's decoder uses in its errors.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
