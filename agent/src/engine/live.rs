//! Reading the live state of an application's objects and comparing it
//! with what the agent applies: per-object sync, health and drift, and the
//! diff the hub can ask for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_proto::{ResourceDiff, SyncStatus};
use serde_json::Value;

use super::{Engine, ResourceCheck};
use crate::bundle::Bundle;
use crate::cluster::{Cluster, Resolved};
use crate::drift;
use crate::health::{Health, HealthStatus};
use crate::object::{self, ObjectKey};

/// The live state of an application's objects compared with what the
/// agent applies.
#[derive(Debug, Default)]
pub(super) struct Observed {
    /// One per desired resource, in manifest order.
    pub(super) checks: Vec<ResourceCheck>,
    /// Manifests that are not objects.
    pub(super) parse_errors: Vec<String>,
    /// Why the live state could not be read (the API server failed, could
    /// not be reached, or refused): the comparison means nothing then. The
    /// first failed read stops the others.
    pub(super) read_error: Option<String>,
    /// The failed read found the API server failing (not a refusal): the
    /// engine backs off.
    pub(super) unavailable: bool,
    /// Objects of the application still in the cluster that its desired
    /// state no longer has (Argo CD's `requiresPruning`). Reported, never a
    /// reason to sync by themselves: only a prune removes them.
    pub(super) extraneous: Vec<Extraneous>,
}

/// An object of the application that is in the cluster but no longer in
/// its desired state.
#[derive(Debug)]
pub(super) struct Extraneous {
    /// Sync `OutOfSync`, the live object's health.
    pub(super) check: ResourceCheck,
    /// The live object opts out of the application's sync status
    /// (`argocd.argoproj.io/compare-options: IgnoreExtraneous`).
    pub(super) ignored: bool,
}

/// The annotation whose `IgnoreExtraneous` option keeps an extraneous object
/// out of the application's sync status.
const COMPARE_OPTIONS_ANNOTATION: &str = "argocd.argoproj.io/compare-options";

/// Whether `live` carries the `IgnoreExtraneous` compare option.
fn ignores_extraneous(live: &Value) -> bool {
    live.pointer("/metadata/annotations")
        .and_then(|a| a.get(COMPARE_OPTIONS_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|v| v.split(',').any(|o| o.trim() == "IgnoreExtraneous"))
}

/// A check of an object that was not read.
fn unread(key: ObjectKey, message: String) -> ResourceCheck {
    ResourceCheck {
        key,
        sync: SyncStatus::Unknown,
        health: Health {
            status: HealthStatus::Unknown,
            message: String::new(),
        },
        message,
        drift: Vec::new(),
        shared_with: None,
    }
}

impl Engine {
    /// Reads the live state of every desired object and compares it with
    /// what the agent applies.
    pub(super) async fn check(&self, b: &Bundle) -> Observed {
        // Slots keep manifest order; resolved objects are read in groups.
        enum Slot {
            Done(ResourceCheck),
            Pending(ObjectKey, Resolved, Value),
        }
        let mut slots = Vec::new();
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        let mut read_error: Option<String> = None;
        let mut unavailable = false;
        for parsed in object::parse_manifests(&b.manifests) {
            let obj = match parsed {
                Ok(o) => o,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            // Hooks and skipped objects are not part of sync status.
            if !is_resource(&obj) {
                continue;
            }
            let Ok(mut key) = ObjectKey::of(&obj, 0) else {
                continue;
            };
            // Once a read failed, kinds are only looked up in the cache.
            let resolved = match read_error {
                None => self.cluster.resolve(&key).await,
                Some(_) => self.cluster.resolved(&key).ok_or_else(|| {
                    crate::cluster::ClusterError::Discovery {
                        group: key.group.clone(),
                        version: key.version.clone(),
                        kind: key.kind.clone(),
                        message: "not read".to_owned(),
                        code: None,
                    }
                }),
            };
            let resolved = match resolved {
                Ok(r) => r,
                Err(e) => {
                    if key.namespace.is_empty() {
                        key.namespace.clone_from(&b.namespace);
                    }
                    // A kind the cluster does not serve means the object
                    // is missing; not reaching the cluster means we do not
                    // know.
                    if e.is_unknown_kind() {
                        slots.push(Slot::Done(ResourceCheck {
                            key,
                            sync: SyncStatus::OutOfSync,
                            health: Health::missing(),
                            message: e.to_string(),
                            drift: Vec::new(),
                            shared_with: None,
                        }));
                    } else {
                        if read_error.is_none() {
                            read_error = Some(e.to_string());
                            unavailable = e.is_unavailable();
                            slots.push(Slot::Done(unread(key, e.to_string())));
                        } else {
                            slots.push(Slot::Done(unread(key, String::new())));
                        }
                    }
                    continue;
                }
            };
            self.cluster.watch_kind(&key, &resolved);
            let desired = object::prepare(obj, &b.name, &b.namespace, resolved.namespaced);
            key.namespace = namespace_of(&desired);
            if !seen.insert(key.clone()) {
                continue;
            }
            slots.push(Slot::Pending(key, resolved, desired));
        }
        // One LIST (by the application's label) per kind and namespace with
        // several objects instead of one GET each.
        let mut groups: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
        for slot in &slots {
            if let Slot::Pending(key, _, _) = slot {
                *groups.entry(group_of(key)).or_default() += 1;
            }
        }
        let mut listed: HashMap<(String, String, String, String), HashMap<String, Value>> =
            HashMap::new();
        let selector = format!("{}={}", object::APP_LABEL, b.name);
        for slot in &slots {
            let Slot::Pending(key, resolved, _) = slot else {
                continue;
            };
            let group = group_of(key);
            if read_error.is_some()
                || groups.get(&group).copied().unwrap_or(0) < 2
                || listed.contains_key(&group)
            {
                continue;
            }
            match self.cluster.list(resolved, &key.namespace, &selector).await {
                Ok(items) => {
                    let by_name = items
                        .into_iter()
                        .filter_map(|o| {
                            let name = o.pointer("/metadata/name")?.as_str()?.to_owned();
                            Some((name, o))
                        })
                        .collect();
                    listed.insert(group, by_name);
                }
                Err(e) => {
                    unavailable = e.is_unavailable();
                    read_error = Some(e.to_string());
                }
            }
        }
        let mut checks = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::Done(c) => checks.push(c),
                Slot::Pending(key, _, _) if read_error.is_some() => {
                    checks.push(unread(key, String::new()));
                }
                Slot::Pending(key, resolved, desired) => {
                    let live = match listed
                        .get_mut(&group_of(&key))
                        .and_then(|m| m.remove(&key.name))
                    {
                        Some(live) => Ok(Some(live)),
                        // Not listed: absent, or without our label (another
                        // application's, or not yet adopted); read it.
                        None => self.cluster.get(&resolved, &key).await,
                    };
                    match live {
                        Err(e) => {
                            unavailable = e.is_unavailable();
                            read_error = Some(e.to_string());
                            checks.push(unread(key, e.to_string()));
                        }
                        Ok(live) => checks.push(self.check_one(b, key, live, &desired)),
                    }
                }
            }
        }
        let mut extraneous = Vec::new();
        if read_error.is_none() {
            match self.extraneous(b, &checks).await {
                Ok(found) => extraneous = found,
                Err(e) => {
                    unavailable = e.is_unavailable();
                    read_error = Some(e.to_string());
                }
            }
        }
        Observed {
            checks,
            parse_errors: errors,
            read_error,
            unavailable,
            extraneous,
        }
    }

    /// The objects of the inventory of `b` that its desired state no longer
    /// has and that are still in the cluster, tracked by this application
    /// (an object another application took over is not ours to prune).
    async fn extraneous(
        &self,
        b: &Bundle,
        checks: &[ResourceCheck],
    ) -> Result<Vec<Extraneous>, crate::cluster::ClusterError> {
        let stale = self.stale_objects(b, checks, &BTreeSet::new()).await;
        let mut found = Vec::new();
        for key in stale {
            let resolved = match self.cluster.resolve(&key).await {
                Ok(r) => r,
                // A kind the cluster no longer serves holds no object.
                Err(e) if e.is_unknown_kind() => continue,
                Err(e) => return Err(e),
            };
            let Some(live) = self.cluster.get(&resolved, &key).await? else {
                continue;
            };
            if object::tracking_app(&live) != Some(b.name.as_str()) {
                continue;
            }
            found.push(Extraneous {
                ignored: ignores_extraneous(&live),
                check: ResourceCheck {
                    key,
                    sync: SyncStatus::OutOfSync,
                    health: self.health.assess_for_app(&live),
                    message: "requires pruning".to_owned(),
                    drift: Vec::new(),
                    shared_with: None,
                },
            });
        }
        Ok(found)
    }

    fn check_one(
        &self,
        b: &Bundle,
        key: ObjectKey,
        live: Option<Value>,
        desired: &Value,
    ) -> ResourceCheck {
        match live {
            None => ResourceCheck {
                key,
                sync: SyncStatus::OutOfSync,
                health: Health::missing(),
                message: String::new(),
                drift: Vec::new(),
                shared_with: None,
            },
            Some(live) => {
                // Another application's object keeps its tracking when
                // this one applies it: compare it so.
                let shared_desired;
                let desired = if object::tracking_app(&live).is_some_and(|a| a != b.name) {
                    shared_desired = object::keep_tracking_of(desired.clone(), &live);
                    &shared_desired
                } else {
                    desired
                };
                let ignore = ignored_paths(b, &key, &live);
                let stripped = crate::jq::normalized(&b.ignore_differences, &key, desired, &live);
                let stripped = match stripped {
                    Ok(s) => s,
                    Err(e) => {
                        return ResourceCheck {
                            key,
                            sync: SyncStatus::Unknown,
                            health: self.health.assess_for_app(&live),
                            message: format!("ignoreDifferences: {e}"),
                            drift: Vec::new(),
                            shared_with: None,
                        };
                    }
                };
                let (d, l) = stripped.as_ref().map_or((desired, &live), |(d, l)| (d, l));
                let drift: Vec<String> = drift::diff(d, l, &ignore)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let health = self.health.assess_for_app(&live);
                let shared_with = object::tracking_app(&live)
                    .filter(|owner| *owner != b.name)
                    .map(str::to_owned);
                let message = match &shared_with {
                    Some(owner) => format!("also managed by application {owner}"),
                    None => health.message.clone(),
                };
                ResourceCheck {
                    sync: if drift.is_empty() {
                        SyncStatus::Synced
                    } else {
                        SyncStatus::OutOfSync
                    },
                    message,
                    health,
                    key,
                    drift,
                    shared_with,
                }
            }
        }
    }
}

/// The objects of an application whose live state differs from what the
/// agent applies (missing ones with an empty `live`), for the hub's diff
/// request. Live objects are shown without `managedFields`; Secret values
/// are masked.
pub async fn diff_app(cluster: &Cluster, b: &Bundle) -> Result<Vec<ResourceDiff>, String> {
    if !b.render_error.is_empty() {
        return Err(format!("render error: {}", b.render_error));
    }
    let mut out = Vec::new();
    for parsed in object::parse_manifests(&b.manifests) {
        let obj = parsed.map_err(|e| e.to_string())?;
        if !is_resource(&obj) {
            continue;
        }
        let Ok(mut key) = ObjectKey::of(&obj, 0) else {
            continue;
        };
        let (desired, live) = match cluster.resolve(&key).await {
            Ok(r) => {
                let desired = object::prepare(obj, &b.name, &b.namespace, r.namespaced);
                key.namespace = namespace_of(&desired);
                let live = cluster.get(&r, &key).await.map_err(|e| e.to_string())?;
                (desired, live)
            }
            Err(_) => (obj, None),
        };
        let differs = match &live {
            None => true,
            Some(live) => {
                let ignore = ignored_paths(b, &key, live);
                match crate::jq::normalized(&b.ignore_differences, &key, &desired, live)? {
                    Some((d, l)) => !drift::diff(&d, &l, &ignore).is_empty(),
                    None => !drift::diff(&desired, live, &ignore).is_empty(),
                }
            }
        };
        if differs {
            let (desired, live) = crate::redact::secret_pair(&desired, live.as_ref());
            let live = live.map(|mut l| {
                if let Some(m) = l.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("managedFields");
                }
                l
            });
            out.push(ResourceDiff {
                key: Some(key.to_proto()),
                live: live.map(|l| l.to_string()).unwrap_or_default(),
                desired: desired.to_string(),
            });
        }
    }
    Ok(out)
}

/// Whether a manifest is an ordinary resource (not a hook, not skipped).
fn is_resource(obj: &Value) -> bool {
    matches!(crate::hooks::role(obj), Ok(crate::hooks::Role::Resource))
}

/// What `ignoreDifferences` excludes for one object: its JSON pointers and
/// the fields owned by its `managedFieldsManagers`.
pub(super) fn ignored_paths(b: &Bundle, key: &ObjectKey, live: &Value) -> Vec<String> {
    let entries = &b.ignore_differences;
    let mut ignore =
        drift::ignored_pointers(entries, &key.group, &key.kind, &key.namespace, &key.name);
    let managers =
        drift::ignored_managers(entries, &key.group, &key.kind, &key.namespace, &key.name);
    if !managers.is_empty() {
        ignore.extend(drift::managed_paths(live, &managers));
    }
    ignore
}

/// Objects read together: same group, version, kind and namespace.
pub(super) fn group_of(key: &ObjectKey) -> (String, String, String, String) {
    (
        key.group.clone(),
        key.version.clone(),
        key.kind.clone(),
        key.namespace.clone(),
    )
}

pub(super) fn namespace_of(obj: &Value) -> String {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}
