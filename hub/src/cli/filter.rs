//! `app list` filters, as `argocd app list` and `kubectl get -l` take
//! them. The hub lists every application; the CLI keeps the matching ones.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::Value;

use super::exit::usage;
use super::{health_name, sync_name};
use crate::appset::selector::{LabelSelector, Operator, Requirement};
use flotilla_proto as pb;

/// Options of `flotilla app list`.
#[derive(Debug, Default, clap::Args)]
pub struct ListFilters {
    /// Only applications whose labels match this selector, as kubectl
    /// takes it: `env=prod,tier!=db`, `team in (a,b)`, `team notin (c)`,
    /// `owner` (set), `!legacy` (not set).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only applications that target this cluster.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Only applications of this project (`spec.project`).
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    /// Only applications with a targeted cluster (the --cluster one, when
    /// given) in this sync status.
    #[arg(long, value_name = "STATUS", ignore_case = true,
          value_parser = ["Synced", "OutOfSync", "Unknown"])]
    pub sync: Option<String>,
    /// Only applications with a targeted cluster (the --cluster one, when
    /// given) in this health status.
    #[arg(long, value_name = "STATUS", ignore_case = true,
          value_parser = ["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"])]
    pub health: Option<String>,
    /// Only applications with a source in this repository (URL as in the
    /// application).
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
}

/// What the filters read from an application's definition.
#[derive(Debug, Default)]
pub(super) struct Definition {
    pub labels: BTreeMap<String, String>,
    pub project: String,
}

/// Labels and project from the definition (`Application.manifest`).
pub(super) fn definition(a: &pb::Application) -> Definition {
    let doc: Value = serde_saphyr::from_str(&a.manifest).unwrap_or_default();
    let labels = doc["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let project = doc["spec"]["project"]
        .as_str()
        .filter(|p| !p.is_empty())
        .unwrap_or("default")
        .to_owned();
    Definition { labels, project }
}

/// Parses a kubectl label selector string.
///
/// # Errors
/// A requirement that is not one of the forms above (exit 2).
pub fn parse_selector(s: &str) -> Result<LabelSelector> {
    let mut sel = LabelSelector::default();
    for part in split_requirements(s) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let bad = || usage(format!("invalid label selector requirement {part:?}"));
        let key_ok = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        let set = |rest: &str| -> Option<Vec<String>> {
            let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            Some(
                inner
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect(),
            )
        };
        let req = if let Some(key) = part.strip_prefix('!') {
            Requirement {
                key: key.trim().to_owned(),
                operator: Operator::DoesNotExist,
                values: vec![],
            }
        } else if let Some((key, rest)) = part.split_once(" notin ") {
            Requirement {
                key: key.trim().to_owned(),
                operator: Operator::NotIn,
                values: set(rest).ok_or_else(bad)?,
            }
        } else if let Some((key, rest)) = part.split_once(" in ") {
            Requirement {
                key: key.trim().to_owned(),
                operator: Operator::In,
                values: set(rest).ok_or_else(bad)?,
            }
        } else if let Some((key, v)) = part.split_once("!=") {
            Requirement {
                key: key.trim().to_owned(),
                operator: Operator::NotIn,
                values: vec![v.trim().to_owned()],
            }
        } else if let Some((key, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement {
                key: key.trim().to_owned(),
                operator: Operator::In,
                values: vec![v.trim().to_owned()],
            }
        } else {
            Requirement {
                key: part.to_owned(),
                operator: Operator::Exists,
                values: vec![],
            }
        };
        if !key_ok(&req.key) || req.values.iter().any(|v| v.contains(['=', '!', '(', ')'])) {
            return Err(bad());
        }
        sel.match_expressions.push(req);
    }
    Ok(sel)
}

/// Splits at commas outside parentheses.
fn split_requirements(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A compiled filter.
pub(super) struct Filter {
    selector: Option<LabelSelector>,
    f: ListFilters,
}

impl Filter {
    /// # Errors
    /// An invalid selector (exit 2).
    pub fn new(f: ListFilters) -> Result<Self> {
        let selector = f.selector.as_deref().map(parse_selector).transpose()?;
        Ok(Self { selector, f })
    }

    /// Whether `a` passes every filter given.
    pub fn matches(&self, a: &pb::Application) -> bool {
        let def = definition(a);
        if let Some(sel) = &self.selector
            && !sel.matches(&def.labels)
        {
            return false;
        }
        if let Some(p) = &self.f.project
            && def.project != *p
        {
            return false;
        }
        if let Some(repo) = &self.f.repo {
            let want = repo.trim_end_matches('/');
            let same = |u: &str| u.trim_end_matches('/') == want;
            if !(same(&a.repo_url) || a.sources.iter().any(|s| same(&s.repo_url))) {
                return false;
            }
        }
        let clusters: Vec<&pb::ClusterAppStatus> = a
            .clusters
            .iter()
            .filter(|c| self.f.cluster.as_ref().is_none_or(|n| c.cluster == *n))
            .collect();
        if self.f.cluster.is_some() && clusters.is_empty() {
            return false;
        }
        let is = |want: &Option<String>, got: &str| {
            want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(got))
        };
        if self.f.sync.is_some()
            && !clusters
                .iter()
                .any(|c| is(&self.f.sync, sync_name(c.status.as_ref().map(|s| s.sync))))
        {
            return false;
        }
        if self.f.health.is_some()
            && !clusters.iter().any(|c| {
                is(
                    &self.f.health,
                    health_name(c.status.as_ref().map(|s| s.health)),
                )
            })
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_as_kubectl_reads_them() {
        let l = labels(&[("env", "prod"), ("team", "a"), ("owner", "x")]);
        for (sel, want) in [
            ("env=prod", true),
            ("env==prod", true),
            ("env=dev", false),
            ("env!=dev", true),
            ("tier!=db", true),
            ("team in (a,b)", true),
            ("team in (b, c)", false),
            ("team notin (b,c)", true),
            ("env=prod,team in (a,b),owner", true),
            ("owner,!legacy", true),
            ("!owner", false),
            ("", true),
        ] {
            assert_eq!(parse_selector(sel).unwrap().matches(&l), want, "{sel}");
        }
        for bad in ["team in a,b", "=x", "a=b=c", "env in (a"] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }
}
