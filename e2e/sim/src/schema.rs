//! Validation and pruning of custom resources against their CRD's
//! structural OpenAPI v3 schema.

use serde_json::Value;

/// What checking an object found.
#[derive(Debug, Default)]
pub struct Report {
    /// Paths of fields the schema does not declare (pruned from the object).
    pub unknown: Vec<String>,
    /// (path, message) of values that break the schema.
    pub invalid: Vec<(String, String)>,
}

fn type_ok(schema: &Value, v: &Value) -> bool {
    if schema["x-kubernetes-int-or-string"] == true {
        return v.is_i64() || v.is_u64() || v.is_string();
    }
    match schema["type"].as_str() {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `v` against `schema`, pruning undeclared fields.
pub fn check(schema: &Value, v: &mut Value, path: &str, root: bool, r: &mut Report) {
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    if !type_ok(schema, v) {
        let ty = schema["type"].as_str().unwrap_or_default();
        r.invalid.push((
            path.to_string(),
            format!(
                "Invalid value: \"{}\": {path} in body must be of type {ty}: \"{}\"",
                type_name(v),
                type_name(v)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        r.invalid.push((
            path.to_string(),
            format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
    match v {
        Value::Object(m) => {
            for req in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(req) {
                    r.invalid
                        .push((format!("{path}.{req}"), "Required value".to_string()));
                }
            }
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            let props = schema["properties"].as_object();
            let addl = &schema["additionalProperties"];
            let mut drop = Vec::new();
            for (k, child) in m.iter_mut() {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    check(s, child, &p, false, r);
                } else if addl.is_object() {
                    check(addl, child, &p, false, r);
                } else if !(preserve || *addl == Value::Bool(true)) {
                    r.unknown.push(p);
                    drop.push(k.clone());
                }
            }
            for k in drop {
                m.remove(&k);
            }
        }
        Value::Array(items) => {
            let s = &schema["items"];
            if s.is_object() {
                for (i, it) in items.iter_mut().enumerate() {
                    check(s, it, &format!("{path}[{i}]"), false, r);
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

    #[test]
    fn prunes_and_validates() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"],
            "properties": {"size": {"type": "integer"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}}});
        let mut o = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {}, "spec": {"size": "big", "extra": 1, "labels": {"a": "b"}}});
        let mut r = Report::default();
        check(&schema, &mut o, "", true, &mut r);
        assert_eq!(r.unknown, vec!["spec.extra"]);
        assert_eq!(r.invalid.len(), 1);
        assert!(o["spec"].get("extra").is_none());
    }
}
