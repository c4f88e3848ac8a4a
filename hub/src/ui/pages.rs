//! The pages, as pure functions from what the API returns to HTML (the
//! `<main>` of each page). Every mutating control is rendered only for a
//! viewer who may write, and every form carries the CSRF token.

use std::fmt::Write as _;

use flotilla_proto as pb;

use super::html::{Viewer, esc, time_ms, url_part};
use crate::cli::{health_name, sync_name};

/// Clusters shown on one page of the overview.
pub const PAGE_SIZE: usize = 50;

/// The overview's filters and page, from the query string.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct OverviewQuery {
    #[serde(default)]
    pub page: usize,
    /// `k=v[,k=v]`: clusters with all these labels.
    #[serde(default)]
    pub label: String,
    /// Applications whose name contains this.
    #[serde(default)]
    pub app: String,
    /// Applications of this AppProject (`default` for those naming none).
    #[serde(default)]
    pub project: String,
    /// Clusters with at least one application in this sync or health
    /// status (Synced, OutOfSync, Healthy, Progressing, Degraded, ...).
    #[serde(default)]
    pub status: String,
}

impl OverviewQuery {
    /// The label filter as pairs.
    ///
    /// # Errors
    /// A term is not `key=value`.
    pub fn labels(&self) -> Result<Vec<(String, String)>, String> {
        self.label
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| match t.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_owned(), v.trim().to_owned()))
                }
                _ => Err(format!(
                    "label filter {t:?} is not key=value (e.g. env=prod)"
                )),
            })
            .collect()
    }

    /// Whether a status filter is one the grid can match.
    ///
    /// # Errors
    /// An unknown status name.
    pub fn check_status(&self) -> Result<(), String> {
        const KNOWN: [&str; 8] = [
            "Synced",
            "OutOfSync",
            "Healthy",
            "Progressing",
            "Degraded",
            "Suspended",
            "Missing",
            "Unknown",
        ];
        if self.status.is_empty() || KNOWN.contains(&self.status.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "status filter {:?} is not one of {}",
                self.status,
                KNOWN.join(", ")
            ))
        }
    }

    fn link(&self, page: usize) -> String {
        format!(
            "/?page={page}&label={}&app={}&project={}&status={}",
            url_part(&self.label),
            url_part(&self.app),
            url_part(&self.project),
            url_part(&self.status)
        )
    }
}

/// One cell: a column's application on one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// No application of the column targets the cluster.
    NotTargeted,
    /// `app` targets the cluster, which has reported nothing for it.
    NoStatus { app: String },
    /// `app`'s status on the cluster (the worst, when several of the
    /// column's applications target it).
    Status { sync: i32, health: i32, app: String },
}

impl Cell {
    fn names(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Cell::Status { sync, health, .. } => {
                Some((sync_name(Some(*sync)), health_name(Some(*health))))
            }
            Cell::NoStatus { .. } => Some(("Unknown", "Unknown")),
            Cell::NotTargeted => None,
        }
    }

    fn app(&self) -> Option<&str> {
        match self {
            Cell::Status { app, .. } | Cell::NoStatus { app } => Some(app),
            Cell::NotTargeted => None,
        }
    }

    /// Whether the cell shows status `s` (sync or health).
    pub fn matches(&self, s: &str) -> bool {
        self.names().is_some_and(|(a, b)| a == s || b == s)
    }

    /// How bad the cell is, for keeping the worst of several.
    fn severity(&self) -> u8 {
        match self.names() {
            None => 0,
            Some((s, h)) => match cell_class(s, h) {
                "bad" => 5,
                "drift" => 4,
                "unknown" => 3,
                "busy" => 2,
                _ => 1,
            },
        }
    }

    /// `self` or `other`, whichever is worse.
    pub fn worst(self, other: Cell) -> Cell {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

/// A column of the overview: an ApplicationSet (its generated
/// applications) or an application of its own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Column {
    pub name: String,
    pub set: bool,
}

/// The overview's data: the page of clusters and fleet-wide counts.
#[derive(Clone, Debug, Default)]
pub struct Grid {
    pub columns: Vec<Column>,
    /// Cluster name, connected, cells in `columns` order.
    pub rows: Vec<(String, bool, Vec<Cell>)>,
    /// Clusters matching the filters (all pages).
    pub matching_clusters: usize,
    pub total_clusters: usize,
    /// Applications matching the filters.
    pub applications: usize,
    /// (name, count) of sync and health statuses over the matching
    /// clusters' cells.
    pub counts: Vec<(&'static str, usize)>,
}

/// Tallies the statuses of `cells`.
pub fn count_cells<'a>(cells: impl Iterator<Item = &'a Cell>) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = [
        "Synced",
        "OutOfSync",
        "Healthy",
        "Progressing",
        "Degraded",
        "Missing",
        "Unknown",
    ]
    .iter()
    .map(|n| (*n, 0))
    .collect();
    for c in cells {
        if let Some((s, h)) = c.names() {
            for (name, n) in counts.iter_mut() {
                if *name == s {
                    *n += 1;
                }
                if *name == h && h != s {
                    *n += 1;
                }
            }
        }
    }
    counts
}

fn cell_class(sync: &str, health: &str) -> &'static str {
    match (sync, health) {
        (_, "Degraded") | (_, "Missing") => "bad",
        ("OutOfSync", _) => "drift",
        (_, "Progressing") => "busy",
        ("Synced", "Healthy") => "good",
        _ => "unknown",
    }
}

/// The fleet overview.
pub fn overview(grid: &Grid, q: &OverviewQuery, error: Option<&str>) -> String {
    let mut h = String::new();
    h.push_str("<h1>Fleet overview</h1>");
    h.push_str("<form method=\"get\" action=\"/\" class=\"filters\">");
    let _ = write!(
        h,
        "<label>Cluster labels <input name=\"label\" value=\"{}\" placeholder=\"env=prod\"></label><label>Application <input name=\"app\" value=\"{}\"></label><label>Project <input name=\"project\" value=\"{}\" placeholder=\"default\"></label><label>Status <select name=\"status\">",
        esc(&q.label),
        esc(&q.app),
        esc(&q.project)
    );
    for s in [
        "",
        "Synced",
        "OutOfSync",
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
        "Missing",
        "Unknown",
    ] {
        let _ = write!(
            h,
            "<option value=\"{s}\"{}>{}</option>",
            if q.status == s { " selected" } else { "" },
            if s.is_empty() { "any" } else { s }
        );
    }
    h.push_str("</select></label><button type=\"submit\">Filter</button></form>");
    if let Some(e) = error {
        let _ = write!(h, "<p class=\"error\" id=\"filter-error\">{}</p>", esc(e));
    }
    h.push_str("<ul class=\"counts\" id=\"counts\">");
    let _ = write!(
        h,
        "<li>clusters <b data-count=\"clusters\">{}</b> of {}</li><li>applications <b data-count=\"applications\">{}</b></li>",
        grid.matching_clusters, grid.total_clusters, grid.applications
    );
    for (name, n) in &grid.counts {
        let _ = write!(
            h,
            "<li class=\"{}\">{name} <b data-count=\"{name}\">{n}</b></li>",
            cell_class(name, name)
        );
    }
    h.push_str("</ul>");
    if grid.columns.is_empty() || grid.rows.is_empty() {
        h.push_str("<p class=\"empty\">Nothing matches.</p>");
    } else {
        h.push_str("<table class=\"grid\" id=\"grid\"><thead><tr><th>cluster</th>");
        for c in &grid.columns {
            let _ = write!(
                h,
                "<th><a href=\"/{}/{}\" title=\"{}\">{}</a></th>",
                if c.set { "appsets" } else { "apps" },
                url_part(&c.name),
                if c.set {
                    "ApplicationSet"
                } else {
                    "Application"
                },
                esc(&c.name)
            );
        }
        h.push_str("</tr></thead><tbody>");
        for (cluster, connected, cells) in &grid.rows {
            let _ = write!(
                h,
                "<tr><th><span class=\"dot {}\"></span>{}</th>",
                if *connected { "on" } else { "off" },
                esc(cluster)
            );
            for cell in cells {
                match (cell.names(), cell.app()) {
                    (Some((s, hl)), Some(app)) => {
                        let _ = write!(
                            h,
                            "<td class=\"cell {}\" data-app=\"{}\" data-cluster=\"{}\" data-sync=\"{s}\" data-health=\"{hl}\"><a href=\"/apps/{}\" title=\"{} {s} / {hl}\">{}</a></td>",
                            cell_class(s, hl),
                            esc(app),
                            esc(cluster),
                            url_part(app),
                            esc(app),
                            short_status(s, hl)
                        );
                    }
                    _ => h.push_str("<td class=\"none\">·</td>"),
                }
            }
            h.push_str("</tr>");
        }
        h.push_str("</tbody></table>");
    }
    let pages = grid.matching_clusters.div_ceil(PAGE_SIZE).max(1);
    let _ = write!(
        h,
        "<p class=\"pager\">page {} of {pages}",
        q.page.min(pages - 1) + 1
    );
    if q.page > 0 {
        let _ = write!(
            h,
            " <a href=\"{}\" rel=\"prev\">previous</a>",
            esc(&q.link(q.page - 1))
        );
    }
    if q.page + 1 < pages {
        let _ = write!(
            h,
            " <a href=\"{}\" rel=\"next\">next</a>",
            esc(&q.link(q.page + 1))
        );
    }
    h.push_str("</p>");
    h
}

fn short_status(sync: &str, health: &str) -> String {
    let s = match sync {
        "Synced" => "S",
        "OutOfSync" => "OOS",
        _ => "?",
    };
    let hl = match health {
        "Healthy" => "H",
        "Progressing" => "P",
        "Degraded" => "D",
        "Suspended" => "Sus",
        "Missing" => "M",
        _ => "?",
    };
    format!("{s}/{hl}")
}

fn key_text(k: Option<&pb::ResourceKey>) -> String {
    match k {
        None => "-".to_owned(),
        Some(k) => {
            let ns = if k.namespace.is_empty() {
                String::new()
            } else {
                format!("{}/", k.namespace)
            };
            format!("{} {ns}{}", k.kind, k.name)
        }
    }
}

fn short_rev(rev: &str) -> &str {
    if rev.len() >= 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        &rev[..8]
    } else if rev.is_empty() {
        "-"
    } else {
        rev
    }
}

/// The application page.
pub fn application(app: &pb::Application, history: &pb::ApplicationHistory, v: &Viewer) -> String {
    let mut h = String::new();
    let name = &app.name;
    let base = format!("/apps/{}", url_part(name));
    let _ = write!(
        h,
        "<h1>Application <span id=\"app-name\">{}</span></h1>",
        esc(name)
    );
    let source = if app.chart.is_empty() {
        format!("{} {}", app.repo_url, app.path)
    } else {
        format!("{} chart {}", app.repo_url, app.chart)
    };
    let _ = write!(
        h,
        "<dl class=\"facts\"><dt>source</dt><dd>{}</dd><dt>target revision</dt><dd>{}</dd><dt>revision</dt><dd id=\"app-revision\">{}</dd><dt>destination</dt><dd>{} / {}</dd><dt>origin</dt><dd>{}</dd>",
        esc(&source),
        esc(&app.target_revision),
        esc(short_rev(&app.revision)),
        esc(&app.destination),
        esc(&app.namespace),
        esc(&app.origin)
    );
    if !app.pinned_revision.is_empty() {
        let _ = write!(
            h,
            "<dt>pinned</dt><dd id=\"pinned\">{} by {}</dd>",
            esc(short_rev(&app.pinned_revision)),
            esc(&app.pinned_by)
        );
    }
    h.push_str("</dl>");
    if !app.error.is_empty() {
        let _ = write!(
            h,
            "<p class=\"error\" id=\"app-error\">{}</p>",
            esc(&app.error)
        );
    }
    if v.can_write {
        h.push_str("<div class=\"actions\">");
        h.push_str(&v.form(&format!("{base}/sync"), "sync"));
        h.push_str("<label><input type=\"checkbox\" name=\"prune\" value=\"true\"> prune</label><label><input type=\"checkbox\" name=\"dry_run\" value=\"true\"> dry run</label><button type=\"submit\" id=\"sync-button\">Sync</button></form>");
        h.push_str(&v.form(&format!("{base}/refresh"), "refresh"));
        h.push_str("<label><input type=\"checkbox\" name=\"hard\" value=\"true\"> hard</label><button type=\"submit\" id=\"refresh-button\">Refresh</button></form>");
        h.push_str("</div>");
    }
    let _ = write!(
        h,
        "<p><a href=\"{base}/diff\" id=\"diff-link\">Live diff against desired</a></p>"
    );
    h.push_str("<h2>Clusters</h2>");
    if app.clusters.is_empty() {
        h.push_str("<p class=\"empty\">The application targets no cluster.</p>");
    }
    for c in &app.clusters {
        let st = c.status.as_ref();
        let (s, hl) = (
            sync_name(st.map(|s| s.sync)),
            health_name(st.map(|s| s.health)),
        );
        let _ = write!(
            h,
            "<section class=\"cluster\" data-cluster=\"{}\"><h3>{} <span class=\"badge {}\" data-sync=\"{s}\" data-health=\"{hl}\">{s} / {hl}</span></h3>",
            esc(&c.cluster),
            esc(&c.cluster),
            cell_class(s, hl)
        );
        let Some(st) = st else {
            h.push_str("<p class=\"empty\">No status reported yet.</p></section>");
            continue;
        };
        let _ = write!(
            h,
            "<p>revision {} (wanted {}), observed {}, last applied {}</p>",
            esc(short_rev(&st.revision)),
            esc(short_rev(&c.desired_revision)),
            esc(&time_ms(st.observed_ms)),
            esc(&time_ms(st.last_applied_ms))
        );
        if !st.message.is_empty() {
            let _ = write!(h, "<p class=\"message\">{}</p>", esc(&st.message));
        }
        for cond in &st.conditions {
            let _ = write!(
                h,
                "<p class=\"condition\"><b>{}</b> {}</p>",
                esc(&cond.r#type),
                esc(&cond.message)
            );
        }
        if let Some(op) = &st.operation {
            let _ = write!(
                h,
                "<div class=\"operation\"><h4>Last operation</h4><p><span class=\"phase\" data-phase=\"{}\">{}</span> {} {}, started {}, finished {}</p>",
                esc(&op.phase),
                esc(&op.phase),
                esc(&op.sync_phase),
                esc(&op.message),
                esc(&time_ms(op.started_ms)),
                esc(&time_ms(op.finished_ms))
            );
            if !op.hooks.is_empty() {
                h.push_str("<table><thead><tr><th>hook</th><th>phase</th><th>status</th><th>message</th></tr></thead><tbody>");
                for hook in &op.hooks {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&key_text(hook.key.as_ref())),
                        esc(&hook.phase),
                        esc(&hook.status),
                        esc(&hook.message)
                    );
                }
                h.push_str("</tbody></table>");
            }
            h.push_str("</div>");
        }
        h.push_str("<table class=\"resources\"><thead><tr><th>resource</th><th>sync</th><th>health</th><th>message</th></tr></thead><tbody>");
        for r in &st.resources {
            let (rs, rh) = (sync_name(Some(r.sync)), health_name(Some(r.health)));
            let mut msg = esc(&r.message);
            if r.requires_pruning {
                msg.push_str(" <em>requires pruning</em>");
            }
            for d in &r.drift {
                let _ = write!(msg, "<div class=\"drift\">{}</div>", esc(d));
            }
            let _ = write!(
                h,
                "<tr class=\"{}\" data-resource=\"{}\" data-sync=\"{rs}\"><td>{}</td><td>{rs}</td><td>{rh}</td><td>{msg}</td></tr>",
                cell_class(rs, rh),
                esc(&key_text(r.key.as_ref())),
                esc(&key_text(r.key.as_ref())),
            );
        }
        h.push_str("</tbody></table></section>");
    }
    h.push_str("<h2>History</h2><table class=\"history\" id=\"history\"><thead><tr><th>id</th><th>revision</th><th>deployed</th><th>by</th><th>clusters</th><th></th></tr></thead><tbody>");
    for e in history.entries.iter().rev() {
        let _ = write!(
            h,
            "<tr data-history=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>",
            e.id,
            e.id,
            esc(short_rev(&e.revision)),
            esc(&time_ms(e.deployed_ms)),
            esc(&e.initiated_by),
            esc(&e.clusters.join(", "))
        );
        if v.can_write {
            h.push_str(&v.form(&format!("{base}/rollback"), "rollback"));
            let _ = write!(
                h,
                "<input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\" class=\"rollback-button\">Roll back to {}</button></form>",
                e.id, e.id
            );
        }
        h.push_str("</td></tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// What a sync or rollback started, or a dry run's answer.
pub fn sync_result(app: &str, r: &pb::SyncApplicationResponse, dry_run: bool) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<h1>{} of <a href=\"/apps/{}\">{}</a></h1><p>revision {}</p>",
        if dry_run { "Dry run" } else { "Sync" },
        url_part(app),
        esc(app),
        esc(short_rev(&r.revision))
    );
    if !r.not_connected.is_empty() {
        let _ = write!(
            h,
            "<p class=\"error\">not connected: {}</p>",
            esc(&r.not_connected.join(", "))
        );
    }
    for c in &r.results {
        let _ = write!(
            h,
            "<section class=\"cluster\" id=\"result-{}\"><h3>{}</h3>",
            esc(&c.cluster),
            esc(&c.cluster)
        );
        if !c.error.is_empty() {
            let _ = write!(h, "<p class=\"error\">{}</p>", esc(&c.error));
        }
        h.push_str("<table class=\"results\"><thead><tr><th>resource</th><th>action</th><th>message</th></tr></thead><tbody>");
        for o in &c.resources {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"action\">{}</td><td>{} {}</td></tr>",
                esc(&key_text(o.key.as_ref())),
                esc(&o.action),
                esc(&o.message),
                esc(&o.error)
            );
        }
        h.push_str("</tbody></table></section>");
    }
    h
}

/// The live diff page (`app diff`).
pub fn diff(app: &str, d: &pb::DiffApplicationResponse) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<h1>Diff of <a href=\"/apps/{}\">{}</a></h1>",
        url_part(app),
        esc(app)
    );
    for c in &d.clusters {
        let _ = write!(h, "<section class=\"cluster\"><h3>{}</h3>", esc(&c.cluster));
        if !c.error.is_empty() {
            let _ = write!(h, "<p class=\"error\">{}</p>", esc(&c.error));
        }
        if c.resources.is_empty() && c.error.is_empty() {
            h.push_str("<p class=\"empty\">No differences.</p>");
        }
        for r in &c.resources {
            let _ = write!(
                h,
                "<h4>{}</h4><pre class=\"diff\">{}</pre>",
                esc(&key_text(r.key.as_ref())),
                esc(&resource_diff(&c.cluster, r))
            );
        }
        h.push_str("</section>");
    }
    h
}

/// A unified diff of one object, live against desired, as `flotilla app
/// diff` prints it (live projected on the desired object's fields).
fn resource_diff(cluster: &str, r: &pb::ResourceDiff) -> String {
    use crate::cli::diff;
    let desired: serde_json::Value = serde_json::from_str(&r.desired).unwrap_or_default();
    let live = if r.live.is_empty() {
        String::new()
    } else {
        serde_json::from_str::<serde_json::Value>(&r.live)
            .map(|l| diff::yaml(&diff::project(&l, &desired)))
            .unwrap_or_default()
    };
    let key = key_text(r.key.as_ref());
    diff::unified(
        &format!("{cluster}/live/{key}"),
        &format!("{cluster}/desired/{key}"),
        &live,
        &diff::yaml(&desired),
    )
}

/// The labels of a cluster as its edit field shows them: `k=v, k2=v2`.
pub fn labels_text<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut pairs: Vec<_> = labels.into_iter().collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A label edit: the labels to set and the keys to remove so that a
/// cluster labelled `current` ends up with exactly the labels of `text`
/// (`k=v` terms separated by commas or white space).
///
/// # Errors
/// A term is not `key=value`, has an empty key, or names a key twice.
pub fn label_edit(
    current: &std::collections::BTreeMap<String, String>,
    text: &str,
) -> Result<(std::collections::BTreeMap<String, String>, Vec<String>), String> {
    let mut wanted = std::collections::BTreeMap::new();
    for term in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        let (k, v) = term
            .split_once('=')
            .ok_or_else(|| format!("label {term:?} is not key=value (e.g. env=prod)"))?;
        if k.is_empty() {
            return Err(format!("label {term:?} has an empty key"));
        }
        if wanted.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(format!("label key {k:?} is given twice"));
        }
    }
    let remove = current
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    wanted.retain(|k, v| current.get(k) != Some(v));
    Ok((wanted, remove))
}

/// How long until `not_after_ms`, as the clusters page says it.
fn expiry(not_after_ms: i64, now_ms: i64) -> String {
    if not_after_ms <= 0 {
        return "<span class=\"muted\">not connected yet</span>".to_owned();
    }
    let left = not_after_ms - now_ms;
    let when = esc(&time_ms(not_after_ms));
    if left <= 0 {
        format!("<span class=\"bad\">expired {when}</span>")
    } else {
        let days = left / 86_400_000;
        let class = if days < 7 { "warn" } else { "good" };
        format!("<span class=\"{class}\" title=\"{when}\">{when} (in {days} d)</span>")
    }
}

/// The clusters page: each cluster's labels (with an edit form for a
/// viewer who may write), agent version, connection, client certificate
/// expiry and how many applications target it (`apps`, by name).
pub fn clusters(
    list: &[pb::Cluster],
    apps: &std::collections::HashMap<String, usize>,
    viewer: &Viewer,
    now_ms: i64,
) -> String {
    let mut h = String::from(
        "<h1>Clusters</h1><table class=\"list\" id=\"clusters\"><thead><tr><th>name</th><th>labels</th><th>agent</th><th>connection</th><th>certificate expires</th><th>apps</th><th>generation (acked)</th><th>server</th></tr></thead><tbody>",
    );
    for c in list {
        let mut labels: Vec<_> = c.labels.iter().collect();
        labels.sort();
        let mut labels: String = labels
            .iter()
            .map(|(k, v)| format!("<span class=\"label\">{}={}</span>", esc(k), esc(v)))
            .collect();
        if viewer.can_write {
            let _ = write!(
                labels,
                "{}<input type=\"text\" name=\"labels\" value=\"{}\" aria-label=\"labels of {}\" placeholder=\"env=prod, region=eu\"><button type=\"submit\">Save labels</button></form>",
                viewer.form(&format!("/clusters/{}/labels", url_part(&c.name)), "labels"),
                esc(&labels_text(c.labels.iter())),
                esc(&c.name)
            );
        }
        let conn = if c.connected {
            "<span class=\"good\">connected</span>".to_owned()
        } else {
            format!("disconnected, last seen {}", esc(&time_ms(c.last_seen_ms)))
        };
        let n = apps.get(&c.name).copied().unwrap_or_default();
        let _ = write!(
            h,
            "<tr data-cluster=\"{}\"><td>{}</td><td class=\"labels\">{labels}</td><td>{}</td><td>{conn}</td><td class=\"cert\">{}</td><td class=\"apps\">{n}</td><td>{} ({})</td><td>{}</td></tr>",
            esc(&c.name),
            esc(&c.name),
            esc(if c.agent_version.is_empty() {
                "-"
            } else {
                &c.agent_version
            }),
            expiry(c.cert_not_after_ms, now_ms),
            c.generation,
            c.acked_generation,
            esc(&c.server)
        );
    }
    h.push_str("</tbody></table>");
    h
}

/// The repositories page.
pub fn repositories(list: &[pb::Repository]) -> String {
    let mut h = String::from(
        "<h1>Repositories</h1><table class=\"list\" id=\"repos\"><thead><tr><th>url</th><th>type</th><th>revision</th><th>apps path</th><th>last commit</th><th>last fetch</th><th>status</th></tr></thead><tbody>",
    );
    for r in list {
        let status = if r.last_error.is_empty() {
            "<span class=\"good\">ok</span>".to_owned()
        } else {
            format!("<span class=\"bad\">{}</span>", esc(&r.last_error))
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{status}</td></tr>",
            esc(&r.url),
            esc(&r.r#type),
            esc(&r.revision),
            esc(&r.apps_path),
            esc(short_rev(&r.last_commit)),
            esc(&time_ms(r.last_fetch_ms))
        );
    }
    h.push_str("</tbody></table>");
    h
}

/// The ApplicationSets list.
pub fn appsets(list: &[pb::ApplicationSet]) -> String {
    let mut h = String::from(
        "<h1>ApplicationSets</h1><table class=\"list\" id=\"appsets\"><thead><tr><th>name</th><th>applications</th><th>held deletions</th><th>conditions</th></tr></thead><tbody>",
    );
    for s in list {
        let _ = write!(
            h,
            "<tr><td><a href=\"/appsets/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url_part(&s.name),
            esc(&s.name),
            s.applications.len(),
            s.pending_deletions.len(),
            esc(&s
                .conditions
                .iter()
                .map(|c| c.r#type.as_str())
                .collect::<Vec<_>>()
                .join(", "))
        );
    }
    h.push_str("</tbody></table>");
    h
}

/// One ApplicationSet.
pub fn appset(s: &pb::ApplicationSet, v: &Viewer) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<h1>ApplicationSet <span id=\"appset-name\">{}</span></h1><dl class=\"facts\"><dt>origin</dt><dd>{}</dd><dt>last evaluated</dt><dd>{}</dd><dt>last good</dt><dd>{}</dd></dl>",
        esc(&s.name),
        esc(&s.origin),
        esc(&time_ms(s.last_evaluated_ms)),
        esc(&time_ms(s.last_good_ms))
    );
    h.push_str("<h2>Generated applications</h2><ul id=\"generated\">");
    for a in &s.applications {
        let _ = write!(
            h,
            "<li><a href=\"/apps/{}\">{}</a></li>",
            url_part(a),
            esc(a)
        );
    }
    h.push_str("</ul><h2>Conditions</h2><ul id=\"conditions\">");
    for c in &s.conditions {
        let _ = write!(
            h,
            "<li><b>{}</b> {} {}</li>",
            esc(&c.r#type),
            esc(&c.application),
            esc(&c.message)
        );
    }
    h.push_str("</ul>");
    rollout_section(&mut h, s);
    h.push_str("<h2>Held deletions</h2>");
    if s.pending_deletions.is_empty() {
        h.push_str("<p class=\"empty\" id=\"no-held\">None.</p>");
    } else {
        h.push_str("<ul id=\"held\">");
        for a in &s.pending_deletions {
            let _ = write!(h, "<li>{}</li>", esc(a));
        }
        h.push_str("</ul>");
        if v.can_write {
            h.push_str(&v.form(
                &format!("/appsets/{}/confirm", url_part(&s.name)),
                "confirm",
            ));
            h.push_str("<label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> delete these applications</label><button type=\"submit\" id=\"confirm-button\">Confirm deletions</button></form>");
        }
    }
    h
}

/// A RollingSync set's progress (its `applicationStatus`): each generated
/// application's step, status and message, in step order.
fn rollout_section(h: &mut String, s: &pb::ApplicationSet) {
    if s.application_status.is_empty() {
        return;
    }
    let mut rows: Vec<&pb::ApplicationSetApplicationStatus> = s.application_status.iter().collect();
    // Steps are 1-based; "-1" (no step selects it) last.
    let order = |step: &str| {
        step.parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(i64::MAX)
    };
    rows.sort_by(|a, b| (order(&a.step), &a.application).cmp(&(order(&b.step), &b.application)));
    let healthy = rows.iter().filter(|r| r.status == "Healthy").count();
    let _ = write!(
        h,
        "<h2>Rollout (RollingSync)</h2><p id=\"rollout-summary\">{healthy} of {} applications Healthy at their target.</p><table class=\"list\" id=\"rollout\"><thead><tr><th>step</th><th>application</th><th>status</th><th>message</th><th>target revisions</th><th>since</th></tr></thead><tbody>",
        rows.len()
    );
    for r in rows {
        let step = if order(&r.step) == i64::MAX {
            "none".to_owned()
        } else {
            r.step.clone()
        };
        let revisions: Vec<&str> = r.target_revisions.iter().map(|v| short_rev(v)).collect();
        let _ = write!(
            h,
            "<tr data-rollout-status=\"{}\"><td>{}</td><td><a href=\"/apps/{}\">{}</a></td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&r.status),
            esc(&step),
            url_part(&r.application),
            esc(&r.application),
            esc(&r.status),
            esc(&r.message),
            esc(&revisions.join(", ")),
            esc(&time_ms(r.last_transition_ms))
        );
    }
    h.push_str("</tbody></table>");
}

/// The login page.
pub fn login(error: Option<&str>) -> String {
    let mut h = String::from("<h1>Log in to Flotilla</h1>");
    if let Some(e) = error {
        let _ = write!(h, "<p class=\"error\" id=\"login-error\">{}</p>", esc(e));
    }
    h.push_str("<form method=\"post\" action=\"/login\" class=\"login\"><label>API token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" required></label><button type=\"submit\" id=\"login-button\">Log in</button></form><p>An admin token is in the hub's data directory (<code>admin.token</code>); <code>flotilla token create NAME --read-only</code> makes a read-only one.</p>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(can_write: bool) -> Viewer {
        Viewer {
            token_name: "t".into(),
            can_write,
            csrf: "c0ffee".into(),
        }
    }

    fn app() -> pb::Application {
        pb::Application {
            name: "guest<book>".into(),
            clusters: vec![pb::ClusterAppStatus {
                cluster: "c1".into(),
                status: Some(pb::AppStatus {
                    sync: pb::SyncStatus::OutOfSync as i32,
                    health: pb::HealthStatus::Healthy as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Labels set and keys removed, or the error.
    type Expected = Result<(Vec<(&'static str, &'static str)>, Vec<&'static str>), &'static str>;

    #[test]
    fn a_label_edit_sets_what_changed_and_removes_what_is_gone() {
        let current: std::collections::BTreeMap<String, String> = [
            ("env".to_owned(), "dev".to_owned()),
            ("region".to_owned(), "eu".to_owned()),
            ("team".to_owned(), "a".to_owned()),
        ]
        .into();
        let cases: [(&str, Expected); 6] = [
            ("env=dev, region=eu, team=a", Ok((vec![], vec![]))),
            (
                "env=prod,region=eu\ntier=web",
                Ok((vec![("env", "prod"), ("tier", "web")], vec!["team"])),
            ),
            ("", Ok((vec![], vec!["env", "region", "team"]))),
            ("env", Err("label \"env\" is not key=value (e.g. env=prod)")),
            ("=x", Err("label \"=x\" has an empty key")),
            ("a=1, a=2", Err("label key \"a\" is given twice")),
        ];
        for (text, want) in cases {
            let got = label_edit(&current, text);
            let want = want
                .map(|(set, remove)| {
                    (
                        set.into_iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                        remove.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    )
                })
                .map_err(str::to_owned);
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn the_clusters_page_shows_expiry_and_edits_labels_only_for_writers() {
        let now = 1_800_000_000_000;
        let list = vec![
            pb::Cluster {
                name: "east".into(),
                labels: [("env".to_owned(), "prod".to_owned())].into(),
                connected: true,
                agent_version: "0.9.1".into(),
                cert_not_after_ms: now + 20 * 86_400_000 + 1,
                ..Default::default()
            },
            pb::Cluster {
                name: "west".into(),
                cert_not_after_ms: now - 1,
                ..Default::default()
            },
        ];
        let apps = [("east".to_owned(), 3)].into();
        let admin = clusters(&list, &apps, &viewer(true), now);
        assert!(admin.contains("(in 20 d)"), "{admin}");
        assert!(admin.contains("class=\"bad\">expired"), "{admin}");
        assert!(
            admin.contains("action=\"/clusters/east/labels\""),
            "{admin}"
        );
        assert!(
            admin.contains("name=\"labels\" value=\"env=prod\""),
            "{admin}"
        );
        assert!(admin.contains("<td class=\"apps\">3</td>"), "{admin}");
        assert!(admin.contains("0.9.1"), "{admin}");
        let reader = clusters(&list, &apps, &viewer(false), now);
        assert!(!reader.contains("<form"), "{reader}");
        assert!(reader.contains("env=prod"), "{reader}");
    }

    fn history() -> pb::ApplicationHistory {
        pb::ApplicationHistory {
            entries: vec![pb::DeploymentRecord {
                id: 1,
                revision: "a".repeat(40),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_read_only_viewer_gets_no_forms() {
        let ro = application(&app(), &history(), &viewer(false));
        assert!(!ro.contains("<form"), "{ro}");
        let rw = application(&app(), &history(), &viewer(true));
        assert_eq!(rw.matches("<form").count(), 3, "sync, refresh, rollback");
        assert_eq!(rw.matches("value=\"c0ffee\"").count(), 3);
        let set = pb::ApplicationSet {
            name: "s".into(),
            pending_deletions: vec!["x".into()],
            ..Default::default()
        };
        assert!(!appset(&set, &viewer(false)).contains("<form"));
        assert!(appset(&set, &viewer(true)).contains("/appsets/s/confirm"));
    }

    #[test]
    fn a_rolling_sync_set_shows_its_progress_in_step_order() {
        let status = |app: &str, step: &str, status: &str| pb::ApplicationSetApplicationStatus {
            application: app.into(),
            step: step.into(),
            status: status.into(),
            message: format!("{app} is {status}"),
            target_revisions: vec!["b".repeat(40)],
            ..Default::default()
        };
        let set = pb::ApplicationSet {
            name: "web".into(),
            application_status: vec![
                status("web-prod", "3", "Waiting"),
                status("web-sandbox", "-1", "Waiting"),
                status("web-dev", "1", "Healthy"),
                status("web-<stg>", "2", "Progressing"),
            ],
            ..Default::default()
        };
        let h = appset(&set, &viewer(false));
        assert!(h.contains("1 of 4 applications Healthy"), "{h}");
        let at = |needle: &str| h.find(needle).unwrap_or_else(|| panic!("{needle} in {h}"));
        assert!(at(">web-dev<") < at(">web-&lt;stg&gt;<"));
        assert!(at(">web-&lt;stg&gt;<") < at(">web-prod<"));
        assert!(at(">web-prod<") < at(">web-sandbox<"));
        assert!(
            h.contains("<td>none</td>"),
            "no step selects the sandbox: {h}"
        );
        assert!(h.contains("data-rollout-status=\"Progressing\""));
        assert!(!appset(&pb::ApplicationSet::default(), &viewer(false)).contains("Rollout"));
    }

    #[test]
    fn names_are_escaped_and_linked_encoded() {
        let h = application(&app(), &history(), &viewer(true));
        assert!(h.contains("guest&lt;book&gt;"));
        assert!(h.contains("/apps/guest%3Cbook%3E/sync"));
        assert!(!h.contains("<book>"));
        assert!(h.contains("data-sync=\"OutOfSync\" data-health=\"Healthy\""));
    }

    #[test]
    fn filters_are_checked() {
        let q = OverviewQuery {
            label: "env=prod, region = eu".into(),
            ..Default::default()
        };
        assert_eq!(
            q.labels().unwrap(),
            vec![
                ("env".into(), "prod".into()),
                ("region".into(), "eu".into())
            ]
        );
        let bad = OverviewQuery {
            label: "prod".into(),
            status: "Broken".into(),
            ..Default::default()
        };
        assert!(
            bad.labels()
                .unwrap_err()
                .contains("\"prod\" is not key=value")
        );
        assert!(bad.check_status().unwrap_err().contains("\"Broken\""));
    }

    #[test]
    fn counts_tally_sync_and_health() {
        let cells = [
            good(),
            bad(),
            Cell::NotTargeted,
            Cell::NoStatus { app: "x".into() },
        ];
        let c = count_cells(cells.iter());
        let get = |n: &str| c.iter().find(|(k, _)| *k == n).unwrap().1;
        assert_eq!(get("Synced"), 1);
        assert_eq!(get("OutOfSync"), 1);
        assert_eq!(get("Healthy"), 1);
        assert_eq!(get("Degraded"), 1);
        assert_eq!(get("Unknown"), 1, "no status counts once, not twice");
    }

    fn good() -> Cell {
        Cell::Status {
            sync: pb::SyncStatus::Synced as i32,
            health: pb::HealthStatus::Healthy as i32,
            app: "a".into(),
        }
    }

    fn bad() -> Cell {
        Cell::Status {
            sync: pb::SyncStatus::OutOfSync as i32,
            health: pb::HealthStatus::Degraded as i32,
            app: "b".into(),
        }
    }

    #[test]
    fn a_column_shows_its_worst_application() {
        assert_eq!(good().worst(bad()), bad());
        assert_eq!(bad().worst(good()), bad());
        assert_eq!(Cell::NotTargeted.worst(good()), good());
        let unknown = Cell::NoStatus { app: "c".into() };
        assert_eq!(good().worst(unknown.clone()), unknown);
    }

    #[test]
    fn the_grid_links_cells_to_their_application() {
        let grid = Grid {
            columns: vec![
                Column {
                    name: "guestbook".into(),
                    set: true,
                },
                Column {
                    name: "solo".into(),
                    set: false,
                },
            ],
            rows: vec![("c1".into(), true, vec![bad(), Cell::NotTargeted])],
            matching_clusters: 1,
            total_clusters: 1,
            applications: 1,
            counts: Vec::new(),
        };
        let h = overview(&grid, &OverviewQuery::default(), None);
        assert!(h.contains("href=\"/appsets/guestbook\""), "{h}");
        assert!(h.contains("href=\"/apps/solo\""), "{h}");
        assert!(
            h.contains("data-app=\"b\" data-cluster=\"c1\" data-sync=\"OutOfSync\""),
            "{h}"
        );
        assert!(h.contains("page 1 of 1"), "{h}");
    }
}
