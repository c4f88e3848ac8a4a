//! Sprig's reflection, type-conversion and path functions
//! (masterminds.github.io/sprig/reflection.html, conversion.html,
//! paths.html).

use gtmpl_ng::{Func, Value};

use super::{Res, arg, deep_equal, go_kind, go_type, string_arg, strval, want};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("typeOf", type_of),
    ("typeIs", type_is),
    ("typeIsLike", type_is_like),
    ("kindOf", kind_of),
    ("kindIs", kind_is),
    ("deepEqual", deep_equal_fn),
    ("toString", to_string),
    ("base", base),
    ("dir", dir),
    ("clean", clean),
    ("ext", ext),
    ("isAbs", is_abs),
    ("osBase", base),
    ("osDir", dir),
    ("osClean", clean),
    ("osExt", ext),
    ("osIsAbs", is_abs),
];

fn type_of(args: &[Value]) -> Res {
    want("typeOf", args, 1)?;
    Ok(Value::from(go_type(arg(args, 0))))
}

fn type_is(args: &[Value]) -> Res {
    want("typeIs", args, 2)?;
    let t = string_arg("typeIs", args, 0)?;
    Ok(Value::Bool(t == go_type(arg(args, 1))))
}

fn type_is_like(args: &[Value]) -> Res {
    want("typeIsLike", args, 2)?;
    let t = string_arg("typeIsLike", args, 0)?;
    let actual = go_type(arg(args, 1));
    Ok(Value::Bool(t == actual || format!("*{t}") == actual))
}

fn kind_of(args: &[Value]) -> Res {
    want("kindOf", args, 1)?;
    Ok(Value::from(go_kind(arg(args, 0))))
}

fn kind_is(args: &[Value]) -> Res {
    want("kindIs", args, 2)?;
    let k = string_arg("kindIs", args, 0)?;
    Ok(Value::Bool(k == go_kind(arg(args, 1))))
}

fn deep_equal_fn(args: &[Value]) -> Res {
    want("deepEqual", args, 2)?;
    Ok(Value::Bool(deep_equal(arg(args, 0), arg(args, 1))))
}

fn to_string(args: &[Value]) -> Res {
    want("toString", args, 1)?;
    Ok(Value::String(strval(arg(args, 0))))
}

/// Go's `path.Clean`.
pub(super) fn go_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn base(args: &[Value]) -> Res {
    want("base", args, 1)?;
    let p = string_arg("base", args, 0)?;
    if p.is_empty() {
        return Ok(Value::from("."));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(Value::from("/"));
    }
    Ok(Value::from(trimmed.rsplit('/').next().unwrap_or(trimmed)))
}

fn dir(args: &[Value]) -> Res {
    want("dir", args, 1)?;
    let p = string_arg("dir", args, 0)?;
    let cut = p.rfind('/').map_or(0, |i| i + 1);
    Ok(Value::String(go_clean(&p[..cut])))
}

fn clean(args: &[Value]) -> Res {
    want("clean", args, 1)?;
    Ok(Value::String(go_clean(&string_arg("clean", args, 0)?)))
}

fn ext(args: &[Value]) -> Res {
    want("ext", args, 1)?;
    let p = string_arg("ext", args, 0)?;
    let last = p.rsplit('/').next().unwrap_or(&p);
    Ok(Value::from(last.rfind('.').map_or("", |i| &last[i..])))
}

fn is_abs(args: &[Value]) -> Res {
    want("isAbs", args, 1)?;
    Ok(Value::Bool(string_arg("isAbs", args, 0)?.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "Reflection Functions", "Type Conversion
    /// Functions" and "Path and Filepath Functions" pages
    /// (masterminds.github.io/sprig/reflection.html, conversion.html,
    /// paths.html), checked against Go. Parameters are Go's float64 numbers,
    /// as Argo CD's are (JSON numbers).
    #[test]
    fn reflection_conversion_and_paths() {
        let n = json!({"n": 3, "s": "x", "m": {"a": 1}, "l": [1]});
        table(&[
            ("{{ typeOf .s }}", n.clone(), Ok("string")),
            ("{{ typeOf .n }}", n.clone(), Ok("float64")),
            ("{{ typeOf 3 }}", n.clone(), Ok("int")),
            ("{{ typeOf .m }}", n.clone(), Ok("map[string]interface {}")),
            ("{{ typeOf .l }}", n.clone(), Ok("[]interface {}")),
            ("{{ typeOf .missing }}", n.clone(), Ok("<nil>")),
            ("{{ typeIs \"string\" .s }}", n.clone(), Ok("true")),
            ("{{ typeIsLike \"float64\" .n }}", n.clone(), Ok("true")),
            ("{{ kindOf .m }}", n.clone(), Ok("map")),
            ("{{ kindOf .l }}", n.clone(), Ok("slice")),
            ("{{ kindIs \"int\" 4 }}", n.clone(), Ok("true")),
            (
                "{{ deepEqual (list 1 2) (list 1 2) }}",
                n.clone(),
                Ok("true"),
            ),
            ("{{ deepEqual .m (dict \"a\" 1) }}", n.clone(), Ok("false")),
            ("{{ toString 42 }}", n.clone(), Ok("42")),
            ("{{ toString .l }}", n.clone(), Ok("[1]")),
            ("{{ base \"foo/bar/baz\" }}", n.clone(), Ok("baz")),
            ("{{ base \"/\" }}", n.clone(), Ok("/")),
            ("{{ dir \"foo/bar/baz\" }}", n.clone(), Ok("foo/bar")),
            ("{{ dir \"baz\" }}", n.clone(), Ok(".")),
            ("{{ clean \"foo/bar/../baz\" }}", n.clone(), Ok("foo/baz")),
            ("{{ clean \"/../a//b/./c/\" }}", n.clone(), Ok("/a/b/c")),
            ("{{ ext \"foo.bar\" }}", n.clone(), Ok(".bar")),
            ("{{ ext \"a.b/c\" }}", n.clone(), Ok("")),
            ("{{ isAbs \"/a\" }}", n.clone(), Ok("true")),
            ("{{ osBase \"a/b.txt\" }}", n.clone(), Ok("b.txt")),
            ("{{ osDir \"/a/b\" }}", n.clone(), Ok("/a")),
            ("{{ osClean \"a/./b\" }}", n.clone(), Ok("a/b")),
            ("{{ osExt \"x.tar.gz\" }}", n.clone(), Ok(".gz")),
            ("{{ osIsAbs \"a\" }}", n.clone(), Ok("false")),
        ]);
    }
}
