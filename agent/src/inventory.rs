//! Each application's inventory of applied objects, kept in the cluster as
//! well as in the local cache, so a fresh agent on a new disk still prunes
//! correctly (and finds applications removed while it was away).
//!
//! One ConfigMap per application, `flotilla-inventory-<app>` in the
//! inventory namespace (default `flotilla-system`), labelled
//! `flotilla.dev/inventory: "true"`, with data `app`, `prune` and `objects`
//! (a JSON list of object keys).

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterError};
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
    /// Inventories were found missing since the engine last asked.
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
            lost: AtomicBool::new(false),
        }
    }

    /// The inventory namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Creates the inventory namespace when it does not exist. Asked only
    /// once a write found it missing: an agent whose RBAC covers only
    /// some namespaces may not read Namespaces at all.
    async fn create_namespace(&self, cluster: &Cluster) -> Result<(), ClusterError> {
        let ns = key("Namespace", "v1", "", &self.namespace);
        let r = cluster.resolve(&ns).await?;
        if cluster.get(&r, &ns).await?.is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}});
            cluster.apply(&r, &ns, &obj).await?;
        }
        Ok(())
    }

    /// Whether the inventory namespace was found missing (the inventories
    /// in it are gone) and the engine has not been told yet.
    #[must_use]
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Whether the inventory namespace was found missing since the last
    /// call.
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::Relaxed)
    }

    /// Makes the next [`Inventory::take_lost`] true: inventories are
    /// missing (one found gone, or one could not be written back).
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

    /// Writes an application's inventory. When the inventory namespace is
    /// missing (a wiped cluster, a first start) it is created and the
    /// write tried again; [`Inventory::lost`] then says the other
    /// inventories need writing again too.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn store(
        &self,
        cluster: &Cluster,
        app: &str,
        prune: bool,
        objects: &[ObjectKey],
    ) -> Result<(), ClusterError> {
        let cm = self.cm_key(app);
        let r = cluster.resolve(&cm).await?;
        let obj = config_map(&self.namespace, app, prune, objects);
        match cluster.apply(&r, &cm, &obj).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => {
                self.create_namespace(cluster).await?;
                self.mark_lost();
                cluster.apply(&r, &cm, &obj).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether an application's inventory ConfigMap exists.
    ///
    /// # Errors
    /// When the API server cannot be asked.
    pub async fn exists(&self, cluster: &Cluster, app: &str) -> Result<bool, ClusterError> {
        let cm = self.cm_key(app);
        let r = cluster.resolve(&cm).await?;
        Ok(cluster.get(&r, &cm).await?.is_some())
    }

    /// Reads an application's inventory.
    ///
    /// # Errors
    /// When the API server cannot be asked.
    pub async fn load(
        &self,
        cluster: &Cluster,
        app: &str,
    ) -> Result<Option<StoredInventory>, ClusterError> {
        let cm = self.cm_key(app);
        let r = cluster.resolve(&cm).await?;
        Ok(cluster.get(&r, &cm).await?.as_ref().and_then(parse))
    }

    /// Every stored inventory.
    ///
    /// # Errors
    /// When the API server cannot be asked.
    pub async fn list(&self, cluster: &Cluster) -> Result<Vec<StoredInventory>, ClusterError> {
        let cm = self.cm_key("x");
        let r = cluster.resolve(&cm).await?;
        let items = cluster
            .list(&r, &self.namespace, &format!("{INVENTORY_LABEL}=true"))
            .await?;
        Ok(items.iter().filter_map(parse).collect())
    }

    /// Deletes an application's inventory.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn remove(&self, cluster: &Cluster, app: &str) -> Result<(), ClusterError> {
        let cm = self.cm_key(app);
        let r = cluster.resolve(&cm).await?;
        cluster.delete(&r, &cm).await
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
