//! What an AppProject permits, over the wire form of its rules
//! ([`crate::ProjectRules`]): shared by the hub (which refuses an
//! application before anything is fetched or sent) and the agent (which
//! refuses an object before it is applied or pruned), so both ends apply
//! the same rules.
//!
//! The semantics are Argo CD's (`AppProject.IsSourcePermitted`,
//! `isDestinationMatched`, `IsGroupKindNamePermitted`): globs, a leading
//! `!` denies in `sourceRepos` and `destinations`, an unset namespaced
//! whitelist allows every namespaced kind while an unset cluster-scoped
//! whitelist allows none.

use crate::{ProjectDestination, ProjectGroupKind, ProjectRules};

/// Matches `text` against a glob `pattern`: `*` is any run of characters
/// other than a separator, `**` any run at all, `?` one character other
/// than a separator, `[abc]`/`[a-z]`/`[!a]`/`[^a]` a class, `{a,b}` either
/// alternative, `\x` the character `x`. A malformed pattern matches
/// nothing.
pub fn glob_match(pattern: &str, text: &str, separators: &[char]) -> bool {
    let text: Vec<char> = text.chars().collect();
    expand_braces(pattern).iter().any(|p| {
        let p: Vec<char> = p.chars().collect();
        match_from(&p, &text, separators).unwrap_or(false)
    })
}

/// `a{b,c}d` → `abd`, `acd` (nested braces expand from the inside out).
fn expand_braces(pattern: &str) -> Vec<String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut depth = 0;
    let mut open = None;
    let mut escaped = false;
    for (i, c) in chars.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '{' => {
                if depth == 0 {
                    open = Some(i);
                }
                depth += 1;
            }
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0
                    && let Some(start) = open
                {
                    let prefix: String = chars[..start].iter().collect();
                    let suffix: String = chars[i + 1..].iter().collect();
                    let inner: Vec<char> = chars[start + 1..i].to_vec();
                    let mut out = Vec::new();
                    for alt in split_alternatives(&inner) {
                        for tail in expand_braces(&format!("{alt}{suffix}")) {
                            out.push(format!("{prefix}{tail}"));
                        }
                    }
                    return out;
                }
            }
            _ => {}
        }
    }
    vec![pattern.to_owned()]
}

/// Splits the inside of `{…}` at its top-level commas.
fn split_alternatives(inner: &[char]) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0;
    let mut escaped = false;
    for &c in inner {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '{' {
            depth += 1;
        } else if c == '}' {
            depth -= 1;
        } else if c == ',' && depth == 0 {
            out.push(String::new());
            continue;
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

/// `None`: the pattern is malformed.
fn match_from(p: &[char], t: &[char], seps: &[char]) -> Option<bool> {
    let Some(&first) = p.first() else {
        return Some(t.is_empty());
    };
    match first {
        '*' => {
            let any = p.get(1) == Some(&'*');
            let rest = if any { &p[2..] } else { &p[1..] };
            for i in 0..=t.len() {
                if match_from(rest, &t[i..], seps)? {
                    return Some(true);
                }
                if i < t.len() && !any && seps.contains(&t[i]) {
                    break;
                }
            }
            Some(false)
        }
        '?' => match t.first() {
            Some(c) if !seps.contains(c) => match_from(&p[1..], &t[1..], seps),
            _ => Some(false),
        },
        '[' => {
            let close = p.iter().skip(2).position(|&c| c == ']')? + 2;
            let Some(&c) = t.first() else {
                return Some(false);
            };
            let mut class = &p[1..close];
            let negated = matches!(class.first(), Some('!' | '^'));
            if negated {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            if hit == negated {
                return Some(false);
            }
            match_from(&p[close + 1..], &t[1..], seps)
        }
        '\\' => {
            let &lit = p.get(1)?;
            match t.first() {
                Some(&c) if c == lit => match_from(&p[2..], &t[1..], seps),
                _ => Some(false),
            }
        }
        lit => match t.first() {
            Some(&c) if c == lit => match_from(&p[1..], &t[1..], seps),
            _ => Some(false),
        },
    }
}

fn is_deny(pattern: &str) -> bool {
    pattern.starts_with('!')
}

/// Argo CD's `globMatch`: a `!pattern` matches what `pattern` does not.
fn glob_match_negatable(pattern: &str, text: &str, seps: &[char]) -> bool {
    match pattern.strip_prefix('!') {
        Some(p) => !glob_match(p, text, seps),
        None => pattern == "*" || glob_match(pattern, text, seps),
    }
}

/// A repository URL as compared with `sourceRepos`: trimmed, lowercased,
/// without a trailing `/` or `.git` (Argo CD's `NormalizeGitURL` in
/// spirit: the same repository written two ways is one repository).
pub fn normalize_repo_url(url: &str) -> String {
    let mut u = url.trim().to_ascii_lowercase();
    while u.ends_with('/') {
        u.pop();
    }
    if let Some(s) = u.strip_suffix(".git") {
        u = s.to_owned();
    }
    u
}

/// Whether the project lets its applications use the repository `repo_url`
/// (`*` does not cross a `/`; `**` does; a `!` entry that does not match
/// denies).
pub fn is_source_permitted(rules: &ProjectRules, repo_url: &str) -> bool {
    let src = normalize_repo_url(repo_url);
    let mut any = false;
    for pattern in &rules.source_repos {
        let normalized = match pattern.strip_prefix('!') {
            Some(p) => format!("!{}", normalize_repo_url(p)),
            None => normalize_repo_url(pattern),
        };
        if glob_match_negatable(&normalized, &src, &['/']) {
            any = true;
        } else if is_deny(&normalized) {
            return false;
        }
    }
    any
}

/// Whether the project lets its applications deploy to `namespace` of the
/// cluster named `name` with API server URL `server` (either may be empty
/// when unknown; an empty namespace is the cluster scope).
pub fn is_destination_permitted(
    rules: &ProjectRules,
    server: &str,
    name: &str,
    namespace: &str,
) -> bool {
    let mut any = false;
    for d in &rules.destinations {
        let name_ok = !name.is_empty() && glob_match_negatable(&d.name, name, &[]);
        let server_ok = !server.is_empty() && glob_match_negatable(&d.server, server, &[]);
        let ns_ok = glob_match_negatable(&d.namespace, namespace, &[]);
        if (server_ok || name_ok) && ns_ok {
            any = true;
        } else if (((!name_ok && is_deny(&d.name)) || (!server_ok && is_deny(&d.server))) && ns_ok)
            || (!ns_ok && is_deny(&d.namespace) && server_ok)
        {
            return false;
        }
    }
    any
}

/// Whether some destination of the project allows `namespace` on whatever
/// cluster: the agent's check (it is not told how the hub names its
/// cluster; the hub checks the cluster itself). A `!` namespace entry that
/// does not match denies.
pub fn is_namespace_permitted(rules: &ProjectRules, namespace: &str) -> bool {
    let mut any = false;
    for d in &rules.destinations {
        if glob_match_negatable(&d.namespace, namespace, &[]) {
            any = true;
        } else if is_deny(&d.namespace) {
            return false;
        }
    }
    any
}

fn in_list(group: &str, kind: &str, name: &str, list: &[ProjectGroupKind]) -> bool {
    list.iter().any(|item| {
        glob_match(&item.kind, kind, &['/'])
            && glob_match(&item.group, group, &['/'])
            && (item.name.is_empty() || glob_match(&item.name, name, &['/']))
    })
}

/// Whether the project lets its applications own an object of `group` and
/// `kind` named `name`; `namespaced` says which lists apply.
pub fn is_group_kind_permitted(
    rules: &ProjectRules,
    group: &str,
    kind: &str,
    name: &str,
    namespaced: bool,
) -> bool {
    if namespaced {
        let white = !rules.namespace_resource_whitelist_set
            || in_list(group, kind, "", &rules.namespace_resource_whitelist);
        let black = in_list(group, kind, "", &rules.namespace_resource_blacklist);
        return white && !black;
    }
    in_list(group, kind, name, &rules.cluster_resource_whitelist)
        && !in_list(group, kind, name, &rules.cluster_resource_blacklist)
}

/// Why one object is outside the project, in Argo CD's words: `None` when
/// it is permitted. `namespace` is the object's namespace once defaulted
/// (empty for a cluster-scoped object).
pub fn object_refusal(
    rules: &ProjectRules,
    group: &str,
    kind: &str,
    name: &str,
    namespace: &str,
    namespaced: bool,
) -> Option<String> {
    if !is_group_kind_permitted(rules, group, kind, name, namespaced) {
        return Some(format!(
            "resource {group}:{kind} is not permitted in project {}",
            rules.project
        ));
    }
    if namespaced && !is_namespace_permitted(rules, namespace) {
        return Some(format!(
            "namespace {namespace} is not permitted in project '{}'",
            rules.project
        ));
    }
    None
}

/// The rules of Argo CD's `default` project: everything allowed.
pub fn allow_all(project: &str) -> ProjectRules {
    let any = ProjectGroupKind {
        group: "*".to_owned(),
        kind: "*".to_owned(),
        name: String::new(),
    };
    ProjectRules {
        project: project.to_owned(),
        source_repos: vec!["*".to_owned()],
        destinations: vec![ProjectDestination {
            server: "*".to_owned(),
            name: "*".to_owned(),
            namespace: "*".to_owned(),
        }],
        cluster_resource_whitelist: vec![any],
        ..ProjectRules::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases: &[(&str, &str, &[char], bool)] = &[
            ("*", "anything/at all", &[], true),
            ("team-*", "team-a", &[], true),
            ("team-*", "ops", &[], false),
            (
                "https://git.example/*",
                "https://git.example/a",
                &['/'],
                true,
            ),
            (
                "https://git.example/*",
                "https://git.example/a/b",
                &['/'],
                false,
            ),
            (
                "https://git.example/**",
                "https://git.example/a/b",
                &['/'],
                true,
            ),
            ("team-?", "team-a", &[], true),
            ("team-?", "team-ab", &[], false),
            ("team-[ab]", "team-b", &[], true),
            ("team-[!ab]", "team-b", &[], false),
            ("team-[a-c]", "team-c", &[], true),
            ("{a,b}-ns", "b-ns", &[], true),
            ("{a,b}-ns", "c-ns", &[], false),
            ("x{a,{b,c}}", "xc", &[], true),
            ("[", "[", &[], false),
            ("a\\*", "a*", &[], true),
            ("a\\*", "ab", &[], false),
        ];
        for (p, t, s, want) in cases {
            assert_eq!(glob_match(p, t, s), *want, "{p} ~ {t}");
        }
    }
}
