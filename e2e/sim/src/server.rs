//! HTTP front: routing, request decoding, watch streams, fault injection.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::controllers::Timing;
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::fields::Scope;
use crate::patch;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Cluster, Faults, WriteOpts, res_name};

/// Largest accepted request body, as the real API server (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How often watches with `allowWatchBookmarks` get a BOOKMARK.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// Shared simulator state.
pub struct Sim {
    /// Clusters by name.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Listen address.
    pub addr: std::net::SocketAddr,
    /// Controller timing.
    pub timing: Timing,
}

/// The connection is refused (cluster down).
#[derive(Debug, thiserror::Error)]
#[error("cluster is down")]
pub struct Down;

fn json_resp(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn err_resp(e: &ApiError) -> Response<Body> {
    json_resp(e.code, &e.to_status())
}

fn result_resp(r: ApiResult<Value>, ok: u16) -> Response<Body> {
    match r {
        Ok(v) => json_resp(ok, &v),
        Err(e) => err_resp(&e),
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(h) = hex {
                    out.push(h);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Top-level request handler.
///
/// # Errors
/// [`Down`] when the addressed cluster is down: the connection is dropped.
pub async fn handle(
    sim: Arc<Sim>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Down> {
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/admin/") {
        return Ok(admin(
            &sim,
            req.method().clone(),
            rest,
            req.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default(),
        )
        .await);
    }
    let Some(rest) = path.strip_prefix("/clusters/") else {
        if path == "/healthz" || path == "/readyz" {
            return Ok(Response::new(Body::from("ok")));
        }
        return Ok(err_resp(&not_found_path()));
    };
    let (name, mut rest) = rest.split_once('/').map_or((rest, ""), |(a, b)| (a, b));
    let Some(cluster) = sim.clusters.get(name).cloned() else {
        return Ok(err_resp(&not_found_path()));
    };
    let prefix = format!("/clusters/{name}");
    // Tolerate clients that prepend the prefix to server-relative URLs again.
    let doubled = format!("clusters/{name}/");
    if let Some(r) = rest.strip_prefix(doubled.as_str()) {
        rest = r;
    }
    let rest = rest.to_string();
    cluster
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        cluster
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let faults = cluster.faults.lock().map(|f| f.clone()).unwrap_or_default();
    if faults.down {
        return Err(Down);
    }
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        let code = if matches!(faults.error_code, 429 | 500 | 503) {
            faults.error_code
        } else {
            500
        };
        let (reason, msg) = match code {
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            _ => (
                "InternalError",
                "an error on the server (\"injected fault\") has prevented the request from succeeding",
            ),
        };
        let mut r = err_resp(
            &ApiError::new(code, reason, msg).with_details(json!({"retryAfterSeconds": 1})),
        );
        if code == 429 || code == 503 {
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        return Ok(r);
    }
    let method = req.method().clone();
    let query = parse_query(req.uri().query());
    let headers = req.headers().clone();
    let too_large = || {
        err_resp(&ApiError::new(
            413,
            "RequestEntityTooLarge",
            "the server has rejected the request because the request body is too large (limit is 3 MiB)",
        ))
    };
    // Read the whole body (discarding past the limit) so the client sees the
    // 413 rather than a connection reset mid-upload.
    let mut incoming = req.into_body();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if seen > 16 * MAX_BODY {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Ok(too_large());
    }
    let body = buf.freeze();
    let hold = faults.hold_after_requests.is_some_and(|n| {
        cluster
            .passed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            >= n
    });
    if hold && !faults.hold_processed {
        wait_for_release(&cluster).await?;
    }
    let response = api(
        &sim, &cluster, &prefix, &method, &rest, &query, &headers, body,
    );
    if hold && faults.hold_processed {
        wait_for_release(&cluster).await?;
    }
    Ok(response)
}

/// Counts a held request while it waits for the faults to be set again.
struct Held<'a>(&'a Cluster);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0
            .held
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Holds a request until the faults are set again; [`Down`] when the new
/// setting is `down`.
async fn wait_for_release(cluster: &Cluster) -> Result<(), Down> {
    let mut epoch = cluster.fault_epoch.subscribe();
    let held = Held(cluster);
    cluster
        .held
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = epoch.changed().await;
    drop(held);
    if cluster.faults.lock().map(|f| f.down).unwrap_or(false) {
        return Err(Down);
    }
    Ok(())
}

async fn admin(sim: &Sim, method: Method, rest: &str, body: Bytes) -> Response<Body> {
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method, parts.as_slice()) {
        (Method::GET, ["clusters"]) => {
            json_resp(200, &json!(sim.clusters.keys().collect::<Vec<_>>()))
        }
        (Method::GET, ["clusters", name, "stats"]) => match sim.clusters.get(*name) {
            Some(c) => json_resp(200, &stats(c)),
            None => err_resp(&ApiError::not_found("clusters", name)),
        },
        (Method::POST, ["clusters", name, action]) => {
            let Some(c) = sim.clusters.get(*name) else {
                return err_resp(&ApiError::not_found("clusters", name));
            };
            let v: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return err_resp(&ApiError::bad_request(e.to_string())),
                }
            };
            match *action {
                "faults" => match serde_json::from_value::<Faults>(v) {
                    Ok(f) => {
                        set_faults(c, f);
                        json_resp(200, &json!({"ok": true}))
                    }
                    Err(e) => err_resp(&ApiError::bad_request(e.to_string())),
                },
                "restart" => {
                    restart(c, v["keep_state"].as_bool().unwrap_or(true));
                    json_resp(200, &json!({"ok": true}))
                }
                "compact" => {
                    c.compact();
                    json_resp(200, &json!({"ok": true}))
                }
                _ => err_resp(&not_found_path()),
            }
        }
        _ => err_resp(&not_found_path()),
    }
}

/// Request counters and object count of a cluster.
pub fn stats(c: &Cluster) -> Value {
    let st = c.lock();
    json!({
        "requests": c.requests.load(std::sync::atomic::Ordering::Relaxed),
        "writes": c.writes.load(std::sync::atomic::Ordering::Relaxed),
        "held": c.held.load(std::sync::atomic::Ordering::Relaxed),
        "objects": st.objects.len(),
        "resourceVersion": st.rv,
    })
}

/// Applies fault settings; `drop_watches` ends open watches once.
pub fn set_faults(c: &Cluster, mut f: Faults) {
    if f.drop_watches {
        c.watch_epoch.send_modify(|e| *e += 1);
        f.drop_watches = false;
    }
    if let Ok(mut g) = c.faults.lock() {
        *g = f;
    }
    c.passed.store(0, std::sync::atomic::Ordering::Relaxed);
    // Held requests go on under the new setting.
    c.fault_epoch.send_modify(|e| *e += 1);
}

/// Simulates an API server restart: watches end; state kept or wiped.
pub fn restart(c: &Cluster, keep_state: bool) {
    let objects = if keep_state {
        c.lock().objects.clone()
    } else {
        crate::initial_objects()
    };
    c.reset(objects, 0);
}

fn decode(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf")
        && let Some(v) = crate::protobuf::decode(body)
    {
        return Ok(v);
    }
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct})"
            ),
        ));
    }
    let bad = |e: String| ApiError::bad_request(format!("error decoding request body: {e}"));
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) if ct.contains("yaml") => {
            let s = std::str::from_utf8(body).map_err(|e| bad(e.to_string()))?;
            serde_saphyr::from_str::<Value>(s).map_err(|ye| bad(format!("{ye} (json: {e})")))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

fn manager(query: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager") {
        return m.clone();
    }
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

#[allow(clippy::too_many_arguments)]
fn api(
    sim: &Sim,
    c: &Arc<Cluster>,
    prefix: &str,
    method: &Method,
    rest: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let get = *method == Method::GET;
    match segs.as_slice() {
        [] if get => json_resp(
            200,
            &json!({"paths": ["/api", "/api/v1", "/apis", "/openapi/v3", "/version"]}),
        ),
        ["version"] if get => json_resp(200, &discovery::version()),
        ["healthz" | "readyz" | "livez"] => Response::new(Body::from("ok")),
        ["api" | "apis"] if get && discovery::wants_aggregated(accept(headers)) => {
            let mut r = json_resp(200, &discovery::aggregated(c, segs[0] == "api"));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(discovery::AGGREGATED_V2),
            );
            r
        }
        ["api"] if get => json_resp(200, &discovery::api_versions(&sim.addr.to_string())),
        ["apis"] if get => json_resp(200, &discovery::api_group_list(c)),
        ["openapi", "v3"] if get => json_resp(200, &discovery::openapi_index(c, prefix)),
        ["openapi", "v3", gv @ ..] if get => match discovery::openapi_gv(c, &gv.join("/")) {
            Some(v) => json_resp(200, &v),
            None => err_resp(&not_found_path()),
        },
        ["api", v] if get => discovery::resource_list(c, "", v)
            .map_or_else(|| err_resp(&not_found_path()), |v| json_resp(200, &v)),
        ["apis", g] if get => discovery::api_group(c, g)
            .map_or_else(|| err_resp(&not_found_path()), |v| json_resp(200, &v)),
        ["apis", g, v] if get => discovery::resource_list(c, g, v)
            .map_or_else(|| err_resp(&not_found_path()), |v| json_resp(200, &v)),
        ["api", v, rest @ ..] => resource(c, "", v, rest, method, query, headers, body),
        ["apis", g, v, rest @ ..] => resource(c, g, v, rest, method, query, headers, body),
        _ => err_resp(&not_found_path()),
    }
}

#[allow(clippy::too_many_arguments)]
fn resource(
    c: &Arc<Cluster>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let (ns, rest) = match rest {
        ["namespaces", ns, r, more @ ..]
            if !(more.is_empty() && matches!(*r, "status" | "finalize")) =>
        {
            (Some(*ns), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return err_resp(&not_found_path()),
    };
    let Some(rd) = c.resource(group, version, plural) else {
        return err_resp(&not_found_path());
    };
    if crate::resources::is_review(&rd) {
        // No authorization in the simulator: everything is allowed.
        if *method != Method::POST || name.is_some() {
            return err_resp(&ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
        // kubectl sends reviews as protobuf, which is not decoded: answer with a fresh review.
        let mut review = decode(headers, &body)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({"apiVersion": rd.api_version(), "kind": rd.kind, "metadata": {}, "spec": {}}));
        review["status"] = if rd.kind == "SelfSubjectAccessReview" {
            json!({"allowed": true, "reason": "flotilla-sim allows everything"})
        } else {
            json!({"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                   "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": false})
        };
        return json_resp(201, &review);
    }
    if ns.is_some() && !rd.namespaced {
        return err_resp(&not_found_path());
    }
    if ns.is_none() && rd.namespaced && name.is_some() {
        return err_resp(&not_found_path());
    }
    let scope = match sub {
        None => Scope::Main,
        Some("status") if rd.status => Scope::Status,
        Some("finalize") if rd.kind == "Namespace" => Scope::Main,
        Some("scale") if crate::resources::has_scale(&rd) => Scope::Main,
        Some(_) => return err_resp(&not_found_path()),
    };
    let ns = ns.unwrap_or("");
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return err_resp(&ApiError::bad_request(format!(
                "unsupported dry run value: {other:?}, supported values: \"All\""
            )));
        }
    };
    let opts = WriteOpts {
        dry_run,
        manager: manager(query, headers),
        force: query.get("force").is_some_and(|f| f == "true"),
        strict: query.get("fieldValidation").is_some_and(|f| f == "Strict"),
    };
    let m = method.clone();
    match (m, name) {
        (Method::GET, None) => {
            let labels =
                match LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str)) {
                    Ok(s) => s,
                    Err(e) => return err_resp(&e),
                };
            let fields =
                match FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str)) {
                    Ok(s) => s,
                    Err(e) => return err_resp(&e),
                };
            let watch = query.get("watch").is_some_and(|w| w == "1" || w == "true");
            if watch {
                let table = crate::table::wants_table(accept(headers));
                return watch_resp(c, &rd, ns, labels, fields, query, table);
            }
            let (items, rv) = c.list(&rd, ns, &|o| labels.matches(o) && fields.matches(o));
            if crate::table::wants_table(accept(headers)) {
                return json_resp(200, &crate::table::table(&rd, &items, Some(rv)));
            }
            json_resp(
                200,
                &json!({"kind": format!("{}List", rd.kind), "apiVersion": rd.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            )
        }
        (Method::POST, None) => match decode(headers, &body) {
            Ok(b) => result_resp(
                c.create(&rd, ns, b, &opts, None),
                if dry_run { 200 } else { 201 },
            ),
            Err(e) => err_resp(&e),
        },
        (Method::DELETE, None) => {
            let labels =
                match LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str)) {
                    Ok(s) => s,
                    Err(e) => return err_resp(&e),
                };
            let (items, _) = c.list(&rd, ns, &|o| labels.matches(o));
            let opts_body = if body.is_empty() {
                Value::Null
            } else {
                decode(headers, &body).unwrap_or(Value::Null)
            };
            let mut out = Vec::new();
            for it in items {
                let n = it["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ins = it["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(ns)
                    .to_string();
                if let Ok(v) = c.delete(&rd, &ins, &n, &opts, &opts_body) {
                    out.push(v);
                }
            }
            json_resp(
                200,
                &json!({"kind": format!("{}List", rd.kind), "apiVersion": rd.api_version(), "metadata": {}, "items": out}),
            )
        }
        (Method::GET, Some(n)) if sub.is_none() && crate::table::wants_table(accept(headers)) => {
            match c.get(&rd, ns, n) {
                Ok(o) => json_resp(200, &crate::table::table(&rd, &[o], None)),
                Err(e) => err_resp(&e),
            }
        }
        (Method::GET, Some(n)) => result_resp(c.get(&rd, ns, n), 200),
        (Method::PUT, Some(n)) => match decode(headers, &body) {
            Ok(b) => result_resp(c.update(&rd, ns, n, b, &opts, scope), 200),
            Err(e) => err_resp(&e),
        },
        (m, Some(n)) if sub == Some("scale") => scale(c, &rd, ns, n, &m, headers, &body, &opts),
        (Method::PATCH, Some(n)) => patch_req(c, &rd, ns, n, headers, &body, &opts, scope, query),
        (Method::DELETE, Some(n)) => {
            let mut opts_body = if body.is_empty() {
                json!({})
            } else {
                match decode(headers, &body) {
                    Ok(v) => v,
                    Err(e) => return err_resp(&e),
                }
            };
            if let Some(p) = query.get("propagationPolicy") {
                opts_body["propagationPolicy"] = json!(p);
            }
            if opts_body["dryRun"]
                .as_array()
                .is_some_and(|d| d.contains(&json!("All")))
            {
                let o = WriteOpts {
                    dry_run: true,
                    ..opts.clone()
                };
                return result_resp(c.delete(&rd, ns, n, &o, &opts_body), 200);
            }
            match c.delete(&rd, ns, n, &opts, &opts_body) {
                // Still there (finalizers, namespace termination): 202 Accepted.
                Ok(o)
                    if o["metadata"]["deletionTimestamp"].is_string()
                        && c.get(&rd, ns, n).is_ok() =>
                {
                    json_resp(202, &o)
                }
                r => result_resp(r, 200),
            }
        }
        _ => err_resp(&ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({})",
                res_name(&rd)
            ),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn patch_req(
    c: &Cluster,
    rd: &ResourceDef,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    opts: &WriteOpts,
    scope: Scope,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let p = match decode(&with_yaml(headers), body) {
        Ok(p) => p,
        Err(e) => return err_resp(&e),
    };
    let kind = rd.kind.clone();
    let r = match ct.as_str() {
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            // Apply needs an explicit field manager; the User-Agent fallback does not count.
            let opts = WriteOpts {
                manager: query.get("fieldManager").cloned().unwrap_or_default(),
                ..opts.clone()
            };
            let existed = c.get(rd, ns, name).is_ok();
            let r = c.apply(rd, ns, name, p, &opts, scope);
            if !existed && !opts.dry_run && r.is_ok() {
                return result_resp(r, 201);
            }
            r
        }
        "application/merge-patch+json" => {
            if !p.is_object() {
                return err_resp(&ApiError::bad_request(
                    "json: cannot unmarshal into Go value of type map[string]interface {}",
                ));
            }
            c.patch(rd, ns, name, opts, scope, &|o| {
                patch::merge_patch(o, &p);
                Ok(())
            })
        }
        "application/json-patch+json" => c.patch(rd, ns, name, opts, scope, &|o| {
            patch::json_patch(o, &p).map_err(|e| ApiError::new(422, "Invalid", e.0))
        }),
        "application/strategic-merge-patch+json" => {
            if rd.group.contains('.') && !rd.group.ends_with(".k8s.io") {
                return err_resp(&ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources",
                ));
            }
            if !p.is_object() {
                return err_resp(&ApiError::bad_request(
                    "json: cannot unmarshal into Go value of type map[string]interface {}",
                ));
            }
            c.patch(rd, ns, name, opts, scope, &|o| {
                patch::strategic_merge(o, &p, &kind, &mut Vec::new());
                Ok(())
            })
        }
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
            ),
        )),
    };
    result_resp(r, 200)
}

fn scale_of(o: &Value) -> Value {
    let selector = o["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let md = &o["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": md["name"], "namespace": md["namespace"], "uid": md["uid"],
            "resourceVersion": md["resourceVersion"], "creationTimestamp": md["creationTimestamp"]},
        "spec": {"replicas": o["spec"]["replicas"]},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// The `/scale` subresource (autoscaling/v1 Scale) of workloads.
#[allow(clippy::too_many_arguments)]
fn scale(
    c: &Cluster,
    rd: &ResourceDef,
    ns: &str,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    opts: &WriteOpts,
) -> Response<Body> {
    let current = match c.get(rd, ns, name) {
        Ok(o) => scale_of(&o),
        Err(e) => return err_resp(&e),
    };
    let mut wanted = current.clone();
    match *method {
        Method::GET => return json_resp(200, &current),
        Method::PUT | Method::PATCH => {
            let p = match decode(&with_yaml(headers), body) {
                Ok(p) => p,
                Err(e) => return err_resp(&e),
            };
            let ct = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if *method == Method::PUT {
                wanted = p;
            } else if ct.starts_with("application/json-patch+json") {
                if let Err(e) = patch::json_patch(&mut wanted, &p) {
                    return err_resp(&ApiError::new(422, "Invalid", e.0));
                }
            } else {
                patch::merge_patch(&mut wanted, &p);
            }
        }
        _ => {
            return err_resp(&ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    }
    let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
        return err_resp(&ApiError::invalid(
            "Scale",
            name,
            &[(
                "spec.replicas",
                "Invalid value: must be greater than or equal to 0".into(),
            )],
        ));
    };
    let r = c.patch(rd, ns, name, opts, Scope::Main, &|o| {
        o["spec"]["replicas"] = json!(replicas);
        Ok(())
    });
    result_resp(r.map(|o| scale_of(&o)), 200)
}

fn accept(headers: &HeaderMap) -> &str {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn with_yaml(headers: &HeaderMap) -> HeaderMap {
    let mut h = headers.clone();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/yaml"),
    );
    h
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": ty, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch_resp(
    c: &Arc<Cluster>,
    rd: &ResourceDef,
    ns: &str,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &HashMap<String, String>,
    as_table: bool,
) -> Response<Body> {
    let gr = rd.group_resource();
    let api_version = rd.api_version();
    let matches = {
        let gr = gr.clone();
        let ns = ns.to_string();
        move |egr: &str, ens: &str, o: &Value| {
            egr == gr && (ns.is_empty() || ens == ns) && labels.matches(o) && fields.matches(o)
        }
    };
    let rv: Option<u64> = query
        .get("resourceVersion")
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok());
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut initial: Vec<Bytes> = Vec::new();
    let av = api_version.clone();
    let table_rd = as_table.then(|| rd.clone());
    let with_v = move |o: &Value| {
        let mut o = o.clone();
        o["apiVersion"] = json!(av);
        if let Some(rd) = &table_rd {
            return crate::table::table(rd, &[o], None);
        }
        o
    };
    let (mut sub, start_rv, expired) = {
        let st = c.lock();
        let sub = c.tx.subscribe();
        match rv {
            Some(r) if r != 0 && !send_initial => {
                if r < st.floor {
                    (sub, st.rv, true)
                } else {
                    for ev in st.history.iter().filter(|e| e.rv > r) {
                        if let Some(ty) = ev.seen_as(&|o| matches(&ev.gr, &ev.ns, o)) {
                            initial.push(event_line(ty, &with_v(&ev.obj)));
                        }
                    }
                    (sub, st.rv, false)
                }
            }
            _ => {
                for ((kgr, kns, _), o) in &st.objects {
                    if matches(kgr, kns, o) {
                        initial.push(event_line("ADDED", &with_v(o)));
                    }
                }
                if send_initial {
                    let bm = json!({"kind": rd.kind, "apiVersion": api_version, "metadata": {"resourceVersion": st.rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                    initial.push(event_line("BOOKMARK", &bm));
                }
                (sub, st.rv, false)
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let mut epoch = c.watch_epoch.subscribe();
    let kind = rd.kind.clone();
    tokio::spawn(async move {
        if expired {
            let status = ApiError::new(
                410,
                "Expired",
                format!(
                    "too old resource version: {} ({})",
                    rv.unwrap_or(0),
                    start_rv
                ),
            )
            .to_status();
            let _ = tx.send(Ok(event_line("ERROR", &status))).await;
            return;
        }
        for line in initial {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let mut last = start_rv;
        let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
        let mut bm = tokio::time::interval(BOOKMARK_EVERY);
        bm.tick().await;
        loop {
            tokio::select! {
                r = sub.recv() => match r {
                    Ok(ev) => {
                        if ev.rv <= last {
                            continue;
                        }
                        last = ev.rv;
                        if let Some(ty) = ev.seen_as(&|o| matches(&ev.gr, &ev.ns, o))
                            && tx.send(Ok(event_line(ty, &with_v(&ev.obj)))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = bm.tick(), if bookmarks => {
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(Ok(event_line("BOOKMARK", &bm))).await.is_err() {
                        return;
                    }
                }
                _ = epoch.changed() => return,
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
            }
        }
    });
    let mut r = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
