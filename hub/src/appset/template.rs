//! Rendering ApplicationSet templates with generator parameters.
//!
//! Two modes, as Argo CD has them:
//! - fasttemplate (the default): `{{param}}` in string values (and map
//!   keys) is replaced by the flat parameter of that name; an unknown name
//!   is left exactly as written. Nothing but strings is templated.
//! - `goTemplate: true`: every string is a Go template executed against the
//!   nested parameters, with every Sprig function Argo CD allows (see
//!   [`super::sprig`]). `missingkey=error` turns a missing key into Go's
//!   error naming the key; `missingkey=zero|default|invalid` render a
//!   missing key as Go does for a `map[string]interface{}` (`<no value>`).
//!
//! Output is deterministic: maps are walked in sorted key order everywhere
//! (`range`, printing, `toJson`, `toYaml`, `keys`), as Go's are where Go
//! sorts and in one fixed order where Go's would be random.

use std::collections::HashMap;

use gtmpl_ng::{Context, ExecError, Number, ParseError, Template, TemplateError, Value as GoValue};
use serde_json::{Map, Value};

use super::sprig;

/// Parameters from one generator result.
pub type Params = Map<String, Value>;

/// How templates are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TemplateMode {
    pub go_template: bool,
    /// `goTemplateOptions: ["missingkey=error"]`.
    pub missing_key_error: bool,
}

/// Replaces `{{ name }}` occurrences with flat parameters; unknown names are
/// left untouched (including their spacing), as fasttemplate does in Argo CD.
pub fn fasttemplate(input: &str, params: &Params) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let tag = &rest[start + 2..start + 2 + len];
        match params.get(tag.trim()) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {
                out.push_str("{{");
                out.push_str(tag);
                out.push_str("}}");
            }
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Renders every string (and map key) in `value` with `params`.
///
/// # Errors
/// A Go template that does not parse or execute, with the field path.
pub fn render_value(value: &Value, params: &Params, mode: TemplateMode) -> Result<Value, String> {
    let go_params = if mode.go_template {
        Some(go_context(params, mode))
    } else {
        None
    };
    render_at(value, params, mode, go_params.as_ref(), &Path::Root)
}

/// Where a value is in the template, made into text only for an error (a
/// set renders its template once per parameter set: 10,000 times for a
/// `clusters` generator over 10,000 clusters).
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn text(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Key(parent, k) => match parent.text() {
                p if p.is_empty() => (*k).to_owned(),
                p => format!("{p}.{k}"),
            },
            Path::Index(parent, i) => format!("{}[{i}]", parent.text()),
        }
    }

    /// `e` prefixed with this path, when there is one.
    fn error(&self, e: String) -> String {
        match self.text() {
            p if p.is_empty() => e,
            p => format!("{p}: {e}"),
        }
    }
}

fn render_at(
    value: &Value,
    params: &Params,
    mode: TemplateMode,
    go: Option<&Context>,
    path: &Path<'_>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => {
            Value::String(render_string(s, params, mode, go).map_err(|e| path.error(e))?)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| render_at(v, params, mode, go, &Path::Index(path, i)))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let child = Path::Key(path, k);
                let key = render_string(k, params, mode, go).map_err(|e| child.error(e))?;
                out.insert(key, render_at(v, params, mode, go, &child)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Renders one string in the given mode.
///
/// # Errors
/// Go template parse or execution errors.
pub fn render_string(
    s: &str,
    params: &Params,
    mode: TemplateMode,
    go: Option<&Context>,
) -> Result<String, String> {
    if !s.contains("{{") {
        return Ok(s.to_owned());
    }
    if !mode.go_template {
        return Ok(fasttemplate(s, params));
    }
    let owned;
    let data = match go {
        Some(v) => v,
        None => {
            owned = go_context(params, mode);
            &owned
        }
    };
    go_template(s, data, mode.missing_key_error)
}

/// The parameters as the template engine's data (strict maps under
/// `missingkey=error`).
pub fn go_context(params: &Params, mode: TemplateMode) -> Context {
    Context::from(to_go_map(params, mode.missing_key_error))
}

/// Executes a Go template against `data`.
///
/// # Errors
/// Parse errors (`template: base:LINE: …`) and execution errors
/// (`template: base:LINE:COL: executing "base" at <…>: …`) in Go's words,
/// prefixed, as Argo CD does, with `failed to parse template TEXT:` or
/// `failed to execute go template TEXT:`. Under `missing_key_error` a
/// missing map key fails with `map has no entry for key "KEY"`.
pub fn go_template(text: &str, data: &Context, missing_key_error: bool) -> Result<String, String> {
    PARSED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(text) {
            // An ApplicationSet renders the same few strings once per
            // parameter set; parsing each once keeps 10,000 clusters fast.
            if cache.len() >= PARSED_CACHE_LIMIT {
                cache.clear();
            }
            let mut tmpl = Template::with_name("base");
            tmpl.add_funcs(&sprig::functions());
            tmpl.parse(text).map_err(|e| {
                format!(
                    "failed to parse template {}: {}",
                    shown(text),
                    go_parse_error(text, &e)
                )
            })?;
            cache.insert(text.to_owned(), tmpl);
        }
        let tmpl = cache
            .get(text)
            .ok_or_else(|| format!("failed to parse template {}: not cached", shown(text)))?;
        sprig::with_strict_maps(missing_key_error, || tmpl.render(data)).map_err(|e| {
            format!(
                "failed to execute go template {}: {}",
                shown(text),
                go_exec_error(text, &TemplateError::from(e))
            )
        })
    })
}

/// The template as an error shows it: as written (as Argo CD does), quoted
/// when it spans lines so that one error stays one line.
fn shown(text: &str) -> String {
    if text.contains('\n') {
        format!("{text:?}")
    } else {
        text.to_owned()
    }
}

/// A parse error in Go's form: `template: base:LINE: MESSAGE`.
fn go_parse_error(text: &str, e: &ParseError) -> String {
    match e {
        ParseError::WithContext(ctx, msg) => {
            let msg = msg.trim_start_matches([':', ' ']);
            // Go quotes the unknown function's name.
            let msg = match msg
                .strip_prefix("function ")
                .and_then(|m| m.strip_suffix(" not defined"))
            {
                Some(name) if !name.starts_with('"') => format!("function {name:?} not defined"),
                _ => msg.to_owned(),
            };
            format!("template: base:{}: {msg}", ctx.line)
        }
        other => {
            let _ = text;
            format!("template: base: {other}")
        }
    }
}

/// An execution error in Go's form:
/// `template: base:LINE:COL: executing "base" at <EXPR>: MESSAGE`.
fn go_exec_error(text: &str, e: &TemplateError) -> String {
    let TemplateError::ExecError(ExecError::Structured(s)) = e else {
        return format!("template: base: {e}");
    };
    let ctx = &s.context;
    let line = text.lines().nth(ctx.line.saturating_sub(1)).unwrap_or("");
    let start = ctx.col.saturating_sub(1).min(line.len());
    let end = (start + ctx.len).min(line.len());
    let at = line.get(start..end).unwrap_or("");
    let mut message = s.message.clone();
    // A strict map (missingkey=error) refuses a missing field as a struct
    // would; Go words it as a map miss.
    if let Some(rest) = message.strip_prefix("no field `")
        && let Some(end) = rest.find('`')
    {
        message = format!("map has no entry for key {:?}", &rest[..end]);
    }
    format!(
        "template: base:{}:{}: executing \"base\" at <{at}>: {message}",
        ctx.line, start
    )
}

const PARSED_CACHE_LIMIT: usize = 4096;

thread_local! {
    static PARSED: std::cell::RefCell<HashMap<String, Template>> =
        std::cell::RefCell::new(HashMap::new());
}

pub use sprig::{normalize, slugify};

/// Converts JSON into the template engine's value type, as Argo CD's
/// parameters reach Go: every number a float64.
pub fn to_go(v: &Value) -> GoValue {
    to_go_value(v, false)
}

/// As [`to_go`]; with `strict`, maps refuse a missing field
/// (`missingkey=error`).
fn to_go_value(v: &Value, strict: bool) -> GoValue {
    match v {
        Value::Null => GoValue::Nil,
        Value::Bool(b) => GoValue::Bool(*b),
        Value::Number(n) => GoValue::Number(Number::float(n.as_f64().unwrap_or_default())),
        Value::String(s) => GoValue::String(s.clone()),
        Value::Array(a) => GoValue::Array(a.iter().map(|v| to_go_value(v, strict)).collect()),
        Value::Object(m) => to_go_map(m, strict),
    }
}

/// A JSON object as the engine's map (an object under `strict`).
fn to_go_map(m: &Map<String, Value>, strict: bool) -> GoValue {
    let entries = m
        .iter()
        .map(|(k, v)| (k.clone(), to_go_value(v, strict)))
        .collect::<HashMap<_, _>>();
    if strict {
        GoValue::Object(entries)
    } else {
        GoValue::Map(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Params {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn fasttemplate_table() {
        let p = params(json!({"cluster": "eu-1", "metadata.labels.env": "prod", "n": 3}));
        let cases = [
            ("{{cluster}}-app", "eu-1-app"),
            ("{{ cluster }}", "eu-1"),
            ("{{metadata.labels.env}}", "prod"),
            ("{{missing}}-x", "{{missing}}-x"),
            ("{{ missing }}", "{{ missing }}"),
            ("no tags", "no tags"),
            ("{{cluster", "{{cluster"),
            ("{{n}}", "3"),
            ("{{cluster}}{{cluster}}", "eu-1eu-1"),
        ];
        for (input, want) in cases {
            assert_eq!(fasttemplate(input, &p), want, "{input}");
        }
    }

    #[test]
    fn only_strings_are_templated() {
        let p = params(json!({"x": "1"}));
        let v = json!({"a": "{{x}}", "b": 5, "c": true, "d": ["{{x}}"], "{{x}}-key": null});
        let out = render_value(&v, &p, TemplateMode::default()).unwrap();
        assert_eq!(
            out,
            json!({"a": "1", "b": 5, "c": true, "d": ["1"], "1-key": null})
        );
    }

    #[test]
    fn go_template_with_functions() {
        let p = params(
            json!({"name": "Prod_EU", "metadata": {"labels": {"env": "prod"}}, "list": ["a", "b"]}),
        );
        let mode = TemplateMode {
            go_template: true,
            missing_key_error: false,
        };
        let cases = [
            ("{{.name | lower}}", "prod_eu"),
            ("{{normalize .name}}", "prod-eu"),
            ("{{.metadata.labels.env}}-x", "prod-x"),
            ("{{ index .list 1 }}", "b"),
            ("{{ slugify \"Hello World Again\" }}", "hello-world-again"),
            ("{{ .missing }}", "<no value>"),
            ("{{ default \"d\" .missing }}", "d"),
        ];
        for (input, want) in cases {
            assert_eq!(
                render_string(input, &p, mode, None).unwrap(),
                want,
                "{input}"
            );
        }
    }

    /// goTemplateOptions `missingkey=…`, following Go's text/template
    /// documentation (Template.Option) for a `map[string]interface{}`:
    /// default and invalid print `<no value>`, zero prints the zero value of
    /// `interface{}`, which Go also prints as `<no value>`, error fails
    /// naming the key. Go's messages, as Argo CD's utils_test shows them.
    #[test]
    fn missing_key_options() {
        let p = params(json!({"name": "a", "meta": {"labels": {"env": "prod"}}}));
        let lenient = TemplateMode {
            go_template: true,
            missing_key_error: false,
        };
        let strict = TemplateMode {
            go_template: true,
            missing_key_error: true,
        };
        let rows: &[(&str, TemplateMode, Result<&str, &str>)] = &[
            ("{{ .nope }}", lenient, Ok("<no value>")),
            ("{{ .meta.labels.nope }}", lenient, Ok("<no value>")),
            ("{{ .nope | default \"d\" }}", lenient, Ok("d")),
            ("{{ .name }}", strict, Ok("a")),
            ("{{ .meta.labels.env }}", strict, Ok("prod")),
            (
                "--> {{.doesnotexist}} <--",
                strict,
                Err(
                    r#"failed to execute go template --> {{.doesnotexist}} <--: template: base:1:6: executing "base" at <.doesnotexist>: map has no entry for key "doesnotexist""#,
                ),
            ),
            (
                "{{ .meta.labels.team }}",
                strict,
                Err(r#"map has no entry for key "team""#),
            ),
            (
                "{{ default \"d\" .nope }}",
                strict,
                Err(r#"map has no entry for key "nope""#),
            ),
            (
                "{{ if .nope }}y{{ end }}",
                strict,
                Err(r#"map has no entry for key "nope""#),
            ),
            // Maps built in the template follow the option too.
            (
                "{{ (dict \"a\" 1).b }}",
                strict,
                Err(r#"map has no entry for key "b""#),
            ),
            ("{{ (dict \"a\" 1).b }}", lenient, Ok("<no value>")),
            // `index` returns the zero value whatever the option says.
            ("{{ index .meta \"nope\" }}", strict, Ok("<no value>")),
            ("{{ hasKey .meta \"labels\" }}", strict, Ok("true")),
            (
                "{{ .meta | toJson }}",
                strict,
                Ok(r#"{"labels":{"env":"prod"}}"#),
            ),
        ];
        let mut failures = Vec::new();
        for (tmpl, mode, want) in rows {
            let got = render_string(tmpl, &p, *mode, None);
            let ok = match (want, &got) {
                (Ok(w), Ok(g)) => w == g,
                (Err(w), Err(g)) => g.contains(w),
                _ => false,
            };
            if !ok {
                failures.push(format!("{tmpl}: want {want:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// Each error kind reads as Go's message, naming what is wrong.
    #[test]
    fn errors_read_as_go_reports_them() {
        let mode = TemplateMode {
            go_template: true,
            missing_key_error: false,
        };
        let p = params(json!({"data": "x"}));
        let cases = [
            (
                "{{functiondoesnotexist}}",
                r#"failed to parse template {{functiondoesnotexist}}: template: base:1: function "functiondoesnotexist" not defined"#,
            ),
            ("a\n{{ .data ", "template: base:2:"),
            ("{{ fail \"stop here\" }}", "error calling fail: stop here"),
            ("{{ env \"HOME\" }}", r#"function "env" not defined"#),
            (
                "{{ expandenv \"$HOME\" }}",
                r#"function "expandenv" not defined"#,
            ),
            (
                "{{ getHostByName \"a\" }}",
                r#"function "getHostByName" not defined"#,
            ),
        ];
        for (tmpl, want) in cases {
            let err = render_string(tmpl, &p, mode, None).unwrap_err();
            assert!(err.contains(want), "{tmpl}: {err}");
        }
    }

    #[test]
    fn syntax_error_is_reported() {
        let mode = TemplateMode {
            go_template: true,
            missing_key_error: false,
        };
        let err = render_value(
            &json!({"metadata": {"name": "{{ .name "}}),
            &Params::new(),
            mode,
        )
        .unwrap_err();
        assert!(err.starts_with("metadata.name"), "{err}");
        // The path names list items and keys (a key is a template too).
        let err = render_value(
            &json!({"spec": {"sources": [{"path": "ok"}, {"path": "{{ .a }"}]}}),
            &Params::new(),
            mode,
        )
        .unwrap_err();
        assert!(err.starts_with("spec.sources[1].path: "), "{err}");
        let err =
            render_value(&json!({"labels": {"{{ .k ": "v"}}), &Params::new(), mode).unwrap_err();
        assert!(err.starts_with("labels.{{ .k : "), "{err}");
        let err = render_value(&json!("{{ .x "), &Params::new(), mode).unwrap_err();
        assert!(err.starts_with("failed to parse template"), "{err}");
    }

    #[test]
    fn normalize_and_slugify() {
        assert_eq!(normalize("My_Cluster.EU-1"), "my-cluster.eu-1");
        assert_eq!(normalize("-a-"), "a");
        assert_eq!(slugify("Hello, World!", 50, true), "hello-world");
        assert_eq!(slugify("aaaa bbbb cccc", 10, true), "aaaa-bbbb");
        assert_eq!(slugify("aaaa bbbb cccc", 10, false), "aaaa-bbbb");
        assert_eq!(slugify("abcdefghijkl", 5, true), "abcde");
    }
}
