//! tenancy: the engine's side of the project check ([`crate::project`]):
//! an application with any object its project does not allow gets nothing
//! applied and nothing pruned, and a status naming each refused object.

use flotilla_proto::{AppCondition, AppStatus, ResourceStatus, SyncStatus};
use tracing::warn;

use super::Engine;
use crate::cache::CachedApp;
use crate::health::HealthStatus;
use crate::report::now_ms;

/// Argo CD's condition type for an application its project refuses.
const INVALID_SPEC: &str = "InvalidSpecError";

impl Engine {
    /// The status of `app` when its project refuses some of its objects
    /// (with any sync request answered as failed), or `None` when the
    /// project allows them all or the bundle carries no rules.
    pub(super) async fn refused_by_project(&mut self, app: &CachedApp) -> Option<AppStatus> {
        let b = &app.bundle;
        // Rules that refuse nothing (the `default` project) need no second
        // reading of the manifests on every pass.
        let rules = b
            .project_rules
            .as_ref()
            .filter(|r| !r.allows_everything())?;
        let desired = self.desired(b).await;
        // Scope from discovery; a kind the cluster does not know yet (a
        // custom resource of a CRD in the same bundle) by its namespace.
        let scoped = |key: &crate::object::ObjectKey,
                      resolved: &Result<crate::cluster::Resolved, String>| {
            resolved
                .as_ref()
                .map_or(!key.namespace.is_empty(), |r| r.namespaced)
        };
        let objects = desired
            .resources
            .iter()
            .map(|r| (&r.key, scoped(&r.key, &r.resolved)))
            .chain(
                desired
                    .hooks
                    .iter()
                    .map(|h| (&h.key, scoped(&h.key, &h.resolved))),
            );
        let refused = rules.refusals(objects);
        if refused.is_empty() {
            return None;
        }
        let message = format!(
            "{} object(s) not permitted in project {}; nothing applied: {}",
            refused.len(),
            rules.project,
            refused
                .iter()
                .map(|(k, why)| format!("{k}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        warn!(app = %b.name, project = %rules.project, "{message}");
        let operation = self.refuse_request(&b.name, &message);
        Some(AppStatus {
            name: b.name.clone(),
            revision: b.revision.clone(),
            digest: b.digest.clone(),
            sync: SyncStatus::OutOfSync as i32,
            health: HealthStatus::Unknown.to_proto() as i32,
            resources: refused
                .iter()
                .map(|(k, why)| ResourceStatus {
                    key: Some(k.to_proto()),
                    sync: SyncStatus::OutOfSync as i32,
                    health: HealthStatus::Unknown.to_proto() as i32,
                    message: why.clone(),
                    ..ResourceStatus::default()
                })
                .collect(),
            conditions: refused
                .iter()
                .map(|(k, why)| AppCondition {
                    r#type: INVALID_SPEC.to_owned(),
                    message: format!("{k}: {why}"),
                })
                .collect(),
            message,
            last_applied_ms: app.last_applied_ms,
            observed_ms: now_ms(),
            operation,
            requested_operation: self.apps.get(&b.name).and_then(|rt| rt.requested.clone()),
        })
    }
}
