//! A minimal decoder for the Kubernetes protobuf envelope, enough for the
//! objects kubectl's generator commands send as protobuf (`kubectl create
//! namespace|configmap|secret`). Everything else is refused with 415.

use base64::Engine;
use serde_json::{Map, Value, json};

/// A decoded field: number and either a varint or a byte slice.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(b, &mut i)?))),
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(len)?;
                out.push((num, Field::Bytes(b.get(i..end)?)));
                i = end;
            }
            1 => i += 8,
            5 => i += 4,
            _ => return None,
        }
    }
    Some(out)
}

fn string(f: &Field<'_>) -> Option<String> {
    match f {
        Field::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Field::Varint(_) => None,
    }
}

fn map_entry(b: &[u8], bytes_value: bool) -> Option<(String, Value)> {
    let mut k = String::new();
    let mut v = Value::String(String::new());
    for (n, f) in fields(b)? {
        match (n, &f) {
            (1, _) => k = string(&f)?,
            (2, Field::Bytes(raw)) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(raw))
            }
            (2, _) => v = json!(string(&f)?),
            _ => {}
        }
    }
    Some((k, v))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    for (n, f) in fields(b)? {
        match (n, &f) {
            (1, _) => {
                m.insert("name".into(), json!(string(&f)?));
            }
            (2, _) => {
                m.insert("generateName".into(), json!(string(&f)?));
            }
            (3, _) => {
                m.insert("namespace".into(), json!(string(&f)?));
            }
            (11, Field::Bytes(e)) => {
                let (k, v) = map_entry(e, false)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(e)) => {
                let (k, v) = map_entry(e, false)?;
                annotations.insert(k, v);
            }
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    Some(Value::Object(m))
}

/// Decodes a `k8s\0`-prefixed protobuf body into JSON, for the supported kinds.
pub fn decode(body: &[u8]) -> Option<Value> {
    let env = body.strip_prefix(b"k8s\0")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(env)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    match tn {
                        1 => api_version = string(&tf)?,
                        2 => kind = string(&tf)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
    let mut data = Map::new();
    let mut binary = Map::new();
    let mut string_data = Map::new();
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n, &f) {
            (_, 1, Field::Bytes(md)) => obj["metadata"] = object_meta(md)?,
            ("ConfigMap", 2, Field::Bytes(e)) => {
                let (k, v) = map_entry(e, false)?;
                data.insert(k, v);
            }
            ("ConfigMap", 3, Field::Bytes(e)) | ("Secret", 2, Field::Bytes(e)) => {
                let (k, v) = map_entry(e, true)?;
                if kind == "Secret" {
                    data.insert(k, v);
                } else {
                    binary.insert(k, v);
                }
            }
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                obj["immutable"] = json!(*v != 0)
            }
            ("Secret", 3, _) => obj["type"] = json!(string(&f)?),
            ("Secret", 4, Field::Bytes(e)) => {
                let (k, v) = map_entry(e, false)?;
                string_data.insert(k, v);
            }
            ("Namespace" | "ConfigMap" | "Secret", _, _) => {}
            _ => return None,
        }
    }
    for (k, m) in [
        ("data", data),
        ("binaryData", binary),
        ("stringData", string_data),
    ] {
        if !m.is_empty() {
            obj[k] = Value::Object(m);
        }
    }
    Some(obj)
}
