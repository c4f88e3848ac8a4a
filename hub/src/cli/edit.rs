//! Applications as resources: `app get -o yaml|json` carries the
//! Application resource (`apiVersion`, `kind`, `metadata`, `spec`) that
//! `app create -f` takes back; `app create` says whether it created,
//! updated or left the application unchanged; `app set` and `app patch`
//! change the definition with a JSON merge patch (RFC 7386).

use anyhow::{Context as _, Result};
use serde_json::{Map, Value, json};

use super::exit::{CliError, usage};
use super::{Client, Global, app_json, print_out, status_err};
use flotilla_proto as pb;

/// The keys of an Application resource, in the order they are written.
const RESOURCE_KEYS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// Metadata the API server sets; not part of a definition.
const SERVER_METADATA: [&str; 7] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

/// The Application resource of `a` (from its stored definition), or
/// `None` when the hub sent none.
pub(super) fn resource(a: &pb::Application) -> Option<Value> {
    if a.manifest.trim().is_empty() {
        return None;
    }
    let doc: Value = serde_saphyr::from_str(&a.manifest).ok()?;
    doc.is_object().then(|| definition_of(doc))
}

/// Only the definition of an Application document: `apiVersion`, `kind`,
/// `metadata` (without what a server sets) and `spec`. Anything else
/// (`status`, Flotilla's status summary of `app get -o json`) is dropped,
/// so what `app get` printed goes back into `app create -f`.
pub(super) fn definition_of(doc: Value) -> Value {
    let Value::Object(mut all) = doc else {
        return doc;
    };
    let mut out = Map::new();
    for key in RESOURCE_KEYS {
        if let Some(mut v) = all.remove(key) {
            if key == "metadata"
                && let Some(m) = v.as_object_mut()
            {
                for k in SERVER_METADATA {
                    m.remove(k);
                }
            }
            out.insert(key.to_owned(), v);
        }
    }
    Value::Object(out)
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a
/// key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// What `app create` (or `set`/`patch`) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        }
    }
}

async fn existing(c: &mut Client, name: &str) -> Result<Option<pb::Application>> {
    match c
        .get_application(pb::GetApplicationRequest {
            name: name.to_owned(),
        })
        .await
    {
        Ok(a) => Ok(Some(a.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(status_err(s)),
    }
}

/// Sends `doc` (a definition) to the hub unless it equals what the hub
/// has; `upsert` replaces an existing application. Unchanged when the
/// definition the hub holds afterwards is the one it held before.
async fn put(c: &mut Client, doc: Value, upsert: bool) -> Result<(Outcome, pb::Application)> {
    let name = doc["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| usage("the Application has no metadata.name"))?
        .to_owned();
    let before = existing(c, &name).await?;
    if upsert
        && let Some(a) = &before
        && resource(a).as_ref() == Some(&doc)
    {
        return Ok((Outcome::Unchanged, a.clone()));
    }
    let a = c
        .create_application(pb::CreateApplicationRequest {
            manifest: serde_json::to_string(&doc)?,
            upsert,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    // The hub fills defaults (e.g. targetRevision HEAD): a definition
    // that differs only by them changes nothing.
    let outcome = match &before {
        None => Outcome::Created,
        Some(b) if resource(b).is_some() && resource(b) == resource(&a) => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    };
    Ok((outcome, a))
}

fn report(g: &Global, outcome: Outcome, a: &pb::Application) {
    let mut v = app_json(a);
    if let Some(o) = v.as_object_mut() {
        o.insert("result".into(), json!(outcome.word()));
    }
    print_out(g.output, v, || {
        format!("application {} {}\n", a.name, outcome.word())
    });
}

/// `flotilla app create -f FILE [--upsert]`.
pub(super) async fn create(g: &Global, c: &mut Client, text: &str, upsert: bool) -> Result<()> {
    let doc: Value = serde_saphyr::from_str(text)
        .map_err(|e| usage(format!("the Application is not valid YAML or JSON: {e}")))?;
    if !doc.is_object() {
        return Err(usage("the file does not hold one Application resource"));
    }
    let (outcome, a) = put(c, definition_of(doc), upsert).await?;
    report(g, outcome, &a);
    Ok(())
}

/// The definition of application `name`, to change.
async fn current(c: &mut Client, name: &str) -> Result<Value> {
    let a = existing(c, name)
        .await?
        .ok_or_else(|| CliError::NotFound(format!("application {name:?} not found")))?;
    resource(&a).ok_or_else(|| {
        anyhow::anyhow!("the hub sent no definition of application {name:?} (an older hub?)")
    })
}

/// Options of `flotilla app patch`.
#[derive(Debug, clap::Args)]
pub struct PatchArgs {
    /// The application.
    pub name: String,
    /// A JSON merge patch (RFC 7386) of the Application resource, e.g.
    /// '{"spec":{"source":{"targetRevision":"v2"}}}' (`null` removes a
    /// field).
    #[arg(long)]
    pub patch: String,
    /// Patch type: only `merge` (JSON merge patch).
    #[arg(long = "type", default_value = "merge", value_name = "merge")]
    pub kind: String,
}

/// `flotilla app patch NAME --patch JSON`.
pub(super) async fn patch(g: &Global, c: &mut Client, a: PatchArgs) -> Result<()> {
    if a.kind != "merge" {
        return Err(usage(format!(
            "--type {}: only `merge` (JSON merge patch) is supported",
            a.kind
        )));
    }
    let patch: Value =
        serde_json::from_str(&a.patch).map_err(|e| usage(format!("--patch is not JSON: {e}")))?;
    if !patch.is_object() {
        return Err(usage("--patch must be a JSON object"));
    }
    apply(g, c, &a.name, &patch).await
}

async fn apply(g: &Global, c: &mut Client, name: &str, patch: &Value) -> Result<()> {
    let mut doc = current(c, name).await?;
    merge_patch(&mut doc, patch);
    if doc["metadata"]["name"].as_str() != Some(name) {
        return Err(usage("a patch cannot rename the application"));
    }
    let (outcome, a) = put(c, doc, true)
        .await
        .with_context(|| format!("updating application {name}"))?;
    report(g, outcome, &a);
    Ok(())
}

/// Options of `flotilla app set`: common fields of the definition.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The application.
    pub name: String,
    /// Source repository URL (`spec.source.repoURL`).
    #[arg(long)]
    pub repo: Option<String>,
    /// Path in the repository (`spec.source.path`).
    #[arg(long)]
    pub path: Option<String>,
    /// Branch, tag or commit (`spec.source.targetRevision`).
    #[arg(long)]
    pub revision: Option<String>,
    /// Destination cluster (`spec.destination.name`).
    #[arg(long)]
    pub dest_name: Option<String>,
    /// Destination namespace (`spec.destination.namespace`).
    #[arg(long)]
    pub dest_namespace: Option<String>,
    /// Project (`spec.project`).
    #[arg(long)]
    pub project: Option<String>,
    /// `automated` (sync on every change) or `none` (manual syncs only).
    #[arg(long, value_parser = ["automated", "none"])]
    pub sync_policy: Option<String>,
    /// With automated sync: delete objects removed from Git.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false")]
    pub auto_prune: Option<bool>,
    /// With automated sync: revert changes made in the cluster.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false")]
    pub self_heal: Option<bool>,
    /// Label to set (KEY=VALUE) or remove (KEY-); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE|KEY-")]
    pub labels: Vec<String>,
}

/// The merge patch `app set` makes of its flags.
pub(super) fn set_patch(a: &SetArgs) -> Result<Value> {
    let mut patch = json!({});
    let mut put = |path: &[&str], v: Value| {
        let mut p = v;
        for key in path.iter().rev() {
            p = json!({ *key: p });
        }
        merge_patch_keep_nulls(&mut patch, &p);
    };
    let s = |v: &Option<String>| v.clone().map(Value::String);
    for (path, v) in [
        (&["spec", "source", "repoURL"][..], s(&a.repo)),
        (&["spec", "source", "path"], s(&a.path)),
        (&["spec", "source", "targetRevision"], s(&a.revision)),
        (&["spec", "destination", "name"], s(&a.dest_name)),
        (&["spec", "destination", "namespace"], s(&a.dest_namespace)),
        (&["spec", "project"], s(&a.project)),
    ] {
        if let Some(v) = v {
            put(path, v);
        }
    }
    match a.sync_policy.as_deref() {
        Some("none") => {
            if a.auto_prune.is_some() || a.self_heal.is_some() {
                return Err(usage("--auto-prune and --self-heal need automated sync"));
            }
            put(&["spec", "syncPolicy", "automated"], Value::Null);
        }
        Some(_) => put(&["spec", "syncPolicy", "automated"], json!({})),
        None => {}
    }
    if let Some(p) = a.auto_prune {
        put(&["spec", "syncPolicy", "automated", "prune"], json!(p));
    }
    if let Some(h) = a.self_heal {
        put(&["spec", "syncPolicy", "automated", "selfHeal"], json!(h));
    }
    for l in &a.labels {
        if let Some(key) = l.strip_suffix('-').filter(|k| !k.contains('=')) {
            put(&["metadata", "labels", key], Value::Null);
        } else {
            let (k, v) = l
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| usage(format!("label {l:?} must be KEY=VALUE or KEY-")))?;
            put(&["metadata", "labels", k], json!(v));
        }
    }
    if patch.as_object().is_some_and(Map::is_empty) {
        return Err(usage("nothing to set: pass at least one flag (see --help)"));
    }
    Ok(patch)
}

/// Merges `patch` into `target` keeping `null`s (they are the removals
/// the final patch carries).
fn merge_patch_keep_nulls(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge_patch_keep_nulls(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// `flotilla app set NAME [--revision R] [--path P] …`.
pub(super) async fn set(g: &Global, c: &mut Client, a: SetArgs) -> Result<()> {
    let patch = set_patch(&a)?;
    apply(g, c, &a.name, &patch).await
}

/// `flotilla app manifests NAME`: the rendered objects as a YAML stream
/// (`-o json`: a list; `-o yaml`: the same stream).
pub(super) async fn manifests(g: &Global, c: &mut Client, name: &str) -> Result<()> {
    let m = c
        .get_application_manifests(pb::GetApplicationManifestsRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    if !m.render_error.is_empty() {
        return Err(anyhow::anyhow!(
            "{name}: no manifests: {}",
            m.render_error.lines().next().unwrap_or_default()
        ));
    }
    let objects: Vec<Value> = m
        .manifests
        .iter()
        .map(|s| serde_json::from_str(s).unwrap_or(Value::String(s.clone())))
        .collect();
    if g.output == super::Output::Json {
        print_out(g.output, Value::Array(objects), String::new);
        return Ok(());
    }
    let mut text = String::new();
    for o in &objects {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(o).unwrap_or_default());
    }
    super::exit::write_stdout(&text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        merge_patch(&mut doc, &json!({"a": [3], "n": {"x": 1}}));
        assert_eq!(doc, json!({"a": [3], "n": {"x": 1}}));
    }

    #[test]
    fn definitions_drop_status_and_server_metadata() {
        let doc = json!({
            "name": "web", "clusters": [], "status": {"sync": "Synced"},
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": "web", "uid": "u", "resourceVersion": "3", "labels": {"a": "b"}},
            "spec": {"project": "default"},
        });
        assert_eq!(
            definition_of(doc),
            json!({
                "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                "metadata": {"name": "web", "labels": {"a": "b"}},
                "spec": {"project": "default"},
            })
        );
    }

    fn set_args(f: impl FnOnce(&mut SetArgs)) -> SetArgs {
        let mut a = SetArgs {
            name: "web".into(),
            repo: None,
            path: None,
            revision: None,
            dest_name: None,
            dest_namespace: None,
            project: None,
            sync_policy: None,
            auto_prune: None,
            self_heal: None,
            labels: vec![],
        };
        f(&mut a);
        a
    }

    #[test]
    fn set_flags_become_a_merge_patch() {
        let p = set_patch(&set_args(|a| {
            a.revision = Some("v2".into());
            a.sync_policy = Some("automated".into());
            a.self_heal = Some(true);
            a.labels = vec!["team=web".into(), "old-".into()];
        }))
        .unwrap();
        assert_eq!(
            p,
            json!({
                "spec": {"source": {"targetRevision": "v2"}, "syncPolicy": {"automated": {"selfHeal": true}}},
                "metadata": {"labels": {"team": "web", "old": null}},
            })
        );
        let p = set_patch(&set_args(|a| a.sync_policy = Some("none".into()))).unwrap();
        assert_eq!(p, json!({"spec": {"syncPolicy": {"automated": null}}}));
        assert!(set_patch(&set_args(|_| {})).is_err());
        assert!(set_patch(&set_args(|a| a.labels = vec!["=x".into()])).is_err());
    }
}
