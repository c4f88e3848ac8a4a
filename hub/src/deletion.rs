//! What deleting an Application does to its objects, as in Argo CD.
//!
//! Argo CD deletes an application's objects only when the Application
//! carries the finalizer `resources-finalizer.argocd.argoproj.io` when it is
//! deleted: foreground propagation, or the propagation its
//! `/foreground` / `/background` form names. Without it the objects stay
//! as they are, tracking label and annotation included. `argocd app
//! delete` adds the finalizer first (`--cascade`, the default) or removes
//! it (`--cascade=false`); an ApplicationSet gives the applications it
//! generates the finalizer unless `preserveResourcesOnDeletion` is set or
//! the template names finalizers of its own.
//!
//! Flotilla removes a deleted Application from the hub at once and tells
//! each cluster, in its desired state (`DesiredState.deletions`), what to do
//! with the objects: the [`Propagation`] decided here. Which deletions
//! the API refuses is decided here too ([`refusal`]).

use serde::{Deserialize, Serialize};

use crate::model::Application;
use crate::store::AppRecord;

/// The finalizer that makes a deletion delete the objects (foreground).
pub const RESOURCES_FINALIZER: &str = "resources-finalizer.argocd.argoproj.io";
/// [`RESOURCES_FINALIZER`] with foreground propagation, explicitly.
pub const FOREGROUND_FINALIZER: &str = "resources-finalizer.argocd.argoproj.io/foreground";
/// [`RESOURCES_FINALIZER`] with background propagation.
pub const BACKGROUND_FINALIZER: &str = "resources-finalizer.argocd.argoproj.io/background";

/// What happens to an application's objects when it is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Delete each object with `propagationPolicy: Foreground`: it goes
    /// after the objects it owns.
    Foreground,
    /// Delete each object with `propagationPolicy: Background`: it goes at
    /// once, the garbage collector deletes what it owned.
    Background,
    /// Leave the objects (not cascading).
    Orphan,
}

impl Propagation {
    /// The wire and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Foreground => "foreground",
            Self::Background => "background",
            Self::Orphan => "orphan",
        }
    }

    /// Whether the objects are deleted.
    pub fn cascades(self) -> bool {
        self != Self::Orphan
    }
}

impl std::fmt::Display for Propagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deletion a cluster's agent has yet to acknowledge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingDeletion {
    /// The cluster's first generation without the application.
    pub generation: u64,
    pub propagation: Propagation,
}

/// A deletion request that cannot be carried out as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeletionError {
    /// `--propagation-policy` with `--cascade=false` (Argo CD's message).
    #[error("cannot set propagation policy when cascading is disabled")]
    PolicyWithoutCascade,
    /// Neither foreground nor background.
    #[error("invalid propagation policy {0:?}: expected foreground or background")]
    InvalidPolicy(String),
}

/// The propagation a resources finalizer names, `None` for any other
/// finalizer.
fn finalizer_propagation(finalizer: &str) -> Option<Propagation> {
    match finalizer {
        RESOURCES_FINALIZER | FOREGROUND_FINALIZER => Some(Propagation::Foreground),
        BACKGROUND_FINALIZER => Some(Propagation::Background),
        _ => None,
    }
}

/// What `app`'s finalizers say: the first resources finalizer decides (as
/// Argo CD reads them); without one the objects are orphaned.
pub fn from_finalizers(app: &Application) -> Propagation {
    app.metadata
        .finalizers
        .iter()
        .find_map(|f| finalizer_propagation(f))
        .unwrap_or(Propagation::Orphan)
}

fn parse_policy(policy: &str) -> Result<Option<Propagation>, DeletionError> {
    match policy.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "foreground" => Ok(Some(Propagation::Foreground)),
        "background" => Ok(Some(Propagation::Background)),
        _ => Err(DeletionError::InvalidPolicy(policy.to_owned())),
    }
}

/// What `HubApi.DeleteApplication` does with `cascade` and
/// `propagation_policy` (`argocd app delete`):
///
/// - cascade (the CLI's default): the objects go, with the policy asked
///   for, else the one the application's own resources finalizer names,
///   else foreground. (Argo CD keeps an existing `/background` finalizer
///   ahead of the one it adds; here an explicit policy wins.)
/// - `cascade` false: the objects stay; a policy is refused.
/// - `cascade` unset (clients older than the field): the application's
///   resources finalizer decides, else, as before the field existed, its
///   `syncPolicy.automated.prune` (background deletion); a policy given
///   without `cascade` means cascade, as in Argo CD.
///
/// # Errors
/// A policy with cascade off, or an unknown policy.
pub fn for_request(
    app: &Application,
    cascade: Option<bool>,
    policy: &str,
) -> Result<Propagation, DeletionError> {
    let asked = parse_policy(policy)?;
    match (cascade, asked) {
        (Some(false), Some(_)) => Err(DeletionError::PolicyWithoutCascade),
        (Some(false), None) => Ok(Propagation::Orphan),
        (_, Some(p)) => Ok(p),
        (Some(true), None) => Ok(match from_finalizers(app) {
            Propagation::Orphan => Propagation::Foreground,
            p => p,
        }),
        (None, None) => Ok(match from_finalizers(app) {
            Propagation::Orphan if prunes(app) => Propagation::Background,
            p => p,
        }),
    }
}

fn prunes(app: &Application) -> bool {
    app.spec
        .sync_policy
        .as_ref()
        .and_then(|p| p.automated.as_ref())
        .is_some_and(|a| a.prune)
}

/// An application generated by an ApplicationSet, deleted because the set
/// no longer generates it or was deleted: the template's finalizers decide
/// when it names any; otherwise Argo CD's ApplicationSet controller gave it
/// the resources finalizer unless the set has `preserveResourcesOnDeletion`.
pub fn for_generated(app: &Application, preserve: bool) -> Propagation {
    if !app.metadata.finalizers.is_empty() {
        return from_finalizers(app);
    }
    if preserve {
        Propagation::Orphan
    } else {
        Propagation::Foreground
    }
}

/// Why `HubApi.DeleteApplication` refuses to delete `rec`, if it does: an
/// application declared in a repository's apps path, or generated by an
/// ApplicationSet, would be declared again on the hub's next pass (Argo
/// CD's ApplicationSet controller recreates a deleted application at once),
/// so a deletion would at best do nothing and at worst delete and recreate
/// every object. A child of an app of apps may be deleted: its parent
/// decides whether it comes back (with `selfHeal`, on its next pass), as
/// the parent Application does in Argo CD.
pub fn refusal(rec: &AppRecord) -> Option<String> {
    let name = &rec.app.metadata.name;
    if let Some(set) = rec.origin.strip_prefix("appset:") {
        return Some(format!(
            "application {name} is managed by ApplicationSet {set}; change the set's generators or delete the set (its preserveResourcesOnDeletion decides about the objects)"
        ));
    }
    let declared = rec.origin.strip_prefix("git:")?;
    // `git:<repository URL>:<file>`; the URL may hold colons, the file not.
    let (url, file) = declared.rsplit_once(':').unwrap_or((declared, ""));
    Some(format!(
        "application {name} is managed by repository {} ({file}); remove it from Git",
        crate::source::redact_url(url)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(finalizers: &[&str], prune: bool) -> Application {
        let policy = if prune {
            serde_json::json!({"automated": {"prune": true}})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "finalizers": finalizers},
            "spec": {"syncPolicy": policy},
        }))
        .unwrap()
    }

    #[test]
    fn finalizers_decide_like_argo_cd() {
        use Propagation::*;
        assert_eq!(from_finalizers(&app(&[], true)), Orphan);
        assert_eq!(
            from_finalizers(&app(&[RESOURCES_FINALIZER], false)),
            Foreground
        );
        assert_eq!(
            from_finalizers(&app(&[FOREGROUND_FINALIZER], false)),
            Foreground
        );
        assert_eq!(
            from_finalizers(&app(&[BACKGROUND_FINALIZER], false)),
            Background
        );
        // The first resources finalizer wins; others are not ours.
        assert_eq!(
            from_finalizers(&app(
                &[
                    "example.com/other",
                    BACKGROUND_FINALIZER,
                    RESOURCES_FINALIZER
                ],
                false
            )),
            Background
        );
        assert_eq!(from_finalizers(&app(&["example.com/other"], false)), Orphan);
    }

    #[test]
    fn delete_requests() {
        use Propagation::*;
        let plain = app(&[], false);
        let pruning = app(&[], true);
        let bg = app(&[BACKGROUND_FINALIZER], false);
        type Case<'a> = (
            &'a Application,
            Option<bool>,
            &'a str,
            Result<Propagation, DeletionError>,
        );
        let cases: Vec<Case<'_>> = vec![
            (&plain, Some(true), "", Ok(Foreground)),
            (&plain, Some(true), "Background", Ok(Background)),
            (&bg, Some(true), "", Ok(Background)),
            (&bg, Some(true), "foreground", Ok(Foreground)),
            (&bg, Some(false), "", Ok(Orphan)),
            (
                &plain,
                Some(false),
                "background",
                Err(DeletionError::PolicyWithoutCascade),
            ),
            (
                &plain,
                Some(true),
                "orphan",
                Err(DeletionError::InvalidPolicy("orphan".into())),
            ),
            // Old clients: as before, prune decides unless a finalizer does.
            (&plain, None, "", Ok(Orphan)),
            (&pruning, None, "", Ok(Background)),
            (&bg, None, "", Ok(Background)),
            (&plain, None, "foreground", Ok(Foreground)),
        ];
        for (a, cascade, policy, want) in cases {
            assert_eq!(
                for_request(a, cascade, policy),
                want,
                "{cascade:?} {policy:?} {:?}",
                a.metadata.finalizers
            );
        }
    }

    #[test]
    fn generated_applications_cascade_unless_preserved() {
        use Propagation::*;
        assert_eq!(for_generated(&app(&[], false), false), Foreground);
        assert_eq!(for_generated(&app(&[], true), true), Orphan);
        assert_eq!(
            for_generated(&app(&[BACKGROUND_FINALIZER], false), true),
            Background
        );
        assert_eq!(
            for_generated(&app(&["example.com/x"], false), false),
            Orphan
        );
    }

    #[test]
    fn declared_applications_are_refused_with_where_to_change_them() {
        let rec = |origin: &str| AppRecord {
            app: app(&[], false),
            origin: origin.into(),
            revision: String::new(),
            error: String::new(),
        };
        assert_eq!(refusal(&rec("api")), None);
        assert_eq!(refusal(&rec("app:root")), None);
        assert_eq!(
            refusal(&rec(
                "git:https://u:p@git.example:8443/cfg.git:apps/web.yaml"
            ))
            .as_deref(),
            Some(
                "application web is managed by repository https://***@git.example:8443/cfg.git (apps/web.yaml); remove it from Git"
            )
        );
        let set = refusal(&rec("appset:guestbook")).unwrap();
        assert!(
            set.starts_with("application web is managed by ApplicationSet guestbook;"),
            "{set}"
        );
    }
}
