//! Argo CD's ApplicationSet `strategy: RollingSync` (progressive syncs) as
//! pure functions: reading `spec.strategy`, sorting generated applications
//! into steps, `maxUpdate` arithmetic, and one progression pass from the
//! previous `applicationStatus` and what the clusters report to the next
//! one plus the applications to sync now.
//!
//! The semantics follow Argo CD's Progressive-Syncs.md and its
//! `progressivesync` package; the code is ours. The driver that reads the
//! store, sends syncs and persists the result is [`super::Rollouts`].

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

pub use crate::store::records::{AppProgress, Progress};

/// `spec.strategy.type`.
pub const ROLLING_SYNC: &str = "RollingSync";
/// Condition type: a RollingSync set is rolling out a step, or is done.
pub const ROLLOUT_PROGRESSING: &str = "ApplicationSetRolloutProgressing";
/// Condition type: steps that select nothing, select an application twice,
/// use an unknown operator or an unreadable `maxUpdate`.
pub const INVALID_ROLLOUT_CONFIG: &str = "InvalidRolloutConfig";

/// One `matchExpressions` entry of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchExpression {
    pub key: String,
    /// `In` or `NotIn`; anything else is kept and reported as Argo CD does
    /// (an [`INVALID_ROLLOUT_CONFIG`] condition), not refused.
    pub operator: String,
    pub values: Vec<String>,
}

/// A step's `maxUpdate`: Kubernetes' int-or-string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaxUpdate {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for MaxUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

/// One `rollingSync.steps` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    pub match_expressions: Vec<MatchExpression>,
    /// `None`: every selected application at once (100 %).
    pub max_update: Option<MaxUpdate>,
}

/// `spec.strategy.deletionOrder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeletionOrder {
    #[default]
    AllAtOnce,
    Reverse,
}

/// `spec.strategy`, read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Strategy {
    /// The steps when the set rolls out with RollingSync; `None` for
    /// AllAtOnce (also for `type: RollingSync` without a `rollingSync`
    /// block, which Argo CD treats as AllAtOnce).
    pub rolling_sync: Option<Vec<Step>>,
    pub deletion_order: DeletionOrder,
    /// The set has a valid `flotillaWaves` extension (read by
    /// [`super::waves::WavesSpec::parse`]).
    pub waves: bool,
}

impl Strategy {
    /// Whether deletions go step by step, last step first: Argo CD only
    /// does so with RollingSync steps.
    pub fn reverse_deletion(&self) -> bool {
        self.deletion_order == DeletionOrder::Reverse
            && self.rolling_sync.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Fields of `strategy` (as written) that have no effect, as in Argo
    /// CD, each with why: reported, not refused.
    pub fn unused(&self, strategy: Option<&Value>) -> Vec<String> {
        let mut out = Vec::new();
        let kind = strategy
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if kind == ROLLING_SYNC && self.rolling_sync.is_none() {
            out.push("spec.strategy.type: RollingSync without spec.strategy.rollingSync has no effect (as in Argo CD); every application is updated at once".to_owned());
        }
        if self.deletion_order == DeletionOrder::Reverse && self.rolling_sync.is_none() {
            out.push("spec.strategy.deletionOrder: Reverse has no effect without RollingSync steps (as in Argo CD); applications are deleted at once".to_owned());
        }
        out
    }

    /// Reads `spec.strategy` (absent or null: AllAtOnce).
    ///
    /// # Errors
    /// `(field, message)` for a value of the wrong shape, an unknown type
    /// or deletion order, or RollingSync without steps (Argo CD's
    /// "No steps defined for rollout", which stops the set). What Argo CD
    /// accepts and does not act upon (Reverse without RollingSync steps,
    /// RollingSync without a `rollingSync` block) is in [`Strategy::unused`].
    pub fn parse(strategy: Option<&Value>) -> Result<Self, (String, String)> {
        let Some(strategy) = strategy.filter(|v| !v.is_null()) else {
            return Ok(Self::default());
        };
        let obj = strategy
            .as_object()
            .ok_or_else(|| ("spec.strategy".to_owned(), "must be an object".to_owned()))?;
        let string = |field: &str| -> Result<&str, (String, String)> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(""),
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err((format!("spec.strategy.{field}"), "must be a string".into())),
            }
        };
        let kind = string("type")?;
        // Argo CD compares the deletion order without case.
        let deletion_order = match string("deletionOrder")? {
            "" => DeletionOrder::AllAtOnce,
            s if s.eq_ignore_ascii_case("AllAtOnce") => DeletionOrder::AllAtOnce,
            s if s.eq_ignore_ascii_case("Reverse") => DeletionOrder::Reverse,
            other => {
                return Err((
                    "spec.strategy.deletionOrder".into(),
                    format!("{other:?} is not one of AllAtOnce, Reverse"),
                ));
            }
        };
        let rolling_sync = match kind {
            "" | "AllAtOnce" => None,
            ROLLING_SYNC => match obj.get("rollingSync").filter(|v| !v.is_null()) {
                None => None,
                Some(rs) => {
                    let steps = parse_steps(rs)?;
                    if steps.is_empty() {
                        return Err((
                            "spec.strategy.rollingSync.steps".into(),
                            "No steps defined for rollout".into(),
                        ));
                    }
                    Some(steps)
                }
            },
            other => {
                return Err((
                    "spec.strategy.type".into(),
                    format!("{other:?} is not one of AllAtOnce, RollingSync"),
                ));
            }
        };
        let waves = super::waves::WavesSpec::parse(obj.get(super::waves::FIELD))?.is_some();
        if waves && rolling_sync.is_some() {
            return Err((
                format!("spec.strategy.{}", super::waves::FIELD),
                "cannot be combined with type: RollingSync steps (choose one way to stage)".into(),
            ));
        }
        Ok(Self {
            rolling_sync,
            deletion_order,
            waves,
        })
    }
}

fn parse_steps(rs: &Value) -> Result<Vec<Step>, (String, String)> {
    let at = "spec.strategy.rollingSync";
    let rs = rs
        .as_object()
        .ok_or_else(|| (at.to_owned(), "must be an object".to_owned()))?;
    let steps = match rs.get("steps") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err((format!("{at}.steps"), "must be a list".into())),
    };
    let mut out = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let at = format!("{at}.steps[{i}]");
        let s = s
            .as_object()
            .ok_or_else(|| (at.clone(), "must be an object".to_owned()))?;
        let mut step = Step::default();
        match s.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for (j, e) in exprs.iter().enumerate() {
                    let at = format!("{at}.matchExpressions[{j}]");
                    let str_field = |f: &str| -> Result<String, (String, String)> {
                        match e.get(f) {
                            None | Some(Value::Null) => Ok(String::new()),
                            Some(Value::String(s)) => Ok(s.clone()),
                            Some(_) => Err((format!("{at}.{f}"), "must be a string".into())),
                        }
                    };
                    if !e.is_object() {
                        return Err((at, "must be an object".into()));
                    }
                    let values = match e.get("values") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(v)) => v
                            .iter()
                            .map(|v| {
                                v.as_str().map(str::to_owned).ok_or_else(|| {
                                    (
                                        format!("{at}.values"),
                                        "must be a list of strings".to_owned(),
                                    )
                                })
                            })
                            .collect::<Result<_, _>>()?,
                        Some(_) => {
                            return Err((
                                format!("{at}.values"),
                                "must be a list of strings".into(),
                            ));
                        }
                    };
                    step.match_expressions.push(MatchExpression {
                        key: str_field("key")?,
                        operator: str_field("operator")?,
                        values,
                    });
                }
            }
            Some(_) => return Err((format!("{at}.matchExpressions"), "must be a list".into())),
        }
        step.max_update = match s.get("maxUpdate") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(MaxUpdate::Str(s.clone())),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(n) => Some(MaxUpdate::Int(n)),
                None => {
                    return Err((
                        format!("{at}.maxUpdate"),
                        format!("{n} is not an integer or a percentage"),
                    ));
                }
            },
            Some(other) => {
                return Err((
                    format!("{at}.maxUpdate"),
                    format!("{other} is not an integer or a percentage"),
                ));
            }
        };
        out.push(step);
    }
    Ok(out)
}

/// Whether one expression accepts a label value; `None` for an operator
/// other than `In` and `NotIn`.
pub fn expression_matches(value: &str, e: &MatchExpression) -> Option<bool> {
    let listed = e.values.iter().any(|v| v == value);
    match e.operator.as_str() {
        "In" => Some(listed),
        "NotIn" => Some(!listed),
        _ => None,
    }
}

/// What is wrong with the steps, reported as Argo CD reports it (one
/// condition, the most important problem first); the rollout still runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationIssues {
    /// (step index, operator), each pair once.
    pub invalid_operators: Vec<(usize, String)>,
    /// Application → the steps (indices) selecting it, sorted by name.
    pub duplicates: BTreeMap<String, Vec<usize>>,
    /// Step indices with no application.
    pub empty_steps: Vec<usize>,
    /// (step index, value, why), each step once.
    pub invalid_max_updates: Vec<(usize, String, String)>,
}

impl ValidationIssues {
    pub fn is_empty(&self) -> bool {
        self.invalid_operators.is_empty()
            && self.duplicates.is_empty()
            && self.empty_steps.is_empty()
            && self.invalid_max_updates.is_empty()
    }

    /// The condition message: the first kind of problem found, in Argo
    /// CD's order (operators, duplicates, maxUpdate, empty steps).
    pub fn message(&self) -> Option<String> {
        let steps = |ix: &mut dyn Iterator<Item = usize>| {
            ix.map(|i| (i + 1).to_string()).collect::<Vec<_>>()
        };
        if !self.invalid_operators.is_empty() {
            let nums = steps(&mut self.invalid_operators.iter().map(|(i, _)| *i));
            let ops: Vec<&str> = self
                .invalid_operators
                .iter()
                .map(|(_, o)| o.as_str())
                .collect();
            let (noun, verb) = if nums.len() == 1 {
                ("Step", "has")
            } else {
                ("Steps", "have")
            };
            return Some(format!(
                "{noun} {} {verb} invalid matchExpression operators: {}. Supported Operators are 'In' and 'NotIn'",
                nums.join(", "),
                ops.join(", ")
            ));
        }
        if !self.duplicates.is_empty() {
            let names: Vec<&str> = self.duplicates.keys().map(String::as_str).collect();
            let groups: Vec<String> = self
                .duplicates
                .values()
                .map(|s| steps(&mut s.iter().copied()).join("-"))
                .collect();
            return Some(if names.len() == 1 {
                format!(
                    "Application '{}' is selected by multiple steps: ({})",
                    names[0], groups[0]
                )
            } else {
                format!(
                    "Applications '{}' are selected by multiple steps: [({})]",
                    names.join("', '"),
                    groups.join("), (")
                )
            });
        }
        if !self.invalid_max_updates.is_empty() {
            let nums = steps(&mut self.invalid_max_updates.iter().map(|(i, _, _)| *i));
            let values: Vec<&str> = self
                .invalid_max_updates
                .iter()
                .map(|(_, v, _)| v.as_str())
                .collect();
            return Some(if nums.len() == 1 {
                format!(
                    "Step {} has an invalid maxUpdate value: {}",
                    nums[0], values[0]
                )
            } else {
                format!(
                    "Steps {} have invalid maxUpdate values: [{}]",
                    nums.join(", "),
                    values.join(", ")
                )
            });
        }
        if !self.empty_steps.is_empty() {
            let nums = steps(&mut self.empty_steps.iter().copied());
            return Some(format!(
                "Steps [{}] have no applications matching their criteria",
                nums.join(" ")
            ));
        }
        None
    }
}

/// Applications sorted into steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepAssignment {
    /// Per step, the applications it selects (an application selected by
    /// two steps is listed in both, as Argo CD does).
    pub steps: Vec<Vec<String>>,
    /// Application → the first step (index) selecting it.
    pub step_of: HashMap<String, usize>,
    pub issues: ValidationIssues,
}

impl StepAssignment {
    /// The 1-based step shown in `applicationStatus[].step`; -1 when no
    /// step selects the application.
    pub fn shown_step(&self, app: &str) -> i64 {
        self.step_of
            .get(app)
            .map_or(-1, |s| i64::try_from(*s).unwrap_or(i64::MAX - 1) + 1)
    }
}

/// Sorts `apps` (name, labels) into `steps`. Every expression of a step
/// must hold; a missing label fails `In` and satisfies `NotIn`.
pub fn assign_steps<'a>(
    steps: &[Step],
    apps: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> StepAssignment {
    let mut out = StepAssignment {
        steps: vec![Vec::new(); steps.len()],
        ..Default::default()
    };
    for (name, labels) in apps {
        for (i, step) in steps.iter().enumerate() {
            let mut selected = true;
            for e in &step.match_expressions {
                match labels.get(&e.key) {
                    Some(v) => match expression_matches(v, e) {
                        Some(true) => {}
                        Some(false) => {
                            selected = false;
                            break;
                        }
                        None => {
                            let issue = (i, e.operator.clone());
                            if !out.issues.invalid_operators.contains(&issue) {
                                out.issues.invalid_operators.push(issue);
                            }
                            selected = false;
                            break;
                        }
                    },
                    None if e.operator == "In" => {
                        selected = false;
                        break;
                    }
                    None => {}
                }
            }
            if !selected {
                continue;
            }
            out.steps[i].push(name.to_owned());
            match out.step_of.get(name) {
                Some(first) => {
                    let first = *first;
                    out.issues
                        .duplicates
                        .entry(name.to_owned())
                        .or_insert_with(|| vec![first])
                        .push(i);
                }
                None => {
                    out.step_of.insert(name.to_owned(), i);
                }
            }
        }
    }
    out.issues.empty_steps = out
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_empty())
        .map(|(i, _)| i)
        .collect();
    out
}

/// How many applications of a step of `total` may update at once.
///
/// An integer is taken as it is (0 holds the step; a negative number too).
/// A percentage is of `total`, rounded down, but at least 1 for anything
/// but `0%`.
///
/// # Errors
/// A string that is not an integer followed by `%`.
pub fn max_update_value(max: &MaxUpdate, total: usize) -> Result<i64, String> {
    match max {
        MaxUpdate::Int(n) => Ok(*n),
        MaxUpdate::Str(s) => {
            let Some(digits) = s.strip_suffix('%') else {
                return Err(format!("{s:?} is not a percentage"));
            };
            let pct: i64 = digits
                .parse()
                .map_err(|e| format!("invalid value {s:?}: {e}"))?;
            let total = i64::try_from(total).unwrap_or(i64::MAX);
            let scaled = (pct.saturating_mul(total) as f64 / 100.0).floor() as i64;
            Ok(if s != "0%" && scaled < 1 { 1 } else { scaled })
        }
    }
}

/// What the hub knows of one generated application now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The commit its desired state comes from (empty before a render).
    pub revision: String,
    /// Its desired content (bundle digest).
    pub digest: String,
    /// Every targeted cluster reports Synced for this content.
    pub synced: bool,
    /// Every targeted cluster reports Healthy.
    pub healthy: bool,
    /// Every cluster the set sent a sync to has started it (reports the
    /// command's id as its requested operation).
    pub sync_started: bool,
    /// The hub cannot render or fetch it (it cannot be synced).
    pub error: bool,
}

/// One progression pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pass {
    pub statuses: Vec<AppProgress>,
    pub assignment: StepAssignment,
    /// Pending applications whose step is open: send them a sync.
    pub to_sync: Vec<String>,
    /// [`ROLLOUT_PROGRESSING`] message.
    pub progressing: String,
    /// [`INVALID_ROLLOUT_CONFIG`] message, when the steps have problems.
    pub invalid: Option<String>,
}

const REVISION_CHANGED: &str = "Application has pending changes, setting status to Waiting";
const SPEC_CHANGED: &str =
    "Application has pending changes (spec differs), setting status to Waiting";

/// Moves every application one transition on (Waiting → Pending →
/// Progressing → Healthy, and back to Waiting on a new target), opens
/// steps in order (a step opens when every application of the steps
/// before it is Healthy) and honours each step's `maxUpdate` (Pending and
/// Progressing applications count against it).
pub fn progress(steps: &[Step], previous: &[AppProgress], apps: &[Observed], now_ms: i64) -> Pass {
    let mut apps: Vec<&Observed> = apps.iter().collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    let assignment = assign_steps(steps, apps.iter().map(|a| (a.name.as_str(), &a.labels)));
    let prev: HashMap<&str, &AppProgress> = previous
        .iter()
        .map(|p| (p.application.as_str(), p))
        .collect();
    let mut statuses = Vec::with_capacity(apps.len());
    for app in &apps {
        let targets = if app.revision.is_empty() {
            Vec::new()
        } else {
            vec![app.revision.clone()]
        };
        let mut s = match prev.get(app.name.as_str()) {
            Some(p) => (*p).clone(),
            None => AppProgress {
                application: app.name.clone(),
                status: Progress::Waiting,
                step: String::new(),
                message: "No Application status found, defaulting status to Waiting".into(),
                last_transition_ms: now_ms,
                target_revisions: targets.clone(),
                digest: app.digest.clone(),
                sync_commands: BTreeMap::new(),
            },
        };
        let before = s.status;
        s.step = assignment.shown_step(&app.name).to_string();
        let revision_changed = s.target_revisions != targets;
        // New content at the same commit: the application's spec changed
        // (a generator parameter, the template). New content with a new
        // commit is the commit's doing.
        let spec_changed = !revision_changed && s.digest != app.digest;
        let set = |s: &mut AppProgress, status: Progress, message: &str| {
            s.status = status;
            s.message = message.to_owned();
            s.last_transition_ms = now_ms;
        };
        if revision_changed || spec_changed {
            s.target_revisions = targets;
            s.digest = app.digest.clone();
            s.sync_commands.clear();
            let message = if revision_changed {
                REVISION_CHANGED
            } else {
                SPEC_CHANGED
            };
            set(&mut s, Progress::Waiting, message);
        }
        if s.status == Progress::Waiting {
            // Nothing to sync: it counts as done (or in progress) at once.
            if app.synced && app.healthy {
                set(
                    &mut s,
                    Progress::Healthy,
                    "Application resource has synced, updating status to Healthy",
                );
            } else if app.synced {
                set(
                    &mut s,
                    Progress::Progressing,
                    "Application resource has synced, updating status to Progressing",
                );
            }
        } else if before == Progress::Pending && s.status == Progress::Pending {
            if app.sync_started && !s.sync_commands.is_empty() {
                set(
                    &mut s,
                    Progress::Progressing,
                    "Application resource became Progressing, updating status from Pending to Progressing",
                );
            } else if app.error {
                set(
                    &mut s,
                    Progress::Progressing,
                    "Application resource has error and cannot sync, updating status to Progressing",
                );
            }
        } else if before == Progress::Progressing
            && s.status == Progress::Progressing
            && app.synced
            && app.healthy
        {
            set(
                &mut s,
                Progress::Healthy,
                "Application resource became Healthy, updating status from Progressing to Healthy",
            );
        }
        statuses.push(s);
    }

    // Steps open in order while every application of the earlier ones is
    // Healthy (and exists).
    let by_name: HashMap<String, Progress> = statuses
        .iter()
        .map(|s| (s.application.clone(), s.status))
        .collect();
    let mut open: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for step in &assignment.steps {
        open.extend(step.iter().map(String::as_str));
        let done = step
            .iter()
            .all(|a| by_name.get(a) == Some(&Progress::Healthy));
        if !done {
            break;
        }
    }

    let mut issues = assignment.issues.clone();
    let mut total = vec![0usize; steps.len()];
    let mut updating = vec![0i64; steps.len()];
    for s in &statuses {
        if let Some(i) = assignment.step_of.get(&s.application) {
            total[*i] += 1;
            if matches!(s.status, Progress::Pending | Progress::Progressing) {
                updating[*i] += 1;
            }
        }
    }
    let limits: Vec<Option<i64>> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| match &step.max_update {
            None => None,
            Some(m) => match max_update_value(m, total[i]) {
                Ok(v) => Some(v),
                Err(why) => {
                    // As Argo CD: reported, and the step is not limited.
                    issues.invalid_max_updates.push((i, m.to_string(), why));
                    None
                }
            },
        })
        .collect();
    let mut to_sync = Vec::new();
    for s in &mut statuses {
        let Some(i) = assignment.step_of.get(&s.application).copied() else {
            continue;
        };
        if !open.contains(s.application.as_str()) {
            continue;
        }
        if s.status == Progress::Waiting && limits[i].is_none_or(|max| updating[i] < max) {
            s.status = Progress::Pending;
            s.message = "Application moved to Pending status, watching for the Application resource to start Progressing".into();
            s.last_transition_ms = now_ms;
            s.sync_commands.clear();
            updating[i] += 1;
        }
        if s.status == Progress::Pending {
            to_sync.push(s.application.clone());
        }
    }

    let mut progressing = "ApplicationSet Rollout has completed".to_owned();
    for i in 0..assignment.steps.len() {
        let shown = (i + 1).to_string();
        let members: Vec<&AppProgress> = statuses.iter().filter(|s| s.step == shown).collect();
        if !members.is_empty() && members.iter().any(|s| s.status != Progress::Healthy) {
            progressing = format!("ApplicationSet is performing rollout of step {shown}");
            break;
        }
    }
    let invalid = issues.message();
    Pass {
        statuses,
        assignment: StepAssignment {
            issues,
            ..assignment
        },
        to_sync,
        progressing,
        invalid,
    }
}

#[cfg(test)]
#[path = "rolling_sync_tests.rs"]
mod tests;
