//! Role-based access control in Argo CD's `policy.csv` model.
//!
//! A policy is CSV text with two kinds of line:
//!
//! - `p, SUBJECT, RESOURCE, ACTION, OBJECT[, EFFECT]`: SUBJECT may do
//!   ACTION on the objects of RESOURCE matching OBJECT; EFFECT is `allow`
//!   (the default) or `deny`;
//! - `g, MEMBER, ROLE`: MEMBER (a subject, a group or a role) has every
//!   permission of ROLE, transitively.
//!
//! RESOURCE, ACTION and OBJECT are globs (`*` any run of characters, `/`
//! included; `?` one character). Objects are named as Argo CD names them:
//! `PROJECT/NAME` for applications, application sets and logs, the name
//! for clusters, repositories, projects and accounts.
//!
//! A request is allowed when the default role allows it, or when the
//! caller's subject, or any one of its groups, is allowed it: some rule
//! reachable from that name through `g` lines allows it and none denies it
//! (`deny` beats `allow` within one name). This is Argo CD's enforcement,
//! so a policy written for Argo CD means the same here.
//!
//! The built-in roles `role:readonly` and `role:admin` are always present.
//! Project roles (an AppProject's `spec.roles`) add rules whose subject is
//! `proj:PROJECT:ROLE`; their objects must lie inside the project, so a
//! project's owners can never grant anything outside it.
//!
//! Subjects and groups are plain strings: an API token carries its name as
//! subject and its roles as groups; an identity provider's `groups` claim
//! maps onto the same groups.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use serde_json::Value;

pub use crate::store::records::{ROLE_ADMIN, ROLE_READONLY, RbacConfig, project_subject};

/// An AppProject's `spec.roles[]` (stored with the project; enforced here).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectRole {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_tokens: Vec<Value>,
}

/// One project's roles: what RBAC reads of an AppProject.
#[derive(Clone, Copy, Debug)]
pub struct ProjectRoles<'a> {
    pub project: &'a str,
    pub roles: &'a [ProjectRole],
}

/// The resources an API call can be about, as Argo CD names them (`audit`
/// and `rbac` are Flotilla's own).
pub const RESOURCES: &[&str] = &[
    "applications",
    "applicationsets",
    "clusters",
    "repositories",
    "projects",
    "accounts",
    "logs",
    "audit",
    "rbac",
];

/// The actions policies may name (an `action/...` action is a resource
/// action, as in Argo CD).
pub const ACTIONS: &[&str] = &[
    "get", "create", "update", "delete", "sync", "override", "action",
];

/// The built-in policy, in the same syntax users write.
const BUILTIN: &str = "\
p, role:readonly, applications, get, */*, allow
p, role:readonly, applicationsets, get, */*, allow
p, role:readonly, clusters, get, *, allow
p, role:readonly, repositories, get, *, allow
p, role:readonly, projects, get, *, allow
p, role:readonly, accounts, get, *, allow
p, role:readonly, logs, get, */*, allow
p, role:readonly, audit, get, *, allow
p, role:readonly, rbac, get, *, allow
p, role:admin, applications, *, */*, allow
p, role:admin, applicationsets, *, */*, allow
p, role:admin, clusters, *, *, allow
p, role:admin, repositories, *, *, allow
p, role:admin, projects, *, *, allow
p, role:admin, accounts, *, *, allow
p, role:admin, logs, *, */*, allow
p, role:admin, audit, *, *, allow
p, role:admin, rbac, *, *, allow
g, role:admin, role:readonly
";

/// A policy that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RbacError {
    /// A line of a policy is malformed.
    #[error("{source_name} line {line}: {cause} (in {text:?})")]
    Line {
        source_name: String,
        line: usize,
        text: String,
        cause: String,
    },
    /// The default role is not a role any line defines.
    #[error(
        "policy.default {0:?} is not a role: it must be role:readonly, role:admin or a role the policy grants something"
    )]
    UnknownDefaultRole(String),
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

/// One `p` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub subject: String,
    pub resource: String,
    pub action: String,
    pub object: String,
    pub effect: Effect,
}

/// A parsed policy: `p` rules and `g` groupings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// (member, role)
    pub groupings: Vec<(String, String)>,
}

fn line_error(source_name: &str, line: usize, text: &str, cause: impl Into<String>) -> RbacError {
    RbacError::Line {
        source_name: source_name.to_owned(),
        line,
        text: text.to_owned(),
        cause: cause.into(),
    }
}

/// Parses policy CSV; `source_name` names the text in errors.
///
/// # Errors
/// A line that is neither a comment, blank, a `p` line with 4 or 5 fields
/// nor a `g` line with 2, or a field that is empty or an unknown effect.
pub fn parse(text: &str, source_name: &str) -> Result<Policy, RbacError> {
    let mut policy = Policy::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = trimmed.split(',').map(str::trim).collect();
        if let Some(empty) = fields.iter().position(|f| f.is_empty()) {
            return Err(line_error(
                source_name,
                line,
                trimmed,
                format!("field {} is empty", empty + 1),
            ));
        }
        match fields[0] {
            "p" => {
                if !(5..=6).contains(&fields.len()) {
                    return Err(line_error(
                        source_name,
                        line,
                        trimmed,
                        format!(
                            "a p line has 5 or 6 fields (p, subject, resource, action, object[, effect]), this one has {}",
                            fields.len()
                        ),
                    ));
                }
                let effect = match fields.get(5).copied().unwrap_or("allow") {
                    "allow" => Effect::Allow,
                    "deny" => Effect::Deny,
                    other => {
                        return Err(line_error(
                            source_name,
                            line,
                            trimmed,
                            format!("effect {other:?} must be allow or deny"),
                        ));
                    }
                };
                let resource = fields[2];
                if !resource.contains('*')
                    && !resource.contains('?')
                    && !RESOURCES.contains(&resource)
                {
                    return Err(line_error(
                        source_name,
                        line,
                        trimmed,
                        format!(
                            "unknown resource {resource:?} (known: {})",
                            RESOURCES.join(", ")
                        ),
                    ));
                }
                let action = fields[3];
                let base = action.split('/').next().unwrap_or(action);
                if !action.contains('*') && !action.contains('?') && !ACTIONS.contains(&base) {
                    return Err(line_error(
                        source_name,
                        line,
                        trimmed,
                        format!("unknown action {action:?} (known: {})", ACTIONS.join(", ")),
                    ));
                }
                policy.rules.push(Rule {
                    subject: fields[1].to_owned(),
                    resource: resource.to_owned(),
                    action: action.to_owned(),
                    object: fields[4].to_owned(),
                    effect,
                });
            }
            "g" => {
                if fields.len() != 3 {
                    return Err(line_error(
                        source_name,
                        line,
                        trimmed,
                        format!(
                            "a g line has 3 fields (g, subject-or-group, role), this one has {}",
                            fields.len()
                        ),
                    ));
                }
                policy
                    .groupings
                    .push((fields[1].to_owned(), fields[2].to_owned()));
            }
            other => {
                return Err(line_error(
                    source_name,
                    line,
                    trimmed,
                    format!("a line starts with p or g, not {other:?}"),
                ));
            }
        }
    }
    Ok(policy)
}

/// The policy of one project role: its `policies` lines, which must all be
/// `p` lines for its own subject with objects inside the project, and a
/// `g` line for each of its `groups`.
///
/// # Errors
/// A malformed line, a line for another subject, or an object outside the
/// project; the error names the project and role.
pub fn project_role_policy(project: ProjectRoles<'_>, index: usize) -> Result<Policy, RbacError> {
    let name = project.project;
    let Some(role) = project.roles.get(index) else {
        return Ok(Policy::default());
    };
    let source_name = format!(
        "project {name:?} spec.roles[{index}] ({:?}) policies",
        role.name
    );
    let subject = project_subject(name, &role.name);
    let text = role.policies.join("\n");
    let mut policy = parse(&text, &source_name)?;
    if !policy.groupings.is_empty() {
        let (i, text) = role
            .policies
            .iter()
            .enumerate()
            .find(|(_, l)| l.trim_start().starts_with('g'))
            .map(|(i, l)| (i + 1, l.as_str()))
            .unwrap_or((1, ""));
        return Err(line_error(
            &source_name,
            i,
            text,
            "a project role grants groups with spec.roles[].groups, not g lines",
        ));
    }
    let prefix = format!("{name}/");
    for (rule, (i, text)) in policy.rules.iter().zip(
        role.policies
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim().starts_with('#')),
    ) {
        if rule.subject != subject {
            return Err(line_error(
                &source_name,
                i + 1,
                text,
                format!("the subject must be {subject:?}"),
            ));
        }
        let scoped = match rule.resource.as_str() {
            "applications" | "applicationsets" | "logs" => rule.object.starts_with(&prefix),
            "projects" => rule.object == name,
            _ => false,
        };
        if !scoped {
            return Err(line_error(
                &source_name,
                i + 1,
                text,
                format!(
                    "a project role may only grant applications, applicationsets or logs objects under {prefix:?} (or the project itself)"
                ),
            ));
        }
    }
    for g in &role.groups {
        policy.groupings.push((g.clone(), subject.clone()));
    }
    Ok(policy)
}

/// Glob match: `*` is any run of characters (`/` included), `?` one.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if !pattern.contains(['*', '?']) {
        return pattern == value;
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    // Iterative with one backtrack point: linear in practice.
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A policy ready to answer requests: built-in, operator and project
/// policies together.
#[derive(Clone, Debug, Default)]
pub struct Enforcer {
    /// Rules by subject.
    rules: HashMap<String, Vec<Rule>>,
    /// Member → roles it has directly.
    roles: HashMap<String, Vec<String>>,
    default_role: String,
}

/// The names a caller acts as: its subject and its groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub groups: Vec<String>,
}

impl Enforcer {
    /// The enforcer of `config` and the roles of `projects`.
    ///
    /// # Errors
    /// The operator's policy or a project role is malformed, or the default
    /// role is unknown.
    pub fn new(config: &RbacConfig, projects: &[ProjectRoles<'_>]) -> Result<Self, RbacError> {
        let mut all = parse(BUILTIN, "built-in policy")?;
        let own = parse(&config.policy_csv, "policy.csv")?;
        all.rules.extend(own.rules);
        all.groupings.extend(own.groupings);
        for p in projects {
            for i in 0..p.roles.len() {
                let pol = project_role_policy(*p, i)?;
                all.rules.extend(pol.rules);
                all.groupings.extend(pol.groupings);
            }
            // A project role may always see its own project (as Argo CD).
            for r in p.roles {
                all.rules.push(Rule {
                    subject: project_subject(p.project, &r.name),
                    resource: "projects".to_owned(),
                    action: "get".to_owned(),
                    object: p.project.to_owned(),
                    effect: Effect::Allow,
                });
            }
        }
        let mut e = Self {
            default_role: config.default_role.trim().to_owned(),
            ..Self::default()
        };
        for r in all.rules {
            e.rules.entry(r.subject.clone()).or_default().push(r);
        }
        for (m, r) in all.groupings {
            e.roles.entry(m).or_default().push(r);
        }
        if !e.default_role.is_empty()
            && !e.rules.contains_key(&e.default_role)
            && !e.roles.values().flatten().any(|r| *r == e.default_role)
        {
            return Err(RbacError::UnknownDefaultRole(e.default_role));
        }
        Ok(e)
    }

    /// `name` and every role reachable from it through `g` lines.
    fn closure(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.to_owned()];
        while let Some(n) = todo.pop() {
            if seen.insert(n.clone())
                && let Some(rs) = self.roles.get(&n)
            {
                todo.extend(rs.iter().cloned());
            }
        }
        seen
    }

    /// The rules of `name` and of every role it has.
    fn rules_of(&self, name: &str) -> Vec<Rule> {
        self.closure(name)
            .iter()
            .flat_map(|n| self.rules.get(n).into_iter().flatten().cloned())
            .collect()
    }

    /// The rules that decide for `who`, gathered once (for a list that
    /// asks about every object).
    pub fn compile(&self, who: &Principal) -> Decider {
        let mut names: Vec<&str> = Vec::new();
        if !self.default_role.is_empty() {
            names.push(&self.default_role);
        }
        if !who.subject.is_empty() {
            names.push(&who.subject);
        }
        names.extend(who.groups.iter().map(String::as_str));
        Decider {
            per_name: names.into_iter().map(|n| self.rules_of(n)).collect(),
        }
    }

    /// Whether `who` may do `action` on `resource` object `object`.
    pub fn allows(&self, who: &Principal, resource: &str, action: &str, object: &str) -> bool {
        self.compile(who).allows(resource, action, object)
    }

    /// Whether `who` may do anything at all but read (for a UI that hides
    /// forms from a caller who could only be refused).
    pub fn may_write(&self, who: &Principal) -> bool {
        let names = std::iter::once(&who.subject)
            .chain(&who.groups)
            .chain(std::iter::once(&self.default_role))
            .filter(|n| !n.is_empty());
        names.into_iter().any(|n| {
            self.closure(n).iter().any(|m| {
                self.rules
                    .get(m)
                    .into_iter()
                    .flatten()
                    .any(|r| r.effect == Effect::Allow && r.action != "get")
            })
        })
    }
}

/// The rules deciding for one caller: per name (default role, subject,
/// each group), the rules of that name and its roles.
#[derive(Clone, Debug, Default)]
pub struct Decider {
    per_name: Vec<Vec<Rule>>,
}

impl Decider {
    /// Whether some name allows the request and none of its own rules
    /// denies it (Argo CD's evaluation; see the module documentation).
    pub fn allows(&self, resource: &str, action: &str, object: &str) -> bool {
        self.per_name.iter().any(|rules| {
            let mut allowed = false;
            for r in rules {
                if glob_match(&r.resource, resource)
                    && glob_match(&r.action, action)
                    && glob_match(&r.object, object)
                {
                    match r.effect {
                        Effect::Deny => return false,
                        Effect::Allow => allowed = true,
                    }
                }
            }
            allowed
        })
    }
}

#[cfg(test)]
mod tests;
