//! Sprig v3 for goTemplate, as Argo CD's ApplicationSet controller offers it.
//!
//! Argo CD renders with Sprig's generic function map minus `env`,
//! `expandenv` and `getHostByName`, plus its own `normalize`, `slugify`,
//! `toYaml`, `fromYaml` and `fromYamlArray`. Every function here follows the
//! Go implementation's behaviour, including the quirks a template can see
//! (argument order, what a wrong type does, what an error says). Where a Go
//! map's random iteration order would show (`keys`, `values`, JSON and YAML
//! output), keys are sorted so the same input always renders the same bytes.
//!
//! One family per module; [`functions`] is the whole table.

mod argo;
mod crypto;
mod date;
mod defaults;
mod dicts;
mod encoding;
mod lists;
mod math;
mod reflect;
mod regex;
mod semver;
mod strings;
mod url;

use std::cell::Cell;
use std::collections::HashMap;

use gtmpl_ng::{Func, FuncError, Number, NumberKind, Value};

pub use argo::{normalize, slugify};
pub use defaults::{go_json, to_go_yaml};

/// A function's result.
pub(crate) type Res = Result<Value, FuncError>;

thread_local! {
    /// Under `missingkey=error` every map is a struct-like `Value::Object`, whose
    /// missing fields the engine refuses; maps that functions build must follow.
    static STRICT_MAPS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with maps built by functions made strict (or not).
pub(crate) fn with_strict_maps<T>(strict: bool, f: impl FnOnce() -> T) -> T {
    let before = STRICT_MAPS.with(|s| s.replace(strict));
    let out = f();
    STRICT_MAPS.with(|s| s.set(before));
    out
}

/// A map value of the current flavour (see [`with_strict_maps`]).
pub(crate) fn new_map(m: HashMap<String, Value>) -> Value {
    if STRICT_MAPS.with(Cell::get) {
        Value::Object(m)
    } else {
        Value::Map(m)
    }
}

/// The entries of a map value of either flavour.
pub(crate) fn as_map(v: &Value) -> Option<&HashMap<String, Value>> {
    match v {
        Value::Map(m) | Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A function error with Go's wording.
pub(crate) fn fail(msg: impl Into<String>) -> FuncError {
    FuncError::Generic(msg.into())
}

/// The argument at `i`; a missing value reads as Go's untyped nil.
pub(crate) fn arg(args: &[Value], i: usize) -> &Value {
    match args.get(i) {
        Some(Value::NoValue) | None => &Value::Nil,
        Some(v) => v,
    }
}

/// Checks the argument count of a function with fixed parameters.
pub(crate) fn want(name: &str, args: &[Value], n: usize) -> Result<(), FuncError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(fail(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        )))
    }
}

/// Checks the argument count of a variadic function.
pub(crate) fn want_at_least(name: &str, args: &[Value], n: usize) -> Result<(), FuncError> {
    if args.len() >= n {
        Ok(())
    } else {
        Err(fail(format!(
            "wrong number of args for {name}: want at least {n} got {}",
            args.len()
        )))
    }
}

/// Go's name for the dynamic type of a value (`%T`).
pub(crate) fn go_type(v: &Value) -> &'static str {
    match v {
        Value::NoValue | Value::Nil => "<nil>",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Number(n) => match n.kind() {
            NumberKind::Float(_) => "float64",
            _ => "int",
        },
        Value::Map(_) | Value::Object(_) => "map[string]interface {}",
        Value::Array(_) => "[]interface {}",
        Value::Function(_) => "func",
    }
}

/// Go's reflect kind of a value.
pub(crate) fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::NoValue | Value::Nil => "invalid",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Number(n) => match n.kind() {
            NumberKind::Float(_) => "float64",
            _ => "int",
        },
        Value::Map(_) | Value::Object(_) => "map",
        Value::Array(_) => "slice",
        Value::Function(_) => "func",
    }
}

/// A `string` parameter: Go refuses anything else.
pub(crate) fn string_arg(name: &str, args: &[Value], i: usize) -> Result<String, FuncError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::NoValue) | Some(Value::Nil) => Err(fail("invalid value; expected string")),
        Some(other) => Err(fail(format!(
            "wrong type for value; expected string; got {}",
            go_type(other)
        ))),
        None => Err(fail(format!("wrong number of args for {name}"))),
    }
}

/// An `int` parameter: Go accepts integers (and whole float constants), nothing else.
pub(crate) fn int_arg(name: &str, args: &[Value], i: usize) -> Result<i64, FuncError> {
    match args.get(i) {
        Some(Value::Number(n)) => match n.kind() {
            NumberKind::Signed(i) => Ok(i),
            NumberKind::Unsigned(u) => {
                i64::try_from(u).map_err(|_| fail(format!("{u} overflows int")))
            }
            NumberKind::Float(f) => Err(fail(format!(
                "wrong type for value; expected int; got float64 ({f})"
            ))),
        },
        Some(Value::NoValue) | Some(Value::Nil) => Err(fail("invalid value; expected int")),
        Some(other) => Err(fail(format!(
            "wrong type for value; expected int; got {}",
            go_type(other)
        ))),
        None => Err(fail(format!("wrong number of args for {name}"))),
    }
}

/// A `bool` parameter.
pub(crate) fn bool_arg(name: &str, args: &[Value], i: usize) -> Result<bool, FuncError> {
    match args.get(i) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(fail(format!(
            "wrong type for value; expected bool; got {}",
            go_type(other)
        ))),
        None => Err(fail(format!("wrong number of args for {name}"))),
    }
}

/// A `map[string]interface{}` parameter.
pub(crate) fn map_arg<'a>(
    name: &str,
    args: &'a [Value],
    i: usize,
) -> Result<&'a HashMap<String, Value>, FuncError> {
    match args.get(i) {
        Some(v) => as_map(v).ok_or_else(|| {
            fail(format!(
                "wrong type for value; expected map[string]interface {{}}; got {}",
                go_type(v)
            ))
        }),
        None => Err(fail(format!("wrong number of args for {name}"))),
    }
}

/// Sprig's `strval`: a string as is, anything else as Go's `%v` prints it.
pub(crate) fn strval(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::NoValue | Value::Nil => "<nil>".into(),
        other => other.to_string(),
    }
}

/// spf13/cast's `ToInt64`: numbers truncated, strings parsed (with Go's base
/// prefixes; a `.0…` suffix dropped), booleans 1/0, anything else 0.
pub(crate) fn to_int64(v: &Value) -> i64 {
    match v {
        Value::Number(n) => match n.kind() {
            NumberKind::Signed(i) => i,
            NumberKind::Unsigned(u) => u as i64,
            NumberKind::Float(f) => f as i64,
        },
        Value::Bool(b) => i64::from(*b),
        Value::String(s) => parse_go_int(trim_zero_decimal(s)).unwrap_or(0),
        _ => 0,
    }
}

/// spf13/cast's `ToFloat64`.
pub(crate) fn to_float64(v: &Value) -> f64 {
    match v {
        Value::Number(n) => match n.kind() {
            NumberKind::Signed(i) => i as f64,
            NumberKind::Unsigned(u) => u as f64,
            NumberKind::Float(f) => f,
        },
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::String(s) => parse_go_float(s).unwrap_or(0.0),
        _ => 0.0,
    }
}

fn trim_zero_decimal(s: &str) -> &str {
    match s.find('.') {
        Some(dot) if dot > 0 && s[dot + 1..].chars().all(|c| c == '0') => &s[..dot],
        _ => s,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b`/leading-`0`
/// prefixes, `_` separators only with a prefix.
pub(crate) fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_owned(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_owned(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_owned(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_owned(), true)
    } else {
        (10, lower.clone(), false)
    };
    if digits.is_empty() || digits.starts_with('_') && !prefixed {
        return None;
    }
    let digits = if prefixed {
        if digits.contains("__") || digits.ends_with('_') {
            return None;
        }
        digits.replace('_', "")
    } else if digits.contains('_') {
        return None;
    } else {
        digits
    };
    if digits.is_empty() {
        return None;
    }
    let mag = u64::from_str_radix(&digits, radix).ok()?;
    if neg {
        if mag <= i64::MAX as u64 + 1 {
            Some((mag as i64).wrapping_neg())
        } else {
            None
        }
    } else {
        i64::try_from(mag).ok()
    }
}

/// Go's `strconv.ParseFloat(s, 64)` for the forms templates meet.
pub(crate) fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.to_ascii_lowercase();
    match t.trim_start_matches(['+', '-']) {
        "inf" | "infinity" => {
            return Some(if t.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        }
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if t.contains("0x") || t.is_empty() {
        return None;
    }
    t.replace('_', "").parse::<f64>().ok()
}

/// A Go `int64` result.
pub(crate) fn int(i: i64) -> Value {
    Value::Number(Number::signed(i))
}

/// A Go `float64` result.
pub(crate) fn float(f: f64) -> Value {
    Value::Number(Number::float(f))
}

/// A Go `[]string` result.
pub(crate) fn strings_value(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(items.into_iter().map(Value::String).collect())
}

/// The elements of a slice argument, or Go's error for anything else.
pub(crate) fn list_arg<'a>(what: &str, v: &'a Value) -> Result<&'a [Value], FuncError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::NoValue | Value::Nil => Err(fail(format!(
            "Cannot {what} on type <nil>: runtime error: invalid memory address or nil pointer dereference"
        ))),
        other => Err(fail(format!("Cannot {what} on type {}", go_kind(other)))),
    }
}

/// Sprig's `empty`: the zero value of its type, or nil.
pub(crate) fn is_empty(v: &Value) -> bool {
    match v {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Map(m) | Value::Object(m) => m.is_empty(),
        Value::Number(n) => match n.kind() {
            NumberKind::Signed(i) => i == 0,
            NumberKind::Unsigned(u) => u == 0,
            NumberKind::Float(f) => f == 0.0,
        },
        Value::Function(_) => false,
    }
}

/// Go's `reflect.DeepEqual` over template values (numbers of different Go
/// types are different).
pub(crate) fn deep_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let fx = matches!(x.kind(), NumberKind::Float(_));
            let fy = matches!(y.kind(), NumberKind::Float(_));
            fx == fy && x == y
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| deep_equal(a, b))
        }
        (Value::Map(x) | Value::Object(x), Value::Map(y) | Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| deep_equal(v, w)))
        }
        (Value::NoValue | Value::Nil, Value::NoValue | Value::Nil) => true,
        _ => a == b,
    }
}

/// Go's `strconv.Quote` (what `%q` does to a string).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn is_go_printable(c: char) -> bool {
    // Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and
    // the ASCII space. Control and format characters, separators other than
    // U+0020 and unassigned code points are escaped.
    !(c.is_control()
        || matches!(c as u32, 0x00ad | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x206f | 0xfeff | 0xfff9..=0xfffb)
        || (c.is_whitespace() && c != ' '))
}

/// Every goTemplate function: Go's builtins we override, Sprig (minus the
/// three Argo CD removes) and Argo CD's own.
pub fn functions() -> Vec<(&'static str, Func)> {
    let mut all = Vec::new();
    all.extend_from_slice(argo::FUNCS);
    all.extend_from_slice(strings::FUNCS);
    all.extend_from_slice(math::FUNCS);
    all.extend_from_slice(date::FUNCS);
    all.extend_from_slice(defaults::FUNCS);
    all.extend_from_slice(encoding::FUNCS);
    all.extend_from_slice(lists::FUNCS);
    all.extend_from_slice(dicts::FUNCS);
    all.extend_from_slice(reflect::FUNCS);
    all.extend_from_slice(crypto::FUNCS);
    all.extend_from_slice(semver::FUNCS);
    all.extend_from_slice(regex::FUNCS);
    all.extend_from_slice(url::FUNCS);
    all
}

/// What Argo CD removes from Sprig: they would let a template read the
/// controller's environment.
pub const REMOVED: [&str; 3] = ["env", "expandenv", "getHostByName"];

#[cfg(test)]
pub(crate) mod testing {
    //! Renders one template against JSON data, for the per-family tables.
    use super::super::template::{TemplateMode, render_string};
    use serde_json::Value as Json;

    pub fn render(tmpl: &str, data: Json) -> Result<String, String> {
        let params = data.as_object().cloned().unwrap_or_default();
        render_string(
            tmpl,
            &params,
            TemplateMode {
                go_template: true,
                ..Default::default()
            },
            None,
        )
    }

    /// Checks rows of (template, data, expected output); `Err(fragment)`
    /// expects an error containing the fragment.
    pub fn table(rows: &[(&str, Json, Result<&str, &str>)]) {
        let mut failures = Vec::new();
        for (tmpl, data, want) in rows {
            let got = render(tmpl, data.clone());
            let ok = match (want, &got) {
                (Ok(w), Ok(g)) => w == g,
                (Err(w), Err(g)) => g.contains(w),
                _ => false,
            };
            if !ok {
                failures.push(format!("{tmpl}\n    want {want:?}\n    got  {got:?}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sprig_function_is_defined_except_the_removed_ones() {
        // Sprig v3.3.0's generic function map (its documentation's index:
        // masterminds.github.io/sprig), as Argo CD loads it.
        let sprig = "hello ago date date_in_zone date_modify dateInZone dateModify duration \
            durationRound htmlDate htmlDateInZone must_date_modify mustDateModify mustToDate now \
            toDate unixEpoch abbrev abbrevboth trunc trim upper lower title untitle substr repeat \
            trimall trimAll trimSuffix trimPrefix nospace initials randAlphaNum randAlpha randAscii \
            randNumeric swapcase shuffle snakecase camelcase kebabcase wrap wrapWith contains \
            hasPrefix hasSuffix quote squote cat indent nindent replace plural sha1sum sha256sum \
            sha512sum adler32sum toString atoi int64 int float64 seq toDecimal split splitList \
            splitn toStrings until untilStep add1 add sub div mod mul randInt add1f addf subf divf \
            mulf biggest max min maxf minf ceil floor round join sortAlpha default empty coalesce \
            all any compact mustCompact fromJson toJson toPrettyJson toRawJson mustFromJson \
            mustToJson mustToPrettyJson mustToRawJson ternary deepCopy mustDeepCopy typeOf typeIs \
            typeIsLike kindOf kindIs deepEqual base dir clean ext isAbs osBase osClean osDir osExt \
            osIsAbs b64enc b64dec b32enc b32dec tuple list dict get set unset hasKey pluck keys \
            pick omit merge mergeOverwrite mustMerge mustMergeOverwrite values append push \
            mustAppend mustPush prepend mustPrepend first mustFirst rest mustRest last mustLast \
            initial mustInitial reverse mustReverse uniq mustUniq without mustWithout has mustHas \
            slice mustSlice concat dig chunk mustChunk bcrypt htpasswd genPrivateKey \
            derivePassword buildCustomCert genCA genCAWithKey genSelfSignedCert \
            genSelfSignedCertWithKey genSignedCert genSignedCertWithKey encryptAES decryptAES \
            randBytes uuidv4 semver semverCompare fail regexMatch mustRegexMatch regexFindAll \
            mustRegexFindAll regexFind mustRegexFind regexReplaceAll mustRegexReplaceAll \
            regexReplaceAllLiteral mustRegexReplaceAllLiteral regexSplit mustRegexSplit \
            regexQuoteMeta urlParse urlJoin";
        let argo = [
            "normalize",
            "slugify",
            "toYaml",
            "fromYaml",
            "fromYamlArray",
        ];
        let have: std::collections::BTreeSet<&str> = functions().iter().map(|(n, _)| *n).collect();
        let missing: Vec<&str> = sprig
            .split_whitespace()
            .chain(argo)
            .filter(|n| !have.contains(n))
            .collect();
        assert!(missing.is_empty(), "undefined: {missing:?}");
        for removed in REMOVED {
            assert!(!have.contains(removed), "{removed} must not be defined");
        }
        let extra: Vec<&&str> = have
            .iter()
            .filter(|n| {
                !sprig.split_whitespace().any(|s| s == **n)
                    && !argo.contains(n)
                    && !["index"].contains(n)
            })
            .collect();
        assert!(extra.is_empty(), "not in Argo CD's function map: {extra:?}");
    }

    #[test]
    fn go_integer_parsing() {
        for (s, want) in [
            ("42", Some(42)),
            ("-7", Some(-7)),
            ("0x1F", Some(31)),
            ("017", Some(15)),
            ("0b101", Some(5)),
            ("1_000", None),
            ("0x_1F", Some(31)),
            ("abc", None),
            ("", None),
        ] {
            assert_eq!(parse_go_int(s), want, "{s}");
        }
        assert_eq!(to_int64(&Value::from("5.0")), 5);
        assert_eq!(to_int64(&Value::from("5.5")), 0);
        assert_eq!(to_int64(&Value::Bool(true)), 1);
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a\"b\n\u{1}é"), "\"a\\\"b\\n\\x01é\"");
    }
}
