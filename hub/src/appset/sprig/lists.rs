//! Sprig's list functions (masterminds.github.io/sprig/lists.html).
//!
//! In Go the plain variants panic where the `must` ones return an error; a
//! template sees both as the same execution error, so they share one body.

use gtmpl_ng::{Func, Value};

use super::{
    Res, arg, deep_equal, fail, go_kind, int_arg, is_empty, list_arg, to_int64, want, want_at_least,
};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("list", list),
    ("tuple", list),
    ("append", push),
    ("push", push),
    ("mustAppend", must_push),
    ("mustPush", must_push),
    ("prepend", prepend),
    ("mustPrepend", must_prepend),
    ("first", first),
    ("mustFirst", must_first),
    ("rest", rest),
    ("mustRest", must_rest),
    ("last", last),
    ("mustLast", must_last),
    ("initial", initial),
    ("mustInitial", must_initial),
    ("reverse", reverse),
    ("mustReverse", must_reverse),
    ("uniq", uniq),
    ("mustUniq", must_uniq),
    ("without", without),
    ("mustWithout", must_without),
    ("has", has),
    ("mustHas", must_has),
    ("compact", compact),
    ("mustCompact", must_compact),
    ("slice", slice),
    ("mustSlice", must_slice),
    ("concat", concat),
    ("chunk", chunk),
    ("mustChunk", must_chunk),
    ("index", index),
];

fn list(args: &[Value]) -> Res {
    Ok(Value::Array(
        args.iter()
            .map(|v| match v {
                Value::NoValue => Value::Nil,
                other => other.clone(),
            })
            .collect(),
    ))
}

fn called(name: &str, e: gtmpl_ng::FuncError) -> gtmpl_ng::FuncError {
    fail(format!("error calling {name}: {e}"))
}

macro_rules! both {
    ($plain:ident, $must:ident, $name:literal, $body:ident) => {
        fn $plain(args: &[Value]) -> Res {
            $body($name, args).map_err(|e| called($name, e))
        }
        fn $must(args: &[Value]) -> Res {
            $body(concat!("must", $name), args).map_err(|e| called($name, e))
        }
    };
}

both!(push, must_push, "Push", push_body);
both!(prepend, must_prepend, "Prepend", prepend_body);
both!(first, must_first, "First", first_body);
both!(rest, must_rest, "Rest", rest_body);
both!(last, must_last, "Last", last_body);
both!(initial, must_initial, "Initial", initial_body);
both!(reverse, must_reverse, "Reverse", reverse_body);
both!(uniq, must_uniq, "Uniq", uniq_body);
both!(without, must_without, "Without", without_body);
both!(has, must_has, "Has", has_body);
both!(compact, must_compact, "Compact", compact_body);
both!(slice, must_slice, "Slice", slice_body);
both!(chunk, must_chunk, "Chunk", chunk_body);

fn push_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 2)?;
    let mut l = list_arg("push", arg(args, 0))?.to_vec();
    l.push(arg(args, 1).clone());
    Ok(Value::Array(l))
}

fn prepend_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 2)?;
    let l = list_arg("prepend", arg(args, 0))?;
    let mut out = vec![arg(args, 1).clone()];
    out.extend_from_slice(l);
    Ok(Value::Array(out))
}

fn first_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 1)?;
    let l = list_arg("find first", arg(args, 0))?;
    Ok(l.first().cloned().unwrap_or(Value::Nil))
}

fn last_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 1)?;
    let l = list_arg("find last", arg(args, 0))?;
    Ok(l.last().cloned().unwrap_or(Value::Nil))
}

fn rest_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 1)?;
    let l = list_arg("find rest", arg(args, 0))?;
    if l.is_empty() {
        return Ok(Value::Nil);
    }
    Ok(Value::Array(l[1..].to_vec()))
}

fn initial_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 1)?;
    let l = list_arg("find initial", arg(args, 0))?;
    if l.is_empty() {
        return Ok(Value::Nil);
    }
    Ok(Value::Array(l[..l.len() - 1].to_vec()))
}

fn reverse_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 1)?;
    let mut l = list_arg("find reverse", arg(args, 0))?.to_vec();
    l.reverse();
    Ok(Value::Array(l))
}

fn uniq_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 1)?;
    let l = list_arg("find uniq", arg(args, 0))?;
    let mut out: Vec<Value> = Vec::new();
    for item in l {
        if !out.iter().any(|o| deep_equal(o, item)) {
            out.push(item.clone());
        }
    }
    Ok(Value::Array(out))
}

fn without_body(name: &str, args: &[Value]) -> Res {
    want_at_least(name, args, 1)?;
    let l = list_arg("find without", arg(args, 0))?;
    let omit = &args[1..];
    Ok(Value::Array(
        l.iter()
            .filter(|item| !omit.iter().any(|o| deep_equal(o, item)))
            .cloned()
            .collect(),
    ))
}

fn has_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 2)?;
    let haystack = arg(args, 1);
    if matches!(haystack, Value::Nil) {
        return Ok(Value::Bool(false));
    }
    let l = list_arg("find has", haystack)?;
    let needle = arg(args, 0);
    Ok(Value::Bool(l.iter().any(|item| deep_equal(needle, item))))
}

fn compact_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 1)?;
    let l = list_arg("compact", arg(args, 0))?;
    Ok(Value::Array(
        l.iter().filter(|v| !is_empty(v)).cloned().collect(),
    ))
}

fn slice_body(name: &str, args: &[Value]) -> Res {
    want_at_least(name, args, 1)?;
    let l = match arg(args, 0) {
        Value::Array(a) => a,
        other => {
            return Err(fail(format!(
                "list should be type of slice or array but {}",
                go_kind(other)
            )));
        }
    };
    if l.is_empty() {
        return Ok(Value::Nil);
    }
    let start = args.get(1).map_or(0, to_int64);
    let end = args.get(2).map_or(l.len() as i64, to_int64);
    if start < 0 || end < start || end as usize > l.len() {
        return Err(fail(format!(
            "reflect: slice index out of range [{start}:{end}] with capacity {}",
            l.len()
        )));
    }
    Ok(Value::Array(l[start as usize..end as usize].to_vec()))
}

fn concat(args: &[Value]) -> Res {
    let mut out = Vec::new();
    for a in args {
        match a {
            Value::Array(items) => out.extend_from_slice(items),
            other => {
                return Err(fail(format!(
                    "error calling concat: Cannot concat type {} as list",
                    go_kind(other)
                )));
            }
        }
    }
    if out.is_empty() {
        return Ok(Value::Nil);
    }
    Ok(Value::Array(out))
}

fn chunk_body(name: &str, args: &[Value]) -> Res {
    want(name, args, 2)?;
    let size = int_arg(name, args, 0)?;
    let l = list_arg("chunk", arg(args, 1))?;
    if size <= 0 {
        return Err(fail("runtime error: integer divide by zero"));
    }
    Ok(Value::Array(
        l.chunks(size as usize)
            .map(|c| Value::Array(c.to_vec()))
            .collect(),
    ))
}

/// Go's builtin `index`: a missing map key gives the zero value (which a
/// `map[string]interface{}` prints as `<no value>`), whatever `missingkey`
/// says; an out-of-range list index is an error.
fn index(args: &[Value]) -> Res {
    want_at_least("index", args, 1)?;
    let mut current = arg(args, 0).clone();
    for key in &args[1..] {
        current = match (&current, key) {
            (Value::Map(m) | Value::Object(m), Value::String(k)) => {
                m.get(k).cloned().unwrap_or(Value::NoValue)
            }
            (Value::Map(_) | Value::Object(_), other) => {
                return Err(fail(format!(
                    "error calling index: value has type {}; should be string",
                    super::go_type(other)
                )));
            }
            (Value::Array(items), Value::Number(_)) => {
                let i = to_int64(key);
                if i < 0 || i as usize >= items.len() {
                    return Err(fail(format!(
                        "error calling index: index out of range: {i}"
                    )));
                }
                items[i as usize].clone()
            }
            (Value::String(s), Value::Number(_)) => {
                let i = to_int64(key);
                match usize::try_from(i).ok().and_then(|i| s.as_bytes().get(i)) {
                    Some(b) => super::int(i64::from(*b)),
                    None => {
                        return Err(fail(format!(
                            "error calling index: index out of range: {i}"
                        )));
                    }
                }
            }
            (Value::Nil | Value::NoValue, _) => {
                return Err(fail("error calling index: index of untyped nil"));
            }
            (other, _) => {
                return Err(fail(format!(
                    "error calling index: can't index item of type {}",
                    super::go_type(other)
                )));
            }
        };
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "Lists and List Functions" page
    /// (masterminds.github.io/sprig/lists.html), checked against Go.
    #[test]
    fn list_functions() {
        let n = json!({"l": [1, 2, 3, 4, 5], "s": ["a", "b"], "m": {"k": "v"}, "e": []});
        table(&[
            ("{{ list 1 2 3 }}", n.clone(), Ok("[1 2 3]")),
            ("{{ tuple \"a\" 2 }}", n.clone(), Ok("[a 2]")),
            ("{{ first .l }}", n.clone(), Ok("1")),
            ("{{ mustFirst .e }}", n.clone(), Ok("<no value>")),
            ("{{ last .l }}", n.clone(), Ok("5")),
            ("{{ rest .l }}", n.clone(), Ok("[2 3 4 5]")),
            ("{{ initial .l }}", n.clone(), Ok("[1 2 3 4]")),
            ("{{ append .s \"c\" }}", n.clone(), Ok("[a b c]")),
            ("{{ push .s \"c\" }}", n.clone(), Ok("[a b c]")),
            ("{{ mustAppend .s 1 }}", n.clone(), Ok("[a b 1]")),
            ("{{ prepend .s \"z\" }}", n.clone(), Ok("[z a b]")),
            ("{{ mustPrepend .s \"z\" }}", n.clone(), Ok("[z a b]")),
            (
                "{{ concat .s (list 1 2) (list) }}",
                n.clone(),
                Ok("[a b 1 2]"),
            ),
            ("{{ reverse .s }}", n.clone(), Ok("[b a]")),
            ("{{ list 1 1 1 2 | uniq }}", n.clone(), Ok("[1 2]")),
            (
                "{{ without (list 1 2 3 4 5) 1 3 5 }}",
                n.clone(),
                Ok("[2 4]"),
            ),
            // Parameters are float64 in Go; a literal 1 is an int, so not equal.
            ("{{ without .l 1 3 5 }}", n.clone(), Ok("[1 2 3 4 5]")),
            ("{{ has 4 (list 1 4) }}", n.clone(), Ok("true")),
            ("{{ has 4 .l }}", n.clone(), Ok("false")),
            ("{{ has \"x\" .s }}", n.clone(), Ok("false")),
            ("{{ has 1 .missing }}", n.clone(), Ok("false")),
            (
                "{{ compact (list 1 \"\" 0 \"a\" false) }}",
                n.clone(),
                Ok("[1 a]"),
            ),
            ("{{ slice .l 1 3 }}", n.clone(), Ok("[2 3]")),
            ("{{ slice .l 3 }}", n.clone(), Ok("[4 5]")),
            ("{{ slice .l }}", n.clone(), Ok("[1 2 3 4 5]")),
            (
                "{{ mustSlice .l 4 9 }}",
                n.clone(),
                Err("slice index out of range"),
            ),
            ("{{ chunk 2 .l }}", n.clone(), Ok("[[1 2] [3 4] [5]]")),
            ("{{ mustChunk 5 .l }}", n.clone(), Ok("[[1 2 3 4 5]]")),
            (
                "{{ first .m }}",
                n.clone(),
                Err("error calling First: Cannot find first on type map"),
            ),
            (
                "{{ mustReverse \"x\" }}",
                n.clone(),
                Err("Cannot find reverse on type string"),
            ),
            ("{{ mustUniq .e }}", n.clone(), Ok("[]")),
            ("{{ mustWithout .s \"a\" }}", n.clone(), Ok("[b]")),
            ("{{ mustHas \"a\" .s }}", n.clone(), Ok("true")),
            ("{{ mustCompact .e }}", n.clone(), Ok("[]")),
            ("{{ mustRest .s }}", n.clone(), Ok("[b]")),
            ("{{ mustLast .s }}", n.clone(), Ok("b")),
            ("{{ mustInitial .s }}", n.clone(), Ok("[a]")),
            ("{{ index .l 1 }}", n.clone(), Ok("2")),
            ("{{ index .m \"nope\" }}", n.clone(), Ok("<no value>")),
            ("{{ index .l 9 }}", n.clone(), Err("index out of range: 9")),
        ]);
    }
}
