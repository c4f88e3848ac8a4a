//! Flotilla waves: the pure core of a progressive rollout by cluster waves
//! (`spec.strategy.flotillaWaves` on an ApplicationSet, a Flotilla
//! extension no Argo CD file contains).
//!
//! Each generated application targets one cluster; the waves select those
//! clusters by their labels. [`plan`] is a function from the spec, the
//! previous [`WavesRecord`], what the hub knows of each (application,
//! cluster) now, the controls asked for (`flotilla rollout ...`) and the
//! time to the next record and the syncs to send. The shell
//! (`rollout/mod.rs`) pins each application to the revision the record
//! holds it at, so a cluster not reached yet keeps its previous revision,
//! enforced as usual (automated sync and self-heal work on the pin).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::appset::selector::LabelSelector;
pub use crate::store::{ClusterState, ClusterWave, WavePhase, WavesRecord};

/// The key under `spec.strategy`.
pub const FIELD: &str = "flotillaWaves";

/// `maxUnavailable`: clusters of a wave updating at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u64),
    Percent(u64),
}

impl MaxUnavailable {
    /// How many of `total` clusters may update at once: a percentage
    /// rounds down but is at least one.
    pub fn of(self, total: usize) -> usize {
        match self {
            Self::Count(n) => usize::try_from(n).unwrap_or(usize::MAX).max(1),
            Self::Percent(p) => {
                let p = usize::try_from(p).unwrap_or(100);
                (total.saturating_mul(p) / 100).max(1)
            }
        }
    }
}

/// One wave.
#[derive(Debug, Clone, PartialEq)]
pub struct Wave {
    pub name: String,
    pub selector: LabelSelector,
    /// Unset: every cluster of the wave at once.
    pub max_unavailable: Option<MaxUnavailable>,
    /// How long every cluster of the wave must stay Healthy before the
    /// next wave starts.
    pub bake_ms: i64,
    /// The wave waits for `flotilla rollout promote` before it starts.
    pub require_approval: bool,
}

/// `spec.strategy.flotillaWaves`, read.
#[derive(Debug, Clone, PartialEq)]
pub struct WavesSpec {
    pub waves: Vec<Wave>,
    /// A cluster not Healthy within this long after its update started
    /// fails its wave (unset: no deadline; Degraded still fails).
    pub progress_deadline_ms: Option<i64>,
    /// On failure, put the failing wave's clusters back to the revision
    /// last Healthy there.
    pub auto_rollback: bool,
}

impl WavesSpec {
    /// The name of wave `i`; clusters no wave selects are in the extra
    /// last wave `unassigned`.
    pub fn wave_name(&self, i: usize) -> &str {
        self.waves.get(i).map_or("unassigned", |w| w.name.as_str())
    }

    /// Index of the wave of a cluster with `labels`: the first whose
    /// selector matches, else the extra last wave.
    pub fn wave_of(&self, labels: &BTreeMap<String, String>) -> usize {
        self.waves
            .iter()
            .position(|w| w.selector.matches(labels))
            .unwrap_or(self.waves.len())
    }

    /// Reads `spec.strategy.flotillaWaves` (absent or null: none).
    ///
    /// # Errors
    /// `(field, message)` for an unknown field or a value of the wrong
    /// shape: nothing of the extension is ignored silently.
    pub fn parse(value: Option<&Value>) -> Result<Option<Self>, (String, String)> {
        let at = format!("spec.strategy.{FIELD}");
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let obj = value
            .as_object()
            .ok_or_else(|| (at.clone(), "must be an object".to_owned()))?;
        for key in obj.keys() {
            if !["waves", "progressDeadline", "autoRollback"].contains(&key.as_str()) {
                return Err((
                    format!("{at}.{key}"),
                    "unknown field (known: waves, progressDeadline, autoRollback)".into(),
                ));
            }
        }
        let auto_rollback = boolean(obj.get("autoRollback"), &format!("{at}.autoRollback"))?;
        let progress_deadline_ms = obj
            .get("progressDeadline")
            .filter(|v| !v.is_null())
            .map(|v| duration_ms(v, &format!("{at}.progressDeadline")))
            .transpose()?;
        let list = match obj.get("waves") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::Array(_)) | None | Some(Value::Null) => {
                return Err((
                    format!("{at}.waves"),
                    "at least one wave is required".into(),
                ));
            }
            Some(_) => return Err((format!("{at}.waves"), "must be a list".into())),
        };
        let mut waves = Vec::with_capacity(list.len());
        for (i, w) in list.iter().enumerate() {
            let at = format!("{at}.waves[{i}]");
            let w = w
                .as_object()
                .ok_or_else(|| (at.clone(), "must be an object".to_owned()))?;
            for key in w.keys() {
                if ![
                    "name",
                    "clusterSelector",
                    "maxUnavailable",
                    "bakeTime",
                    "requireApproval",
                ]
                .contains(&key.as_str())
                {
                    return Err((
                        format!("{at}.{key}"),
                        "unknown field (known: name, clusterSelector, maxUnavailable, bakeTime, requireApproval)".into(),
                    ));
                }
            }
            let name = match w.get("name") {
                None | Some(Value::Null) => format!("wave-{}", i + 1),
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(_) => return Err((format!("{at}.name"), "must be a non-empty string".into())),
            };
            if waves.iter().any(|x: &Wave| x.name == name) || name == "unassigned" {
                return Err((format!("{at}.name"), format!("{name:?} is used twice")));
            }
            let selector = match w.get("clusterSelector") {
                None | Some(Value::Null) => {
                    return Err((
                        format!("{at}.clusterSelector"),
                        "is required (matchLabels and/or matchExpressions)".into(),
                    ));
                }
                Some(v) => LabelSelector::parse(v, &format!("{at}.clusterSelector"))
                    .map_err(|m| split_field(&m, &at))?,
            };
            let max_unavailable = match w.get("maxUnavailable") {
                None | Some(Value::Null) => None,
                Some(v) => Some(max_unavailable(v, &format!("{at}.maxUnavailable"))?),
            };
            let bake_ms = w
                .get("bakeTime")
                .filter(|v| !v.is_null())
                .map(|v| duration_ms(v, &format!("{at}.bakeTime")))
                .transpose()?
                .unwrap_or(0);
            let require_approval =
                boolean(w.get("requireApproval"), &format!("{at}.requireApproval"))?;
            waves.push(Wave {
                name,
                selector,
                max_unavailable,
                bake_ms,
                require_approval,
            });
        }
        Ok(Some(Self {
            waves,
            progress_deadline_ms,
            auto_rollback,
        }))
    }
}

/// `LabelSelector::parse` says `field: message`; split it back.
fn split_field(message: &str, at: &str) -> (String, String) {
    match message.split_once(": ") {
        Some((f, m)) => (f.to_owned(), m.to_owned()),
        None => (at.to_owned(), message.to_owned()),
    }
}

fn boolean(v: Option<&Value>, at: &str) -> Result<bool, (String, String)> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err((at.to_owned(), "must be true or false".into())),
    }
}

fn max_unavailable(v: &Value, at: &str) -> Result<MaxUnavailable, (String, String)> {
    let bad = || {
        (
            at.to_owned(),
            format!("{v} is not a positive integer or a percentage (1% to 100%)"),
        )
    };
    match v {
        Value::Number(n) => n
            .as_u64()
            .filter(|n| *n > 0)
            .map(MaxUnavailable::Count)
            .ok_or_else(bad),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(MaxUnavailable::Percent)
                .ok_or_else(bad),
            None => s
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(MaxUnavailable::Count)
                .ok_or_else(bad),
        },
        _ => Err(bad()),
    }
}

/// A duration: `90` (seconds), `"500ms"`, `"30s"`, `"5m"`, `"1h"`, or a
/// sum such as `"1m30s"`.
fn duration_ms(v: &Value, at: &str) -> Result<i64, (String, String)> {
    let bad = || {
        (
            at.to_owned(),
            format!("{v} is not a duration (seconds, or like 500ms, 30s, 5m, 1h, 1m30s)"),
        )
    };
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(bad),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Err(bad());
            }
            let mut total: i64 = 0;
            let mut rest = s;
            while !rest.is_empty() {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                if digits == 0 {
                    return Err(bad());
                }
                let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
                rest = &rest[digits..];
                let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
                let factor = match &rest[..unit_len] {
                    "ms" => 1,
                    "s" => 1000,
                    "m" => 60_000,
                    "h" => 3_600_000,
                    _ => return Err(bad()),
                };
                rest = &rest[unit_len..];
                total = n
                    .checked_mul(factor)
                    .and_then(|x| total.checked_add(x))
                    .ok_or_else(bad)?;
            }
            Ok(total)
        }
        _ => Err(bad()),
    }
}

/// What the hub knows of one generated application (one cluster) now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub app: String,
    pub cluster: String,
    /// The cluster's labels.
    pub labels: BTreeMap<String, String>,
    /// The commit Git wants (the target revision's commit).
    pub git: String,
    /// The commit the hub renders for it now (its pin, else Git's).
    pub current: String,
    /// The commit the cluster reports Synced at (empty: not Synced).
    pub synced_at: String,
    pub healthy: bool,
    pub degraded: bool,
    /// A deploy window blocks syncing the cluster now, until this instant
    /// (`i64::MAX`: not known). A held cluster is not started, and its
    /// progress deadline does not run while held.
    pub held_until_ms: Option<i64>,
}

/// A transition asked for by a person or a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    /// Skip the current wave's bake time or approval gate.
    Promote,
    /// Roll back every cluster the rollout touched, and stop.
    Abort,
}

impl Control {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
        }
    }
}

/// Why a control cannot be applied to a record as it is now.
///
/// # Errors
/// A message naming the set and what stands in the way.
pub fn check_control(set: &str, rec: Option<&WavesRecord>, c: &Control) -> Result<(), String> {
    let Some(rec) = rec else {
        return Err(format!("application set {set:?} has no waves rollout"));
    };
    let done = matches!(rec.phase, WavePhase::Completed | WavePhase::Aborted);
    match c {
        Control::Pause if done => Err(format!(
            "rollout {set:?} is {}: nothing to pause",
            rec.phase.as_str()
        )),
        Control::Pause if !rec.paused_by.is_empty() => Err(format!(
            "rollout {set:?} is already paused (by {})",
            rec.paused_by
        )),
        Control::Resume if rec.paused_by.is_empty() && rec.phase != WavePhase::Failed => Err(
            format!("rollout {set:?} is not paused ({})", rec.phase.as_str()),
        ),
        Control::Promote
            if !matches!(rec.phase, WavePhase::Baking | WavePhase::AwaitingApproval) =>
        {
            Err(format!(
                "rollout {set:?} is {}: promote skips a bake time or an approval gate only",
                rec.phase.as_str()
            ))
        }
        Control::Abort if done => Err(format!(
            "rollout {set:?} is {}: nothing to abort",
            rec.phase.as_str()
        )),
        _ => Ok(()),
    }
}

/// A sync the shell sends: pin `app` to `revision` and sync it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    pub app: String,
    pub cluster: String,
    pub revision: String,
    /// Rolling back (not forward).
    pub rollback: bool,
}

/// A transition of a rollout, for the history of the applications it
/// touched and for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// What happened, for people (`wave eu started`, `paused by user:ops`).
    pub text: String,
    /// Who did it: the person or client of a control; empty for the
    /// rollout's own transitions (the shell names the rollout).
    pub by: String,
    /// The applications it touched.
    pub apps: Vec<String>,
}

/// One pass: the next record, the syncs to send, and the transitions that
/// happened (for history and logs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pass {
    pub record: WavesRecord,
    pub syncs: Vec<Sync>,
    pub events: Vec<Event>,
}

impl Pass {
    fn note(&mut self, text: String, by: &str, apps: Vec<String>) {
        self.events.push(Event {
            text,
            by: by.to_owned(),
            apps,
        });
    }
}

/// Every application of the rollout.
fn all_apps(rec: &WavesRecord) -> Vec<String> {
    rec.clusters.iter().map(|c| c.app.clone()).collect()
}

/// The applications of wave `wave`.
fn wave_apps(rec: &WavesRecord, wave: usize) -> Vec<String> {
    rec.clusters
        .iter()
        .filter(|c| c.wave == wave)
        .map(|c| c.app.clone())
        .collect()
}

/// The revision Git wants for the set: the commit most of its
/// applications resolve to (they normally share one repository).
fn wanted(targets: &[Target]) -> String {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in targets.iter().filter(|t| !t.git.is_empty()) {
        *count.entry(t.git.as_str()).or_default() += 1;
    }
    count
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(r, _)| r.to_owned())
        .unwrap_or_default()
}

fn at_target(t: &Target, revision: &str) -> bool {
    !revision.is_empty() && t.synced_at == revision && t.healthy
}

/// The next step of a waves rollout.
///
/// `controls` were checked with [`check_control`] and carry who asked.
pub fn plan(
    spec: &WavesSpec,
    previous: Option<&WavesRecord>,
    targets: &[Target],
    controls: &[(Control, String)],
    now: i64,
) -> Pass {
    let mut pass = Pass::default();
    let git = wanted(targets);
    let by_app: HashMap<&str, &Target> = targets.iter().map(|t| (t.app.as_str(), t)).collect();
    let prev_cluster: HashMap<&str, &ClusterWave> = previous
        .map(|p| p.clusters.iter().map(|c| (c.app.as_str(), c)).collect())
        .unwrap_or_default();

    let new_rollout = match previous {
        None => true,
        Some(p) => !git.is_empty() && p.target != git,
    };
    let mut rec = if new_rollout {
        // A first record adopts what runs (the set's first deployment went
        // everywhere at once: there was nothing to stage against); a new
        // commit starts at the first wave.
        let first = previous.is_none();
        let mut rec = WavesRecord {
            target: git.clone(),
            wave: 0,
            phase: WavePhase::Progressing,
            wave_started_ms: now,
            message: format!("rolling out {}", short(&git)),
            ..Default::default()
        };
        for t in targets {
            let before = prev_cluster.get(t.app.as_str());
            // The revision a cluster was Healthy at through its wave's
            // bake (one Healthy for a moment and then Degraded is no
            // rollback target); within a rollout it stays what the cluster
            // ran before, so `abort` puts every touched cluster back.
            let baked = previous.is_some_and(|p| {
                before.is_some_and(|c| {
                    c.state == ClusterState::Updated
                        && (p.phase == WavePhase::Completed || c.wave < p.wave)
                })
            });
            let last_healthy = match before {
                Some(c) if baked => c.revision.clone(),
                Some(c) if !c.last_healthy.is_empty() => c.last_healthy.clone(),
                _ => t.current.clone(),
            };
            let reached = t.current == git || (first && t.current.is_empty());
            rec.clusters.push(ClusterWave {
                app: t.app.clone(),
                cluster: t.cluster.clone(),
                wave: spec.wave_of(&t.labels),
                state: if reached {
                    ClusterState::Updating
                } else {
                    ClusterState::Waiting
                },
                revision: if reached || first {
                    git.clone()
                } else {
                    t.current.clone()
                },
                last_healthy,
                since_ms: now,
                held_until_ms: 0,
            });
        }
        if first {
            // Every cluster is where Git is; nothing to stage.
            for c in &mut rec.clusters {
                c.state = ClusterState::Updated;
                c.revision = git.clone();
                c.last_healthy = git.clone();
            }
            rec.phase = WavePhase::Completed;
            rec.wave = spec.waves.len() + 1;
            rec.message = format!("adopted at {}", short(&git));
        }
        if let Some(p) = previous {
            let text = if matches!(p.phase, WavePhase::Completed | WavePhase::Aborted) {
                format!("rollout of {} started", short(&git))
            } else {
                format!(
                    "rollout of {} started; the rollout of {} is superseded",
                    short(&git),
                    short(&p.target),
                )
            };
            pass.note(text, "", all_apps(&rec));
        } else {
            pass.note(
                format!("adopted at {} on every cluster", short(&git)),
                "",
                all_apps(&rec),
            );
        }
        rec
    } else {
        let mut rec = previous.cloned().unwrap_or_default();
        // Applications that left the set go; new ones join, held where
        // they are.
        rec.clusters.retain(|c| by_app.contains_key(c.app.as_str()));
        for t in targets {
            if !prev_cluster.contains_key(t.app.as_str()) {
                let reached = t.current == rec.target;
                rec.clusters.push(ClusterWave {
                    app: t.app.clone(),
                    cluster: t.cluster.clone(),
                    wave: spec.wave_of(&t.labels),
                    state: if reached {
                        ClusterState::Updating
                    } else {
                        ClusterState::Waiting
                    },
                    revision: t.current.clone(),
                    last_healthy: t.current.clone(),
                    since_ms: now,
                    held_until_ms: 0,
                });
            }
        }
        rec
    };
    rec.clusters
        .sort_by(|a, b| a.wave.cmp(&b.wave).then(a.app.cmp(&b.app)));
    let waves =
        spec.waves.len() + usize::from(rec.clusters.iter().any(|c| c.wave >= spec.waves.len()));

    for (control, by) in controls {
        match control {
            Control::Pause => {
                rec.paused_by.clone_from(by);
                pass.note(format!("rollout paused by {by}"), by, all_apps(&rec));
            }
            Control::Resume => {
                rec.paused_by.clear();
                if rec.phase == WavePhase::Failed {
                    // Try the wave again: its failed and rolled back
                    // clusters wait for their turn.
                    for c in rec.clusters.iter_mut().filter(|c| c.wave == rec.wave) {
                        if matches!(c.state, ClusterState::Failed | ClusterState::RolledBack) {
                            c.state = ClusterState::Waiting;
                            c.since_ms = now;
                        }
                    }
                    rec.phase = WavePhase::Progressing;
                    rec.wave_started_ms = now;
                }
                pass.note(format!("rollout resumed by {by}"), by, all_apps(&rec));
            }
            Control::Promote => {
                match rec.phase {
                    WavePhase::AwaitingApproval => rec.approved = true,
                    WavePhase::Baking => rec.skip_bake = true,
                    _ => {}
                }
                pass.note(
                    format!("wave {} promoted by {by}", spec.wave_name(rec.wave)),
                    by,
                    wave_apps(&rec, rec.wave),
                );
            }
            Control::Abort => {
                for c in &mut rec.clusters {
                    if c.revision == rec.target
                        && c.last_healthy != rec.target
                        && !c.last_healthy.is_empty()
                    {
                        c.state = ClusterState::RolledBack;
                        c.revision = c.last_healthy.clone();
                        c.since_ms = now;
                        pass.syncs.push(Sync {
                            app: c.app.clone(),
                            cluster: c.cluster.clone(),
                            revision: c.revision.clone(),
                            rollback: true,
                        });
                    }
                }
                rec.phase = WavePhase::Aborted;
                rec.paused_by.clear();
                rec.message = format!("aborted by {by}: every cluster touched rolled back");
                pass.note(rec.message.clone(), by, all_apps(&rec));
            }
        }
    }

    // Deploy windows: a held cluster is marked with when it is let go; a
    // cluster let go that was updating starts its progress deadline again
    // (time spent held is not time spent failing to become Healthy).
    for c in &mut rec.clusters {
        let Some(t) = by_app.get(c.app.as_str()) else {
            continue;
        };
        match t.held_until_ms {
            Some(until) => c.held_until_ms = until.max(1),
            None if c.held_until_ms != 0 => {
                c.held_until_ms = 0;
                if c.state == ClusterState::Updating {
                    c.since_ms = now;
                }
                // A rollback asked for while the window held the cluster
                // was not sent (the window blocks its sync): send it now
                // (an application without automated sync would stay at
                // the failed revision otherwise).
                if c.state == ClusterState::RolledBack && t.synced_at != c.revision {
                    pass.syncs.push(Sync {
                        app: c.app.clone(),
                        cluster: c.cluster.clone(),
                        revision: c.revision.clone(),
                        rollback: true,
                    });
                }
            }
            None => {}
        }
    }

    // Health of the clusters reached, whatever the phase.
    for c in &mut rec.clusters {
        let Some(t) = by_app.get(c.app.as_str()) else {
            continue;
        };
        match c.state {
            ClusterState::Updating if at_target(t, &rec.target) => {
                c.state = ClusterState::Updated;
                c.since_ms = now;
            }
            ClusterState::Updating | ClusterState::Updated
                if c.wave == rec.wave
                    && (t.degraded
                        || (c.state == ClusterState::Updating
                            && c.held_until_ms == 0
                            && spec
                                .progress_deadline_ms
                                .is_some_and(|d| now - c.since_ms > d))) =>
            {
                let why = if t.degraded {
                    "Degraded"
                } else {
                    "not Healthy within the progress deadline"
                };
                c.state = ClusterState::Failed;
                c.since_ms = now;
                let text = format!(
                    "cluster {} ({}) {why} at {}",
                    c.cluster,
                    c.app,
                    short(&rec.target)
                );
                pass.note(text, "", vec![c.app.clone()]);
            }
            _ => {}
        }
    }

    if matches!(rec.phase, WavePhase::Aborted | WavePhase::Completed) {
        if rec.phase == WavePhase::Completed
            && rec
                .clusters
                .iter()
                .any(|c| c.state != ClusterState::Updated)
        {
            // A cluster that joined late at another revision: roll it on.
            rec.phase = WavePhase::Progressing;
            rec.wave = rec
                .clusters
                .iter()
                .filter(|c| c.state != ClusterState::Updated)
                .map(|c| c.wave)
                .min()
                .unwrap_or(0);
            rec.wave_started_ms = now;
        } else {
            pass.record = rec;
            return pass;
        }
    }

    // The current wave failed: pause, and roll back when asked.
    if rec
        .clusters
        .iter()
        .any(|c| c.wave == rec.wave && c.state == ClusterState::Failed)
        && rec.phase != WavePhase::Failed
    {
        rec.phase = WavePhase::Failed;
        rec.message = format!(
            "wave {} failed at {}: paused",
            spec.wave_name(rec.wave),
            short(&rec.target)
        );
        if spec.auto_rollback {
            for c in rec.clusters.iter_mut().filter(|c| c.wave == rec.wave) {
                if c.revision == rec.target
                    && !c.last_healthy.is_empty()
                    && c.last_healthy != rec.target
                {
                    c.state = ClusterState::RolledBack;
                    c.revision = c.last_healthy.clone();
                    c.since_ms = now;
                    pass.syncs.push(Sync {
                        app: c.app.clone(),
                        cluster: c.cluster.clone(),
                        revision: c.revision.clone(),
                        rollback: true,
                    });
                }
            }
            rec.message.push_str(
                "; autoRollback: the wave's clusters are back at their last Healthy revision",
            );
        }
        pass.note(rec.message.clone(), "", wave_apps(&rec, rec.wave));
    }
    if rec.phase == WavePhase::Failed || !rec.paused_by.is_empty() {
        pass.record = rec;
        return pass;
    }

    // Move forward: as far as the waves allow in this pass.
    loop {
        let wave = rec.wave;
        if wave >= waves {
            rec.phase = WavePhase::Completed;
            rec.message = format!("every wave Healthy at {}", short(&rec.target));
            pass.note(rec.message.clone(), "", all_apps(&rec));
            break;
        }
        let spec_wave = spec.waves.get(wave);
        let members: Vec<usize> = (0..rec.clusters.len())
            .filter(|&i| rec.clusters[i].wave == wave)
            .collect();
        let waiting = members
            .iter()
            .filter(|&&i| rec.clusters[i].state == ClusterState::Waiting)
            .count();
        let updating = members
            .iter()
            .filter(|&&i| rec.clusters[i].state == ClusterState::Updating)
            .count();
        if waiting + updating > 0 {
            let started = members.len() - waiting;
            if spec_wave.is_some_and(|w| w.require_approval) && !rec.approved && started == 0 {
                if rec.phase != WavePhase::AwaitingApproval {
                    rec.phase = WavePhase::AwaitingApproval;
                    rec.message = format!(
                        "wave {} waits for approval (flotilla rollout promote)",
                        spec.wave_name(wave)
                    );
                    pass.note(rec.message.clone(), "", wave_apps(&rec, wave));
                }
                break;
            }
            rec.phase = WavePhase::Progressing;
            rec.message = format!(
                "wave {} ({}/{}) rolling out {}",
                spec.wave_name(wave),
                wave + 1,
                waves,
                short(&rec.target)
            );
            let limit = spec_wave
                .and_then(|w| w.max_unavailable)
                .map_or(members.len(), |m| m.of(members.len()));
            let mut room = limit.saturating_sub(updating);
            let sent = pass.syncs.len();
            for &i in &members {
                if room == 0 {
                    break;
                }
                let c = &mut rec.clusters[i];
                if c.state != ClusterState::Waiting || c.held_until_ms != 0 {
                    continue;
                }
                c.state = ClusterState::Updating;
                c.revision = rec.target.clone();
                c.since_ms = now;
                room -= 1;
                pass.syncs.push(Sync {
                    app: c.app.clone(),
                    cluster: c.cluster.clone(),
                    revision: rec.target.clone(),
                    rollback: false,
                });
            }
            if started == 0 && pass.syncs.len() > sent {
                pass.note(
                    format!(
                        "wave {} ({}/{}) started at {}",
                        spec.wave_name(wave),
                        wave + 1,
                        waves,
                        short(&rec.target)
                    ),
                    "",
                    wave_apps(&rec, wave),
                );
            }
            break;
        }
        // Every cluster of the wave is Healthy at the target: bake.
        let all_healthy = members.iter().all(|&i| {
            by_app
                .get(rec.clusters[i].app.as_str())
                .is_some_and(|t| at_target(t, &rec.target))
        });
        if !all_healthy {
            // It must stay Healthy for the whole bake time.
            rec.healthy_since_ms = 0;
            break;
        }
        if rec.healthy_since_ms == 0 {
            rec.healthy_since_ms = now;
            rec.wave_ms.push(now - rec.wave_started_ms);
        }
        let bake = spec_wave.map_or(0, |w| w.bake_ms);
        if now - rec.healthy_since_ms < bake && !rec.skip_bake {
            if rec.phase != WavePhase::Baking {
                rec.phase = WavePhase::Baking;
                rec.message = format!(
                    "wave {} Healthy, baking until {} ms",
                    spec.wave_name(wave),
                    rec.healthy_since_ms + bake
                );
                pass.note(
                    format!(
                        "wave {} Healthy, baking {} s",
                        spec.wave_name(wave),
                        bake / 1000
                    ),
                    "",
                    wave_apps(&rec, wave),
                );
            }
            break;
        }
        pass.note(
            format!("wave {} finished", spec.wave_name(wave)),
            "",
            wave_apps(&rec, wave),
        );

        rec.wave += 1;
        rec.wave_started_ms = now;
        rec.healthy_since_ms = 0;
        rec.approved = false;
        rec.skip_bake = false;
        rec.phase = WavePhase::Progressing;
    }
    if let Some(i) = rec.message.find(HELD) {
        rec.message.truncate(i);
    }
    if let Some(held) = held_message(&rec) {
        rec.message = format!("{}{HELD}: {held}", rec.message);
    }
    pass.record = rec;
    pass
}

const HELD: &str = "; held by a deploy window";

/// `held by a deploy window: web-c1 on c1, … until …` for the clusters of
/// the current wave a window holds (none: `None`).
fn held_message(rec: &WavesRecord) -> Option<String> {
    let held: Vec<&ClusterWave> = rec
        .clusters
        .iter()
        .filter(|c| c.wave == rec.wave && c.held_until_ms != 0)
        .filter(|c| matches!(c.state, ClusterState::Waiting | ClusterState::Updating))
        .collect();
    let until = held.iter().map(|c| c.held_until_ms).max()?;
    let until = if until == i64::MAX {
        "further notice".to_owned()
    } else {
        jiff::Timestamp::from_millisecond(until)
            .map_or_else(|_| format!("{until} ms"), |t| t.to_string())
    };
    Some(format!(
        "{} until {until}",
        held.iter()
            .map(|c| format!("{} on {}", c.app, c.cluster))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// A commit's first 8 characters.
pub fn short(revision: &str) -> &str {
    if revision.len() >= 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        &revision[..8]
    } else {
        revision
    }
}

#[cfg(test)]
#[path = "waves_tests.rs"]
mod tests;
