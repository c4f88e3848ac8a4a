//! Rendering ApplicationSet templates with generator parameters.
//!
//! Two modes, as Argo CD has them:
//! - fasttemplate (the default): `{{param}}` in string values (and map
//!   keys) is replaced by the flat parameter of that name; an unknown name
//!   is left exactly as written. Nothing but strings is templated.
//! - `goTemplate: true`: every string is a Go template executed against the
//!   nested parameters, with Sprig/Helm functions (minus `env`, `expandenv`
//!   and `getHostByName`) plus `normalize`, `slugify`, `toYaml`, `fromYaml`,
//!   `fromYamlArray`. `missingkey=error` turns a missing key into an error.

use std::collections::HashMap;

use gtmpl_ng::{Context, Func, FuncError, Number, Template, Value as GoValue};
use serde_json::{Map, Value};

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
        Some(Context::from(to_go(&Value::Object(params.clone()))))
    } else {
        None
    };
    render_at(value, params, mode, go_params.as_ref(), "")
}

fn render_at(
    value: &Value,
    params: &Params,
    mode: TemplateMode,
    go: Option<&Context>,
    path: &str,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(render_string(s, params, mode, go).map_err(|e| {
            if path.is_empty() {
                e
            } else {
                format!("{path}: {e}")
            }
        })?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| render_at(v, params, mode, go, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let key =
                    render_string(k, params, mode, go).map_err(|e| format!("{child}: {e}"))?;
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
            owned = Context::from(to_go(&Value::Object(params.clone())));
            &owned
        }
    };
    go_template(s, data, mode.missing_key_error)
}

/// Executes a Go template against `data`.
///
/// # Errors
/// Parse errors, execution errors, and with `missing_key_error` any missing
/// map key.
pub fn go_template(text: &str, data: &Context, missing_key_error: bool) -> Result<String, String> {
    let out = PARSED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(text) {
            // An ApplicationSet renders the same few strings once per
            // parameter set; parsing each once keeps 10,000 clusters fast.
            if cache.len() >= PARSED_CACHE_LIMIT {
                cache.clear();
            }
            let mut tmpl = Template::default();
            tmpl.add_funcs(&functions());
            tmpl.parse(text)
                .map_err(|e| format!("template {text:?}: {e}"))?;
            cache.insert(text.to_owned(), tmpl);
        }
        let tmpl = cache
            .get(text)
            .ok_or_else(|| format!("template {text:?}: not cached"))?;
        tmpl.render(data)
            .map_err(|e| format!("template {text:?}: {e}"))
    })?;
    // The engine renders a missing map key as Go's "<no value>"; under
    // missingkey=error Go fails instead, naming the template.
    if missing_key_error && out.contains("<no value>") {
        return Err(format!(
            "template {text:?}: map has no entry for a referenced key (missingkey=error)"
        ));
    }
    Ok(out)
}

const PARSED_CACHE_LIMIT: usize = 4096;

thread_local! {
    static PARSED: std::cell::RefCell<HashMap<String, Template>> =
        std::cell::RefCell::new(HashMap::new());
}

/// The function set available to goTemplate.
fn functions() -> Vec<(&'static str, Func)> {
    let banned = ["env", "expandenv", "getHostByName"];
    let mut funcs: Vec<(&'static str, Func)> = gtmpl_ng::helm_functions::HELM_FUNCTIONS
        .iter()
        .filter(|(name, _)| !banned.contains(name))
        .copied()
        .collect();
    funcs.push(("normalize", normalize_fn as Func));
    funcs.push(("slugify", slugify_fn as Func));
    funcs.push(("fromYamlArray", from_yaml_array_fn as Func));
    funcs
}

/// Argo CD's `normalize`: lowercase, characters outside `[-a-z0-9.]`
/// replaced by `-`, at most 253 characters, leading/trailing `-`/`.` trimmed.
pub fn normalize(name: &str) -> String {
    let lowered: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cut: String = lowered.chars().take(253).collect();
    cut.trim_matches(|c| c == '-' || c == '.').to_owned()
}

/// Argo CD's `slugify [maxSize [smartTruncate]] text`: lowercase, runs of
/// characters outside `[a-z0-9]` become one `-`, trimmed of `-`, cut to
/// `max_size` (default 50) — at a word boundary when `smart`.
pub fn slugify(text: &str, max_size: usize, smart: bool) -> String {
    let mut slug = String::new();
    let mut dash = false;
    for c in text.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
            dash = false;
        } else if !dash {
            slug.push('-');
            dash = true;
        }
    }
    let slug = slug.trim_matches('-').to_owned();
    if slug.len() <= max_size {
        return slug;
    }
    if smart {
        let mut out = String::new();
        for word in slug.split('-') {
            let extra = if out.is_empty() {
                word.len()
            } else {
                word.len() + 1
            };
            if out.len() + extra > max_size {
                break;
            }
            if !out.is_empty() {
                out.push('-');
            }
            out.push_str(word);
        }
        if !out.is_empty() {
            return out;
        }
    }
    slug[..max_size].trim_end_matches('-').to_owned()
}

fn arg_str(args: &[GoValue], i: usize, name: &str) -> Result<String, FuncError> {
    match args.get(i) {
        Some(GoValue::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => Err(FuncError::AtLeastXArgs(name.to_owned(), i + 1)),
    }
}

fn normalize_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    Ok(GoValue::String(normalize(&arg_str(args, 0, "normalize")?)))
}

fn slugify_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    // Forms: slugify text | slugify max text | slugify max smart text.
    let (max, smart, text) = match args.len() {
        0 => return Err(FuncError::AtLeastXArgs("slugify".into(), 1)),
        1 => (50, true, arg_str(args, 0, "slugify")?),
        2 => (
            as_usize(&args[0]).unwrap_or(50),
            true,
            arg_str(args, 1, "slugify")?,
        ),
        _ => (
            as_usize(&args[0]).unwrap_or(50),
            !matches!(args[1], GoValue::Bool(false)),
            arg_str(args, 2, "slugify")?,
        ),
    };
    Ok(GoValue::String(slugify(&text, max, smart)))
}

fn as_usize(v: &GoValue) -> Option<usize> {
    match v {
        GoValue::Number(n) => n.as_u64().map(|n| n as usize),
        GoValue::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn from_yaml_array_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let text = arg_str(args, 0, "fromYamlArray")?;
    match serde_saphyr::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => Ok(GoValue::Array(items.iter().map(to_go).collect())),
        Ok(_) => Ok(GoValue::Array(vec![GoValue::String(
            "error: not a YAML array".into(),
        )])),
        Err(e) => Ok(GoValue::Array(vec![GoValue::String(format!("error: {e}"))])),
    }
}

/// Converts JSON into the template engine's value type.
pub fn to_go(v: &Value) -> GoValue {
    match v {
        Value::Null => GoValue::Nil,
        Value::Bool(b) => GoValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                GoValue::Number(Number::signed(i))
            } else if let Some(u) = n.as_u64() {
                GoValue::Number(Number::unsigned(u))
            } else {
                GoValue::Number(Number::float(n.as_f64().unwrap_or_default()))
            }
        }
        Value::String(s) => GoValue::String(s.clone()),
        Value::Array(a) => GoValue::Array(a.iter().map(to_go).collect()),
        Value::Object(m) => GoValue::Map(
            m.iter()
                .map(|(k, v)| (k.clone(), to_go(v)))
                .collect::<HashMap<_, _>>(),
        ),
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

    #[test]
    fn missing_key_error_fails() {
        let p = params(json!({"name": "a"}));
        let mode = TemplateMode {
            go_template: true,
            missing_key_error: true,
        };
        let err = render_string("{{.nope}}", &p, mode, None).unwrap_err();
        assert!(err.contains("missingkey=error"), "{err}");
        assert_eq!(render_string("{{.name}}", &p, mode, None).unwrap(), "a");
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
    }

    #[test]
    fn banned_functions_are_absent() {
        let mode = TemplateMode {
            go_template: true,
            missing_key_error: false,
        };
        assert!(render_string("{{ env \"HOME\" }}", &Params::new(), mode, None).is_err());
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
