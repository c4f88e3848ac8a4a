//! Field sets in the Kubernetes `FieldsV1` form, and the list semantics
//! (atomic, set, map keyed by fields) that server-side apply and strategic
//! merge patch share.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// How a list field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars (`v:` elements).
    Set,
    /// A map keyed by the named fields (`k:` elements).
    Map(&'static [&'static str]),
}

/// The list semantics of the field `names.last()` reached through `names`
/// (field names only, list positions left out) in an object of `kind`.
pub fn list_kind(kind: &str, names: &[String]) -> ListKind {
    let Some(field) = names.last() else {
        return ListKind::Atomic;
    };
    let parent = names.len().checked_sub(2).and_then(|i| names.get(i));
    match field.as_str() {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => ListKind::Map(&["name"]),
        "volumeMounts" => ListKind::Map(&["mountPath"]),
        "volumeDevices" => ListKind::Map(&["devicePath"]),
        "hostAliases" => ListKind::Map(&["ip"]),
        "topologySpreadConstraints" => ListKind::Map(&["topologyKey", "whenUnsatisfiable"]),
        "conditions" => ListKind::Map(&["type"]),
        "ownerReferences" => ListKind::Map(&["uid"]),
        "finalizers" if names.len() == 2 => ListKind::Set,
        "ports" => match parent.map(String::as_str) {
            Some("containers" | "initContainers" | "ephemeralContainers") => {
                ListKind::Map(&["containerPort", "protocol"])
            }
            Some("spec") if kind == "Service" && names.len() == 2 => {
                ListKind::Map(&["port", "protocol"])
            }
            _ => ListKind::Atomic,
        },
        _ => ListKind::Atomic,
    }
}

fn key_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| Value::String("TCP".into()))
}

/// The `k:{...}` path element of a keyed list item.
pub fn item_key(keys: &[&str], item: &Value) -> String {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(*k).cloned().or_else(|| key_default(k)) {
            m.insert((*k).to_string(), v);
        }
    }
    format!("k:{}", Value::Object(m))
}

/// Whether `item` has the key `key` (a `k:{...}` element).
pub fn item_matches(keys: &[&str], item: &Value, key: &str) -> bool {
    item_key(keys, item) == key
}

/// A set of field paths, stored as the FieldsV1 tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// A path: `f:name`, `k:{...}` and `v:...` elements.
pub type Path = Vec<String>;

impl FieldSet {
    /// Whether the set has no members.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Adds a path.
    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for p in path {
            node = node.children.entry(p.clone()).or_default();
        }
        node.member = true;
    }

    fn node(&self, path: &[String]) -> Option<&FieldSet> {
        let mut node = self;
        for p in path {
            node = node.children.get(p)?;
        }
        Some(node)
    }

    /// Whether the path is a member.
    pub fn contains(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    /// Whether the path or anything below it is a member.
    pub fn contains_prefix(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    /// Removes a path (not its descendants).
    pub fn remove(&mut self, path: &[String]) {
        fn rec(node: &mut FieldSet, path: &[String]) {
            match path.split_first() {
                None => node.member = false,
                Some((first, rest)) => {
                    if let Some(c) = node.children.get_mut(first) {
                        rec(c, rest);
                        if c.is_empty() {
                            node.children.remove(first);
                        }
                    }
                }
            }
        }
        rec(self, path);
    }

    /// All member paths, parents before children.
    pub fn members(&self) -> Vec<Path> {
        fn rec(node: &FieldSet, prefix: &mut Path, out: &mut Vec<Path>) {
            if node.member {
                out.push(prefix.clone());
            }
            for (k, c) in &node.children {
                prefix.push(k.clone());
                rec(c, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        rec(self, &mut Vec::new(), &mut out);
        out
    }

    /// Member paths that have no member below them.
    pub fn leaves(&self) -> Vec<Path> {
        self.members()
            .into_iter()
            .filter(|p| {
                self.node(p)
                    .is_some_and(|n| n.children.values().all(FieldSet::is_empty))
            })
            .collect()
    }

    /// FieldsV1 JSON.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.to_json());
            }
        }
        Value::Object(m)
    }

    /// Parses FieldsV1 JSON.
    pub fn from_json(v: &Value) -> FieldSet {
        let mut out = FieldSet::default();
        let Some(m) = v.as_object() else { return out };
        if m.is_empty() {
            out.member = true;
        }
        for (k, c) in m {
            if k == "." {
                out.member = true;
            } else {
                out.children.insert(k.clone(), FieldSet::from_json(c));
            }
        }
        out
    }
}

/// Which part of an object a write tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything but status.
    Main,
    /// Only status.
    Status,
}

fn top_level_tracked(scope: Scope, key: &str) -> bool {
    match scope {
        Scope::Main => !matches!(key, "apiVersion" | "kind" | "status"),
        Scope::Status => key == "status",
    }
}

fn metadata_tracked(key: &str) -> bool {
    matches!(
        key,
        "labels" | "annotations" | "finalizers" | "ownerReferences"
    )
}

/// The field set an object (or applied configuration) sets.
pub fn fieldset_of(obj: &Value, kind: &str, scope: Scope) -> FieldSet {
    let mut set = FieldSet::default();
    let Some(m) = obj.as_object() else { return set };
    for (k, v) in m {
        if !top_level_tracked(scope, k) {
            continue;
        }
        if k == "metadata" {
            let Some(md) = v.as_object() else { continue };
            for (mk, mv) in md {
                if metadata_tracked(mk) {
                    let mut path = vec!["f:metadata".to_string(), format!("f:{mk}")];
                    let mut names = vec!["metadata".to_string(), mk.clone()];
                    collect(mv, kind, &mut path, &mut names, &mut set);
                }
            }
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        let mut names = vec![k.clone()];
        collect(v, kind, &mut path, &mut names, &mut set);
    }
    set
}

fn collect(v: &Value, kind: &str, path: &mut Path, names: &mut Vec<String>, set: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                path.push(format!("f:{k}"));
                names.push(k.clone());
                collect(c, kind, path, names, set);
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match list_kind(kind, names) {
            ListKind::Atomic => set.insert(path),
            ListKind::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    set.insert(path);
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                for item in items {
                    path.push(item_key(keys, item));
                    set.insert(path);
                    collect(item, kind, path, names, set);
                    path.pop();
                }
            }
        },
        _ => set.insert(path),
    }
}

/// The value at a path, if present.
pub fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for p in path {
        cur = step(cur, p)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, p: &str) -> Option<&'a Value> {
    if let Some(f) = p.strip_prefix("f:") {
        return cur.get(f);
    }
    let items = cur.as_array()?;
    if let Some(k) = p.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        let keys: Vec<&str> = key.keys().map(String::as_str).collect();
        return items.iter().find(|i| item_matches(&keys, i, p));
    }
    if let Some(v) = p.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        return items.iter().find(|i| **i == want);
    }
    None
}

/// Removes the value at a path; missing paths are ignored.
pub fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parent {
        let next = if let Some(f) = p.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            let idx = step(cur, p).and_then(|found| {
                cur.as_array()
                    .and_then(|a| a.iter().position(|i| std::ptr::eq(i, found)))
            });
            match (idx, cur.as_array_mut()) {
                (Some(i), Some(a)) => a.get_mut(i),
                _ => None,
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
        return;
    }
    let idx = step(cur, last).and_then(|found| {
        cur.as_array()
            .and_then(|a| a.iter().position(|i| std::ptr::eq(i, found)))
    });
    if let (Some(i), Some(a)) = (idx, cur.as_array_mut()) {
        a.remove(i);
    }
}

/// A path as Kubernetes prints it in conflict messages.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if let Some(f) = p.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = p.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = p.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// Merges an applied configuration into a live object (server-side apply).
pub fn merge_apply(live: &mut Value, applied: &Value, kind: &str, names: &mut Vec<String>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    l.remove(k);
                    continue;
                }
                names.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) => merge_apply(lv, av, kind, names),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                names.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_kind(kind, names) {
            ListKind::Atomic => *l = a.clone(),
            ListKind::Set => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListKind::Map(keys) => {
                for ai in a {
                    let key = item_key(keys, ai);
                    match l.iter_mut().find(|li| item_matches(keys, li, &key)) {
                        Some(li) => merge_apply(li, ai, kind, names),
                        None => l.push(ai.clone()),
                    }
                }
            }
        },
        (l, a) => *l = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fieldset_round_trips_and_keys_lists() {
        let obj = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a","labels":{"app":"a"}},
            "spec":{"replicas":2,"template":{"spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80}]}]}}}});
        let set = fieldset_of(&obj, "Deployment", Scope::Main);
        let j = set.to_json();
        let c = &j["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert!(c["."].is_object());
        assert!(c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object());
        assert_eq!(FieldSet::from_json(&j), set);
        assert!(j.get("f:apiVersion").is_none());
        let p = vec![
            "f:spec".to_string(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(get_path(&obj, &p), Some(&json!("i")));
        assert_eq!(
            path_string(&p),
            ".spec.template.spec.containers[name=\"c\"].image"
        );
        let mut o = obj.clone();
        remove_path(&mut o, &p);
        assert!(
            o["spec"]["template"]["spec"]["containers"][0]
                .get("image")
                .is_none()
        );
    }
}
