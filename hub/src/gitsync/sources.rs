//! Multi-source applications (`spec.sources`), as Argo CD renders them:
//! every source is fetched at its own `targetRevision` and rendered on its
//! own (a Git directory, Kustomize or Helm path, or a Helm repository
//! chart); the objects are the concatenation in source order, a later
//! source's object replacing an earlier one with the same identity (Argo
//! CD's "last source wins"). A source with `ref: NAME` provides
//! `$NAME/…` to the other sources' Helm `valueFiles` (paths from the root
//! of its repository); a `ref` source without `path` is only fetched.
//!
//! The application's revision is the list of every source's revision
//! (commit, or chart version), joined with `,`. Errors name the source:
//! `source 2 of 3 (URL, path P): …`, or `source "NAME" (…)` when the
//! source has a `name`. Pins (`app sync --revision`, `app rollback`) are
//! not supported for these applications.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use super::{GitSync, revision_or_head};
use crate::model::{Application, ApplicationSource};
use crate::render::RefSource;
use crate::source::redact_url;
use crate::store::StoreError;

/// Joins per-source revisions into the application's revision.
pub const REVISION_SEPARATOR: &str = ",";

impl GitSync {
    /// `resolve_app` of a multi-source application: every source's
    /// target revision resolved now, joined. A revision other than the
    /// target (`app sync --revision`) is refused: Argo CD's per-source
    /// `--revisions` are not implemented.
    pub(super) async fn resolve_sources(
        &self,
        app: &Application,
        revision: &str,
    ) -> Result<String, String> {
        let revision = revision.trim();
        if !revision.is_empty() && revision != app.spec.source.target_revision {
            return Err(format!(
                "--revision is not supported for application {:?}: it has multiple sources (spec.sources), each with its own targetRevision",
                app.metadata.name
            ));
        }
        let sources = &app.spec.sources;
        let mut out = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            let one = single_source(app, src);
            let resolved = if src.chart.is_empty() {
                self.resolve(&src.repo_url, &src.target_revision).await
            } else {
                Box::pin(self.resolve_app(&one, &src.target_revision)).await
            };
            out.push(resolved.map_err(|e| format!("{}: {e}", source_label(sources, i)))?);
        }
        Ok(out.join(REVISION_SEPARATOR))
    }

    /// Every source's revision and the combined objects (the revisions
    /// joined), or the error for the application.
    pub(super) async fn sources_manifests(
        &self,
        app: &Application,
        intervals: &HashMap<(String, String), Duration>,
        force: bool,
        used: &mut super::UsedKeys,
    ) -> Result<Result<(String, Vec<String>), String>, StoreError> {
        let sources = &app.spec.sources;
        let interval = |src: &ApplicationSource| {
            intervals
                .get(&(src.repo_url.clone(), revision_or_head(&src.target_revision)))
                .copied()
                .unwrap_or(self.default_interval)
        };
        // Git sources first, so that refs are known before any render.
        let mut commits: Vec<String> = vec![String::new(); sources.len()];
        for (i, src) in sources.iter().enumerate() {
            if !src.chart.is_empty() {
                continue;
            }
            let revision = revision_or_head(&src.target_revision);
            match self
                .fetch(&src.repo_url, &revision, interval(src), force)
                .await
            {
                Ok(c) => commits[i] = c,
                Err(e) => return Ok(Err(format!("{}: {e}", source_label(sources, i)))),
            }
        }
        let refs: BTreeMap<String, RefSource> = sources
            .iter()
            .zip(&commits)
            .filter(|(s, _)| !s.ref_name.is_empty())
            .map(|(s, commit)| {
                (
                    s.ref_name.clone(),
                    RefSource {
                        name: s.ref_name.clone(),
                        url: s.repo_url.clone(),
                        commit: commit.clone(),
                    },
                )
            })
            .collect();

        let mut revisions = commits.clone();
        let mut objects: Vec<String> = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            let label = || source_label(sources, i);
            let single = single_source(app, src);
            let own_commit = (src.chart.is_empty()).then_some(commits[i].as_str());
            let src_refs = match refs_for(src, &refs, own_commit) {
                Ok(r) => r,
                Err(e) => return Ok(Err(format!("{}: {e}", label()))),
            };
            if !src.chart.is_empty() {
                match self
                    .chart_manifests(&single, interval(src), force, used, src_refs)
                    .await?
                {
                    Ok((version, manifests)) => {
                        revisions[i] = version;
                        objects.extend(manifests);
                    }
                    Err(e) => return Ok(Err(format!("{}: {e}", label()))),
                }
                continue;
            }
            if src.is_ref_only() {
                continue;
            }
            let mut key = crate::render::request_for(&single, &commits[i]);
            key.refs = src_refs.clone();
            self.note_used(used, &key);
            let mut rendered = self.render(&key).await;
            if crate::render::needs_release(&rendered) {
                let mut key = crate::render::with_release(key, &single);
                key.refs = src_refs;
                self.note_used(used, &key);
                rendered = self.render(&key).await;
            }
            match rendered.as_ref() {
                Ok(m) => objects.extend(m.iter().cloned()),
                Err(e) => return Ok(Err(format!("{}: {e}", label()))),
            }
        }
        Ok(Ok((
            revisions.join(REVISION_SEPARATOR),
            last_source_wins(objects),
        )))
    }
}

/// `app` with `src` as its only source, so the single-source render paths
/// (request keys, charts, release names) apply to it unchanged.
fn single_source(app: &Application, src: &ApplicationSource) -> Application {
    let mut one = app.clone();
    one.spec.source = src.clone();
    one.spec.sources = Vec::new();
    one
}

/// How errors name source `i`: `source 2 of 3 (URL, path P)` or
/// `source "NAME" (URL, chart C)`.
pub fn source_label(sources: &[ApplicationSource], i: usize) -> String {
    let src = &sources[i];
    let what = if !src.chart.is_empty() {
        format!(", chart {}", src.chart)
    } else if !src.path.is_empty() {
        format!(", path {}", src.path)
    } else {
        String::new()
    };
    let who = if src.name.is_empty() {
        format!("source {} of {}", i + 1, sources.len())
    } else {
        format!("source {:?}", src.name)
    };
    format!("{who} ({}{what})", redact_url(&src.repo_url))
}

/// The ref sources `src`'s Helm value files name (`$NAME/…`), with
/// Argo CD's errors for a name no source has, and for a ref to the same
/// repository as `src` at another commit.
fn refs_for(
    src: &ApplicationSource,
    refs: &BTreeMap<String, RefSource>,
    own_commit: Option<&str>,
) -> Result<Vec<RefSource>, String> {
    let files = src
        .helm
        .as_ref()
        .and_then(|h| h.get("valueFiles"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<RefSource> = Vec::new();
    for f in files.iter().filter_map(Value::as_str) {
        let Some(rest) = f.strip_prefix('$') else {
            continue;
        };
        let name = rest.split('/').next().unwrap_or_default();
        let Some(r) = refs.get(name) else {
            if refs.is_empty() {
                return Err(format!(
                    "value file {f:?} references \"${name}\", but no source has a 'ref' field"
                ));
            }
            let known: Vec<String> = refs.keys().map(|k| format!("${k}")).collect();
            return Err(format!(
                "value file {f:?} references \"${name}\", which is not one of the ref sources ({})",
                known.join(", ")
            ));
        };
        if let Some(commit) = own_commit
            && r.url == src.repo_url
            && r.commit != commit
        {
            return Err(format!(
                "cannot reference a different revision of the same repository (${name} is at {} while this source is at {commit})",
                r.commit
            ));
        }
        if !out.iter().any(|o| o.name == r.name) {
            out.push(r.clone());
        }
    }
    Ok(out)
}

/// Keeps, for objects with the same group, kind, namespace and name, only
/// the one from the later source (Argo CD's precedence), in its place.
fn last_source_wins(objects: Vec<String>) -> Vec<String> {
    let identity = |text: &str| -> Option<(String, String, String, String)> {
        let v: Value = serde_json::from_str(text).ok()?;
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let name = s("/metadata/name");
        if name.is_empty() {
            return None;
        }
        let api = s("/apiVersion");
        let group = api
            .rsplit_once('/')
            .map(|(g, _)| g.to_owned())
            .unwrap_or_default();
        Some((group, s("/kind"), s("/metadata/namespace"), name))
    };
    let keys: Vec<_> = objects.iter().map(|o| identity(o)).collect();
    let mut last: HashMap<&(String, String, String, String), usize> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        if let Some(k) = k {
            last.insert(k, i);
        }
    }
    objects
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keys[*i].as_ref().is_none_or(|k| last.get(k) == Some(i)))
        .map(|(_, o)| o)
        .collect()
}

/// The per-source revisions of an application revision.
pub fn split_revisions(revision: &str) -> Vec<String> {
    revision
        .split(REVISION_SEPARATOR)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(url: &str, path: &str, r: &str, helm: Option<Value>) -> ApplicationSource {
        ApplicationSource {
            repo_url: url.into(),
            path: path.into(),
            ref_name: r.into(),
            helm,
            ..Default::default()
        }
    }

    #[test]
    fn labels() {
        let sources = vec![
            src("https://u:p@git.example/a.git", "apps/web", "", None),
            ApplicationSource {
                name: "values".into(),
                ..src("https://git.example/v.git", "", "values", None)
            },
        ];
        assert_eq!(
            source_label(&sources, 0),
            "source 1 of 2 (https://***@git.example/a.git, path apps/web)"
        );
        assert_eq!(
            source_label(&sources, 1),
            "source \"values\" (https://git.example/v.git)"
        );
    }

    #[test]
    fn value_file_refs() {
        let mut refs = BTreeMap::new();
        refs.insert(
            "values".to_owned(),
            RefSource {
                name: "values".into(),
                url: "file:///v".into(),
                commit: "c1".into(),
            },
        );
        let helm = |files: &[&str]| Some(serde_json::json!({ "valueFiles": files }));
        let chart = src(
            "file:///c",
            "chart",
            "",
            helm(&["$values/prod.yaml", "local.yaml"]),
        );
        let got = refs_for(&chart, &refs, Some("c9")).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "values");

        let bad = src("file:///c", "chart", "", helm(&["$other/x.yaml"]));
        let err = refs_for(&bad, &refs, Some("c9")).unwrap_err();
        assert!(
            err.contains("not one of the ref sources ($values)"),
            "{err}"
        );
        let err = refs_for(&bad, &BTreeMap::new(), Some("c9")).unwrap_err();
        assert!(err.contains("no source has a 'ref' field"), "{err}");

        // Same repository, other commit.
        let same = src("file:///v", "chart", "", helm(&["$values/prod.yaml"]));
        let err = refs_for(&same, &refs, Some("c2")).unwrap_err();
        assert!(
            err.contains("different revision of the same repository"),
            "{err}"
        );
        assert!(refs_for(&same, &refs, Some("c1")).is_ok());
    }

    #[test]
    fn later_sources_win() {
        let cm = |name: &str, v: &str| {
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"v":"{v}"}}}}"#
            )
        };
        let out = last_source_wins(vec![cm("a", "1"), cm("b", "1"), cm("a", "2")]);
        assert_eq!(out, vec![cm("b", "1"), cm("a", "2")]);
    }
}
