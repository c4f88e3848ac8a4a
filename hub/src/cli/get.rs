//! `cluster get` and `repo get`: one record, found in its list (the hub
//! has no Get call for them), shown as `Field  value` lines.

use anyhow::Result;

use super::exit::CliError;
use super::{Client, labels_str, one_line, short, status_err};
use flotilla_proto as pb;

/// RFC 3339 (UTC, whole seconds) of milliseconds since the epoch; `-`
/// for never (0).
pub(crate) fn rfc3339(ms: i64) -> String {
    if ms <= 0 {
        "-".to_owned()
    } else {
        super::ops::time_of(ms)
    }
}

/// The same for JSON: `null` for never.
pub(crate) fn rfc3339_json(ms: i64) -> serde_json::Value {
    if ms <= 0 {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(super::ops::time_of(ms))
    }
}

/// The cluster `name`.
///
/// # Errors
/// Not registered (exit 3), or the call failed.
pub(super) async fn find_cluster(c: &mut Client, name: &str) -> Result<pb::Cluster> {
    c.list_clusters(pb::ListClustersRequest {})
        .await
        .map_err(status_err)?
        .into_inner()
        .clusters
        .into_iter()
        .find(|x| x.name == name)
        .ok_or_else(|| CliError::NotFound(format!("cluster {name:?} not found")).into())
}

/// The repository registered as `url` (a trailing `/` does not matter).
///
/// # Errors
/// Not registered (exit 3), or the call failed.
pub(super) async fn find_repo(c: &mut Client, url: &str) -> Result<pb::Repository> {
    let want = url.trim().trim_end_matches('/');
    c.list_repositories(pb::ListRepositoriesRequest {})
        .await
        .map_err(status_err)?
        .into_inner()
        .repositories
        .into_iter()
        .find(|r| r.url.trim_end_matches('/') == want)
        .ok_or_else(|| {
            CliError::NotFound(format!(
                "repository {url:?} not found (`flotilla repo list` shows the registered URLs)"
            ))
            .into()
        })
}

fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}   {v}\n"))
        .collect()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// `cluster get`'s table.
pub(super) fn cluster_text(c: &pb::Cluster) -> String {
    let annotations = labels_str(&c.annotations);
    fields(&[
        ("Name", c.name.clone()),
        ("Labels", labels_str(&c.labels)),
        ("Annotations", annotations),
        ("Server", or_dash(&c.server)),
        (
            "Connected",
            if c.connected { "yes" } else { "no" }.to_owned(),
        ),
        ("Last seen", rfc3339(c.last_seen_ms)),
        ("Agent version", or_dash(&c.agent_version)),
        (
            "Generation",
            format!(
                "{} desired, {} acknowledged",
                c.generation, c.acked_generation
            ),
        ),
    ])
}

/// `repo get`'s table.
pub(super) fn repo_text(r: &pb::Repository) -> String {
    fields(&[
        ("URL", r.url.clone()),
        ("Type", or_dash(&r.r#type)),
        ("Revision", or_dash(&r.revision)),
        ("Apps path", or_dash(&r.apps_path)),
        (
            "Poll interval",
            if r.poll_interval_secs > 0 {
                format!("{}s", r.poll_interval_secs)
            } else {
                "hub default".to_owned()
            },
        ),
        ("Commit", short(&r.last_commit)),
        ("Fetched", rfc3339(r.last_fetch_ms)),
        ("Credentials", {
            let shown = match (r.has_credentials, r.insecure_ignore_host_key) {
                (false, _) => "none".to_owned(),
                _ if !r.credentials_template.is_empty() => {
                    format!("from template {}", r.credentials_template)
                }
                (true, false) => "stored".to_owned(),
                (true, true) => "stored (ssh host key not verified)".to_owned(),
            };
            if r.project.is_empty() {
                shown
            } else {
                format!("{shown}, project {} only", r.project)
            }
        }),
        ("Error", or_dash(&one_line(&r.last_error))),
    ])
}
