//! Sprig's regular-expression functions
//! (masterminds.github.io/sprig/strings.html#regexmatch-mustregexmatch).
//! Go's RE2 syntax and Rust's `regex` agree on everything templates use;
//! `$1`/`${name}` expansion follows the same longest-name rule.

use gtmpl_ng::{Func, FuncError, Value};
use regex::Regex;

use super::{Res, fail, int_arg, string_arg, strings_value, want};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("regexMatch", regex_match),
    ("mustRegexMatch", must_regex_match),
    ("regexFindAll", regex_find_all),
    ("mustRegexFindAll", must_regex_find_all),
    ("regexFind", regex_find),
    ("mustRegexFind", must_regex_find),
    ("regexReplaceAll", regex_replace_all),
    ("mustRegexReplaceAll", must_regex_replace_all),
    ("regexReplaceAllLiteral", regex_replace_all_literal),
    ("mustRegexReplaceAllLiteral", must_regex_replace_all_literal),
    ("regexSplit", regex_split),
    ("mustRegexSplit", must_regex_split),
    ("regexQuoteMeta", regex_quote_meta),
];

fn compile(name: &str, args: &[Value]) -> Result<Regex, FuncError> {
    let pattern = string_arg(name, args, 0)?;
    Regex::new(&pattern).map_err(|e| {
        let detail = e.to_string();
        let last = detail.lines().last().unwrap_or(&detail).trim().to_owned();
        fail(format!(
            "error calling {name}: error parsing regexp: {last}: `{pattern}`"
        ))
    })
}

fn regex_match(args: &[Value]) -> Res {
    want("regexMatch", args, 2)?;
    let text = string_arg("regexMatch", args, 1)?;
    Ok(Value::Bool(
        compile("regexMatch", args).is_ok_and(|r| r.is_match(&text)),
    ))
}

fn must_regex_match(args: &[Value]) -> Res {
    want("mustRegexMatch", args, 2)?;
    let text = string_arg("mustRegexMatch", args, 1)?;
    Ok(Value::Bool(
        compile("mustRegexMatch", args)?.is_match(&text),
    ))
}

fn find_all(name: &str, args: &[Value]) -> Res {
    want(name, args, 3)?;
    let re = compile(name, args)?;
    let text = string_arg(name, args, 1)?;
    let n = int_arg(name, args, 2)?;
    let found = go_matches(&re, &text).map(|(a, b)| text[a..b].to_owned());
    Ok(strings_value(if n < 0 {
        found.collect::<Vec<_>>()
    } else {
        found.take(n as usize).collect()
    }))
}

/// Go's successive non-overlapping matches: an empty match right after a
/// previous match is skipped.
fn go_matches<'a>(re: &'a Regex, text: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
    let mut prev_end: Option<usize> = None;
    re.find_iter(text).filter_map(move |m| {
        let keep = !(m.start() == m.end() && prev_end == Some(m.start()));
        prev_end = Some(m.end());
        keep.then_some((m.start(), m.end()))
    })
}

fn regex_find_all(args: &[Value]) -> Res {
    find_all("regexFindAll", args)
}
fn must_regex_find_all(args: &[Value]) -> Res {
    find_all("mustRegexFindAll", args)
}

fn find(name: &str, args: &[Value]) -> Res {
    want(name, args, 2)?;
    let re = compile(name, args)?;
    let text = string_arg(name, args, 1)?;
    Ok(Value::from(re.find(&text).map_or("", |m| m.as_str())))
}

fn regex_find(args: &[Value]) -> Res {
    find("regexFind", args)
}
fn must_regex_find(args: &[Value]) -> Res {
    find("mustRegexFind", args)
}

fn replace(name: &str, args: &[Value], literal: bool) -> Res {
    want(name, args, 3)?;
    let re = compile(name, args)?;
    let text = string_arg(name, args, 1)?;
    let repl = string_arg(name, args, 2)?;
    Ok(Value::String(if literal {
        re.replace_all(&text, regex::NoExpand(&repl)).into_owned()
    } else {
        re.replace_all(&text, repl.as_str()).into_owned()
    }))
}

fn regex_replace_all(args: &[Value]) -> Res {
    replace("regexReplaceAll", args, false)
}
fn must_regex_replace_all(args: &[Value]) -> Res {
    replace("mustRegexReplaceAll", args, false)
}
fn regex_replace_all_literal(args: &[Value]) -> Res {
    replace("regexReplaceAllLiteral", args, true)
}
fn must_regex_replace_all_literal(args: &[Value]) -> Res {
    replace("mustRegexReplaceAllLiteral", args, true)
}

/// Go's `Regexp.Split`.
fn split(name: &str, args: &[Value]) -> Res {
    want(name, args, 3)?;
    let re = compile(name, args)?;
    let text = string_arg(name, args, 1)?;
    let n = int_arg(name, args, 2)?;
    if n == 0 {
        return Ok(Value::Array(Vec::new()));
    }
    if !re.as_str().is_empty() && text.is_empty() {
        return Ok(strings_value([String::new()]));
    }
    let mut out = Vec::new();
    let (mut beg, mut end) = (0, 0);
    for (a, b) in go_matches(&re, &text) {
        if n > 0 && out.len() as i64 == n - 1 {
            break;
        }
        end = a;
        if b != 0 {
            out.push(text[beg..end].to_owned());
        }
        beg = b;
    }
    if end != text.len() {
        out.push(text[beg..].to_owned());
    }
    Ok(strings_value(out))
}

fn regex_split(args: &[Value]) -> Res {
    split("regexSplit", args)
}
fn must_regex_split(args: &[Value]) -> Res {
    split("mustRegexSplit", args)
}

/// Go's `regexp.QuoteMeta`: only `\.+*?()|[]{}^$` are escaped.
fn regex_quote_meta(args: &[Value]) -> Res {
    want("regexQuoteMeta", args, 1)?;
    let text = string_arg("regexQuoteMeta", args, 0)?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's regular-expression section
    /// (masterminds.github.io/sprig/strings.html) and Go's regexp package
    /// documentation, checked against Go.
    #[test]
    fn regex_functions() {
        let n = json!({});
        table(&[
            (
                r#"{{ regexMatch "^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[A-Za-z]{2,}$" "test@acme.com" }}"#,
                n.clone(),
                Ok("true"),
            ),
            (r#"{{ regexMatch "[" "x" }}"#, n.clone(), Ok("false")),
            (
                r#"{{ mustRegexMatch "[" "x" }}"#,
                n.clone(),
                Err("error parsing regexp"),
            ),
            (
                r#"{{ regexFindAll "[2,4,6,8]" "123456789" -1 }}"#,
                n.clone(),
                Ok("[2 4 6 8]"),
            ),
            (
                r#"{{ regexFindAll "[2,4,6,8]" "123456789" 2 }}"#,
                n.clone(),
                Ok("[2 4]"),
            ),
            (
                r#"{{ mustRegexFindAll "a*" "baaab" -1 | len }}"#,
                n.clone(),
                Ok("3"),
            ),
            (
                r#"{{ regexFind "[a-zA-Z][1-9]" "abcd1234" }}"#,
                n.clone(),
                Ok("d1"),
            ),
            (r#"{{ mustRegexFind "x" "abc" }}"#, n.clone(), Ok("")),
            (
                r#"{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}"#,
                n.clone(),
                Ok("-W-xxW-"),
            ),
            (
                r#"{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "$1W" }}"#,
                n.clone(),
                Ok("---"),
            ),
            (
                r#"{{ regexReplaceAll "(?P<first>\\w+) (?P<last>\\w+)" "John Smith" "${last}, ${first}" }}"#,
                n.clone(),
                Ok("Smith, John"),
            ),
            (
                r#"{{ mustRegexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}"#,
                n.clone(),
                Ok("-W-xxW-"),
            ),
            (
                r#"{{ regexReplaceAllLiteral "a(x*)b" "-ab-axxb-" "${1}" }}"#,
                n.clone(),
                Ok("-${1}-${1}-"),
            ),
            (
                r#"{{ mustRegexReplaceAllLiteral "a" "aa" "$" }}"#,
                n.clone(),
                Ok("$$"),
            ),
            (
                r#"{{ regexSplit "z+" "pizza" -1 }}"#,
                n.clone(),
                Ok("[pi a]"),
            ),
            (
                r#"{{ regexSplit "z+" "pizza" 1 }}"#,
                n.clone(),
                Ok("[pizza]"),
            ),
            (
                r#"{{ mustRegexSplit "a" "banana" 2 }}"#,
                n.clone(),
                Ok("[b nana]"),
            ),
            (r#"{{ regexSplit "," "" -1 | len }}"#, n.clone(), Ok("1")),
            (
                r#"{{ regexQuoteMeta "1.2.3+[x]" }}"#,
                n.clone(),
                Ok(r"1\.2\.3\+\[x\]"),
            ),
            (r#"{{ regexQuoteMeta "a-b#c" }}"#, n.clone(), Ok("a-b#c")),
        ]);
    }
}
