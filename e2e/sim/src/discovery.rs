//! Discovery documents and OpenAPI v3.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::resources::{self, ResourceDef};
use crate::store::Cluster;

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-flotilla-sim", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn api_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

fn groups(rs: &[ResourceDef]) -> BTreeMap<String, Vec<String>> {
    let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rs.iter().filter(|r| !r.group.is_empty()) {
        let vs = g.entry(r.group.clone()).or_default();
        if !vs.contains(&r.version) {
            vs.push(r.version.clone());
        }
    }
    g
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    let preferred = vs.first().cloned().unwrap_or(Value::Null);
    json!({"name": name, "versions": vs, "preferredVersion": preferred})
}

/// `/apis`.
pub fn api_group_list(c: &Cluster) -> Value {
    let rs = c.lock().resources.clone();
    let gs: Vec<Value> = groups(&rs).iter().map(|(n, v)| group_json(n, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `/apis/<group>`.
pub fn api_group(c: &Cluster, group: &str) -> Option<Value> {
    let rs = c.lock().resources.clone();
    let gs = groups(&rs);
    let v = gs.get(group)?;
    let mut g = group_json(group, v);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(c: &Cluster, group: &str, version: &str) -> Option<Value> {
    let rs = c.lock().resources.clone();
    let list: Vec<Value> = rs
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(resources::api_resource)
        .collect();
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of group-version documents. `prefix` is the
/// cluster's path prefix, because clients use these URLs as given.
pub fn openapi_index(c: &Cluster, prefix: &str) -> Value {
    let st = c.lock();
    let rv = st.rv;
    let mut gvs: Vec<(String, String)> = st
        .resources
        .iter()
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    drop(st);
    gvs.sort();
    gvs.dedup();
    let mut paths = serde_json::Map::new();
    for (g, v) in gvs {
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("{prefix}/openapi/v3/{p}?hash={rv:016X}")}),
        );
    }
    json!({"paths": paths})
}

fn schema_name(r: &ResourceDef) -> String {
    let g = if r.group.is_empty() {
        "core".to_string()
    } else {
        r.group.clone()
    };
    format!("io.k8s.sim.{g}.{}.{}", r.version, r.kind)
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

/// `/openapi/v3/<gv path>`: permissive schemas that still name each kind
/// and advertise the query parameters kubectl probes for.
pub fn openapi_gv(c: &Cluster, gv: &str) -> Option<Value> {
    let st = c.lock();
    let rs: Vec<ResourceDef> = st
        .resources
        .iter()
        .filter(|r| gv_path(&r.group, &r.version) == gv)
        .cloned()
        .collect();
    if rs.is_empty() {
        return None;
    }
    let crds: Vec<Value> = st
        .objects
        .iter()
        .filter(|(k, _)| k.0 == "apiextensions.k8s.io/customresourcedefinitions")
        .map(|(_, o)| o.clone())
        .collect();
    drop(st);
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in &rs {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let sref = json!({"$ref": format!("#/components/schemas/{}", schema_name(r))});
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": sref}}}});
        let op = |action: &str, params: Vec<Value>| {
            json!({"operationId": format!("{action}{}", r.kind), "parameters": params, "responses": ok,
                   "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk})
        };
        let base = if r.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("/{gv}/{}", r.plural)
        };
        let write = vec![
            param("dryRun"),
            param("fieldManager"),
            param("fieldValidation"),
        ];
        let mut patch_params = write.clone();
        patch_params.push(param("force"));
        paths.insert(base.clone(), json!({"get": op("list", vec![param("labelSelector"), param("fieldSelector")]), "post": op("post", write.clone())}));
        paths.insert(format!("{base}/{{name}}"), json!({
            "get": op("get", vec![]), "put": op("put", write.clone()), "patch": op("patch", patch_params.clone()), "delete": op("delete", vec![param("dryRun")]),
        }));
        if r.status {
            paths.insert(format!("{base}/{{name}}/status"), json!({"get": op("get", vec![]), "put": op("put", write.clone()), "patch": op("patch", patch_params)}));
        }
        let mut schema = crds
            .iter()
            .find(|crd| {
                crd["spec"]["group"] == r.group.as_str()
                    && crd["spec"]["names"]["plural"] == r.plural.as_str()
            })
            .and_then(|crd| resources::crd_schema(crd, &r.version))
            .unwrap_or_else(|| json!({"type": "object"}));
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schema["x-kubernetes-preserve-unknown-fields"] = json!(true);
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "metadata".into(),
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        }
        schemas.insert(schema_name(r), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Content type of aggregated discovery v2 responses.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the Accept header prefers aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        first.contains("as=APIGroupDiscoveryList")
            && first.contains("v=v2")
            && !first.contains("v=v2beta1")
    })
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2`) for `/api` (core) or `/apis`.
pub fn aggregated(c: &Cluster, core: bool) -> Value {
    let rs = c.lock().resources.clone();
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    for r in rs.iter().filter(|r| r.group.is_empty() == core) {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let mut subs = Vec::new();
        if r.status {
            subs.push(json!({"subresource": "status", "responseKind": gvk, "verbs": ["get", "patch", "update"]}));
        }
        if resources::has_scale(r) {
            subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
        }
        let verbs = resources::api_resource(r)
            .first()
            .map(|a| a["verbs"].clone())
            .unwrap_or_else(|| json!([]));
        let mut entry = json!({
            "resource": r.plural, "responseKind": gvk, "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": r.singular, "verbs": verbs, "shortNames": r.short_names, "subresources": subs,
        });
        let categories = resources::categories(r);
        if !categories.is_empty() {
            entry["categories"] = json!(categories);
        }
        groups
            .entry(r.group.clone())
            .or_default()
            .entry(r.version.clone())
            .or_default()
            .push(entry);
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .into_iter()
                .map(|(v, res)| json!({"version": v, "resources": res, "freshness": "Current"}))
                .collect();
            json!({"metadata": {"name": g}, "versions": vs})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
