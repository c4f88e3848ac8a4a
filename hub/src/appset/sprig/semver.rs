//! Sprig's semantic-version functions (masterminds.github.io/sprig/semver.html),
//! with Masterminds/semver v3's lenient parsing and constraint rules.

use std::cmp::Ordering;
use std::collections::HashMap;

use gtmpl_ng::{Func, Value};

use super::{Res, fail, int, new_map, string_arg, want};

pub(super) const FUNCS: &[(&str, Func)] = &[("semver", semver), ("semverCompare", semver_compare)];

#[derive(Debug, Clone, PartialEq)]
struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: String,
    meta: String,
    original: String,
}

fn parse_version(text: &str) -> Result<Version, String> {
    let invalid = || "Invalid Semantic Version".to_owned();
    let body = text.strip_prefix('v').unwrap_or(text);
    let (body, meta) = match body.split_once('+') {
        Some((b, m)) => (b, m.to_owned()),
        None => (body, String::new()),
    };
    let (core, pre) = match body.split_once('-') {
        Some((c, p)) => (c, p.to_owned()),
        None => (body, String::new()),
    };
    let ident_ok = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    if !pre.is_empty() && !ident_ok(&pre) || !meta.is_empty() && !ident_ok(&meta) {
        return Err(invalid());
    }
    if text.contains('-') && pre.is_empty() || text.contains('+') && meta.is_empty() {
        return Err(invalid());
    }
    for p in pre.split('.') {
        if p.len() > 1 && p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit()) {
            return Err("Version segment starts with 0".into());
        }
    }
    let nums: Vec<&str> = core.split('.').collect();
    if nums.is_empty()
        || nums.len() > 3
        || nums
            .iter()
            .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid());
    }
    let num = |i: usize| -> Result<u64, String> {
        nums.get(i).map_or(Ok(0), |n| {
            n.parse()
                .map_err(|e| format!("Error parsing version segment: {e}"))
        })
    };
    Ok(Version {
        major: num(0)?,
        minor: num(1)?,
        patch: num(2)?,
        pre,
        meta,
        original: text.to_owned(),
    })
}

fn compare_pre_part(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        _ => a.cmp(b),
    }
}

fn compare(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| match (a.pre.is_empty(), b.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                let pa: Vec<&str> = a.pre.split('.').collect();
                let pb: Vec<&str> = b.pre.split('.').collect();
                for (x, y) in pa.iter().zip(&pb) {
                    let c = compare_pre_part(x, y);
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                pa.len().cmp(&pb.len())
            }
        })
}

#[derive(Debug)]
struct Constraint {
    op: String,
    v: Version,
    dirty: bool,
    minor_dirty: bool,
    patch_dirty: bool,
}

fn is_x(s: &str) -> bool {
    matches!(s, "x" | "X" | "*")
}

fn parse_constraint(op: &str, ver: &str) -> Result<Constraint, String> {
    let body = ver.strip_prefix('v').unwrap_or(ver);
    let (core, suffix) = match body.find(['-', '+']) {
        Some(i) => (&body[..i], &body[i..]),
        None => (body, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let (mut dirty, mut minor_dirty, mut patch_dirty) = (false, false, false);
    let text = if parts.first().is_none_or(|p| is_x(p) || p.is_empty()) {
        dirty = true;
        format!("0.0.0{suffix}")
    } else if parts.get(1).is_none_or(|p| is_x(p)) {
        dirty = true;
        minor_dirty = true;
        format!("{}.0.0{suffix}", parts[0])
    } else if parts.get(2).is_none_or(|p| is_x(p)) {
        dirty = true;
        patch_dirty = true;
        format!("{}.{}.0{suffix}", parts[0], parts[1])
    } else {
        format!("{core}{suffix}")
    };
    let v = parse_version(&text).map_err(|_| "constraint Parser Error".to_owned())?;
    Ok(Constraint {
        op: op.to_owned(),
        v,
        dirty,
        minor_dirty,
        patch_dirty,
    })
}

const OPS: [&str; 12] = [
    "!=", ">=", "=>", "<=", "=<", "~>", "=", ">", "<", "~", "^", "",
];

/// Splits one `||` group into (operator, version) pairs.
fn split_group(group: &str) -> Result<Vec<(String, String)>, String> {
    let improper = || format!("improper constraint: {group}");
    let mut out = Vec::new();
    let mut rest = group.trim();
    if rest.is_empty() {
        return Err(improper());
    }
    while !rest.is_empty() {
        let op = OPS
            .iter()
            .find(|o| !o.is_empty() && rest.starts_with(**o))
            .copied()
            .unwrap_or("");
        rest = rest[op.len()..].trim_start();
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(rest.len());
        let ver = &rest[..end];
        if ver.is_empty()
            || !ver
                .trim_start_matches('v')
                .starts_with(|c: char| c.is_ascii_digit() || "xX*".contains(c))
        {
            return Err(improper());
        }
        out.push((op.to_owned(), ver.to_owned()));
        rest = rest[end..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(out)
}

/// Rewrites hyphen ranges "1.2 - 1.4.5" into ">= 1.2, <= 1.4.5".
fn rewrite_ranges(c: &str) -> String {
    let words: Vec<&str> = c.split_whitespace().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if i + 2 < words.len() && words[i + 1] == "-" {
            out.push(format!(">= {}, <= {}", words[i], words[i + 2]));
            i += 3;
        } else {
            out.push(words[i].to_owned());
            i += 1;
        }
    }
    out.join(" ")
}

fn check(v: &Version, c: &Constraint) -> bool {
    if !v.pre.is_empty() && c.v.pre.is_empty() {
        return false;
    }
    let cmp = compare(v, &c.v);
    match c.op.as_str() {
        "" | "=" => {
            if c.dirty {
                tilde(v, c)
            } else {
                cmp == Ordering::Equal
            }
        }
        "!=" => {
            if c.dirty {
                if c.v.major != v.major {
                    return true;
                }
                if c.v.minor != v.minor && !c.minor_dirty {
                    return true;
                }
                if c.minor_dirty {
                    return false;
                }
                if c.v.patch != v.patch && !c.patch_dirty {
                    return true;
                }
                return false;
            }
            cmp != Ordering::Equal
        }
        ">" => {
            if !c.dirty {
                return cmp == Ordering::Greater;
            }
            if v.major != c.v.major {
                return v.major > c.v.major;
            }
            if c.minor_dirty {
                return false;
            }
            if c.patch_dirty {
                return v.minor > c.v.minor;
            }
            cmp == Ordering::Greater
        }
        "<" => cmp == Ordering::Less,
        ">=" | "=>" => cmp != Ordering::Less,
        "<=" | "=<" => {
            if !c.dirty {
                return cmp != Ordering::Greater;
            }
            if v.major > c.v.major {
                return false;
            }
            !(v.major == c.v.major && v.minor > c.v.minor && !c.minor_dirty)
        }
        "~" | "~>" => tilde(v, c),
        "^" => {
            if cmp == Ordering::Less {
                return false;
            }
            if c.v.major > 0 || c.minor_dirty {
                return v.major == c.v.major;
            }
            if v.major > 0 {
                return false;
            }
            if c.v.minor > 0 || c.patch_dirty {
                return v.minor == c.v.minor;
            }
            if v.minor > 0 {
                return false;
            }
            c.v.patch == v.patch
        }
        _ => false,
    }
}

fn tilde(v: &Version, c: &Constraint) -> bool {
    if compare(v, &c.v) == Ordering::Less {
        return false;
    }
    if c.v.major == 0 && c.v.minor == 0 && c.v.patch == 0 && !c.minor_dirty && !c.patch_dirty {
        return true;
    }
    if v.major != c.v.major {
        return false;
    }
    v.minor == c.v.minor || c.minor_dirty
}

fn semver_compare(args: &[Value]) -> Res {
    want("semverCompare", args, 2)?;
    let constraint = string_arg("semverCompare", args, 0)?;
    let version = string_arg("semverCompare", args, 1)?;
    let called = |e: String| fail(format!("error calling semverCompare: {e}"));
    let rewritten = rewrite_ranges(&constraint);
    let mut groups = Vec::new();
    for group in rewritten.split("||") {
        let parsed = split_group(group)
            .map_err(called)?
            .into_iter()
            .map(|(op, v)| parse_constraint(&op, &v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(called)?;
        groups.push(parsed);
    }
    let v = parse_version(&version).map_err(called)?;
    Ok(Value::Bool(
        groups.iter().any(|g| g.iter().all(|c| check(&v, c))),
    ))
}

/// `semver` returns the version's parts as a map (`.Major`, `.Minor`,
/// `.Patch`, `.Prerelease`, `.Metadata`, `.Original`); Go's methods such
/// as `.Compare` have no equivalent here.
fn semver(args: &[Value]) -> Res {
    want("semver", args, 1)?;
    let text = string_arg("semver", args, 0)?;
    let v = parse_version(&text).map_err(|e| fail(format!("error calling semver: {e}")))?;
    let m: HashMap<String, Value> = [
        ("Major", int(v.major as i64)),
        ("Minor", int(v.minor as i64)),
        ("Patch", int(v.patch as i64)),
        ("Prerelease", Value::String(v.pre)),
        ("Metadata", Value::String(v.meta)),
        ("Original", Value::String(v.original)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(new_map(m))
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "Semantic Version Functions" page
    /// (masterminds.github.io/sprig/semver.html) and Masterminds/semver's
    /// documented constraint rules (tilde, caret, wildcards, ranges,
    /// pre-releases), checked against Go.
    #[test]
    fn semver_functions() {
        let n = json!({});
        let cases: &[(&str, &str, &str)] = &[
            ("^1.2.0", "1.2.3", "true"),
            ("^1.2.0", "2.0.0", "false"),
            ("^0.2.3", "0.2.9", "true"),
            ("^0.2.3", "0.3.0", "false"),
            ("^0.0.3", "0.0.4", "false"),
            ("~1.2.3", "1.2.9", "true"),
            ("~1.2.3", "1.3.0", "false"),
            ("~1", "1.9.0", "true"),
            (">= 1.2, < 3.0.0", "2.5.0", "true"),
            (">= 1.2, < 3.0.0", "3.0.0", "false"),
            (">=1.2 <3", "2.0.0", "true"),
            ("1.2 - 1.4.5", "1.4.5", "true"),
            ("1.2 - 1.4.5", "1.4.6", "false"),
            ("1.2.x", "1.2.7", "true"),
            ("1.2.x", "1.3.0", "false"),
            ("*", "4.0.0", "true"),
            ("!= 1.2.3", "1.2.3", "false"),
            (">1.x", "2.0.0", "true"),
            ("<= 1.2", "1.2.9", "true"),
            ("<= 1.2", "1.3.0", "false"),
            ("^1.2.3 || ^2.0.0", "2.1.0", "true"),
            (">=1.2.3", "1.2.4-beta", "false"),
            (">=1.2.3-0", "1.2.4-beta", "true"),
            (">1.0.0-alpha", "1.0.0-beta.2", "true"),
            ("=v1.2.3", "1.2.3", "true"),
        ];
        let mut rows = Vec::new();
        for (c, v, want) in cases {
            rows.push((format!("{{{{ semverCompare {c:?} {v:?} }}}}"), *want));
        }
        let table_rows: Vec<(&str, serde_json::Value, Result<&str, &str>)> = rows
            .iter()
            .map(|(t, w)| (t.as_str(), n.clone(), Ok(*w)))
            .collect();
        table(&table_rows);
        table(&[
            (
                r#"{{ semverCompare "nope" "1.0.0" }}"#,
                n.clone(),
                Err("improper constraint"),
            ),
            (
                r#"{{ semverCompare "^1" "x.y" }}"#,
                n.clone(),
                Err("Invalid Semantic Version"),
            ),
            (
                r#"{{ (semver "1.2.3-beta.1+c0ff33").Prerelease }}"#,
                n.clone(),
                Ok("beta.1"),
            ),
            (r#"{{ (semver "v1.2").Minor }}"#, n.clone(), Ok("2")),
            (
                r#"{{ $v := semver "1.2.3-beta.1+c0ff33" }}{{ $v.Major }}.{{ $v.Patch }}+{{ $v.Metadata }}"#,
                n.clone(),
                Ok("1.3+c0ff33"),
            ),
        ]);
    }
}
