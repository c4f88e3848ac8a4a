//! Sync windows (deploy windows): when an AppProject lets its applications
//! sync, with Argo CD's rules.
//!
//! A window opens at each time its `schedule` (standard 5-field cron, or a
//! `@daily`-style descriptor) names in its `timeZone` (UTC when unset) and
//! stays open for `duration` (Go's form: `1h`, `30m`, `1h30m`, `90s`). It
//! applies to an application on a cluster when its `applications`,
//! `clusters` (name or server) or `namespaces` globs match, any of them or,
//! with `andOperator`, every one that is set.
//!
//! [`Windows::verdict`] decides, Argo CD's `CanSync`: an open deny window
//! blocks; when a matching allow window exists, syncing is possible only
//! while one is open; a manual sync passes a blocking deny window only when
//! every open matching deny window has `manualSync`, and passes closed allow
//! windows only when every one of them has it.
//!
//! Everything here is pure over a given instant: the hub's shell
//! ([`hold`], and the reconciler in `crate::window_wake`) brings the clock.

use std::collections::{BTreeMap, HashMap};

use flotilla_proto as pb;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;

use super::SyncWindow;
use crate::model::Application;
use crate::store::{Store, StoreError};

/// How far ahead a schedule is searched for its next time (a `29 2`
/// schedule fires once in four years; a schedule that never fires, such as
/// `0 0 31 2 *`, is refused when the project is read).
const SEARCH_DAYS: i32 = 366 * 5;

/// How many overlapping openings extend an open window at most.
const MAX_EXTENSIONS: usize = 1_500;

/// How many window changes are followed to find when a blocked sync may go.
const MAX_CHANGES: usize = 64;

/// A parsed 5-field cron schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month and day of week both restricted: either matches
    /// (cron's rule); otherwise both must.
    either_day: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field_value(text: &str, names: &[&str], base: u32) -> Option<u32> {
    if let Ok(n) = text.parse::<u32>() {
        return Some(n);
    }
    let lower = text.to_ascii_lowercase();
    names
        .iter()
        .position(|n| *n == lower)
        .and_then(|i| u32::try_from(i).ok())
        .map(|i| i + base)
}

/// One cron field as a bit set of the values in `min..=max`.
fn parse_field(field: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{what}: bad step {s:?}"))?;
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = field_value(a, names, min).ok_or_else(|| format!("{what}: bad value {a:?}"))?;
            let b = field_value(b, names, min).ok_or_else(|| format!("{what}: bad value {b:?}"))?;
            (a, b)
        } else {
            let v = field_value(range, names, min)
                .ok_or_else(|| format!("{what}: bad value {range:?}"))?;
            // `5/10` is `5-max/10`, as in robfig/cron.
            (v, if step.is_some() { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!(
                "{what}: {range:?} is outside {min}-{max} or reversed"
            ));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    if bits == 0 {
        return Err(format!("{what}: empty field"));
    }
    Ok(bits)
}

impl Cron {
    /// Parses a standard 5-field schedule (minute hour day-of-month month
    /// day-of-week; `*`, lists, ranges, steps, month and weekday names,
    /// Sunday as 0 or 7) or a descriptor (`@yearly`, `@annually`,
    /// `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`).
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn parse(schedule: &str) -> Result<Self, String> {
        let spec = match schedule.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unknown descriptor {s:?}")),
            s => s,
        };
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{schedule:?} must have 5 fields (minute hour day-of-month month day-of-week), it has {}",
                fields.len()
            ));
        }
        let mut weekdays = parse_field(fields[4], "day of week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        let restricted = |f: &str| !(f.starts_with('*') || f.starts_with('?'));
        let cron = Self {
            minutes: parse_field(fields[0], "minute", 0, 59, &[])?,
            hours: parse_field(fields[1], "hour", 0, 23, &[])?,
            days: parse_field(fields[2], "day of month", 1, 31, &[])?,
            months: parse_field(fields[3], "month", 1, 12, &MONTHS)?,
            weekdays,
            either_day: restricted(fields[2]) && restricted(fields[4]),
        };
        // A schedule that can never fire (30 February) is a mistake. A
        // valid (month, day) pair falls on every weekday over the years, so
        // that is all there is to check.
        const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let fires = (1..=12u32).any(|m| {
            cron.months & (1 << m) != 0
                && (1..=LONGEST[m as usize - 1]).any(|d| cron.days & (1 << d) != 0)
        });
        if !fires {
            return Err(format!("{schedule:?} never fires"));
        }
        Ok(cron)
    }

    fn day_matches(&self, day: Date) -> bool {
        let bit = |set: u64, v: i64| u32::try_from(v).is_ok_and(|v| v < 64 && set & (1 << v) != 0);
        if !bit(self.months, i64::from(day.month())) {
            return false;
        }
        let dom = bit(self.days, i64::from(day.day()));
        let dow = bit(
            self.weekdays,
            i64::from(day.weekday().to_sunday_zero_offset()),
        );
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first time the schedule names strictly after `after`, read in
    /// `tz`. A local time that does not exist (a DST gap) fires at the
    /// instant the gap ends; one that occurs twice fires at the first.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = tz.to_datetime(after);
        let first_day = local.date();
        for d in 0..SEARCH_DAYS {
            let Ok(day) = first_day.checked_add(jiff::Span::new().days(d)) else {
                return None;
            };
            if !self.day_matches(day) {
                continue;
            }
            let (first_hour, first_minute) = if d == 0 {
                (local.hour(), local.minute())
            } else {
                (0, 0)
            };
            for h in first_hour..24i8 {
                if self.hours & (1 << h) == 0 {
                    continue;
                }
                let from = if h == first_hour { first_minute } else { 0 };
                for m in from..60i8 {
                    if self.minutes & (1 << m) == 0 {
                        continue;
                    }
                    let dt = DateTime::from_parts(day, Time::constant(h, m, 0, 0));
                    let Ok(at) = tz.to_ambiguous_timestamp(dt).compatible() else {
                        continue;
                    };
                    if at > after {
                        return Some(at);
                    }
                }
            }
        }
        None
    }
}

/// Parses a Go duration (`1h`, `30m`, `1h30m`, `90s`, `1.5h`, `500ms`).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration (examples: 1h, 30m, 1h30m, 90s)");
    let s = text.trim();
    if s.is_empty() || s.starts_with('-') {
        return Err(bad());
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut rest = s;
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        nanos += value * scale;
    }
    if !nanos.is_finite() || nanos > 9.2e18 {
        return Err(bad());
    }
    // Rounded to whole nanoseconds; the value is finite and non-negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(std::time::Duration::from_nanos(nanos.round() as u64))
}

/// `kind` of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Allow,
    Deny,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Allow => "allow",
            Kind::Deny => "deny",
        }
    }
}

/// One window of a project, checked and ready to evaluate.
#[derive(Clone, Debug)]
pub struct Window {
    /// Its index in `spec.syncWindows`.
    pub index: usize,
    pub kind: Kind,
    pub cron: Cron,
    pub duration: std::time::Duration,
    pub tz: TimeZone,
    pub spec: SyncWindow,
}

/// Where an application is synced: what the window globs match.
#[derive(Clone, Copy, Debug, Default)]
pub struct Target<'a> {
    pub app: &'a str,
    pub namespace: &'a str,
    pub cluster_name: &'a str,
    pub cluster_server: &'a str,
}

fn any_glob(patterns: &[String], text: &str) -> bool {
    !text.is_empty()
        && patterns
            .iter()
            .any(|p| flotilla_proto::project_rules::glob_match(p, text, &[]))
}

impl Window {
    /// Checks one `spec.syncWindows[index]`.
    ///
    /// # Errors
    /// `(field, message)`: the field of the window that is wrong.
    pub fn compile(index: usize, spec: &SyncWindow) -> Result<Self, (String, String)> {
        let field = |f: &str| format!("spec.syncWindows[{index}].{f}");
        let kind = match spec.kind.as_str() {
            "allow" => Kind::Allow,
            "deny" => Kind::Deny,
            other => {
                return Err((
                    field("kind"),
                    format!("must be allow or deny, got {other:?}"),
                ));
            }
        };
        let cron = Cron::parse(&spec.schedule).map_err(|e| (field("schedule"), e))?;
        let duration = parse_duration(&spec.duration).map_err(|e| (field("duration"), e))?;
        if duration.is_zero() {
            return Err((field("duration"), "must be longer than zero".to_owned()));
        }
        let tz = if spec.time_zone.is_empty() || spec.time_zone == "UTC" {
            TimeZone::UTC
        } else {
            TimeZone::get(&spec.time_zone).map_err(|e| {
                (
                    field("timeZone"),
                    format!("unknown time zone {:?}: {e}", spec.time_zone),
                )
            })?
        };
        Ok(Self {
            index,
            kind,
            cron,
            duration,
            tz,
            spec: spec.clone(),
        })
    }

    fn span(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::try_from(self.duration).unwrap_or(jiff::SignedDuration::MAX)
    }

    /// Argo CD's `Matches`: any set list matching, or with `andOperator`
    /// every set list. A window with no list matches nothing.
    pub fn matches(&self, t: &Target<'_>) -> bool {
        let s = &self.spec;
        let lists = [
            (!s.applications.is_empty(), any_glob(&s.applications, t.app)),
            (
                !s.clusters.is_empty(),
                any_glob(&s.clusters, t.cluster_name) || any_glob(&s.clusters, t.cluster_server),
            ),
            (
                !s.namespaces.is_empty(),
                any_glob(&s.namespaces, t.namespace),
            ),
        ];
        let set: Vec<bool> = lists.iter().filter(|(set, _)| *set).map(|l| l.1).collect();
        if set.is_empty() {
            return false;
        }
        if s.and_operator {
            set.iter().all(|m| *m)
        } else {
            set.iter().any(|m| *m)
        }
    }

    /// When the window is open at `now`: the instant it closes (later
    /// openings that overlap extend it); `None` when closed.
    pub fn open_until(&self, now: Timestamp) -> Option<Timestamp> {
        let span = self.span();
        let since = now.checked_sub(span).ok()?;
        // The first opening after now - duration; open when it is not
        // after now (Argo CD: `schedule.Next(now - duration)` before now).
        let start = self.cron.next_after(since, &self.tz)?;
        if start > now {
            return None;
        }
        let mut end = start.checked_add(span).ok()?;
        let mut last = start;
        // Openings inside the window keep it open (bounded: a schedule
        // that reopens within its own duration for longer than that is
        // shown closing after those openings).
        for _ in 0..MAX_EXTENSIONS {
            match self.cron.next_after(last, &self.tz) {
                Some(next) if next <= end => {
                    end = end.max(next.checked_add(span).ok()?);
                    last = next;
                }
                _ => break,
            }
        }
        Some(end)
    }

    /// The next opening strictly after `now`.
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        self.cron.next_after(now, &self.tz)
    }

    /// A short description: `deny window 0 (0 22 * * *, 1h, Europe/Paris)`.
    pub fn describe(&self) -> String {
        let tz = if self.spec.time_zone.is_empty() {
            "UTC"
        } else {
            &self.spec.time_zone
        };
        format!(
            "{} window {} ({}, {}, {tz})",
            self.kind.as_str(),
            self.index,
            self.spec.schedule,
            self.spec.duration
        )
    }
}

/// Checks every window of a project.
///
/// # Errors
/// `(field, message)` of the first bad window.
pub fn compile_all(specs: &[SyncWindow]) -> Result<Vec<Window>, (String, String)> {
    specs
        .iter()
        .enumerate()
        .map(|(i, w)| Window::compile(i, w))
        .collect()
}

/// Why a sync cannot happen now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The window that blocks (the open deny window, or the first closed
    /// allow window).
    pub window: String,
    /// When syncing becomes possible, as far as the windows tell (`None`:
    /// not within the search horizon).
    pub until: Option<Timestamp>,
}

impl Block {
    /// `blocked by sync window deny window 0 (…) until 2026-…Z`.
    pub fn message(&self, project: &str) -> String {
        let until = self
            .until
            .map_or_else(|| "further notice".to_owned(), |t| t.to_string());
        format!(
            "blocked by sync window: {} of project {project} until {until}",
            self.window
        )
    }
}

/// The windows of one project, compiled.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    pub windows: Vec<Window>,
}

impl Windows {
    /// Compiles `specs` (already checked when the project was read; a bad
    /// one here is skipped, it cannot have been stored).
    pub fn of(specs: &[SyncWindow]) -> Self {
        Self {
            windows: specs
                .iter()
                .enumerate()
                .filter_map(|(i, w)| Window::compile(i, w).ok())
                .collect(),
        }
    }

    /// Argo CD's `CanSync` for `target` at `now`: `None` when a sync may
    /// happen, else what blocks it and until when.
    pub fn verdict(&self, t: &Target<'_>, manual: bool, now: Timestamp) -> Option<Block> {
        let matching: Vec<&Window> = self.windows.iter().filter(|w| w.matches(t)).collect();
        if matching.is_empty() {
            return None;
        }
        let open: Vec<(&Window, Timestamp)> = matching
            .iter()
            .filter_map(|w| w.open_until(now).map(|end| (*w, end)))
            .collect();
        let denies: Vec<&(&Window, Timestamp)> =
            open.iter().filter(|(w, _)| w.kind == Kind::Deny).collect();
        if let Some((first, _)) = denies.first() {
            if manual && denies.iter().all(|(w, _)| w.spec.manual_sync) {
                return None;
            }
            return Some(Block {
                window: first.describe(),
                until: self.unblocked_at(t, manual, now),
            });
        }
        if open.iter().any(|(w, _)| w.kind == Kind::Allow) {
            return None;
        }
        let allows: Vec<&&Window> = matching.iter().filter(|w| w.kind == Kind::Allow).collect();
        let first = allows.first()?;
        if manual && allows.iter().all(|w| w.spec.manual_sync) {
            return None;
        }
        Some(Block {
            window: first.describe(),
            until: self.unblocked_at(t, manual, now),
        })
    }

    /// The next instant after `now` at which a window that matches `t`
    /// opens or closes: when a verdict can change.
    pub fn next_change(&self, t: Option<&Target<'_>>, now: Timestamp) -> Option<Timestamp> {
        self.windows
            .iter()
            .filter(|w| t.is_none_or(|t| w.matches(t)))
            .flat_map(|w| [w.open_until(now), w.next_open(now)])
            .flatten()
            .filter(|at| *at > now)
            .min()
    }

    /// The first change after `now` at which `t` may sync, following
    /// changes for at most a few weeks of them.
    fn unblocked_at(&self, t: &Target<'_>, manual: bool, now: Timestamp) -> Option<Timestamp> {
        let mut at = now;
        for _ in 0..MAX_CHANGES {
            at = self.next_change(Some(t), at)?;
            if self.verdict_without_until(t, manual, at) {
                return Some(at);
            }
        }
        None
    }

    fn verdict_without_until(&self, t: &Target<'_>, manual: bool, now: Timestamp) -> bool {
        let matching: Vec<&Window> = self.windows.iter().filter(|w| w.matches(t)).collect();
        let open: Vec<&Window> = matching
            .iter()
            .copied()
            .filter(|w| w.open_until(now).is_some())
            .collect();
        let denies: Vec<&&Window> = open.iter().filter(|w| w.kind == Kind::Deny).collect();
        if !denies.is_empty() {
            return manual && denies.iter().all(|w| w.spec.manual_sync);
        }
        if open.iter().any(|w| w.kind == Kind::Allow) {
            return true;
        }
        let allows: Vec<&&Window> = matching.iter().filter(|w| w.kind == Kind::Allow).collect();
        allows.is_empty() || (manual && allows.iter().all(|w| w.spec.manual_sync))
    }
}

/// `now` on the hub's clock.
pub fn now() -> Timestamp {
    Timestamp::from_millisecond(crate::clock::now_ms()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The windows of the project `app` names (none for a project without
/// any, or one that does not exist: admission refuses that).
///
/// # Errors
/// The store failed.
pub fn windows_of(store: &Store, app: &Application) -> Result<Windows, StoreError> {
    Ok(store
        .project(super::project_of(app))?
        .map(|r| Windows::of(&r.project.spec.sync_windows))
        .unwrap_or_default())
}

/// The clusters among `clusters` on which a sync of `app` (`manual` or
/// automated) is blocked at `now`, with what blocks it.
///
/// # Errors
/// The store failed.
pub fn blocked_clusters(
    store: &Store,
    app: &Application,
    clusters: &[String],
    manual: bool,
    now: Timestamp,
) -> Result<Vec<(String, Block)>, StoreError> {
    let windows = windows_of(store, app)?;
    if windows.windows.is_empty() {
        return Ok(Vec::new());
    }
    blocked_with(store, &windows, app, clusters, manual, now)
}

fn blocked_with(
    store: &Store,
    windows: &Windows,
    app: &Application,
    clusters: &[String],
    manual: bool,
    now: Timestamp,
) -> Result<Vec<(String, Block)>, StoreError> {
    let namespace = app.spec.destination.namespace.clone().unwrap_or_default();
    let mut out = Vec::new();
    for name in clusters {
        let server = store.cluster(name)?.map(|c| c.server).unwrap_or_default();
        let target = Target {
            app: &app.metadata.name,
            namespace: &namespace,
            cluster_name: name,
            cluster_server: &server,
        };
        if let Some(block) = windows.verdict(&target, manual, now) {
            out.push((name.clone(), block));
        }
    }
    Ok(out)
}

/// Automated sync: while a window blocks `app`'s automated sync on any of
/// its clusters, its bundle goes out with `automated` (and `selfHeal`)
/// off, so every agent holds what it applied and shows the new revision
/// OutOfSync; a manual sync the window allows applies it. When the window
/// lets it go, the reconciler in `crate::window_wake` renders the application again and the bundle goes
/// out automated, which the agents apply. An application whose clusters
/// only some windows name is held on all of them: one bundle serves all
/// its clusters.
///
/// # Errors
/// The store failed.
pub fn hold(
    store: &Store,
    app: &Application,
    mut bundle: pb::AppBundle,
) -> Result<pb::AppBundle, StoreError> {
    let automated = bundle.policy.as_ref().is_some_and(|p| p.automated);
    if !automated || !crate::history::is_automated(app) {
        return Ok(bundle);
    }
    let clusters = crate::history::targeted_clusters(store, app)?;
    let blocked = blocked_clusters(store, app, &clusters, false, now())?;
    let Some((cluster, block)) = blocked.first() else {
        return Ok(bundle);
    };
    tracing::info!(app = %app.metadata.name, cluster = %cluster, reason = %block.message(super::project_of(app)), "automated sync held by a sync window");
    if let Some(p) = bundle.policy.as_mut() {
        p.automated = false;
        p.self_heal = false;
    }
    bundle.digest = pb::wire::bundle_digest(&bundle);
    Ok(bundle)
}

/// What `app get` shows for `app` on the cluster `name` (`server`), given
/// its project's `windows` ([`windows_of`], read once per application):
/// the window blocking its automated sync and until when, and whether a
/// manual sync may pass.
pub fn status_message(
    windows: &Windows,
    app: &Application,
    name: &str,
    server: &str,
) -> Option<String> {
    if windows.windows.is_empty() {
        return None;
    }
    let now = now();
    let namespace = app.spec.destination.namespace.clone().unwrap_or_default();
    let target = Target {
        app: &app.metadata.name,
        namespace: &namespace,
        cluster_name: name,
        cluster_server: server,
    };
    let block = windows.verdict(&target, false, now)?;
    let manual = if windows.verdict(&target, true, now).is_none() {
        "manual sync allowed"
    } else {
        "manual sync not allowed"
    };
    Some(format!(
        "{} ({manual})",
        block.message(super::project_of(app))
    ))
}

/// The windows of a project as the API shows them, open or not now.
pub fn states(specs: &[SyncWindow]) -> Vec<pb::SyncWindowState> {
    let now = now();
    let ms = |t: Option<Timestamp>| t.map_or(0, |t| t.as_millisecond());
    Windows::of(specs)
        .windows
        .iter()
        .map(|w| {
            let until = w.open_until(now);
            let s = &w.spec;
            pb::SyncWindowState {
                index: u32::try_from(w.index).unwrap_or(u32::MAX),
                kind: s.kind.clone(),
                schedule: s.schedule.clone(),
                duration: s.duration.clone(),
                time_zone: s.time_zone.clone(),
                applications: s.applications.clone(),
                namespaces: s.namespaces.clone(),
                clusters: s.clusters.clone(),
                manual_sync: s.manual_sync,
                and_operator: s.and_operator,
                description: s.description.clone(),
                active: until.is_some(),
                until_ms: ms(until),
                next_ms: ms(w.next_open(now)),
            }
        })
        .collect()
}

/// A cluster's status as `app get` shows it while a window blocks the
/// application there: the window's message first.
pub fn show_block(mut status: pb::AppStatus, block: Option<&str>) -> pb::AppStatus {
    if let Some(block) = block {
        status.message = if status.message.is_empty() {
            block.to_owned()
        } else {
            format!("{block}; {}", status.message)
        };
    }
    status
}

/// The applications whose automated sync a window blocks now, and the
/// next instant a window of a project with applications opens or closes.
pub fn survey(
    store: &Store,
    now: Timestamp,
) -> Result<(BTreeMap<String, String>, Option<Timestamp>), StoreError> {
    let mut projects: HashMap<String, Windows> = HashMap::new();
    for rec in store.projects()? {
        let windows = Windows::of(&rec.project.spec.sync_windows);
        if !windows.windows.is_empty() {
            projects.insert(rec.project.metadata.name.clone(), windows);
        }
    }
    let mut blocked = BTreeMap::new();
    if projects.is_empty() {
        return Ok((blocked, None));
    }
    let next = projects
        .values()
        .filter_map(|w| w.next_change(None, now))
        .min();
    for rec in store.apps_shared()? {
        let Some(windows) = projects.get(super::project_of(&rec.app)) else {
            continue;
        };
        let clusters = crate::history::targeted_clusters(store, &rec.app)?;
        if !blocked_with(store, windows, &rec.app, &clusters, false, now)?.is_empty() {
            blocked.insert(rec.app.metadata.name.clone(), rec.origin.clone());
        }
    }
    Ok((blocked, next))
}

#[cfg(test)]
mod tests;
