//! Sprig's URL functions (masterminds.github.io/sprig/url.html), with Go's
//! `net/url` parsing rules.

use std::collections::HashMap;

use gtmpl_ng::{Func, Value};

use super::{Res, fail, map_arg, new_map, string_arg, want};

pub(super) const FUNCS: &[(&str, Func)] = &[("urlParse", url_parse), ("urlJoin", url_join)];

fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("invalid URL escape {:?}", &s[i..]))?;
            let v = u8::from_str_radix(hex, 16)
                .map_err(|_| format!("invalid URL escape \"%{hex}\""))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn escape(s: &str, keep: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep.as_bytes().contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Url {
    scheme: String,
    opaque: String,
    user: Option<String>,
    host: String,
    path: String,
    query: String,
    fragment: String,
}

fn parse(raw: &str) -> Result<Url, String> {
    let (rest, fragment) = match raw.split_once('#') {
        Some((r, f)) => (r, unescape(f)?),
        None => (raw, String::new()),
    };
    let mut u = Url {
        scheme: String::new(),
        opaque: String::new(),
        user: None,
        host: String::new(),
        path: String::new(),
        query: String::new(),
        fragment,
    };
    let mut rest = rest;
    if let Some(colon) = rest.find(':') {
        let candidate = &rest[..colon];
        let valid = candidate
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && candidate
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if valid {
            u.scheme = candidate.to_ascii_lowercase();
            rest = &rest[colon + 1..];
        } else if colon == 0 {
            return Err("missing protocol scheme".into());
        }
    }
    if let Some((r, q)) = rest.split_once('?') {
        u.query = q.to_owned();
        rest = r;
    }
    if !u.scheme.is_empty() && !rest.starts_with('/') {
        u.opaque = rest.to_owned();
        return Ok(u);
    }
    if let Some(after) = rest.strip_prefix("//") {
        let end = after.find('/').unwrap_or(after.len());
        let authority = &after[..end];
        rest = &after[end..];
        let host = match authority.rfind('@') {
            Some(at) => {
                u.user = Some(authority[..at].to_owned());
                &authority[at + 1..]
            }
            None => authority,
        };
        u.host = unescape(host)?;
    }
    u.path = unescape(rest)?;
    Ok(u)
}

fn hostname(host: &str) -> String {
    if let Some(inner) = host.strip_prefix('[') {
        return inner.split(']').next().unwrap_or("").to_owned();
    }
    match host.rfind(':') {
        Some(i) => host[..i].to_owned(),
        None => host.to_owned(),
    }
}

fn userinfo_string(raw: &str) -> Result<String, String> {
    // Go re-escapes the decoded user and password.
    let (user, pass) = match raw.split_once(':') {
        Some((u, p)) => (unescape(u)?, Some(unescape(p)?)),
        None => (unescape(raw)?, None),
    };
    let mut out = escape(&user, "!$&'()*+,;=");
    if let Some(p) = pass {
        out.push(':');
        out.push_str(&escape(&p, "!$&'()*+,;="));
    }
    Ok(out)
}

fn url_parse(args: &[Value]) -> Res {
    want("urlParse", args, 1)?;
    let raw = string_arg("urlParse", args, 0)?;
    let u = parse(&raw).map_err(|e| {
        fail(format!(
            "error calling urlParse: unable to parse url: parse {}: {e}",
            super::go_quote(&raw)
        ))
    })?;
    let userinfo = match &u.user {
        Some(info) => {
            userinfo_string(info).map_err(|e| fail(format!("error calling urlParse: {e}")))?
        }
        None => String::new(),
    };
    let m: HashMap<String, Value> = [
        ("scheme", u.scheme.clone()),
        ("host", u.host.clone()),
        ("hostname", hostname(&u.host)),
        ("path", u.path.clone()),
        ("query", u.query.clone()),
        ("opaque", u.opaque.clone()),
        ("fragment", u.fragment.clone()),
        ("userinfo", userinfo),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v)))
    .collect();
    Ok(new_map(m))
}

fn url_join(args: &[Value]) -> Res {
    want("urlJoin", args, 1)?;
    let d = map_arg("urlJoin", args, 0)?;
    let get = |k: &str| -> Result<String, gtmpl_ng::FuncError> {
        match d.get(k) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(fail(format!(
                "error calling urlJoin: unable to parse {k} key, must be of type string, but {} found",
                super::go_kind(other)
            ))),
        }
    };
    let (scheme, host, path, query, opaque, fragment, userinfo) = (
        get("scheme")?,
        get("host")?,
        get("path")?,
        get("query")?,
        get("opaque")?,
        get("fragment")?,
        get("userinfo")?,
    );
    // Go's url.URL.String().
    let mut out = String::new();
    if !scheme.is_empty() {
        out.push_str(&scheme);
        out.push(':');
    }
    if !opaque.is_empty() {
        out.push_str(&opaque);
    } else {
        if !scheme.is_empty() || !host.is_empty() || !userinfo.is_empty() {
            if !host.is_empty() || !path.is_empty() || !userinfo.is_empty() {
                out.push_str("//");
            }
            if !userinfo.is_empty() {
                out.push_str(&userinfo);
                out.push('@');
            }
            out.push_str(&escape(&host, "!$&'()*+,;=:[]"));
        }
        if !path.is_empty() && !path.starts_with('/') && !host.is_empty() {
            out.push('/');
        }
        out.push_str(&escape(&path, "/!$&'()*+,;=:@"));
    }
    if !query.is_empty() {
        out.push('?');
        out.push_str(&query);
    }
    if !fragment.is_empty() {
        out.push('#');
        out.push_str(&escape(&fragment, "/!$&'()*+,;=:@?"));
    }
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "URL Functions" page
    /// (masterminds.github.io/sprig/url.html) and Go's net/url.
    #[test]
    fn url_functions() {
        let n = json!({});
        table(&[
            (
                r#"{{ (urlParse "proto://auth@host:80/path?query#fragment").host }}"#,
                n.clone(),
                Ok("host:80"),
            ),
            (
                r#"{{ $u := urlParse "proto://auth@host:80/path?query#fragment" }}{{ $u.scheme }}|{{ $u.hostname }}|{{ $u.path }}|{{ $u.query }}|{{ $u.fragment }}|{{ $u.userinfo }}|{{ $u.opaque }}"#,
                n.clone(),
                Ok("proto|host|/path|query|fragment|auth|"),
            ),
            (
                r#"{{ (urlParse "mailto:user@example.com").opaque }}"#,
                n.clone(),
                Ok("user@example.com"),
            ),
            (
                r#"{{ (urlParse "https://u:p%40ss@h/a%20b").path }}"#,
                n.clone(),
                Ok("/a b"),
            ),
            (
                r#"{{ urlJoin (dict "fragment" "fragment" "host" "host:80" "path" "/path" "query" "query" "scheme" "proto") }}"#,
                n.clone(),
                Ok("proto://host:80/path?query#fragment"),
            ),
            (
                r#"{{ urlJoin (dict "scheme" "https" "host" "h" "userinfo" "me") }}"#,
                n.clone(),
                Ok("https://me@h"),
            ),
            (
                r#"{{ urlJoin (dict "host" 1) }}"#,
                n.clone(),
                Err("unable to parse host key"),
            ),
            (r#"{{ urlquery "a b&c" }}"#, n.clone(), Ok("a+b%26c")),
        ]);
    }
}
