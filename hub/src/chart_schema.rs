//! Checking a chart's values against its `values.schema.json`, as `helm
//! install` and `helm template` do before rendering.
//!
//! Only the part of JSON Schema that chart schemas use is implemented:
//! `type` (one name or a list), `properties`, `additionalProperties`
//! (`false` or a schema), `required`, `items`, `enum`, `minimum`,
//! `maximum`, `minLength`, `minItems` and `pattern` (a regular expression
//! searched anywhere in the string, as JSON Schema says), plus the
//! annotations `$schema`, `$id`, `title`, `description`, `default` and
//! `examples`. A schema using any other keyword is refused by
//! [`check_schema`] rather than half-applied.

use serde_json::Value;

/// Keywords [`validate`] understands; anything else is refused.
const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "title",
    "description",
    "default",
    "examples",
    "type",
    "properties",
    "additionalProperties",
    "required",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "minItems",
    "pattern",
];

const TYPES: &[&str] = &[
    "object", "array", "string", "integer", "number", "boolean", "null",
];

/// Checks that `schema` uses only what [`validate`] implements, with the
/// right shapes.
///
/// # Errors
/// The first problem, naming where in the schema it is (`#/properties/x`).
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_node(schema, "#")
}

fn check_node(schema: &Value, at: &str) -> Result<(), String> {
    let Some(map) = schema.as_object() else {
        return Err(format!("{at}: a schema must be an object"));
    };
    for (key, value) in map {
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(format!(
                "{at}: unsupported JSON Schema keyword `{key}` (supported: {})",
                KEYWORDS.join(", ")
            ));
        }
        match key.as_str() {
            "type" => {
                let names: Vec<&Value> = match value {
                    Value::Array(list) => list.iter().collect(),
                    one => vec![one],
                };
                for name in names {
                    if !name.as_str().is_some_and(|n| TYPES.contains(&n)) {
                        return Err(format!("{at}/type: unknown type {name}"));
                    }
                }
            }
            "properties" => {
                let Some(props) = value.as_object() else {
                    return Err(format!("{at}/properties: must be an object"));
                };
                for (name, sub) in props {
                    check_node(sub, &format!("{at}/properties/{name}"))?;
                }
            }
            "additionalProperties" if !value.is_boolean() => {
                check_node(value, &format!("{at}/additionalProperties"))?;
            }
            "items" => check_node(value, &format!("{at}/items"))?,
            "required"
                if !value
                    .as_array()
                    .is_some_and(|l| l.iter().all(Value::is_string)) =>
            {
                return Err(format!("{at}/required: must be a list of names"));
            }
            "enum" if !value.is_array() => {
                return Err(format!("{at}/enum: must be a list"));
            }
            "minimum" | "maximum" if !value.is_number() => {
                return Err(format!("{at}/{key}: must be a number"));
            }
            "minLength" | "minItems" if !value.is_u64() => {
                return Err(format!("{at}/{key}: must be a non-negative integer"));
            }
            "pattern" => {
                let Some(p) = value.as_str() else {
                    return Err(format!("{at}/pattern: must be a string"));
                };
                regex::Regex::new(p).map_err(|e| format!("{at}/pattern: {e}"))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// One way the values break the schema: where (`service.type`,
/// `rbac.namespaces[0]`; empty for the top level) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every way `value` breaks `schema` (a schema [`check_schema`] accepted),
/// in document order; empty when it fits.
#[must_use]
pub fn validate(schema: &Value, value: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    validate_node(schema, value, "", &mut out);
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if is_integer(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn has_type(v: &Value, ty: &str) -> bool {
    match ty {
        "number" => v.is_number(),
        other => type_name(v) == other,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn validate_node(schema: &Value, v: &Value, path: &str, out: &mut Vec<Violation>) {
    let mut fail = |message: String| {
        out.push(Violation {
            path: path.to_owned(),
            message,
        });
    };
    if let Some(ty) = schema.get("type") {
        let allowed: Vec<&str> = match ty {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            one => one.as_str().into_iter().collect(),
        };
        if !allowed.iter().any(|t| has_type(v, t)) {
            fail(format!(
                "got {}, want {}",
                type_name(v),
                allowed.join(" or ")
            ));
            // The other keywords assume the type.
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let list: Vec<String> = options.iter().map(Value::to_string).collect();
        fail(format!("must be one of {}, not {v}", list.join(", ")));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            fail(format!("must be at least {min}, not {v}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            fail(format!("must be at most {max}, not {v}"));
        }
    }
    if let Some(s) = v.as_str() {
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && (s.chars().count() as u64) < min
        {
            fail(format!("must be at least {min} characters long"));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str)
            && let Ok(re) = regex::Regex::new(p)
            && !re.is_match(s)
        {
            fail(format!("{v} does not match the pattern {p:?}"));
        }
    }
    match v {
        Value::Object(map) => {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(name) {
                    out.push(Violation {
                        path: child(path, name),
                        message: "is required".into(),
                    });
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, sub) in map {
                let at = child(path, key);
                if let Some(s) = props.and_then(|p| p.get(key)) {
                    validate_node(s, sub, &at, out);
                } else {
                    match additional {
                        Some(Value::Bool(false)) => {
                            let mut known: Vec<&str> = props
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            known.sort_unstable();
                            out.push(Violation {
                                path: at,
                                message: format!(
                                    "is not a value of this chart (known here: {})",
                                    known.join(", ")
                                ),
                            });
                        }
                        Some(s @ Value::Object(_)) => validate_node(s, sub, &at, out),
                        _ => {}
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                out.push(Violation {
                    path: path.to_owned(),
                    message: format!("must list at least {min} item(s)"),
                });
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_node(s, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "type": {"type": "string", "enum": ["ClusterIP", "LoadBalancer"]},
                "key": {"type": "string", "pattern": "^([0-9a-f]{4})?$"},
                "budget": {"type": ["integer", "string", "null"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "hosts": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "env": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name"]}},
                "free": {"type": "object"}
            }
        })
    }

    fn problems(values: Value) -> Vec<String> {
        validate(&schema(), &values)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn values_that_fit_pass() {
        check_schema(&schema()).unwrap();
        assert!(
            problems(json!({
                "port": 7443, "type": "LoadBalancer", "key": "", "budget": null,
                "labels": {"a": "b"}, "hosts": ["x"], "env": [{"name": "A", "value": "1"}],
                "free": {"anything": [1, {"x": true}]}
            }))
            .is_empty()
        );
        assert!(problems(json!({"budget": "50%", "key": "abcd", "port": 1.0})).is_empty());
    }

    #[test]
    fn each_violation_names_the_value() {
        let cases: &[(Value, &str)] = &[
            (json!({"port": "7443"}), "port: got string, want integer"),
            (json!({"port": 0}), "port: must be at least 1, not 0"),
            (
                json!({"port": 70000}),
                "port: must be at most 65535, not 70000",
            ),
            (json!({"port": 1.5}), "port: got number, want integer"),
            (
                json!({"type": "Foo"}),
                r#"type: must be one of "ClusterIP", "LoadBalancer", not "Foo""#,
            ),
            (
                json!({"key": "xyz"}),
                r#"key: "xyz" does not match the pattern "^([0-9a-f]{4})?$""#,
            ),
            (
                json!({"budget": true}),
                "budget: got boolean, want integer or string or null",
            ),
            (
                json!({"labels": {"a": 1}}),
                "labels.a: got integer, want string",
            ),
            (
                json!({"hosts": ["ok", ""]}),
                "hosts[1]: must be at least 1 characters long",
            ),
            (json!({"env": []}), "env: must list at least 1 item(s)"),
            (json!({"env": [{"value": "1"}]}), "env[0].name: is required"),
            (
                json!({"prot": 1}),
                "prot: is not a value of this chart (known here: budget, env, free, hosts, key, labels, port, type)",
            ),
            (json!([]), "got array, want object"),
        ];
        for (values, want) in cases {
            assert_eq!(
                problems(values.clone()),
                vec![(*want).to_owned()],
                "{values}"
            );
        }
        // All of them, in order.
        assert_eq!(problems(json!({"port": 0, "type": "Foo"})).len(), 2);
    }

    #[test]
    fn unsupported_schemas_are_refused() {
        for (schema, want) in [
            (
                json!({"properties": {"a": {"oneOf": []}}}),
                "#/properties/a: unsupported JSON Schema keyword `oneOf`",
            ),
            (json!({"type": "text"}), "#/type: unknown type \"text\""),
            (
                json!({"items": true}),
                "#/items: a schema must be an object",
            ),
            (json!({"pattern": "("}), "#/pattern: "),
            (
                json!({"required": "a"}),
                "#/required: must be a list of names",
            ),
        ] {
            let err = check_schema(&schema).unwrap_err();
            assert!(err.starts_with(want), "{err}");
        }
    }
}
