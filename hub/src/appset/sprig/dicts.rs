//! Sprig's dictionary functions (masterminds.github.io/sprig/dicts.html).
//!
//! Go's maps iterate in random order; `keys` and `values` here follow
//! sorted key order, one of the orders Go could produce, so the same set
//! renders the same output on every evaluation.

use std::collections::HashMap;

use gtmpl_ng::{Func, Value};

use super::{
    Res, arg, as_map, fail, go_type, is_empty, map_arg, new_map, string_arg, strval, want,
    want_at_least,
};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("dict", dict),
    ("get", get),
    ("set", set),
    ("unset", unset),
    ("hasKey", has_key),
    ("pluck", pluck),
    ("keys", keys),
    ("values", values),
    ("pick", pick),
    ("omit", omit),
    ("merge", merge),
    ("mustMerge", must_merge),
    ("mergeOverwrite", merge_overwrite),
    ("mustMergeOverwrite", must_merge_overwrite),
    ("dig", dig),
];

fn dict(args: &[Value]) -> Res {
    let mut m = HashMap::new();
    for pair in args.chunks(2) {
        let key = strval(&pair[0]);
        let value = pair.get(1).map_or(Value::from(""), |v| match v {
            Value::NoValue => Value::Nil,
            other => other.clone(),
        });
        m.insert(key, value);
    }
    Ok(new_map(m))
}

fn get(args: &[Value]) -> Res {
    want("get", args, 2)?;
    let m = map_arg("get", args, 0)?;
    let k = string_arg("get", args, 1)?;
    Ok(m.get(&k).cloned().unwrap_or_else(|| Value::from("")))
}

/// `set` returns the changed map. Go also changes the map in place; a
/// template value here is immutable, so only the returned map has the key.
fn set(args: &[Value]) -> Res {
    want("set", args, 3)?;
    let mut m = map_arg("set", args, 0)?.clone();
    m.insert(string_arg("set", args, 1)?, arg(args, 2).clone());
    Ok(new_map(m))
}

fn unset(args: &[Value]) -> Res {
    want("unset", args, 2)?;
    let mut m = map_arg("unset", args, 0)?.clone();
    m.remove(&string_arg("unset", args, 1)?);
    Ok(new_map(m))
}

fn has_key(args: &[Value]) -> Res {
    want("hasKey", args, 2)?;
    let m = map_arg("hasKey", args, 0)?;
    Ok(Value::Bool(m.contains_key(&string_arg("hasKey", args, 1)?)))
}

fn pluck(args: &[Value]) -> Res {
    want_at_least("pluck", args, 1)?;
    let key = string_arg("pluck", args, 0)?;
    let mut out = Vec::new();
    for i in 1..args.len() {
        if let Some(v) = map_arg("pluck", args, i)?.get(&key) {
            out.push(v.clone());
        }
    }
    Ok(Value::Array(out))
}

fn sorted_keys(m: &HashMap<String, Value>) -> Vec<&String> {
    let mut k: Vec<&String> = m.keys().collect();
    k.sort();
    k
}

fn keys(args: &[Value]) -> Res {
    let mut out = Vec::new();
    for i in 0..args.len() {
        out.extend(
            sorted_keys(map_arg("keys", args, i)?)
                .into_iter()
                .map(|k| Value::String(k.clone())),
        );
    }
    Ok(Value::Array(out))
}

fn values(args: &[Value]) -> Res {
    want("values", args, 1)?;
    let m = map_arg("values", args, 0)?;
    Ok(Value::Array(
        sorted_keys(m).into_iter().map(|k| m[k].clone()).collect(),
    ))
}

fn pick(args: &[Value]) -> Res {
    want_at_least("pick", args, 1)?;
    let m = map_arg("pick", args, 0)?;
    let mut out = HashMap::new();
    for i in 1..args.len() {
        let k = string_arg("pick", args, i)?;
        if let Some(v) = m.get(&k) {
            out.insert(k, v.clone());
        }
    }
    Ok(new_map(out))
}

fn omit(args: &[Value]) -> Res {
    want_at_least("omit", args, 1)?;
    let mut m = map_arg("omit", args, 0)?.clone();
    for i in 1..args.len() {
        m.remove(&string_arg("omit", args, i)?);
    }
    Ok(new_map(m))
}

/// mergo's map merge: a key missing (or empty) in `dst` takes `src`'s
/// value; nested maps merge key by key. With `overwrite`, a non-empty `src`
/// value replaces `dst`'s.
fn merge_into(dst: &mut HashMap<String, Value>, src: &HashMap<String, Value>, overwrite: bool) {
    for (k, sv) in src {
        match dst.get_mut(k) {
            None => {
                dst.insert(k.clone(), sv.clone());
            }
            Some(dv) => {
                if let (Some(_), Some(sm)) = (as_map(dv), as_map(sv)) {
                    if let Value::Map(dm) | Value::Object(dm) = dv {
                        merge_into(dm, sm, overwrite);
                    }
                } else if (overwrite && !is_empty(sv)) || (!overwrite && is_empty(dv)) {
                    *dv = sv.clone();
                }
            }
        }
    }
}

fn merge_fn(name: &str, args: &[Value], overwrite: bool) -> Res {
    want_at_least(name, args, 1)?;
    let mut dst = map_arg(name, args, 0)?.clone();
    for i in 1..args.len() {
        merge_into(&mut dst, map_arg(name, args, i)?, overwrite);
    }
    Ok(new_map(dst))
}

fn merge(args: &[Value]) -> Res {
    merge_fn("merge", args, false)
}
fn must_merge(args: &[Value]) -> Res {
    merge_fn("mustMerge", args, false)
}
fn merge_overwrite(args: &[Value]) -> Res {
    merge_fn("mergeOverwrite", args, true)
}
fn must_merge_overwrite(args: &[Value]) -> Res {
    merge_fn("mustMergeOverwrite", args, true)
}

/// `dig "a" "b" DEFAULT DICT`: walks nested maps; the default when a key is
/// missing.
fn dig(args: &[Value]) -> Res {
    if args.len() < 3 {
        return Err(fail(
            "error calling dig: dig needs at least three arguments",
        ));
    }
    let dict = &args[args.len() - 1];
    let default = &args[args.len() - 2];
    let mut current = as_map(dict).ok_or_else(|| {
        fail(format!(
            "error calling dig: interface conversion: interface {{}} is {}, not map[string]interface {{}}",
            go_type(dict)
        ))
    })?;
    let keys = &args[..args.len() - 2];
    for (i, k) in keys.iter().enumerate() {
        let Value::String(k) = k else {
            return Err(fail(format!(
                "error calling dig: interface conversion: interface {{}} is {}, not string",
                go_type(k)
            )));
        };
        let Some(step) = current.get(k) else {
            return Ok(default.clone());
        };
        if i == keys.len() - 1 {
            return Ok(step.clone());
        }
        current = as_map(step).ok_or_else(|| {
            fail(format!(
                "error calling dig: interface conversion: interface {{}} is {}, not map[string]interface {{}}",
                go_type(step)
            ))
        })?;
    }
    Ok(default.clone())
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "Dictionaries and Dict Functions" page
    /// (masterminds.github.io/sprig/dicts.html), checked against Go.
    #[test]
    fn dict_functions() {
        let n = json!({
            "m": {"name1": "value1", "name2": "value2", "name3": "value3"},
            "a": {"b": {"c": "d"}, "x": ""},
            "dst": {"default": "default", "overwrite": "me", "key": "true"},
            "src": {"overwrite": "overwritten", "key": "false", "new": "n"}
        });
        table(&[
            (
                r#"{{ $d := dict "name1" "value1" "name2" "value2" }}{{ $d.name2 }}"#,
                n.clone(),
                Ok("value2"),
            ),
            (r#"{{ dict "odd" }}"#, n.clone(), Ok("map[odd:]")),
            (r#"{{ get .m "name1" }}"#, n.clone(), Ok("value1")),
            (r#"{{ get .m "nope" }}"#, n.clone(), Ok("")),
            (
                r#"{{ $d := set .m "name4" "value4" }}{{ $d.name4 }}"#,
                n.clone(),
                Ok("value4"),
            ),
            (
                r#"{{ $d := unset .m "name1" }}{{ keys $d }}"#,
                n.clone(),
                Ok("[name2 name3]"),
            ),
            (r#"{{ hasKey .m "name1" }}"#, n.clone(), Ok("true")),
            (r#"{{ hasKey .m "nope" }}"#, n.clone(), Ok("false")),
            (
                r#"{{ pluck "name1" .m (dict "name1" "other") (dict) }}"#,
                n.clone(),
                Ok("[value1 other]"),
            ),
            (r#"{{ keys .m }}"#, n.clone(), Ok("[name1 name2 name3]")),
            (
                r#"{{ keys .m (dict "z" 1 "a" 2) | sortAlpha }}"#,
                n.clone(),
                Ok("[a name1 name2 name3 z]"),
            ),
            (
                r#"{{ values .m }}"#,
                n.clone(),
                Ok("[value1 value2 value3]"),
            ),
            (
                r#"{{ pick .m "name1" "name3" "nope" }}"#,
                n.clone(),
                Ok("map[name1:value1 name3:value3]"),
            ),
            (
                r#"{{ omit .m "name1" "name3" }}"#,
                n.clone(),
                Ok("map[name2:value2]"),
            ),
            (
                r#"{{ merge .dst .src }}"#,
                n.clone(),
                Ok("map[default:default key:true new:n overwrite:me]"),
            ),
            (
                r#"{{ mustMerge (dict "a" "") (dict "a" "x") }}"#,
                n.clone(),
                Ok("map[a:x]"),
            ),
            (
                r#"{{ mergeOverwrite .dst .src }}"#,
                n.clone(),
                Ok("map[default:default key:false new:n overwrite:overwritten]"),
            ),
            (
                r#"{{ mustMergeOverwrite (dict "a" "x") (dict "a" "") }}"#,
                n.clone(),
                Ok("map[a:x]"),
            ),
            (
                r#"{{ merge (dict "n" (dict "a" 1)) (dict "n" (dict "b" 2)) }}"#,
                n.clone(),
                Ok("map[n:map[a:1 b:2]]"),
            ),
            // dig: the issue's bug was `<no value>` for a key that exists.
            (r#"{{ dig "a" "b" "c" "default" . }}"#, n.clone(), Ok("d")),
            (
                r#"{{ dig "a" "b" "z" "default" . }}"#,
                n.clone(),
                Ok("default"),
            ),
            (
                r#"{{ dig "nope" "deeper" "default" . }}"#,
                n.clone(),
                Ok("default"),
            ),
            (r#"{{ dig "a" "x" "default" . }}"#, n.clone(), Ok("")),
            (r#"{{ dig "a" "b" "<none>" . }}"#, n.clone(), Ok("map[c:d]")),
            (r#"{{ .a | dig "b" "c" "" }}"#, n.clone(), Ok("d")),
            (
                r#"{{ dig "a" "b" "c" "d" "x" . }}"#,
                n.clone(),
                Err("interface conversion"),
            ),
            (
                r#"{{ dig "a" "" }}"#,
                n.clone(),
                Err("dig needs at least three arguments"),
            ),
        ]);
    }
}
