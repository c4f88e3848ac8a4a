//! Sprig's default, flow-control and JSON functions
//! (masterminds.github.io/sprig/defaults.html, flow_control.html), with the
//! Go `encoding/json` and `sigs.k8s.io/yaml` encoders behind `toJson` and
//! `toYaml`: keys sorted, as Go's encoders sort map keys.

use std::collections::HashMap;

use gtmpl_ng::{Func, FuncError, NumberKind, Value};

use super::{Res, arg, bool_arg, fail, is_empty, new_map, string_arg, want, want_at_least};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("default", default),
    ("empty", empty),
    ("coalesce", coalesce),
    ("all", all),
    ("any", any),
    ("ternary", ternary),
    ("fromJson", from_json),
    ("mustFromJson", must_from_json),
    ("toJson", to_json),
    ("mustToJson", must_to_json),
    ("toPrettyJson", to_pretty_json),
    ("mustToPrettyJson", must_to_pretty_json),
    ("toRawJson", to_raw_json),
    ("mustToRawJson", must_to_raw_json),
    ("deepCopy", deep_copy),
    ("mustDeepCopy", deep_copy),
    ("fail", fail_fn),
];

fn default(args: &[Value]) -> Res {
    want_at_least("default", args, 1)?;
    match args.get(1) {
        Some(given) if !is_empty(given) => Ok(given.clone()),
        _ => Ok(args[0].clone()),
    }
}

fn empty(args: &[Value]) -> Res {
    want("empty", args, 1)?;
    Ok(Value::Bool(is_empty(arg(args, 0))))
}

fn coalesce(args: &[Value]) -> Res {
    Ok(args
        .iter()
        .find(|v| !is_empty(v))
        .cloned()
        .unwrap_or(Value::Nil))
}

fn all(args: &[Value]) -> Res {
    Ok(Value::Bool(args.iter().all(|v| !is_empty(v))))
}

fn any(args: &[Value]) -> Res {
    Ok(Value::Bool(args.iter().any(|v| !is_empty(v))))
}

fn ternary(args: &[Value]) -> Res {
    want("ternary", args, 3)?;
    let cond = bool_arg("ternary", args, 2)?;
    Ok(if cond {
        args[0].clone()
    } else {
        args[1].clone()
    })
}

fn deep_copy(args: &[Value]) -> Res {
    want("deepCopy", args, 1)?;
    Ok(arg(args, 0).clone())
}

fn fail_fn(args: &[Value]) -> Res {
    want("fail", args, 1)?;
    let msg = string_arg("fail", args, 0)?;
    Err(fail(format!("error calling fail: {msg}")))
}

/// Converts parsed JSON/YAML into a template value: numbers are Go's float64.
pub(crate) fn from_json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => super::float(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(from_json_value).collect()),
        serde_json::Value::Object(m) => new_map(
            m.iter()
                .map(|(k, v)| (k.clone(), from_json_value(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

fn parse_json(name: &str, args: &[Value]) -> Result<Value, FuncError> {
    want(name, args, 1)?;
    let text = string_arg(name, args, 0)?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| from_json_value(&v))
        .map_err(|e| fail(format!("error calling {name}: {e}")))
}

fn from_json(args: &[Value]) -> Res {
    Ok(parse_json("fromJson", args).unwrap_or(Value::Nil))
}

fn must_from_json(args: &[Value]) -> Res {
    parse_json("mustFromJson", args)
}

/// Go's `encoding/json` output for a template value: map keys sorted, HTML
/// characters escaped unless `raw`, indented by two spaces when `pretty`.
pub fn go_json(v: &Value, pretty: bool, raw: bool) -> Result<String, String> {
    let mut out = String::new();
    write_json(&mut out, v, pretty, raw, 0)?;
    Ok(out)
}

fn write_json(
    out: &mut String,
    v: &Value,
    pretty: bool,
    raw: bool,
    depth: usize,
) -> Result<(), String> {
    let newline = |out: &mut String, depth: usize| {
        if pretty {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        }
    };
    match v {
        Value::NoValue | Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::String(s) => json_string(out, s, raw),
        Value::Number(n) => match n.kind() {
            NumberKind::Signed(i) => out.push_str(&i.to_string()),
            NumberKind::Unsigned(u) => out.push_str(&u.to_string()),
            NumberKind::Float(f) => out.push_str(&json_float(f)?),
        },
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_json(out, item, pretty, raw, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Map(m) | Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                json_string(out, k, raw);
                out.push(':');
                if pretty {
                    out.push(' ');
                }
                write_json(out, &m[k], pretty, raw, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        Value::Function(_) => return Err("json: unsupported type: func".into()),
    }
    Ok(())
}

fn json_string(out: &mut String, s: &str, raw: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' if !raw => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Go's float64 JSON form: plain decimal, or exponent form below 1e-6 and
/// from 1e21 up (`1e+21`, `1e-7`).
fn json_float(f: f64) -> Result<String, String> {
    if !f.is_finite() {
        return Err(format!(
            "json: unsupported value: {}",
            gtmpl_ng::format_float(f, gtmpl_ng::FloatFormat::General, None)
        ));
    }
    let a = f.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        let mut exp = e.unsigned_abs().to_string();
        if exp.len() < 2 && sign == '+' {
            exp = format!("{exp:0>2}");
        }
        return Ok(format!("{m}e{sign}{exp}"));
    }
    Ok(format!("{f}"))
}

fn json_fn(name: &str, args: &[Value], pretty: bool, raw: bool, must: bool) -> Res {
    want(name, args, 1)?;
    match go_json(arg(args, 0), pretty, raw) {
        Ok(s) => Ok(Value::String(s)),
        Err(e) if must || raw => Err(fail(format!("error calling {name}: {e}"))),
        Err(_) => Ok(Value::from("")),
    }
}

fn to_json(args: &[Value]) -> Res {
    json_fn("toJson", args, false, false, false)
}
fn must_to_json(args: &[Value]) -> Res {
    json_fn("mustToJson", args, false, false, true)
}
fn to_pretty_json(args: &[Value]) -> Res {
    json_fn("toPrettyJson", args, true, false, false)
}
fn must_to_pretty_json(args: &[Value]) -> Res {
    json_fn("mustToPrettyJson", args, true, false, true)
}
fn to_raw_json(args: &[Value]) -> Res {
    json_fn("toRawJson", args, false, true, false)
}
fn must_to_raw_json(args: &[Value]) -> Res {
    json_fn("mustToRawJson", args, false, true, true)
}

/// `sigs.k8s.io/yaml`'s `Marshal` (JSON first, then go-yaml v2's block
/// style: sorted keys, sequences not indented under their key, strings
/// quoted only where YAML would read them as something else).
pub fn to_go_yaml(v: &Value) -> Result<String, String> {
    // Through JSON first, as sigs.k8s.io/yaml does: unsupported values fail
    // the same way.
    go_json(v, false, true)?;
    let mut out = String::new();
    match v {
        Value::Map(m) | Value::Object(m) if !m.is_empty() => yaml_block(&mut out, v, 0, false),
        Value::Array(a) if !a.is_empty() => yaml_block(&mut out, v, 0, false),
        other => {
            yaml_inline(&mut out, other, 0);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Writes a non-empty map or sequence whose first line starts at `indent`;
/// with `inline`, that first line's indentation is already written (after
/// a sequence's `- `).
fn yaml_block(out: &mut String, v: &Value, indent: usize, inline: bool) {
    let pad = " ".repeat(indent);
    match v {
        Value::Map(m) | Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 || !inline {
                    out.push_str(&pad);
                }
                out.push_str(&yaml_scalar_string(k, indent));
                out.push(':');
                let child = &m[k];
                match child {
                    Value::Map(cm) | Value::Object(cm) if !cm.is_empty() => {
                        out.push('\n');
                        yaml_block(out, child, indent + 2, false);
                    }
                    // go-yaml v2 does not indent a sequence under its key.
                    Value::Array(items) if !items.is_empty() => {
                        out.push('\n');
                        yaml_block(out, child, indent, false);
                    }
                    _ => {
                        out.push(' ');
                        yaml_inline(out, child, indent);
                        out.push('\n');
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 || !inline {
                    out.push_str(&pad);
                }
                out.push_str("- ");
                match item {
                    Value::Map(cm) | Value::Object(cm) if !cm.is_empty() => {
                        yaml_block(out, item, indent + 2, true)
                    }
                    Value::Array(ci) if !ci.is_empty() => yaml_block(out, item, indent + 2, true),
                    _ => {
                        yaml_inline(out, item, indent);
                        out.push('\n');
                    }
                }
            }
        }
        other => {
            out.push_str(&pad);
            yaml_inline(out, other, indent);
            out.push('\n');
        }
    }
}

fn yaml_inline(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::NoValue | Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.kind() {
            NumberKind::Signed(i) => out.push_str(&i.to_string()),
            NumberKind::Unsigned(u) => out.push_str(&u.to_string()),
            NumberKind::Float(f) => out.push_str(&yaml_float(f)),
        },
        Value::String(s) => out.push_str(&yaml_scalar_string(s, indent)),
        Value::Map(_) | Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
        Value::Function(_) => out.push_str("null"),
    }
}

/// A float after the JSON round trip: integral values within 2^63 are
/// integers again (`1e+06` → `1000000`), the rest in Go's `%g` form.
fn yaml_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 9.2e18 {
        return format!("{}", f as i64);
    }
    let json = json_float(f).unwrap_or_default();
    if json.contains('e') {
        gtmpl_ng::format_float(f, gtmpl_ng::FloatFormat::General, None)
    } else {
        json
    }
}

/// A string as go-yaml v2 writes it: plain when it reads back as the same
/// string, a literal block for multi-line text, otherwise quoted.
fn yaml_scalar_string(s: &str, indent: usize) -> String {
    if s.contains('\n') && !s.contains(|c: char| c.is_control() && c != '\n') {
        let keep = if s.ends_with('\n') { "" } else { "-" };
        let body_pad = " ".repeat(indent + 2);
        let lead_space = if s.starts_with(' ') { "2" } else { "" };
        let mut out = format!("|{lead_space}{keep}");
        let body = s.strip_suffix('\n').unwrap_or(s);
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&body_pad);
                out.push_str(line);
            }
        }
        return out;
    }
    if yaml_plain_ok(s) {
        return s.to_owned();
    }
    if !s.contains(|c: char| c.is_control()) && !s.contains('\u{feff}') {
        if needs_double_quotes_for_type(s) {
            return super::go_quote(s);
        }
        return format!("'{}'", s.replace('\'', "''"));
    }
    super::go_quote(s)
}

/// Strings that YAML 1.1 would resolve to another type are written
/// double-quoted by go-yaml v2.
fn needs_double_quotes_for_type(s: &str) -> bool {
    resolves_to_non_string(s)
}

fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~", "",
        ".inf", ".Inf", ".INF", "+.inf", "-.inf", ".nan", ".NaN", ".NAN", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let t = s.replace('_', "");
    let body = t.strip_prefix(['+', '-']).unwrap_or(&t);
    if body.is_empty() {
        return false;
    }
    // Integers: decimal, 0x hex, 0b binary, leading-zero octal.
    if body.bytes().all(|b| b.is_ascii_digit())
        || body
            .strip_prefix("0x")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
        || body
            .strip_prefix("0b")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b == b'0' || b == b'1'))
    {
        return true;
    }
    // Floats as YAML 1.1 reads them (a dot or exponent required, digits around).
    let float_like = body.bytes().all(|b| {
        b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'+' || b == b'-'
    }) && body.bytes().any(|b| b.is_ascii_digit())
        && body.parse::<f64>().is_ok();
    if float_like {
        return true;
    }
    // Base-60 numbers ("1:20") are read as numbers by YAML 1.1.
    body.contains(':')
        && body
            .split(':')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && body.split(':').skip(1).all(|p| p.len() <= 2)
}

fn yaml_plain_ok(s: &str) -> bool {
    if s.is_empty() || resolves_to_non_string(s) {
        return false;
    }
    let first = s.chars().next().unwrap_or(' ');
    let last = s.chars().next_back().unwrap_or(' ');
    if first == ' ' || last == ' ' || first == '\t' || last == '\t' {
        return false;
    }
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        // "-", "?" and ":" are fine when followed by a non-space.
        let second = s.chars().nth(1);
        if !("-?:".contains(first) && second.is_some_and(|c| c != ' ')) {
            return false;
        }
        if first == '-' && s.starts_with("---") {
            return false;
        }
    }
    if s.contains(": ") || s.contains(" #") || s.ends_with(':') {
        return false;
    }
    if s.contains(|c: char| c.is_control() || c == '\u{feff}') {
        return false;
    }
    // Flow indicators are allowed in block context, except at the start.
    true
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "Default Functions" and "Flow Control"
    /// pages (masterminds.github.io/sprig/defaults.html, flow_control.html),
    /// checked against Go.
    #[test]
    fn default_functions() {
        let n =
            json!({"name": "app", "empty": "", "zero": 0, "list": [], "obj": {"b": 1, "a": "<x>"}});
        table(&[
            (r#"{{ default "foo" .missing }}"#, n.clone(), Ok("foo")),
            (r#"{{ default "foo" .empty }}"#, n.clone(), Ok("foo")),
            (r#"{{ default "foo" .name }}"#, n.clone(), Ok("app")),
            (r#"{{ .zero | default 7 }}"#, n.clone(), Ok("7")),
            (r#"{{ empty .list }}"#, n.clone(), Ok("true")),
            (r#"{{ empty .name }}"#, n.clone(), Ok("false")),
            (r#"{{ coalesce .empty .zero "x" }}"#, n.clone(), Ok("x")),
            // Go prints a nil result as <no value>.
            (r#"{{ coalesce .empty }}"#, n.clone(), Ok("<no value>")),
            (r#"{{ all .name 1 true }}"#, n.clone(), Ok("true")),
            (r#"{{ all .name .zero }}"#, n.clone(), Ok("false")),
            (r#"{{ any .empty .zero .name }}"#, n.clone(), Ok("true")),
            (r#"{{ any .empty .zero }}"#, n.clone(), Ok("false")),
            (r#"{{ ternary "yes" "no" true }}"#, n.clone(), Ok("yes")),
            (r#"{{ false | ternary "yes" "no" }}"#, n.clone(), Ok("no")),
            (
                r#"{{ toJson .obj }}"#,
                n.clone(),
                Ok(r#"{"a":"\u003cx\u003e","b":1}"#),
            ),
            (
                r#"{{ toRawJson .obj }}"#,
                n.clone(),
                Ok(r#"{"a":"<x>","b":1}"#),
            ),
            (r#"{{ mustToJson .list }}"#, n.clone(), Ok("[]")),
            (
                r#"{{ toPrettyJson .obj }}"#,
                n.clone(),
                Ok("{\n  \"a\": \"\\u003cx\\u003e\",\n  \"b\": 1\n}"),
            ),
            (
                r#"{{ mustToPrettyJson (list 1 (dict)) }}"#,
                n.clone(),
                Ok("[\n  1,\n  {}\n]"),
            ),
            (r#"{{ mustToRawJson "a&b" }}"#, n.clone(), Ok(r#""a&b""#)),
            (r#"{{ toJson 1e21 }}"#, n.clone(), Ok("1e+21")),
            (r#"{{ toJson 0.0000001 }}"#, n.clone(), Ok("1e-7")),
            (
                r#"{{ (fromJson "{\"a\":{\"b\":2}}").a.b }}"#,
                n.clone(),
                Ok("2"),
            ),
            (r#"{{ fromJson "nope" }}"#, n.clone(), Ok("<no value>")),
            (
                r#"{{ mustFromJson "nope" }}"#,
                n.clone(),
                Err("error calling mustFromJson"),
            ),
            (r#"{{ $c := deepCopy .obj }}{{ $c.b }}"#, n.clone(), Ok("1")),
            (r#"{{ mustDeepCopy .list | len }}"#, n.clone(), Ok("0")),
            (
                r#"{{ fail "bad value" }}"#,
                n.clone(),
                Err("error calling fail: bad value"),
            ),
        ]);
    }
}
