//! Each application's inventory of applied objects, kept in the cluster as
//! well as in the local cache, so a fresh agent on a new disk still prunes
//! correctly (and finds applications removed while it was away).
//!
//! One ConfigMap per application, `flotilla-inventory-<app>` in the
//! inventory namespace (default `flotilla-system`), labelled
//! `flotilla.dev/inventory: "true"`, with data `app`, `prune` and `objects`
//! (a JSON list of object keys).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::object::ObjectKey;

/// Label on every inventory ConfigMap.
pub const INVENTORY_LABEL: &str = "flotilla.dev/inventory";
/// Default namespace of inventory ConfigMaps.
pub const DEFAULT_NAMESPACE: &str = "flotilla-system";

/// An inventory read back from the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInventory {
    /// The application.
    pub app: String,
    /// Whether its last policy had prune.
    pub prune: bool,
    /// Objects applied for it.
    pub objects: Vec<ObjectKey>,
}

/// Reads and writes inventory ConfigMaps.
#[derive(Debug)]
pub struct Inventory {
    namespace: String,
    /// The uid of the inventory namespace as last seen; `None` until it
    /// is known to exist (or after a write found it gone).
    namespace_uid: Mutex<Option<String>>,
    /// The namespace was found missing or replaced since the engine last
    /// asked: the inventories it held are gone.
    lost: AtomicBool,
}

fn key(kind: &str, version: &str, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        group: String::new(),
        version: version.to_owned(),
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// The ConfigMap holding an application's inventory (pure, for tests).
#[must_use]
pub fn config_map(namespace: &str, app: &str, prune: bool, objects: &[ObjectKey]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("flotilla-inventory-{app}"),
            "namespace": namespace,
            "labels": {INVENTORY_LABEL: "true"},
        },
        "data": {
            "app": app,
            "prune": prune.to_string(),
            "objects": serde_json::to_string(objects).unwrap_or_else(|_| "[]".to_owned()),
        },
    })
}

/// Reads an inventory ConfigMap; `None` when it is not one.
#[must_use]
pub fn parse(cm: &Value) -> Option<StoredInventory> {
    let data = cm.get("data")?;
    let field = |f: &str| data.get(f).and_then(Value::as_str);
    Some(StoredInventory {
        app: field("app")?.to_owned(),
        prune: field("prune") == Some("true"),
        objects: serde_json::from_str(field("objects").unwrap_or("[]")).ok()?,
    })
}

impl Inventory {
    /// Inventories in `namespace`.
    #[must_use]
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            namespace_uid: Mutex::new(None),
            lost: AtomicBool::new(false),
        }
    }

    /// The inventory namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn known_uid(&self) -> Option<String> {
        self.namespace_uid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_uid(&self, uid: Option<String>) {
        *self
            .namespace_uid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = uid;
    }

    /// Makes sure the inventory namespace exists, creating it when it does
    /// not. When it did not exist, or is not the one seen before, the
    /// inventories it held are gone: [`Inventory::take_lost`] says so
    /// once.
    ///
    /// # Errors
    /// When the API server cannot be asked or refuses.
    pub async fn check_namespace(&self, cluster: &Cluster) -> Result<(), String> {
        let ns = key("Namespace", "v1", "", &self.namespace);
        let r = cluster.resolve(&ns).await.map_err(|e| e.to_string())?;
        let known = self.known_uid();
        let mut created = false;
        let live = match cluster.get(&r, &ns).await.map_err(|e| e.to_string())? {
            Some(live) => live,
            None => {
                created = true;
                let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}});
                cluster
                    .apply(&r, &ns, &obj)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let uid = live
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if created || (known.is_some() && known != uid) {
            self.lost.store(true, Ordering::Relaxed);
        }
        self.set_uid(uid);
        Ok(())
    }

    /// Whether the inventory namespace was found missing or replaced and
    /// the engine has not been told yet.
    #[must_use]
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Whether the inventory namespace was found missing or replaced since
    /// the last call.
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::Relaxed)
    }

    /// Makes the next [`Inventory::take_lost`] true (an inventory could
    /// not be written back).
    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    fn cm_key(&self, app: &str) -> ObjectKey {
        key(
            "ConfigMap",
            "v1",
            &self.namespace,
            &format!("flotilla-inventory-{app}"),
        )
    }

    /// Writes an application's inventory, creating the inventory
    /// namespace first when it is not known to exist, and again when a
    /// write finds it gone (a wiped cluster).
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn store(
        &self,
        cluster: &Cluster,
        app: &str,
        prune: bool,
        objects: &[ObjectKey],
    ) -> Result<(), String> {
        if self.known_uid().is_none() {
            self.check_namespace(cluster).await?;
        }
        let cm = self.cm_key(app);
        let r = cluster.resolve(&cm).await.map_err(|e| e.to_string())?;
        let obj = config_map(&self.namespace, app, prune, objects);
        match cluster.apply(&r, &cm, &obj).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => {
                self.set_uid(None);
                self.check_namespace(cluster).await?;
                cluster
                    .apply(&r, &cm, &obj)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Reads an application's inventory.
    ///
    /// # Errors
    /// When the API server cannot be asked.
    pub async fn load(
        &self,
        cluster: &Cluster,
        app: &str,
    ) -> Result<Option<StoredInventory>, String> {
        let cm = self.cm_key(app);
        let r = cluster.resolve(&cm).await.map_err(|e| e.to_string())?;
        Ok(cluster
            .get(&r, &cm)
            .await
            .map_err(|e| e.to_string())?
            .as_ref()
            .and_then(parse))
    }

    /// Every stored inventory.
    ///
    /// # Errors
    /// When the API server cannot be asked.
    pub async fn list(&self, cluster: &Cluster) -> Result<Vec<StoredInventory>, String> {
        let cm = self.cm_key("x");
        let r = cluster.resolve(&cm).await.map_err(|e| e.to_string())?;
        let items = cluster
            .list(&r, &self.namespace, &format!("{INVENTORY_LABEL}=true"))
            .await
            .map_err(|e| e.to_string())?;
        Ok(items.iter().filter_map(parse).collect())
    }

    /// Deletes an application's inventory.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn remove(&self, cluster: &Cluster, app: &str) -> Result<(), String> {
        let cm = self.cm_key(app);
        let r = cluster.resolve(&cm).await.map_err(|e| e.to_string())?;
        cluster.delete(&r, &cm).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_map_round_trips() {
        let objects = vec![
            key("ConfigMap", "v1", "web", "c"),
            key("Namespace", "v1", "", "web"),
        ];
        let cm = config_map("flotilla-system", "guestbook", true, &objects);
        assert_eq!(cm["metadata"]["name"], "flotilla-inventory-guestbook");
        assert_eq!(
            parse(&cm),
            Some(StoredInventory {
                app: "guestbook".into(),
                prune: true,
                objects
            })
        );
        assert_eq!(parse(&json!({"data": {}})), None);
    }
}
