//! Kubernetes label selectors (`matchLabels`, `matchExpressions`), as the
//! `clusters` generator and generator `selector` use them.

use std::collections::BTreeMap;

use serde_json::Value;

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// Selector operators Kubernetes defines for label selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses a selector object; `field` names it in errors.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn parse(value: &Value, field: &str) -> Result<Self, String> {
        let mut sel = Self::default();
        let Some(obj) = value.as_object() else {
            if value.is_null() {
                return Ok(sel);
            }
            return Err(format!("{field}: must be an object"));
        };
        for key in obj.keys() {
            if key != "matchLabels" && key != "matchExpressions" {
                return Err(format!("{field}.{key}: unknown field"));
            }
        }
        if let Some(labels) = obj.get("matchLabels").filter(|v| !v.is_null()) {
            let labels = labels
                .as_object()
                .ok_or_else(|| format!("{field}.matchLabels: must be an object"))?;
            for (k, v) in labels {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("{field}.matchLabels.{k}: must be a string"))?;
                sel.match_labels.insert(k.clone(), v.to_owned());
            }
        }
        if let Some(exprs) = obj.get("matchExpressions").filter(|v| !v.is_null()) {
            let exprs = exprs
                .as_array()
                .ok_or_else(|| format!("{field}.matchExpressions: must be a list"))?;
            for (i, e) in exprs.iter().enumerate() {
                let at = format!("{field}.matchExpressions[{i}]");
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| format!("{at}.key: is required"))?;
                let op = e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let operator = match op {
                    "In" => Operator::In,
                    "NotIn" => Operator::NotIn,
                    "Exists" => Operator::Exists,
                    "DoesNotExist" => Operator::DoesNotExist,
                    other => {
                        return Err(format!(
                            "{at}.operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                        ));
                    }
                };
                let values: Vec<String> = match e.get("values") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(vs)) => vs
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| format!("{at}.values: must be strings"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(format!("{at}.values: must be a list")),
                };
                match operator {
                    Operator::In | Operator::NotIn if values.is_empty() => {
                        return Err(format!("{at}.values: must be non-empty for {op}"));
                    }
                    Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                        return Err(format!("{at}.values: must be empty for {op}"));
                    }
                    _ => {}
                }
                sel.match_expressions.push(Requirement {
                    key: key.to_owned(),
                    operator,
                    values,
                });
            }
        }
        Ok(sel)
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    /// Whether the selector has no requirement at all.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn table() {
        let cases = [
            (json!({}), vec![("env", "prod")], true),
            (
                json!({"matchLabels": {"env": "prod"}}),
                vec![("env", "prod")],
                true,
            ),
            (
                json!({"matchLabels": {"env": "prod"}}),
                vec![("env", "dev")],
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]}),
                vec![("env", "staging")],
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}),
                vec![],
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}),
                vec![("env", "prod")],
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}),
                vec![("gpu", "")],
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}),
                vec![("gpu", "a100")],
                false,
            ),
            (
                json!({"matchLabels": {"region": "eu"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}),
                vec![("region", "eu"), ("env", "dev")],
                false,
            ),
        ];
        for (sel, l, want) in cases {
            let s = LabelSelector::parse(&sel, "selector").unwrap();
            assert_eq!(s.matches(&labels(&l)), want, "{sel} vs {l:?}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let err = LabelSelector::parse(
            &json!({"matchExpressions": [{"key": "env", "operator": "Equals", "values": ["a"]}]}),
            "spec.generators[0].clusters.selector",
        )
        .unwrap_err();
        assert!(
            err.starts_with("spec.generators[0].clusters.selector.matchExpressions[0].operator"),
            "{err}"
        );
        let err = LabelSelector::parse(
            &json!({"matchExpressions": [{"key": "env", "operator": "In"}]}),
            "s",
        )
        .unwrap_err();
        assert!(err.contains("values"), "{err}");
    }
}
