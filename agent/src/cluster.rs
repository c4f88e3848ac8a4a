//! The thin shell over the Kubernetes API: kind resolution with a discovery
//! cache, server-side apply, get and delete of dynamic objects.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{self, Scope as KubeScope};
use serde_json::Value;

use crate::object::{APP_LABEL, FIELD_MANAGER, ObjectKey};
use crate::plan::Scope;

/// Errors talking to the cluster, with the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster does not serve the object's kind.
    #[error("{group}/{version} {kind} is not served by the cluster: {source}")]
    UnknownKind {
        /// API group.
        group: String,
        /// API version.
        version: String,
        /// Kind.
        kind: String,
        /// The discovery error.
        #[source]
        source: kube::Error,
    },
    /// The cluster could not be asked which resources it serves.
    #[error("discovering {group}/{version} {kind}: {message}")]
    Discovery {
        /// API group.
        group: String,
        /// API version.
        version: String,
        /// Kind.
        kind: String,
        /// The cause.
        message: String,
        /// The HTTP status of the API server's answer, when it answered
        /// with one.
        code: Option<u16>,
    },
    /// A create found the object there already.
    #[error("create {key}: already exists")]
    AlreadyExists {
        /// The object.
        key: String,
    },
    /// A request about an object failed.
    #[error("{action} {key}: {message}")]
    Request {
        /// What was attempted.
        action: &'static str,
        /// The object.
        key: String,
        /// The API server's message.
        message: String,
        /// The HTTP status of the API server's answer, when it answered
        /// with one.
        code: Option<u16>,
    },
}

/// A kind resolved to its API resource.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The resource (plural, group, version).
    pub resource: ApiResource,
    /// Whether objects of this kind live in a namespace.
    pub namespaced: bool,
}

type GvkKey = (String, String, String);

/// A Kubernetes client with a cache of resolved kinds.
pub struct Cluster {
    client: kube::Client,
    kinds: Mutex<HashMap<GvkKey, Resolved>>,
    watch: Option<Arc<Notify>>,
    watched: Mutex<HashSet<GvkKey>>,
}

impl ClusterError {
    /// Whether the error says something about the object (its kind is not
    /// served), rather than about reaching the cluster.
    #[must_use]
    pub fn is_unknown_kind(&self) -> bool {
        matches!(self, Self::UnknownKind { .. })
    }

    /// Whether the API server itself is failing: it could not be reached,
    /// or answered with a server error (5xx) or 429 Too Many Requests.
    /// Retrying soon is what would make it worse; a refusal (403, 422…)
    /// is an answer.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Request { code, .. } | Self::Discovery { code, .. } => {
                code.is_none_or(|c| c >= 500 || c == 429)
            }
            Self::UnknownKind { .. } | Self::AlreadyExists { .. } => false,
        }
    }

    /// Whether the API server answered 404 Not Found (e.g. the object's
    /// namespace does not exist).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Request {
                code: Some(404),
                ..
            }
        )
    }
}

impl Cluster {
    /// Wraps a client.
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            kinds: Mutex::new(HashMap::new()),
            watch: None,
            watched: Mutex::new(HashSet::new()),
        }
    }

    /// Wraps a client and watches every kind the agent manages, narrowed
    /// by the tracking label: any change to a tracked object wakes `notify`
    /// (drift shows up in moments rather than at the next periodic pass).
    #[must_use]
    pub fn with_watches(client: kube::Client, notify: Arc<Notify>) -> Self {
        Self {
            watch: Some(notify),
            ..Self::new(client)
        }
    }

    /// Whether changes to tracked objects are watched.
    #[must_use]
    pub fn watches_enabled(&self) -> bool {
        self.watch.is_some()
    }

    /// Starts the watch of a kind unless it runs already.
    pub fn watch_kind(&self, key: &ObjectKey, r: &Resolved) {
        let Some(notify) = self.watch.clone() else {
            return;
        };
        let fresh = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(Self::gvk_key(key));
        if !fresh {
            return;
        }
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &r.resource);
        let kind = key.kind.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().labels(APP_LABEL);
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => notify.notify_one(),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(kind = %kind, error = %e, "watch interrupted"),
                }
            }
        });
    }

    fn kinds(&self) -> std::sync::MutexGuard<'_, HashMap<GvkKey, Resolved>> {
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn gvk_key(key: &ObjectKey) -> GvkKey {
        (key.group.clone(), key.version.clone(), key.kind.clone())
    }

    /// The scope of a kind as far as the cache knows, without asking.
    #[must_use]
    pub fn known_scope(&self, key: &ObjectKey) -> Scope {
        match self.kinds().get(&Self::gvk_key(key)) {
            Some(r) if r.namespaced => Scope::Namespaced,
            Some(_) => Scope::Cluster,
            None => Scope::Unknown,
        }
    }

    /// A kind as far as the cache knows it, without asking.
    #[must_use]
    pub fn resolved(&self, key: &ObjectKey) -> Option<Resolved> {
        self.kinds().get(&Self::gvk_key(key)).cloned()
    }

    /// Resolves a kind, asking the cluster when the cache does not know it
    /// (so kinds of a CRD applied a moment ago are found).
    ///
    /// # Errors
    /// When the cluster does not serve the kind or cannot be reached.
    pub async fn resolve(&self, key: &ObjectKey) -> Result<Resolved, ClusterError> {
        let gvk_key = Self::gvk_key(key);
        if let Some(r) = self.kinds().get(&gvk_key) {
            return Ok(r.clone());
        }
        let gvk = GroupVersionKind::gvk(&key.group, &key.version, &key.kind);
        let (resource, caps) =
            discovery::pinned_kind(&self.client, &gvk)
                .await
                .map_err(|source| {
                    // The group/version is not served (404), or it is and has
                    // no such kind: the object's kind is unknown. Anything else
                    // (a 500, a refused connection) says nothing about the kind.
                    let unknown = match &source {
                        kube::Error::Api(s) => s.code == 404,
                        kube::Error::Discovery(_) => true,
                        _ => false,
                    };
                    if unknown {
                        ClusterError::UnknownKind {
                            group: key.group.clone(),
                            version: key.version.clone(),
                            kind: key.kind.clone(),
                            source,
                        }
                    } else {
                        ClusterError::Discovery {
                            group: key.group.clone(),
                            version: key.version.clone(),
                            kind: key.kind.clone(),
                            message: api_message(&source),
                            code: api_code(&source),
                        }
                    }
                })?;
        let resolved = Resolved {
            resource,
            namespaced: caps.scope == KubeScope::Namespaced,
        };
        self.kinds().insert(gvk_key, resolved.clone());
        Ok(resolved)
    }

    fn api(&self, r: &Resolved, namespace: &str) -> Api<DynamicObject> {
        if r.namespaced {
            Api::namespaced_with(self.client.clone(), namespace, &r.resource)
        } else {
            Api::all_with(self.client.clone(), &r.resource)
        }
    }

    /// Server-side applies `obj` (already prepared) under the agent's field
    /// manager, taking over conflicting fields.
    ///
    /// # Errors
    /// When the API server refuses the object.
    pub async fn apply(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        obj: &Value,
    ) -> Result<Value, ClusterError> {
        self.server_side_apply(r, key, obj, false).await
    }

    /// [`Cluster::apply`] with `dryRun=All`: the API server validates,
    /// defaults and merges as for a real apply and returns the object it
    /// would store, but changes nothing.
    ///
    /// # Errors
    /// When the API server refuses the object.
    pub async fn apply_dry_run(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        obj: &Value,
    ) -> Result<Value, ClusterError> {
        self.server_side_apply(r, key, obj, true).await
    }

    async fn server_side_apply(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        obj: &Value,
        dry_run: bool,
    ) -> Result<Value, ClusterError> {
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = dry_run;
        let live = self
            .api(r, &key.namespace)
            .patch(&key.name, &params, &Patch::Apply(obj))
            .await
            .map_err(|e| request_error("apply", key, &e))?;
        serde_json::to_value(live).map_err(|e| ClusterError::Request {
            action: "apply",
            key: key.to_string(),
            message: e.to_string(),
            code: None,
        })
    }

    /// Creates `obj` (POST): the API server generates the name of an object
    /// with only `metadata.generateName`. Returns the created object.
    ///
    /// # Errors
    /// [`ClusterError::AlreadyExists`] when an object of that name exists;
    /// otherwise when the API server refuses.
    pub async fn create(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        obj: &Value,
    ) -> Result<Value, ClusterError> {
        self.create_with(r, key, obj, false).await
    }

    /// [`Cluster::create`] with `dryRun=All`.
    ///
    /// # Errors
    /// As [`Cluster::create`].
    pub async fn create_dry_run(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        obj: &Value,
    ) -> Result<Value, ClusterError> {
        self.create_with(r, key, obj, true).await
    }

    async fn create_with(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        obj: &Value,
        dry_run: bool,
    ) -> Result<Value, ClusterError> {
        let data: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(|e| ClusterError::Request {
                action: "create",
                key: key.to_string(),
                message: e.to_string(),
                code: None,
            })?;
        let params = kube::api::PostParams {
            dry_run,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        let created = match self.api(r, &key.namespace).create(&params, &data).await {
            Ok(c) => c,
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                return Err(ClusterError::AlreadyExists {
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(request_error("create", key, &e)),
        };
        serde_json::to_value(created).map_err(|e| ClusterError::Request {
            action: "create",
            key: key.to_string(),
            message: e.to_string(),
            code: None,
        })
    }

    /// Reads a live object; `None` when it does not exist.
    ///
    /// # Errors
    /// When the API server cannot be asked.
    pub async fn get(&self, r: &Resolved, key: &ObjectKey) -> Result<Option<Value>, ClusterError> {
        let live = self
            .api(r, &key.namespace)
            .get_opt(&key.name)
            .await
            .map_err(|e| request_error("get", key, &e))?;
        live.map(serde_json::to_value)
            .transpose()
            .map_err(|e| ClusterError::Request {
                action: "get",
                key: key.to_string(),
                message: e.to_string(),
                code: None,
            })
    }

    /// Lists objects of a kind in a namespace by label selector.
    ///
    /// # Errors
    /// When the API server cannot be asked.
    pub async fn list(
        &self,
        r: &Resolved,
        namespace: &str,
        labels: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        let params = kube::api::ListParams::default().labels(labels);
        let list =
            self.api(r, namespace)
                .list(&params)
                .await
                .map_err(|e| ClusterError::Request {
                    action: "list",
                    key: format!("{} in {namespace}", r.resource.kind),
                    message: api_message(&e),
                    code: api_code(&e),
                })?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect())
    }

    /// Deletes an object (background propagation); absent is fine.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn delete(&self, r: &Resolved, key: &ObjectKey) -> Result<(), ClusterError> {
        self.delete_with(r, key, false).await
    }

    /// [`Cluster::delete`] with `dryRun=All`: checked by the API server,
    /// nothing deleted.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn delete_dry_run(&self, r: &Resolved, key: &ObjectKey) -> Result<(), ClusterError> {
        self.delete_with(r, key, true).await
    }

    /// Deletes an object with `propagationPolicy: Foreground` (it goes
    /// after the objects it owns) or `Background`; absent is fine.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn delete_propagating(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        foreground: bool,
    ) -> Result<(), ClusterError> {
        let params = if foreground {
            DeleteParams::foreground()
        } else {
            DeleteParams::background()
        };
        self.delete_params(r, key, &params).await
    }

    async fn delete_with(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        dry_run: bool,
    ) -> Result<(), ClusterError> {
        let params = DeleteParams {
            dry_run,
            ..DeleteParams::background()
        };
        self.delete_params(r, key, &params).await
    }

    async fn delete_params(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        params: &DeleteParams,
    ) -> Result<(), ClusterError> {
        match self.api(r, &key.namespace).delete(&key.name, params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(request_error("delete", key, &e)),
        }
    }
}

fn request_error(action: &'static str, key: &ObjectKey, e: &kube::Error) -> ClusterError {
    ClusterError::Request {
        action,
        key: key.to_string(),
        message: api_message(e),
        code: api_code(e),
    }
}

/// The API server's message, or the client's error.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failing_api_server_is_unavailable() {
        let request = |code| ClusterError::Request {
            action: "get",
            key: "v1/ConfigMap:web/c".into(),
            message: "m".into(),
            code,
        };
        assert!(request(None).is_unavailable());
        assert!(request(Some(500)).is_unavailable());
        assert!(request(Some(503)).is_unavailable());
        assert!(request(Some(429)).is_unavailable());
        assert!(!request(Some(403)).is_unavailable());
        assert!(!request(Some(422)).is_unavailable());
        assert!(request(Some(404)).is_not_found());
        assert!(!ClusterError::AlreadyExists { key: "k".into() }.is_unavailable());
    }
}
