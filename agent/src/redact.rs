//! Secret values never leave the cluster: Secrets are masked before any
//! object, drift line or diff leaves the agent (status reports, diff
//! results, logs).
//!
//! The masking is Argo CD's `HideSecretData`: for a `v1` Secret, every
//! value of `data` (with `stringData` first folded into `data`, as the API
//! server stores it) is replaced by a run of `+`, in the desired object, the
//! live one, and the objects inside both
//! `kubectl.kubernetes.io/last-applied-configuration` annotations. Per key,
//! equal values get the same mask and different values different masks
//! (`++++++++`, then four more `+` for each further distinct value), so a
//! reader still sees *that* a key differs, never what it holds. A
//! last-applied annotation that is not JSON is replaced by `++++++++`
//! whole.
//!
//! Only Secrets are masked: the hub sends no redaction rules (Argo CD's
//! `resource.sensitive.mask.annotations` has no counterpart yet).

use serde_json::{Map, Value};

/// The first mask; each further distinct value of a key gets four more
/// `+` (Argo CD's replacement).
pub const MASK: &str = "++++++++";

/// kubectl's annotation holding the last applied object, values included.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether an object is a core `v1` Secret.
#[must_use]
pub fn is_secret(obj: &Value) -> bool {
    obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && obj.get("kind").and_then(Value::as_str) == Some("Secret")
}

/// A Secret's `stringData` is write-only: the API server folds it into
/// `data` (base64). Rewrites `obj` that way (string values encoded, others
/// kept as they are); a `null` value in `data` becomes `""`. Leaves objects
/// without `stringData` or `data` maps as they are.
pub fn normalize_secret(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(string_data)) = root.get("stringData").cloned() {
        let mut data = match root.get("data") {
            Some(Value::Object(d)) => d.clone(),
            _ => Map::new(),
        };
        for (k, v) in string_data {
            let v = match v {
                Value::String(text) => Value::String(base64_encode(text.as_bytes())),
                other => other,
            };
            data.insert(k, v);
        }
        root.remove("stringData");
        root.insert("data".to_owned(), Value::Object(data));
    }
    if let Some(Value::Object(data)) = root.get_mut("data") {
        for v in data.values_mut() {
            if v.is_null() {
                *v = Value::String(String::new());
            }
        }
    }
}

/// A Secret with its values masked ([`secret_pair`] without a live side).
/// Other objects are returned unchanged.
#[must_use]
pub fn secret(obj: &Value) -> Value {
    secret_pair(obj, None).0
}

/// A desired object and its live counterpart with Secret values masked
/// consistently across both (see the module documentation). When neither is
/// a Secret both are returned unchanged.
#[must_use]
pub fn secret_pair(desired: &Value, live: Option<&Value>) -> (Value, Option<Value>) {
    if !is_secret(desired) && !live.is_some_and(is_secret) {
        return (desired.clone(), live.cloned());
    }
    let desired_applied = last_applied(desired);
    let live_applied = live.and_then(last_applied);
    // Argo CD's order: target, live, then their last-applied objects.
    let mut objects = [
        Some(desired.clone()),
        live.cloned(),
        desired_applied.clone().and_then(Result::ok),
        live_applied.clone().and_then(Result::ok),
    ];
    for obj in objects.iter_mut().flatten() {
        normalize_secret(obj);
    }
    mask_data(&mut objects);
    let [masked, masked_live, masked_applied, masked_live_applied] = objects;
    let mut masked = masked.unwrap_or_else(|| desired.clone());
    let mut masked_live = masked_live;
    if desired_applied.is_some() {
        set_last_applied(&mut masked, masked_applied);
    }
    if let Some(live) = masked_live.as_mut()
        && live_applied.is_some()
    {
        set_last_applied(live, masked_live_applied);
    }
    (masked, masked_live)
}

/// Replaces every `data` value of the objects by its mask: per key, one
/// mask per distinct value, in the objects' order.
fn mask_data(objects: &mut [Option<Value>]) {
    let mut keys: Vec<String> = Vec::new();
    for obj in objects.iter().flatten() {
        if let Some(Value::Object(data)) = obj.get("data") {
            for k in data.keys() {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    for key in &keys {
        let mut masks: Vec<(String, String)> = Vec::new();
        for obj in objects.iter_mut().flatten() {
            let Some(value) = obj
                .get_mut("data")
                .and_then(Value::as_object_mut)
                .and_then(|data| data.get_mut(key))
            else {
                continue;
            };
            let text = match &*value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mask = match masks.iter().find(|(v, _)| *v == text) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = format!("{MASK}{}", "++++".repeat(masks.len()));
                    masks.push((text, m.clone()));
                    m
                }
            };
            *value = Value::String(mask);
        }
    }
}

/// The object in an object's last-applied annotation: `None` without one,
/// `Some(Err(()))` when it is not a JSON object.
fn last_applied(obj: &Value) -> Option<Result<Value, ()>> {
    let text = obj
        .pointer("/metadata/annotations")?
        .get(LAST_APPLIED)?
        .as_str()
        .unwrap_or("");
    Some(
        serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_object)
            .ok_or(()),
    )
}

/// Writes back a masked last-applied object; an annotation that did not
/// parse (`None`) is masked whole.
fn set_last_applied(obj: &mut Value, masked: Option<Value>) {
    let text = masked.map_or_else(|| MASK.to_owned(), |v| v.to_string());
    if let Some(annotations) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.insert(LAST_APPLIED.to_owned(), Value::String(text));
    }
}

/// Standard base64 with padding.
#[must_use]
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret_with(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "shop"}, "type": "Opaque", "data": data})
    }

    #[test]
    fn equal_values_share_a_mask_and_different_values_do_not() {
        let desired = secret_with(json!({"user": "YWRtaW4=", "password": "aHVudGVyMg=="}));
        let live = secret_with(json!({"user": "YWRtaW4=", "password": "cm90YXRlZA==",
            "extra": "eA=="}));
        let (d, l) = secret_pair(&desired, Some(&live));
        let l = l.expect("live");
        assert_eq!(d["data"], json!({"user": MASK, "password": MASK}));
        assert_eq!(
            l["data"],
            json!({"user": MASK, "password": "++++++++++++", "extra": MASK})
        );
        // Everything else is left alone.
        assert_eq!(d["metadata"], desired["metadata"]);
        assert_eq!(l["type"], "Opaque");
    }

    #[test]
    fn string_data_is_folded_into_data_then_masked() {
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringData": {"password": "hunter2", "port": 5432}, "data": {"user": "YWRtaW4="}});
        let live = secret_with(
            json!({"password": base64_encode(b"hunter2"), "user": "YWRtaW4=",
            "port": 5432}),
        );
        let (d, l) = secret_pair(&desired, Some(&live));
        assert!(d.get("stringData").is_none());
        assert_eq!(
            d["data"],
            json!({"password": MASK, "port": MASK, "user": MASK})
        );
        assert_eq!(l.expect("live")["data"], d["data"]);
    }

    #[test]
    fn last_applied_annotations_are_masked_consistently() {
        let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "stringData": {"password": "from-git"}});
        let mut live = secret_with(json!({"password": base64_encode(b"rotated")}));
        live["metadata"]["annotations"] = json!({LAST_APPLIED: applied.to_string(), "team": "x"});
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "stringData": {"password": "from-git"}});
        let (d, l) = secret_pair(&desired, Some(&live));
        let l = l.expect("live");
        assert_eq!(d["data"]["password"], MASK);
        // Live differs from desired; its last-applied equals desired.
        assert_eq!(l["data"]["password"], "++++++++++++");
        let annotation = l["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .expect("annotation");
        let inner: Value = serde_json::from_str(annotation).expect("json");
        assert_eq!(inner["data"], json!({"password": MASK}));
        assert!(inner.get("stringData").is_none());
        assert_eq!(l["metadata"]["annotations"]["team"], "x");
        let text = l.to_string();
        for secret in [
            "from-git",
            "rotated",
            &base64_encode(b"from-git"),
            &base64_encode(b"rotated"),
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn an_unreadable_last_applied_annotation_is_masked_whole() {
        let mut live = secret_with(json!({"k": "dg=="}));
        live["metadata"]["annotations"] = json!({LAST_APPLIED: "{not json: s3cr3t"});
        let l = secret(&live);
        assert_eq!(l["metadata"]["annotations"][LAST_APPLIED], MASK);
        assert_eq!(l["data"]["k"], MASK);
    }

    #[test]
    fn other_kinds_and_empty_secrets_pass_through() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"k": "v"}});
        assert_eq!(secret(&cm), cm);
        // A Secret-looking object of another group is not a Secret.
        let other = json!({"apiVersion": "example.com/v1", "kind": "Secret", "data": {"k": "v"}});
        assert_eq!(secret(&other), other);
        let empty = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e"}});
        assert_eq!(secret(&empty), empty);
        // A null value reads as empty, and is masked like any value.
        let null = secret_with(json!({"k": null}));
        assert_eq!(secret(&null)["data"]["k"], MASK);
    }

    #[test]
    fn a_live_secret_alone_is_masked() {
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        let live = secret_with(json!({"token": "c2VjcmV0"}));
        let (_, l) = secret_pair(&desired, Some(&live));
        assert_eq!(l.expect("live")["data"]["token"], MASK);
    }

    #[test]
    fn base64_matches_the_standard() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }
}
