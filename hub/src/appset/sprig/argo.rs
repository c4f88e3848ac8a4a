//! Argo CD's own goTemplate functions: `normalize`, `slugify`, `toYaml`,
//! `fromYaml`, `fromYamlArray` (applicationset/utils in Argo CD).

use gtmpl_ng::{Func, FuncError, NumberKind, Value};

use super::defaults::{from_json_value, to_go_yaml};
use super::{Res, fail, string_arg, want};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("normalize", normalize_fn),
    ("slugify", slugify_fn),
    ("toYaml", to_yaml),
    ("fromYaml", from_yaml),
    ("fromYamlArray", from_yaml_array),
];

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
/// `max_size` (default 50), at a word boundary when `smart`.
pub fn slugify(text: &str, max_size: usize, smart: bool) -> String {
    let mut slug = String::new();
    let mut dash = false;
    for c in normalize(text).chars() {
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

fn normalize_fn(args: &[Value]) -> Res {
    want("normalize", args, 1)?;
    Ok(Value::String(normalize(&string_arg("normalize", args, 0)?)))
}

fn slugify_fn(args: &[Value]) -> Res {
    // Forms: slugify text | slugify max text | slugify max smart text.
    let last = args
        .len()
        .checked_sub(1)
        .ok_or_else(|| fail("wrong number of args for slugify: want at least 1 got 0"))?;
    let text = string_arg("slugify", args, last)?;
    let max = match args.len() {
        1 => 50,
        _ => match &args[0] {
            Value::Number(n) => match n.kind() {
                NumberKind::Signed(i) => usize::try_from(i).unwrap_or(0),
                NumberKind::Unsigned(u) => u as usize,
                NumberKind::Float(_) => {
                    return Err(fail(
                        "error calling slugify: interface conversion: interface {} is float64, not int",
                    ));
                }
            },
            other => {
                return Err(fail(format!(
                    "error calling slugify: interface conversion: interface {{}} is {}, not int",
                    super::go_type(other)
                )));
            }
        },
    };
    let smart = match args.len() {
        3 => super::bool_arg("slugify", args, 1)?,
        _ => true,
    };
    Ok(Value::String(slugify(&text, max, smart)))
}

fn to_yaml(args: &[Value]) -> Res {
    want("toYaml", args, 1)?;
    let out = to_go_yaml(&args[0]).map_err(|e| {
        fail(format!(
            "error calling toYaml: error marshaling into JSON: {e}"
        ))
    })?;
    // Argo CD trims the trailing newline.
    Ok(Value::String(
        out.strip_suffix('\n').unwrap_or(&out).to_owned(),
    ))
}

fn parse_yaml(name: &str, args: &[Value]) -> Result<serde_json::Value, FuncError> {
    want(name, args, 1)?;
    let text = string_arg(name, args, 0)?;
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_saphyr::from_str::<serde_json::Value>(&text).map_err(|e| {
        fail(format!(
            "error calling {name}: error converting YAML to JSON: {}",
            e.to_string().lines().next().unwrap_or_default()
        ))
    })
}

fn from_yaml(args: &[Value]) -> Res {
    match parse_yaml("fromYaml", args)? {
        serde_json::Value::Null => Ok(super::new_map(Default::default())),
        v @ serde_json::Value::Object(_) => Ok(from_json_value(&v)),
        other => Err(fail(format!(
            "error calling fromYaml: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            json_kind(&other)
        ))),
    }
}

fn from_yaml_array(args: &[Value]) -> Res {
    match parse_yaml("fromYamlArray", args)? {
        serde_json::Value::Null => Ok(Value::Array(Vec::new())),
        v @ serde_json::Value::Array(_) => Ok(from_json_value(&v)),
        other => Err(fail(format!(
            "error calling fromYamlArray: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {} into Go value of type []interface {{}}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use super::*;
    use serde_json::json;

    /// Argo CD's template functions, following its ApplicationSet
    /// GoTemplate documentation (docs/operator-manual/applicationset/
    /// GoTemplate.md) and sigs.k8s.io/yaml's output; checked against Go.
    #[test]
    fn argo_functions() {
        let n = json!({
            "name": "Prod_EU",
            "obj": {"b": [1, 2], "a": {"z": "x", "c": "true"}, "s": "multi\nline", "e": {}, "n": 1000000},
            "value": "hello: world\nlist: [a, b]",
            "arr": "- a\n- b",
            "bad": "[unclosed",
        });
        table(&[
            ("{{ normalize .name }}", n.clone(), Ok("prod-eu")),
            (
                "{{ slugify \"Hello World Again\" }}",
                n.clone(),
                Ok("hello-world-again"),
            ),
            (
                "{{ slugify 10 \"aaaa bbbb cccc\" }}",
                n.clone(),
                Ok("aaaa-bbbb"),
            ),
            (
                "{{ slugify 10 false \"aaaa bbbb cccc\" }}",
                n.clone(),
                Ok("aaaa-bbbb"),
            ),
            (
                "{{ toYaml .obj }}",
                n.clone(),
                Ok(
                    "a:\n  c: \"true\"\n  z: x\nb:\n- 1\n- 2\ne: {}\n\"n\": 1000000\ns: |-\n  multi\n  line",
                ),
            ),
            (
                "{{ toYaml .obj.b | indent 2 }}",
                n.clone(),
                Ok("  - 1\n  - 2"),
            ),
            ("{{ toYaml \"plain\" }}", n.clone(), Ok("plain")),
            (
                "{{ toYaml (list (dict \"k\" \"v\" \"a\" 1) (list 1 2)) }}",
                n.clone(),
                Ok("- a: 1\n  k: v\n- - 1\n  - 2"),
            ),
            (
                "{{ toYaml (dict \"q\" \"a: b\" \"r\" \"- x\" \"n\" \"10\" \"e\" \"\") }}",
                n.clone(),
                Ok("e: \"\"\n\"n\": \"10\"\nq: 'a: b'\nr: '- x'"),
            ),
            (
                "{{ get (fromYaml .value) \"hello\" }}",
                n.clone(),
                Ok("world"),
            ),
            ("{{ (fromYaml .value).list }}", n.clone(), Ok("[a b]")),
            (
                "{{ fromYaml .arr }}",
                n.clone(),
                Err("cannot unmarshal array into Go value of type map[string]interface {}"),
            ),
            ("{{ fromYamlArray .arr | last }}", n.clone(), Ok("b")),
            (
                "{{ fromYamlArray .value }}",
                n.clone(),
                Err("cannot unmarshal object into Go value of type []interface {}"),
            ),
            (
                "{{ fromYaml .bad }}",
                n.clone(),
                Err("error calling fromYaml"),
            ),
        ]);
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
