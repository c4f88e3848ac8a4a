//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

use serde_json::Value;

use crate::fields::{ListKind, item_key, item_matches, list_kind};

/// A patch that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(ptr: &str) -> Result<Vec<String>, PatchError> {
    if ptr.is_empty() {
        return Ok(Vec::new());
    }
    let rest = ptr
        .strip_prefix('/')
        .ok_or_else(|| PatchError(format!("invalid JSON pointer {ptr:?}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError(format!("path segment {p:?} not found")))?;
    }
    Ok(cur)
}

fn get(doc: &Value, ptr: &str) -> Result<Value, PatchError> {
    doc.pointer(ptr)
        .cloned()
        .ok_or_else(|| PatchError(format!("path {ptr:?} not found")))
}

fn add(doc: &mut Value, ptr: &str, value: Value) -> Result<(), PatchError> {
    let parts = split_pointer(ptr)?;
    let Some((last, parent)) = parts.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| PatchError(format!("invalid array index {last:?}")))?;
                if i > a.len() {
                    return Err(PatchError(format!("array index {i} out of bounds")));
                }
                a.insert(i, value);
            }
        }
        _ => return Err(PatchError(format!("cannot add at {ptr:?}"))),
    }
    Ok(())
}

fn remove(doc: &mut Value, ptr: &str) -> Result<Value, PatchError> {
    let parts = split_pointer(ptr)?;
    let Some((last, parent)) = parts.split_last() else {
        return Err(PatchError("cannot remove the root".into()));
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| PatchError(format!("unable to remove nonexistent key: {last}"))),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| PatchError(format!("invalid array index {last:?}")))?;
            if i >= a.len() {
                return Err(PatchError(format!("array index {i} out of bounds")));
            }
            Ok(a.remove(i))
        }
        _ => Err(PatchError(format!("cannot remove at {ptr:?}"))),
    }
}

/// RFC 6902 JSON patch.
///
/// # Errors
/// Fails on a malformed operation, a missing path or a failed `test`.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError("json patch must be an array".into()))?;
    for op in ops {
        let name = op["op"].as_str().unwrap_or_default();
        let path = op["path"]
            .as_str()
            .ok_or_else(|| PatchError("operation has no path".into()))?;
        match name {
            "add" => add(doc, path, op.get("value").cloned().unwrap_or(Value::Null))?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                remove(doc, path)?;
                add(doc, path, op.get("value").cloned().unwrap_or(Value::Null))?;
            }
            "move" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = remove(doc, from)?;
                add(doc, path, v)?;
            }
            "copy" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = get(doc, from)?;
                add(doc, path, v)?;
            }
            "test" => {
                if get(doc, path)? != op["value"] {
                    return Err(PatchError(format!("testing value {path} failed")));
                }
            }
            other => return Err(PatchError(format!("unexpected kind: {other}"))),
        }
    }
    Ok(())
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge patch with the built-in merge keys.
pub fn strategic_merge(target: &mut Value, patch: &Value, kind: &str, names: &mut Vec<String>) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete") {
            t.remove(k);
            continue;
        }
        names.push(k.clone());
        match (t.get_mut(k), v) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => strategic_merge(tv, v, kind, names),
            (Some(Value::Array(tl)), Value::Array(pl)) => merge_list(tl, pl, kind, names),
            _ => {
                t.insert(k.clone(), strip_directives(v));
            }
        }
        names.pop();
    }
}

fn merge_list(tl: &mut Vec<Value>, pl: &[Value], kind: &str, names: &mut Vec<String>) {
    match list_kind(kind, names) {
        ListKind::Atomic => *tl = pl.iter().map(strip_directives).collect(),
        ListKind::Set => {
            for item in pl {
                if !tl.contains(item) {
                    tl.push(item.clone());
                }
            }
        }
        ListKind::Map(keys) => {
            // Strategic merge patch matches on the primary merge key only.
            let primary = &keys[..1];
            for pi in pl {
                let key = item_key(primary, pi);
                let pos = tl.iter().position(|ti| item_matches(primary, ti, &key));
                let delete = pi.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        tl.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let Some(ti) = tl.get_mut(i) {
                            strategic_merge(ti, pi, kind, names);
                        }
                    }
                    (None, false) => tl.push(strip_directives(pi)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut t = json!({"spec":{"template":{"spec":{"containers":[{"name":"a","image":"x"},{"name":"b","image":"y"}]}}}});
        let p = json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"a"}],"containers":[{"name":"a","image":"z"},{"name":"b","$patch":"delete"}]}}}});
        strategic_merge(&mut t, &p, "Deployment", &mut Vec::new());
        assert_eq!(
            t["spec"]["template"]["spec"]["containers"],
            json!([{"name":"a","image":"z"}])
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"a":[1,2],"b":{"c":1}});
        json_patch(&mut d, &json!([{"op":"add","path":"/a/-","value":3},{"op":"replace","path":"/b/c","value":2},{"op":"remove","path":"/a/0"}])).unwrap();
        assert_eq!(d, json!({"a":[2,3],"b":{"c":2}}));
        assert!(json_patch(&mut d, &json!([{"op":"remove","path":"/zz"}])).is_err());
    }
}
