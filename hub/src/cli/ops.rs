//! Day-to-day application verbs: refresh (and, later, sync, history,
//! rollback, wait).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use super::exit::{ExitStatus, code, outln};
use super::{Client, Global, health_name, print_out, short, status_err, sync_name, table};
use flotilla_proto as pb;

/// `flotilla app refresh NAME [--hard] [--wait [--timeout D]]`.
pub(super) async fn refresh(
    g: &Global,
    c: &mut Client,
    name: &str,
    hard: bool,
    wait: Option<Duration>,
) -> Result<()> {
    // What "fetched again" is measured against: the hub's own fetch
    // times, so the clocks of CLI and hub need not agree.
    let before = match wait {
        Some(_) => Some(fetch_times(c, name).await?),
        None => None,
    };
    c.refresh(pb::RefreshRequest {
        app: name.to_owned(),
        hard,
    })
    .await
    .map_err(status_err)?;
    let refreshed = match (before, wait) {
        (Some(before), Some(timeout)) => Some(wait_refreshed(c, name, &before, timeout).await?),
        _ => None,
    };
    let revision = refreshed.as_ref().map(|a| a.revision.clone());
    print_out(
        g.output,
        json!({"app": name, "refreshed": true, "hard": hard, "revision": revision}),
        || {
            let dropped = if hard {
                " (cached renders dropped)"
            } else {
                ""
            };
            match &refreshed {
                Some(a) => format!(
                    "{name} refreshed{dropped}: every cluster reports {}\n",
                    short(&a.revision)
                ),
                None => format!("refresh of {name} requested{dropped}\n"),
            }
        },
    );
    Ok(())
}

/// The registered repositories among the application's sources, with
/// their last fetch time and error.
async fn fetch_times(c: &mut Client, name: &str) -> Result<BTreeMap<String, (i64, String)>> {
    let app = c
        .get_application(pb::GetApplicationRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let urls: Vec<String> = if app.sources.is_empty() {
        vec![app.repo_url.clone()]
    } else {
        app.sources.iter().map(|s| s.repo_url.clone()).collect()
    };
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    Ok(c.list_repositories(pb::ListRepositoriesRequest {})
        .await
        .map_err(status_err)?
        .into_inner()
        .repositories
        .into_iter()
        .filter(|r| urls.iter().any(|u| same(u, &r.url)))
        .map(|r| (r.url, (r.last_fetch_ms, r.last_error)))
        .collect())
}

/// Waits until every registered repository of the application was fetched
/// after `before` and every cluster reports the revision the hub gives it;
/// the application then.
async fn wait_refreshed(
    c: &mut Client,
    name: &str,
    before: &BTreeMap<String, (i64, String)>,
    timeout: Duration,
) -> Result<pb::Application> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = fetch_times(c, name).await?;
        let mut awaited = Vec::new();
        for (url, (fetched, _)) in before {
            match now.get(url) {
                Some((t, error)) if t > fetched => {
                    if !error.is_empty() {
                        bail!("refreshing {name}: fetching {url} failed: {error}");
                    }
                }
                _ => awaited.push(format!("a fetch of {url}")),
            }
        }
        let app = c
            .get_application(pb::GetApplicationRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        if awaited.is_empty() {
            if !app.error.is_empty() {
                bail!(
                    "refreshing {name}: {}",
                    app.error.lines().next().unwrap_or_default()
                );
            }
            for row in &app.clusters {
                let reported = row.status.as_ref().map(|s| s.revision.as_str());
                if row.desired_revision.is_empty()
                    || reported != Some(row.desired_revision.as_str())
                {
                    awaited.push(format!(
                        "{} to report {} (reports {})",
                        row.cluster,
                        short(&row.desired_revision),
                        reported.map_or("nothing yet".to_owned(), short)
                    ));
                }
            }
            if awaited.is_empty() {
                return Ok(app);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "refreshing {name}: timed out after {}s waiting for {}",
                timeout.as_secs(),
                awaited.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How one cluster's status reads on a progress line.
fn cluster_line(c: &pb::ClusterAppStatus) -> String {
    match &c.status {
        None => "no status yet".to_owned(),
        Some(s) => {
            let mut line = format!(
                "{}/{} at {}",
                sync_name(Some(s.sync)),
                health_name(Some(s.health)),
                short(&s.revision)
            );
            if !s.message.is_empty() {
                line.push_str(&format!(
                    " ({})",
                    s.message.lines().next().unwrap_or_default()
                ));
            }
            line
        }
    }
}

/// Outcome of one cluster for a wait.
#[derive(Debug, PartialEq, Eq)]
enum Reached {
    Yes,
    No,
    Failed(String),
}

/// Whether `c` reached the condition: `revision` (when given) applied and
/// Synced (`sync`), Healthy (`health`). Degraded or a render error fails.
fn reached(c: &pb::ClusterAppStatus, revision: &str, sync: bool, health: bool) -> Reached {
    let Some(s) = &c.status else {
        return Reached::No;
    };
    // Only the status of the revision waited for can fail the wait: the
    // previous one may still be on display.
    let rev_ok = revision.is_empty() || s.revision == revision;
    if rev_ok && s.message.starts_with("render error") {
        return Reached::Failed(s.message.clone());
    }
    if rev_ok && s.health == pb::HealthStatus::Degraded as i32 {
        return Reached::Failed(format!("Degraded: {}", s.message));
    }
    let sync_ok = !sync || s.sync == pb::SyncStatus::Synced as i32;
    let health_ok = !health || s.health == pb::HealthStatus::Healthy as i32;
    if rev_ok && sync_ok && health_ok {
        Reached::Yes
    } else {
        Reached::No
    }
}

/// Whether the operation a sync command started on `c` has finished: not
/// before the cluster reports an operation with `command_id`; Failed fails.
fn operation_reached(c: &pb::ClusterAppStatus, command_id: &str) -> Reached {
    // The last operation, or, when an automatic sync has replaced it since,
    // the last one a command started.
    let op = c.status.as_ref().and_then(|s| {
        [s.operation.as_ref(), s.requested_operation.as_ref()]
            .into_iter()
            .flatten()
            .find(|o| o.command_id == command_id)
    });
    match op {
        Some(o) if o.phase == "Succeeded" => Reached::Yes,
        Some(o) if o.phase == "Failed" => Reached::Failed(if o.message.is_empty() {
            "sync failed".to_owned()
        } else {
            format!("sync failed: {}", o.message)
        }),
        _ => Reached::No,
    }
}

/// What `wait_for` waits for.
#[derive(Clone, Copy, Debug)]
struct Until {
    sync: bool,
    health: bool,
    /// A pinned application counts as synced once its clusters report the
    /// revision: it shows OutOfSync against Git while pinned (as Argo CD's
    /// `app sync --revision` and `app rollback` wait only for the
    /// operation).
    pinned_is_synced: bool,
}

/// Polls the application until every cluster in `clusters` (all targeted
/// ones when empty) reaches the condition, and the operation of each
/// command in `commands` (cluster to command id) has finished; prints each
/// change. Returns the last application seen.
#[allow(clippy::too_many_arguments)]
async fn wait_for(
    g: &Global,
    c: &mut Client,
    name: &str,
    clusters: &[String],
    commands: &BTreeMap<String, String>,
    revision: &str,
    until: Until,
    timeout: Duration,
) -> Result<pb::Application> {
    let deadline = Instant::now() + timeout;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let quiet = g.output != super::Output::Table;
    loop {
        let app = c
            .get_application(pb::GetApplicationRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let pinned = !app.pinned_revision.is_empty();
        let sync = until.sync && (!pinned || !until.pinned_is_synced);
        let health = until.health;
        let rows: Vec<&pb::ClusterAppStatus> = app
            .clusters
            .iter()
            .filter(|s| clusters.is_empty() || clusters.contains(&s.cluster))
            .collect();
        let mut done = !rows.is_empty();
        let mut failures = Vec::new();
        for row in &rows {
            let line = cluster_line(row);
            if last.get(&row.cluster) != Some(&line) {
                if !quiet {
                    eprintln!("{}: {line}", row.cluster);
                }
                last.insert(row.cluster.clone(), line);
            }
            let outcome = match commands.get(&row.cluster) {
                Some(id) => match operation_reached(row, id) {
                    Reached::Yes => reached(row, revision, sync, health),
                    other => other,
                },
                None => reached(row, revision, sync, health),
            };
            match outcome {
                Reached::Yes => {}
                Reached::No => done = false,
                Reached::Failed(m) => {
                    done = false;
                    failures.push(format!("{}: {m}", row.cluster));
                }
            }
        }
        if !app.error.is_empty() && !quiet && last.get("").is_none_or(|e| *e != app.error) {
            eprintln!("application error: {}", app.error);
            last.insert(String::new(), app.error.clone());
        }
        if done {
            return Ok(app);
        }
        if !failures.is_empty() {
            bail!("{name}: {}", failures.join("; "));
        }
        if Instant::now() >= deadline {
            let state: Vec<String> = last
                .iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            bail!(
                "timed out after {}s waiting for {name}; last status: {}",
                timeout.as_secs(),
                if state.is_empty() {
                    "no cluster reported".to_owned()
                } else {
                    state.join("; ")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Options of `flotilla app sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The application.
    pub name: String,
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Branch, tag or commit (default: the target revision's current
    /// commit). Another commit pins the application until the next sync
    /// without --revision.
    #[arg(long)]
    pub revision: Option<String>,
    /// Delete objects no longer in Git.
    #[arg(long)]
    pub prune: bool,
    /// Ask the agents what the sync would do to each object (server-side
    /// dry run); nothing changes. Exits 0 unless an agent or an object
    /// fails.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the sync is sent, without waiting for the clusters.
    #[arg(long = "async")]
    pub no_wait: bool,
    /// How long to wait for every cluster to report the revision Synced.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

fn resource_result_json(r: &pb::ResourceResult) -> serde_json::Value {
    let k = r.key.clone().unwrap_or_default();
    json!({
        "group": k.group, "version": k.version, "kind": k.kind,
        "namespace": k.namespace, "name": k.name,
        "result": r.action, "message": r.message, "error": r.error,
    })
}

fn sync_json(name: &str, r: &pb::SyncApplicationResponse, dry_run: bool) -> serde_json::Value {
    json!({
        "app": name,
        "revision": r.revision,
        "dryRun": dry_run,
        "clusters": r.clusters,
        "notConnected": r.not_connected,
        "historyId": r.history_id,
        "results": r.results.iter().map(|c| json!({
            "cluster": c.cluster,
            "commandId": c.command_id,
            "revision": c.revision,
            "error": c.error,
            "resources": c.resources.iter().map(resource_result_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The table of a dry run: one row per object and cluster, then the
/// clusters that could not answer.
fn dry_run_table(r: &pb::SyncApplicationResponse) -> String {
    let rows = r
        .results
        .iter()
        .flat_map(|c| {
            c.resources.iter().map(|res| {
                let k = res.key.clone().unwrap_or_default();
                let message = if res.error.is_empty() {
                    &res.message
                } else {
                    &res.error
                };
                vec![
                    c.cluster.clone(),
                    k.kind,
                    k.namespace,
                    k.name,
                    res.action.clone(),
                    message.lines().next().unwrap_or_default().to_owned(),
                ]
            })
        })
        .collect();
    let mut out = table(
        &["CLUSTER", "KIND", "NAMESPACE", "NAME", "RESULT", "MESSAGE"],
        rows,
    );
    for c in r.results.iter().filter(|c| !c.error.is_empty()) {
        out.push_str(&format!("{}: {}\n", c.cluster, c.error));
    }
    out
}

/// Why a dry run did not fully succeed, if it did not.
fn dry_run_failures(r: &pb::SyncApplicationResponse) -> Vec<String> {
    let mut failures = Vec::new();
    for c in &r.results {
        if !c.error.is_empty() {
            failures.push(format!("{}: {}", c.cluster, c.error));
        }
        let failed = c.resources.iter().filter(|x| !x.error.is_empty()).count();
        if failed > 0 {
            failures.push(format!("{}: {failed} object(s) would fail", c.cluster));
        }
    }
    failures
}

async fn follow(
    g: &Global,
    c: &mut Client,
    name: &str,
    r: &pb::SyncApplicationResponse,
    dry_run: bool,
    no_wait: bool,
    timeout: Duration,
) -> Result<()> {
    if dry_run {
        print_out(g.output, sync_json(name, r, true), || {
            format!(
                "dry run of {name} at {} (nothing was changed):\n{}",
                short(&r.revision),
                dry_run_table(r)
            )
        });
        let failures = dry_run_failures(r);
        if !failures.is_empty() {
            bail!("dry run of {name}: {}", failures.join("; "));
        }
        return Ok(());
    }
    if g.output == super::Output::Table {
        eprintln!(
            "syncing {name} at {} on {}{}",
            short(&r.revision),
            if r.clusters.is_empty() {
                "no connected cluster".to_owned()
            } else {
                r.clusters.join(", ")
            },
            if r.not_connected.is_empty() {
                String::new()
            } else {
                format!(" (not connected: {})", r.not_connected.join(", "))
            }
        );
    }
    if !no_wait {
        if !r.not_connected.is_empty() {
            bail!(
                "{name}: clusters not connected: {}",
                r.not_connected.join(", ")
            );
        }
        // Each cluster's sync is followed by its command id: done when that
        // operation finished (and the revision is Synced), failed when it
        // failed.
        let commands: BTreeMap<String, String> = r
            .results
            .iter()
            .filter(|x| !x.command_id.is_empty())
            .map(|x| (x.cluster.clone(), x.command_id.clone()))
            .collect();
        wait_for(
            g,
            c,
            name,
            &r.clusters,
            &commands,
            &r.revision,
            Until {
                sync: true,
                health: false,
                pinned_is_synced: true,
            },
            timeout,
        )
        .await?;
    }
    print_out(g.output, sync_json(name, r, false), || {
        if no_wait {
            format!("sync of {name} at {} sent\n", short(&r.revision))
        } else {
            format!(
                "{name} synced at {} on {}\n",
                short(&r.revision),
                r.clusters.join(", ")
            )
        }
    });
    Ok(())
}

/// `flotilla app sync`.
pub(super) async fn sync(g: &Global, c: &mut Client, a: SyncArgs) -> Result<()> {
    let r = c
        .sync_application(pb::SyncApplicationRequest {
            name: a.name.clone(),
            cluster: a.cluster.clone().unwrap_or_default(),
            revision: a.revision.clone().unwrap_or_default(),
            prune: a.prune,
            dry_run: a.dry_run,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    follow(g, c, &a.name, &r, a.dry_run, a.no_wait, a.timeout).await
}

/// `flotilla app rollback NAME ID`.
pub(super) async fn rollback(
    g: &Global,
    c: &mut Client,
    name: &str,
    id: u64,
    prune: bool,
    timeout: Duration,
) -> Result<()> {
    let r = c
        .rollback_application(pb::RollbackApplicationRequest {
            name: name.to_owned(),
            id,
            prune,
            dry_run: false,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    follow(g, c, name, &r, false, false, timeout).await
}

/// RFC 3339 (UTC, whole seconds) of milliseconds since the epoch.
pub(super) fn time_of(ms: i64) -> String {
    // UTC, without a date crate: days since the epoch to a civil date.
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `flotilla app history NAME`.
/// `flotilla app terminate-op NAME`: asks every cluster running a sync of
/// the application to terminate it. Exit 1 (with the clusters named) when
/// a cluster running one is not connected.
pub(super) async fn terminate_op(g: &Global, c: &mut Client, name: &str) -> Result<()> {
    let answer = c
        .terminate_operation(pb::TerminateOperationRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let reached = answer.results.iter().any(|r| r.error.is_empty());
    let missed: Vec<String> = answer
        .results
        .iter()
        .filter(|r| !r.error.is_empty())
        .map(|r| format!("{}: {}", r.cluster, r.error))
        .collect();
    let rows: Vec<serde_json::Value> = answer
        .results
        .iter()
        .map(|r| json!({"cluster": r.cluster, "commandId": r.command_id, "error": r.error}))
        .collect();
    // Argo CD's line; the clusters are in `-o json`.
    print_out(g.output, json!({"app": name, "clusters": rows}), || {
        if !reached {
            String::new()
        } else {
            format!("Application '{name}' operation terminating\n")
        }
    });
    if !missed.is_empty() {
        eprintln!(
            "error: {name}: operation not terminated on: {}",
            missed.join("; ")
        );
        return Err(ExitStatus(code::FAILURE).into());
    }
    Ok(())
}

pub(super) async fn history(g: &Global, c: &mut Client, name: &str) -> Result<()> {
    let h = c
        .get_application_history(pb::GetApplicationHistoryRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let value = json!({
        "app": name,
        "pinnedRevision": h.pinned_revision,
        "history": h.entries.iter().map(|e| json!({
            "id": e.id,
            "revision": e.revision,
            "deployedAt": time_of(e.deployed_ms),
            "initiatedBy": e.initiated_by,
            "clusters": e.clusters,
        })).collect::<Vec<_>>(),
        "events": h.events.iter().map(|e| json!({
            "at": time_of(e.at_ms),
            "event": e.event,
            "initiatedBy": e.initiated_by,
            "revision": e.revision,
            "clusters": e.clusters,
        })).collect::<Vec<_>>(),
    });
    print_out(g.output, value, || {
        let wide = g.output == super::Output::Wide;
        let rev = |r: &str| if wide { r.to_owned() } else { short(r) };
        // Deployments and rollout transitions in one timeline; a
        // transition has no id (it is no rollback target).
        let mut rows: Vec<(i64, Vec<String>)> = h
            .entries
            .iter()
            .map(|e| {
                (
                    e.deployed_ms,
                    vec![
                        e.id.to_string(),
                        e.clusters.join(","),
                        rev(&e.revision),
                        time_of(e.deployed_ms),
                        e.initiated_by.clone(),
                        "deployed".to_owned(),
                    ],
                )
            })
            .chain(h.events.iter().map(|e| {
                (
                    e.at_ms,
                    vec![
                        "-".to_owned(),
                        e.clusters.join(","),
                        rev(&e.revision),
                        time_of(e.at_ms),
                        e.initiated_by.clone(),
                        e.event.clone(),
                    ],
                )
            }))
            .collect();
        rows.sort_by_key(|(at, _)| *at);
        let mut out = table(
            &[
                "ID",
                "CLUSTER(S)",
                "REVISION",
                "DEPLOYED AT",
                "INITIATED BY",
                "EVENT",
            ],
            rows.into_iter().map(|(_, r)| r).collect(),
        );
        if !h.pinned_revision.is_empty() {
            out.push_str(&format!(
                "pinned to {} (until the next sync without --revision)\n",
                short(&h.pinned_revision)
            ));
        }
        out
    });
    Ok(())
}

/// Options of `flotilla app wait`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The application.
    pub name: String,
    /// Wait until every cluster reports Synced.
    #[arg(long)]
    pub sync: bool,
    /// Wait until every cluster reports Healthy.
    #[arg(long)]
    pub health: bool,
    /// Give up after this long (exit code 1, with the last status).
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

/// `flotilla app wait NAME [--sync] [--health]`: both when neither is given.
pub(super) async fn wait(g: &Global, c: &mut Client, a: WaitArgs) -> Result<()> {
    let (sync, health) = if a.sync || a.health {
        (a.sync, a.health)
    } else {
        (true, true)
    };
    let app = wait_for(
        g,
        c,
        &a.name,
        &[],
        &BTreeMap::new(),
        "",
        Until {
            sync,
            health,
            pinned_is_synced: false,
        },
        a.timeout,
    )
    .await?;
    print_out(g.output, super::app_json(&app), || {
        format!(
            "{} reached {}\n",
            a.name,
            match (sync, health) {
                (true, true) => "Synced and Healthy",
                (true, false) => "Synced",
                _ => "Healthy",
            }
        )
    });
    Ok(())
}

fn key_name(k: Option<&pb::ResourceKey>) -> String {
    let Some(k) = k else {
        return "unknown".to_owned();
    };
    let kind = if k.group.is_empty() {
        k.kind.clone()
    } else {
        format!("{}.{}", k.kind, k.group)
    };
    if k.namespace.is_empty() {
        format!("{kind}/{}", k.name)
    } else {
        format!("{kind}/{}/{}", k.namespace, k.name)
    }
}

/// `flotilla app diff NAME [--cluster C]`: exit 0 without differences,
/// 1 with, 2 when the diff could not be computed (3 for an unknown
/// application, 4 for an unreachable hub, as every command).
pub(super) async fn diff(
    g: &Global,
    c: &mut Client,
    name: &str,
    cluster: Option<String>,
) -> Result<()> {
    let r = c
        .diff_application(pb::DiffApplicationRequest {
            name: name.to_owned(),
            cluster: cluster.unwrap_or_default(),
        })
        .await
        .map_err(|s| {
            let code = match super::exit::status_code(&s) {
                code::FAILURE => code::USAGE,
                other => other,
            };
            anyhow::Error::new(ExitStatus(code)).context(status_err(s))
        })?
        .into_inner();
    let mut differs = false;
    let mut failed = Vec::new();
    let mut text = String::new();
    let mut rows = Vec::new();
    for cd in &r.clusters {
        if !cd.error.is_empty() {
            failed.push(format!("{}: {}", cd.cluster, cd.error));
            continue;
        }
        for res in &cd.resources {
            let desired: serde_json::Value = serde_json::from_str(&res.desired).unwrap_or_default();
            let live: Option<serde_json::Value> = if res.live.is_empty() {
                None
            } else {
                serde_json::from_str(&res.live).ok()
            };
            let live_text = live
                .as_ref()
                .map(|l| super::diff::yaml(&super::diff::project(l, &desired)))
                .unwrap_or_default();
            let desired_text = super::diff::yaml(&desired);
            let key = key_name(res.key.as_ref());
            let d = super::diff::unified(
                &format!("{}/live/{key}", cd.cluster),
                &format!("{}/desired/{key}", cd.cluster),
                &live_text,
                &desired_text,
            );
            if d.is_empty() {
                continue;
            }
            differs = true;
            text.push_str(&d);
            rows.push(json!({"cluster": cd.cluster, "resource": key, "missing": live.is_none(), "diff": d}));
        }
    }
    let value = json!({"app": name, "differences": rows, "errors": failed});
    print_out(g.output, value, || text.clone());
    if !failed.is_empty() {
        return Err(anyhow::Error::new(ExitStatus(code::USAGE)).context(failed.join("; ")));
    }
    if differs {
        return Err(ExitStatus(code::FAILURE).into());
    }
    Ok(())
}

/// What `app get --watch` compares to decide whether to print again
/// (observation timestamps alone are not a change).
fn watch_signature(a: &pb::Application) -> String {
    let mut s = format!("{}|{}|{}", a.revision, a.error, a.manifest);
    for c in &a.clusters {
        s.push_str(&format!("|{}:{}", c.cluster, cluster_line(c)));
    }
    s
}

/// `flotilla app get NAME --watch`.
pub(super) async fn watch(g: &Global, c: &mut Client, name: &str) -> Result<()> {
    let mut last = String::new();
    loop {
        let a = c
            .get_application(pb::GetApplicationRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let sig = watch_signature(&a);
        if sig != last {
            last = sig;
            if g.output == super::Output::Table || g.output == super::Output::Wide {
                outln!("--- {}", time_of(crate::clock::now_ms()));
            }
            // Printed as `app get` does; its errors do not end the watch.
            super::print_app(g.output, &a);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        rev: &str,
        sync: pb::SyncStatus,
        health: pb::HealthStatus,
        message: &str,
    ) -> pb::ClusterAppStatus {
        pb::ClusterAppStatus {
            cluster: "c1".into(),
            desired_revision: rev.into(),
            status: Some(pb::AppStatus {
                revision: rev.into(),
                sync: sync as i32,
                health: health as i32,
                message: message.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn wait_conditions() {
        use pb::HealthStatus as H;
        use pb::SyncStatus as S;
        let synced = row("r2", S::Synced, H::Healthy, "");
        assert_eq!(reached(&synced, "r2", true, true), Reached::Yes);
        assert_eq!(reached(&synced, "r1", true, false), Reached::No);
        let progressing = row("r2", S::Synced, H::Progressing, "");
        assert_eq!(reached(&progressing, "r2", true, false), Reached::Yes);
        assert_eq!(reached(&progressing, "", false, true), Reached::No);
        let degraded = row("r2", S::Synced, H::Degraded, "crash");
        assert!(matches!(
            reached(&degraded, "r2", true, false),
            Reached::Failed(_)
        ));
        let broken = row("r2", S::Unknown, H::Unknown, "render error: x");
        assert!(matches!(
            reached(&broken, "", true, false),
            Reached::Failed(_)
        ));
        let none = pb::ClusterAppStatus::default();
        assert_eq!(reached(&none, "", true, true), Reached::No);
    }

    #[test]
    fn a_sync_waits_for_the_operation_of_its_command() {
        let with_op = |id: &str, phase: &str| {
            let mut r = row("r2", pb::SyncStatus::Synced, pb::HealthStatus::Healthy, "");
            if let Some(s) = r.status.as_mut() {
                s.operation = Some(pb::OperationState {
                    phase: phase.into(),
                    message: "boom".into(),
                    command_id: id.into(),
                    ..Default::default()
                });
            }
            r
        };
        // Another command's (or an automatic) operation is not ours.
        assert_eq!(
            operation_reached(&with_op("other", "Succeeded"), "c1"),
            Reached::No
        );
        assert_eq!(
            operation_reached(&with_op("c1", "Running"), "c1"),
            Reached::No
        );
        assert_eq!(
            operation_reached(&with_op("c1", "Succeeded"), "c1"),
            Reached::Yes
        );
        assert_eq!(
            operation_reached(&with_op("c1", "Failed"), "c1"),
            Reached::Failed("sync failed: boom".into())
        );
        // An automatic sync replaced the operation before the CLI looked:
        // the command's own outcome is still found.
        let mut replaced = with_op("", "Succeeded");
        if let Some(s) = replaced.status.as_mut() {
            s.requested_operation = Some(pb::OperationState {
                phase: "Failed".into(),
                message: "boom".into(),
                command_id: "c1".into(),
                ..Default::default()
            });
        }
        assert_eq!(
            operation_reached(&replaced, "c1"),
            Reached::Failed("sync failed: boom".into())
        );
    }

    #[test]
    fn dry_run_failures_name_the_cluster() {
        let result = |cluster: &str, error: &str, object_error: &str| pb::ClusterSyncResult {
            cluster: cluster.into(),
            error: error.into(),
            resources: vec![pb::ResourceResult {
                action: if object_error.is_empty() {
                    "created"
                } else {
                    "failed"
                }
                .into(),
                error: object_error.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ok = pb::SyncApplicationResponse {
            results: vec![result("a", "", "")],
            ..Default::default()
        };
        assert!(dry_run_failures(&ok).is_empty());
        let bad = pb::SyncApplicationResponse {
            results: vec![
                result("a", "", "invalid"),
                result("b", "cluster not connected", ""),
            ],
            ..Default::default()
        };
        assert_eq!(
            dry_run_failures(&bad),
            ["a: 1 object(s) would fail", "b: cluster not connected"]
        );
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time_of(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_of(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(time_of(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
