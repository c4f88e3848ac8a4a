//! The web UI: server-rendered HTML over the same API functions the CLI
//! calls, with a small embedded script for live updates.
//!
//! The UI is a reader of the store and the API layer: every page is built
//! from `HubApi` answers (or the same conversion the API uses), and every
//! button calls a `HubApi` handler with the logged-in token's identity, so
//! the API's own checks (read-only tokens, validation) apply unchanged.
//! The UI writes nothing itself.
//!
//! Security: a session cookie (HttpOnly, Secure, SameSite=Strict, 8 h)
//! names an in-memory session holding the API token, re-checked by the
//! API's bearer check on every request; every POST must carry the
//! session's CSRF token and, when the browser sends one, a same-host
//! `Origin`; read-only tokens get no forms and their POSTs are refused
//! with 403; every response carries `Content-Security-Policy:
//! default-src 'self'` (no inline script or style).
//!
//! SSO ([`crate::sso`]): `/auth/login` sends the browser to the issuer
//! (PKCE, state bound to the browser by a Lax cookie, nonce);
//! `/auth/callback` verifies the ID token and starts a session holding a
//! hub token made for the user, ending no later than the ID token.

pub mod html;
pub mod pages;
pub mod serve;
pub mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_proto as pb;
use pb::hub_api_server::HubApi as _;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt as _;
use tonic::Status;

use crate::api::hub_api::HubApiService;
use crate::api::{Caller, HubContext};
use crate::store::ChangeKind;
use html::{Viewer, layout};
use pages::{Cell, Column, Grid, OverviewQuery, PAGE_SIZE};
use session::Sessions;

const CSS: &str = include_str!("static/ui.css");
const JS: &str = include_str!("static/ui.js");
/// The policy on every response: nothing but this origin, no inline
/// script or style, no framing.
pub const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";
/// Shortest time between two renders of one open page: a burst of writes
/// (a fleet reporting) costs each viewer at most one render per interval.
const MIN_RENDER_INTERVAL: Duration = Duration::from_secs(1);
/// How often an idle live-update stream checks that its session still
/// holds (logout, token revoked), without rendering anything.
const SESSION_CHECK: Duration = Duration::from_secs(30);

/// What the UI's handlers share.
#[derive(Clone, Debug)]
pub struct UiState {
    ctx: HubContext,
    api: HubApiService,
    sessions: Arc<Sessions>,
    /// Pages rendered by live-update streams since start.
    live_renders: Arc<AtomicU64>,
    /// SSO (`/auth/login`, `/auth/callback`), when configured.
    sso: Option<Arc<crate::sso::Oidc>>,
}

impl UiState {
    pub fn new(ctx: HubContext) -> Self {
        Self {
            api: HubApiService::new(ctx.clone()),
            ctx,
            sessions: Arc::default(),
            live_renders: Arc::default(),
            sso: None,
        }
    }

    /// The same UI with SSO logins through `oidc`.
    #[must_use]
    pub fn with_sso(mut self, oidc: Option<Arc<crate::sso::Oidc>>) -> Self {
        self.sso = oidc;
        self
    }

    /// How many times the live-update streams rendered a page to see
    /// whether it changed: what open, idle pages cost.
    pub fn live_renders(&self) -> u64 {
        self.live_renders.load(Ordering::Relaxed)
    }
}

/// The UI's routes.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/static/ui.css", get(css))
        .route("/static/ui.js", get(js))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/auth/login", get(sso_login))
        .route("/auth/callback", get(sso_callback))
        .route("/events", get(events))
        .route("/apps/{name}/sync", post(sync))
        .route("/apps/{name}/refresh", post(refresh))
        .route("/apps/{name}/rollback", post(rollback))
        .route("/appsets/{name}/confirm", post(confirm))
        .route("/clusters/{name}/labels", post(labels))
        .fallback(get(page))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// The identity of the API token `secret`, by the API's own bearer check.
fn check_secret(ctx: &HubContext, secret: &str) -> Result<Caller, Status> {
    let value = format!("Bearer {}", secret.trim())
        .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
        .map_err(|_| Status::unauthenticated("invalid token"))?;
    let mut req = tonic::Request::new(());
    req.metadata_mut().insert("authorization", value);
    crate::api::check_bearer(&ctx.store, &req)
}

/// A logged-in request: its session id, the session and the caller.
struct Authed {
    id: String,
    viewer: Viewer,
    caller: Caller,
}

fn authenticate(state: &UiState, headers: &HeaderMap) -> Option<Authed> {
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::cookie_value)?
        .to_owned();
    let sess = state.sessions.get(&id)?;
    let caller = check_secret(&state.ctx, &sess.secret).ok()?;
    Some(Authed {
        id,
        viewer: Viewer {
            token_name: caller.token_name.clone(),
            can_write: !caller.read_only,
            csrf: sess.csrf,
        },
        caller,
    })
}

/// A `HubApi` request carrying `caller`, as the bearer interceptor makes.
fn api_request<T>(caller: &Caller, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.extensions_mut().insert(caller.clone());
    req
}

fn status_code(s: &Status) -> StatusCode {
    match s.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::AlreadyExists
        | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_page(viewer: Option<&Viewer>, code: StatusCode, message: &str) -> Response {
    let main = format!(
        "<h1>{}</h1><p class=\"error\" id=\"error\">{}</p>",
        code.as_u16(),
        html::esc(message)
    );
    html_response(code, layout("Error", viewer, None, &main))
}

fn status_page(viewer: &Viewer, s: &Status) -> Response {
    error_page(Some(viewer), status_code(s), s.message())
}

/// A short digest of a page's content, for the live updates.
fn fingerprint(main: &str) -> String {
    hex::encode(&Sha256::digest(main.as_bytes())[..8])
}

/// Decodes a percent-encoded path segment.
fn path_segment(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The overview's data for query `q`: every application (matching the
/// filter) on the clusters it targets (matching the labels), through the
/// API's own status conversion, one column per ApplicationSet or
/// application of its own; only the page's rows are kept.
///
/// # Errors
/// The store cannot be read.
pub fn grid(
    api: &HubApiService,
    ctx: &HubContext,
    q: &OverviewQuery,
    caller: &Caller,
) -> Result<Grid, Status> {
    let labels = q.labels().unwrap_or_default();
    let mut clusters = ctx.store.clusters_shared()?;
    let total_clusters = clusters.len();
    clusters.retain(|c| {
        labels
            .iter()
            .all(|(k, v)| c.labels.get(k).is_some_and(|l| l == v))
    });
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let by_name: HashMap<&str, (usize, &Arc<crate::store::ClusterRecord>)> = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), (i, c)))
        .collect();
    let mut apps = ctx.store.apps()?;
    // RBAC: only the applications the caller may get.
    let view = crate::api::auth::View::of_caller(&ctx.store, caller)?;
    apps.retain(|a| view.can_get("applications", &crate::api::auth::app_object(&a.app)));
    let column_of = |a: &crate::store::AppRecord| match a.origin.strip_prefix("appset:") {
        Some(set) => Column {
            name: set.to_owned(),
            set: true,
        },
        None => Column {
            name: a.app.metadata.name.clone(),
            set: false,
        },
    };
    apps.retain(|a| {
        q.app.is_empty()
            || a.app.metadata.name.contains(q.app.as_str())
            || column_of(a).name.contains(q.app.as_str())
    });
    // As Argo CD's project filter: an application naming no project is in
    // `default`.
    apps.retain(|a| {
        let project = match a.app.spec.project.as_str() {
            "" => "default",
            p => p,
        };
        q.project.is_empty() || project == q.project
    });
    let mut columns: Vec<Column> = apps.iter().map(column_of).collect();
    columns.sort();
    columns.dedup();
    let column_index: HashMap<&Column, usize> =
        columns.iter().enumerate().map(|(i, c)| (c, i)).collect();
    let mut matrix = vec![vec![Cell::NotTargeted; columns.len()]; clusters.len()];
    let mut applications = 0;
    for rec in &apps {
        let Some(&j) = column_index.get(&column_of(rec)) else {
            continue;
        };
        // Only the clusters the application names, from the store's
        // targeting index, not a scan of the inventory per application.
        let dest = crate::store::Destination::of(&rec.app);
        let targeted: Vec<Arc<crate::store::ClusterRecord>> = ctx
            .store
            .clusters_targeted(&dest)?
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).map(|(_, c)| Arc::clone(c)))
            .collect();
        if targeted.is_empty() {
            continue;
        }
        applications += 1;
        for row in api.cluster_rows(rec, &targeted)? {
            if let Some(&(i, _)) = by_name.get(row.cluster.as_str()) {
                let app = rec.app.metadata.name.clone();
                let cell = match row.status {
                    Some(st) => Cell::Status {
                        sync: st.sync,
                        health: st.health,
                        app,
                    },
                    None => Cell::NoStatus { app },
                };
                let old = std::mem::replace(&mut matrix[i][j], Cell::NotTargeted);
                matrix[i][j] = old.worst(cell);
            }
        }
    }
    let mut rows: Vec<(String, bool, Vec<Cell>)> = clusters
        .iter()
        .zip(matrix)
        .filter(|(_, cells)| q.status.is_empty() || cells.iter().any(|c| c.matches(&q.status)))
        .map(|(c, cells)| (c.name.clone(), ctx.fleet.is_connected(&c.name), cells))
        .collect();
    let matching_clusters = rows.len();
    let counts = pages::count_cells(rows.iter().flat_map(|r| r.2.iter()));
    let start = q.page.saturating_mul(PAGE_SIZE).min(rows.len());
    let end = (start + PAGE_SIZE).min(rows.len());
    rows.truncate(end);
    rows.drain(..start);
    Ok(Grid {
        columns,
        rows,
        matching_clusters,
        total_clusters,
        applications,
        counts,
    })
}

/// The `<main>` of the page at `path`/`query` and its title.
async fn render(
    state: &UiState,
    a: &Authed,
    path: &str,
    query: &str,
) -> Result<(String, String), Status> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let seg = |i: usize| {
        segs.get(i)
            .and_then(|s| path_segment(s))
            .ok_or_else(|| Status::invalid_argument(format!("malformed path {path:?}")))
    };
    let api = &state.api;
    match segs.as_slice() {
        [""] => {
            let uri: Uri = format!("/?{query}")
                .parse()
                .map_err(|e| Status::invalid_argument(format!("overview query: {e}")))?;
            let Query(q) = Query::<OverviewQuery>::try_from_uri(&uri)
                .map_err(|e| Status::invalid_argument(format!("overview query: {e}")))?;
            let error = q.labels().err().or_else(|| q.check_status().err());
            let grid = if error.is_some() {
                Grid::default()
            } else {
                grid(api, &state.ctx, &q, &a.caller)?
            };
            Ok((
                "Overview".into(),
                pages::overview(&grid, &q, error.as_deref()),
            ))
        }
        ["apps", _] => {
            let name = seg(1)?;
            let app = api
                .get_application(api_request(
                    &a.caller,
                    pb::GetApplicationRequest { name: name.clone() },
                ))
                .await?
                .into_inner();
            let history = api
                .get_application_history(api_request(
                    &a.caller,
                    pb::GetApplicationHistoryRequest { name: name.clone() },
                ))
                .await?
                .into_inner();
            Ok((name, pages::application(&app, &history, &a.viewer)))
        }
        ["apps", _, "diff"] => {
            let name = seg(1)?;
            let d = api
                .diff_application(api_request(
                    &a.caller,
                    pb::DiffApplicationRequest {
                        name: name.clone(),
                        cluster: String::new(),
                    },
                ))
                .await?
                .into_inner();
            Ok((format!("{name} diff"), pages::diff(&name, &d)))
        }
        ["clusters"] => {
            let mut list = api
                .list_clusters(api_request(&a.caller, pb::ListClustersRequest {}))
                .await?
                .into_inner()
                .clusters;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            let mut apps = HashMap::new();
            for c in &list {
                apps.insert(
                    c.name.clone(),
                    state.ctx.store.apps_targeting(&c.name)?.len(),
                );
            }
            Ok((
                "Clusters".into(),
                pages::clusters(&list, &apps, &a.viewer, crate::clock::now_ms()),
            ))
        }
        ["repos"] => {
            let list = api
                .list_repositories(api_request(&a.caller, pb::ListRepositoriesRequest {}))
                .await?
                .into_inner()
                .repositories;
            Ok(("Repositories".into(), pages::repositories(&list)))
        }
        ["appsets"] => {
            let list = api
                .list_application_sets(api_request(&a.caller, pb::ListApplicationSetsRequest {}))
                .await?
                .into_inner()
                .application_sets;
            Ok(("ApplicationSets".into(), pages::appsets(&list)))
        }
        ["appsets", _] => {
            let name = seg(1)?;
            let set = api
                .get_application_set(api_request(
                    &a.caller,
                    pb::GetApplicationSetRequest { name: name.clone() },
                ))
                .await?
                .into_inner();
            Ok((name, pages::appset(&set, &a.viewer)))
        }
        _ => Err(Status::not_found(format!("no page {path:?}"))),
    }
}

/// Pages whose content is worth watching live (the diff asks every agent,
/// so it is not polled).
fn is_live(path: &str) -> bool {
    !path.ends_with("/diff")
}

async fn page(State(state): State<UiState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(a) = authenticate(&state, &headers) else {
        return redirect("/login");
    };
    let query = uri.query().unwrap_or_default();
    match render(&state, &a, uri.path(), query).await {
        Ok((title, main)) => {
            let flash = state.sessions.take_flash(&a.id);
            let mut body = layout(&title, Some(&a.viewer), flash.as_deref(), &main);
            if is_live(uri.path()) {
                // Where the live updates start from: the page's content as
                // served.
                body = body.replacen(
                    "<main id=\"main\">",
                    &format!(
                        "<main id=\"main\" data-live=\"1\" data-fingerprint=\"{}\">",
                        fingerprint(&main)
                    ),
                    1,
                );
            }
            html_response(StatusCode::OK, body)
        }
        Err(s) => status_page(&a.viewer, &s),
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    path: String,
    #[serde(default)]
    query: String,
    #[serde(default)]
    fp: String,
}

/// The kinds of records the page at `path` shows: a write of another
/// kind cannot change it, so it is not rendered again.
fn shown_kinds(path: &str) -> &'static [ChangeKind] {
    use ChangeKind::{AppSets, Apps, Clusters, Repos, Statuses};
    match path.trim_matches('/').split('/').next().unwrap_or_default() {
        "" => &[Clusters, Apps, Statuses],
        "clusters" => &[Clusters, Apps],
        "repos" => &[Repos],
        "appsets" => &[AppSets, Apps, Statuses],
        _ => &[Apps, Statuses, Clusters],
    }
}

/// The fingerprint of the page `q` names as `a` sees it now.
async fn live_fingerprint(state: &UiState, a: &Authed, q: &EventsQuery) -> String {
    state.live_renders.fetch_add(1, Ordering::Relaxed);
    match render(state, a, &q.path, &q.query).await {
        Ok((_, main)) => fingerprint(&main),
        // A page that went away (deleted application) changed.
        Err(s) => format!("error-{}", s.code() as i32),
    }
}

/// Server-sent events for one open page: `ready` once, then a `changed`
/// event (data: the new fingerprint) whenever the page's content differs
/// from what the browser has; the script then fetches the page and swaps
/// its `<main>`. Driven by the store's change signal: the page is rendered
/// again only after a write of a kind it shows, at most once per
/// [`MIN_RENDER_INTERVAL`], and an event is sent only when the render
/// differs. An idle hub renders nothing. The stream ends when the session
/// does (checked on every render and every [`SESSION_CHECK`]) or the
/// browser goes away.
async fn events(
    State(state): State<UiState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    if authenticate(&state, &headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if !q.path.starts_with('/') || q.path.starts_with("//") || !is_live(&q.path) {
        return error_page(
            None,
            StatusCode::BAD_REQUEST,
            "events: path must be a page of this UI",
        );
    }
    // Subscribed before the first render: a write after it is seen.
    let changes = state.ctx.store.changes();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    tokio::spawn(watch_page(state, headers, q, changes, tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The loop behind one live-update stream (see [`events`]).
async fn watch_page(
    state: UiState,
    headers: HeaderMap,
    mut q: EventsQuery,
    mut changes: tokio::sync::watch::Receiver<crate::store::Changes>,
    tx: tokio::sync::mpsc::Sender<Event>,
) {
    let kinds = shown_kinds(&q.path);
    let mut seen = *changes.borrow_and_update();
    let Some(a) = authenticate(&state, &headers) else {
        return;
    };
    // The page may have changed between being served and this stream.
    let fp = live_fingerprint(&state, &a, &q).await;
    let first = if fp == q.fp {
        Event::default().event("ready").data("")
    } else {
        q.fp = fp.clone();
        Event::default().event("changed").data(fp)
    };
    if tx.send(first).await.is_err() {
        return;
    }
    let mut last_render = tokio::time::Instant::now();
    let mut session_check = tokio::time::interval(SESSION_CHECK);
    session_check.tick().await;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = session_check.tick() => {
                if authenticate(&state, &headers).is_none() {
                    return;
                }
                continue;
            }
        }
        if !seen.differs_in(&changes.borrow(), kinds) {
            continue;
        }
        // Let a burst of writes land before rendering.
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep_until(last_render + MIN_RENDER_INTERVAL) => {}
        }
        seen = *changes.borrow_and_update();
        let Some(a) = authenticate(&state, &headers) else {
            return;
        };
        let fp = live_fingerprint(&state, &a, &q).await;
        last_render = tokio::time::Instant::now();
        if fp != q.fp {
            q.fp = fp.clone();
            if tx
                .send(Event::default().event("changed").data(fp))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

async fn login_page(State(state): State<UiState>, headers: HeaderMap) -> Response {
    if authenticate(&state, &headers).is_some() {
        return redirect("/");
    }
    html_response(
        StatusCode::OK,
        layout("Log in", None, None, &login_form(&state, None)),
    )
}

/// The login page: the token form, and the SSO link when configured.
fn login_form(state: &UiState, error: Option<&str>) -> String {
    let mut h = pages::login(error);
    if state.sso.is_some() {
        h.push_str("<p><a href=\"/auth/login\" id=\"sso-login\">Log in with SSO</a></p>");
    }
    h
}

/// Starts an SSO login: to the issuer, with state, nonce and PKCE; the
/// state is also put in a cookie so that only this browser can finish it.
async fn sso_login(State(state): State<UiState>) -> Response {
    let Some(oidc) = state.sso.clone() else {
        return error_page(
            None,
            StatusCode::NOT_FOUND,
            "SSO is not configured on this hub (--oidc-issuer); log in with an API token",
        );
    };
    match oidc.begin().await {
        Ok(started) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, started.url),
                (
                    header::SET_COOKIE,
                    session::set_sso_state_cookie(&started.state),
                ),
            ],
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "sso login could not start");
            error_page(None, StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}

/// The issuer's redirect back: checks the state against this browser's
/// cookie, exchanges the code, verifies the ID token and starts a session
/// that ends no later than the token.
async fn sso_callback(
    State(state): State<UiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(oidc) = state.sso.clone() else {
        return error_page(
            None,
            StatusCode::NOT_FOUND,
            "SSO is not configured on this hub",
        );
    };
    let refused = |code: StatusCode, message: String| {
        tracing::info!(reason = %message, "sso login refused");
        let mut r = html_response(
            code,
            layout(
                "Log in",
                None,
                None,
                &login_form(&state, Some(&format!("sso login refused: {message}"))),
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&session::clear_sso_state_cookie()) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r
    };
    if let Some(e) = q.get("error") {
        let desc = q.get("error_description").cloned().unwrap_or_default();
        return refused(
            StatusCode::UNAUTHORIZED,
            format!("the identity provider answered {e} {desc}")
                .trim()
                .to_owned(),
        );
    }
    let (Some(code), Some(st)) = (q.get("code"), q.get("state")) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the callback carries no code and state".to_owned(),
        );
    };
    let cookie_state = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::named_cookie(h, session::SSO_STATE_COOKIE));
    if !cookie_state.is_some_and(|c| crate::secret::same(c.as_bytes(), st.as_bytes())) {
        return refused(
            StatusCode::UNAUTHORIZED,
            "the state does not match this browser's login (start again at /auth/login)".to_owned(),
        );
    }
    let identity = match oidc.finish(st, code).await {
        Ok(i) => i,
        Err(e) => return refused(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    let (secret, rec) = match crate::api::auth::sso_session_token(&state.ctx.store, &identity) {
        Ok(t) => t,
        Err(s) => return refused(StatusCode::INTERNAL_SERVER_ERROR, s.message().to_owned()),
    };
    let left_ms = identity.expires_ms - crate::clock::now_ms();
    let ttl = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
    let id = state.sessions.create_within(secret, ttl);
    tracing::info!(subject = %identity.subject, groups = ?identity.groups, token = %rec.name, "ui sso login");
    let mut r = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_owned()),
            (header::SET_COOKIE, session::set_cookie_within(&id, ttl)),
        ],
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_sso_state_cookie()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Whether a browser's `Origin` (when it sent one) is this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o == host)
}

async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !same_origin(&headers) {
        return error_page(None, StatusCode::FORBIDDEN, "cross-origin login refused");
    }
    let secret = form.get("token").map(|t| t.trim()).unwrap_or_default();
    match check_secret(&state.ctx, secret) {
        Ok(caller) => {
            let id = state.sessions.create(secret.to_owned());
            tracing::info!(token = %caller.token_name, read_only = caller.read_only, "ui login");
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_owned()),
                    (header::SET_COOKIE, session::set_cookie(&id)),
                ],
            )
                .into_response()
        }
        Err(s) => html_response(
            StatusCode::UNAUTHORIZED,
            layout(
                "Log in",
                None,
                None,
                &login_form(&state, Some(&format!("login refused: {}", s.message()))),
            ),
        ),
    }
}

/// Checks a POST: a live session, a same-host origin, the session's CSRF
/// token and, unless `read_only_ok`, a token that may write.
fn check_post(
    state: &UiState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    read_only_ok: bool,
) -> Result<Authed, Box<Response>> {
    let Some(a) = authenticate(state, headers) else {
        return Err(Box::new(error_page(
            None,
            StatusCode::FORBIDDEN,
            "not logged in (or the session expired)",
        )));
    };
    if !same_origin(headers) {
        return Err(Box::new(error_page(
            Some(&a.viewer),
            StatusCode::FORBIDDEN,
            "cross-origin request refused",
        )));
    }
    let given = form.get("csrf").map(String::as_str).unwrap_or_default();
    if given.is_empty() || !crate::secret::same(given.as_bytes(), a.viewer.csrf.as_bytes()) {
        return Err(Box::new(error_page(
            Some(&a.viewer),
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: reload the page and try again",
        )));
    }
    if !read_only_ok && !a.viewer.can_write {
        return Err(Box::new(error_page(
            Some(&a.viewer),
            StatusCode::FORBIDDEN,
            &format!("token {:?} is read-only", a.viewer.token_name),
        )));
    }
    Ok(a)
}

async fn logout(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let a = match check_post(&state, &headers, &form, true) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    state.sessions.remove(&a.id);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_owned()),
            (header::SET_COOKIE, session::clear_cookie()),
        ],
    )
        .into_response()
}

fn checked(form: &HashMap<String, String>, name: &str) -> bool {
    form.get(name).is_some_and(|v| v == "true" || v == "on")
}

fn app_path(name: &str) -> String {
    format!("/apps/{}", html::url_part(name))
}

async fn sync(
    State(state): State<UiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let a = match check_post(&state, &headers, &form, false) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let dry_run = checked(&form, "dry_run");
    let req = pb::SyncApplicationRequest {
        name: name.clone(),
        cluster: form.get("cluster").cloned().unwrap_or_default(),
        revision: String::new(),
        prune: checked(&form, "prune"),
        dry_run,
    };
    match state
        .api
        .sync_application(api_request(&a.caller, req))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            if dry_run {
                let main = pages::sync_result(&name, &r, true);
                return html_response(
                    StatusCode::OK,
                    layout("Dry run", Some(&a.viewer), None, &main),
                );
            }
            let mut msg = format!(
                "sync of {name} at {} sent to {}",
                r.revision,
                if r.clusters.is_empty() {
                    "no cluster".to_owned()
                } else {
                    r.clusters.join(", ")
                }
            );
            if !r.not_connected.is_empty() {
                msg.push_str(&format!("; not connected: {}", r.not_connected.join(", ")));
            }
            state.sessions.set_flash(&a.id, msg);
            redirect(&app_path(&name))
        }
        Err(s) => status_page(&a.viewer, &s),
    }
}

async fn refresh(
    State(state): State<UiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let a = match check_post(&state, &headers, &form, false) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let req = pb::RefreshRequest {
        app: name.clone(),
        hard: checked(&form, "hard"),
    };
    match state.api.refresh(api_request(&a.caller, req)).await {
        Ok(_) => {
            state
                .sessions
                .set_flash(&a.id, format!("refresh of {name} requested"));
            redirect(&app_path(&name))
        }
        Err(s) => status_page(&a.viewer, &s),
    }
}

async fn rollback(
    State(state): State<UiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let a = match check_post(&state, &headers, &form, false) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let Some(id) = form.get("id").and_then(|i| i.parse::<u64>().ok()) else {
        return error_page(
            Some(&a.viewer),
            StatusCode::BAD_REQUEST,
            &format!("rollback of {name}: the history id must be a number"),
        );
    };
    let req = pb::RollbackApplicationRequest {
        name: name.clone(),
        id,
        prune: checked(&form, "prune"),
        dry_run: false,
    };
    match state
        .api
        .rollback_application(api_request(&a.caller, req))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            state.sessions.set_flash(
                &a.id,
                format!("rollback of {name} to history {id} ({}) sent", r.revision),
            );
            redirect(&app_path(&name))
        }
        Err(s) => status_page(&a.viewer, &s),
    }
}

async fn confirm(
    State(state): State<UiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let a = match check_post(&state, &headers, &form, false) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if form.get("confirm").map(String::as_str) != Some("yes") {
        return error_page(
            Some(&a.viewer),
            StatusCode::BAD_REQUEST,
            &format!("ApplicationSet {name}: tick the box to confirm the deletions"),
        );
    }
    let req = pb::ConfirmApplicationSetRequest { name: name.clone() };
    match state
        .api
        .confirm_application_set(api_request(&a.caller, req))
        .await
    {
        Ok(_) => {
            state
                .sessions
                .set_flash(&a.id, format!("held deletions of {name} confirmed"));
            redirect(&format!("/appsets/{}", html::url_part(&name)))
        }
        Err(s) => status_page(&a.viewer, &s),
    }
}

async fn labels(
    State(state): State<UiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let a = match check_post(&state, &headers, &form, false) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let current = match state.ctx.store.cluster(&name) {
        Ok(Some(c)) => c.labels,
        Ok(None) => {
            return error_page(
                Some(&a.viewer),
                StatusCode::NOT_FOUND,
                &format!("cluster {name:?} not found"),
            );
        }
        Err(e) => return status_page(&a.viewer, &Status::from(e)),
    };
    let text = form.get("labels").map(String::as_str).unwrap_or_default();
    let (set_labels, remove_labels) = match pages::label_edit(&current, text) {
        Ok(edit) => edit,
        Err(e) => {
            return error_page(
                Some(&a.viewer),
                StatusCode::BAD_REQUEST,
                &format!("labels of cluster {name}: {e}"),
            );
        }
    };
    let req = pb::UpdateClusterRequest {
        name: name.clone(),
        set_labels: set_labels.into_iter().collect(),
        remove_labels,
        ..Default::default()
    };
    match state.api.update_cluster(api_request(&a.caller, req)).await {
        Ok(c) => {
            let c = c.into_inner();
            state.sessions.set_flash(
                &a.id,
                format!("labels of {name}: {}", pages::labels_text(c.labels.iter())),
            );
            redirect("/clusters")
        }
        Err(s) => status_page(&a.viewer, &s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_decoded() {
        assert_eq!(path_segment("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(path_segment("plain").as_deref(), Some("plain"));
        assert_eq!(path_segment("bad%2"), None);
    }

    #[test]
    fn origins_of_other_hosts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("hub:8443"));
        assert!(same_origin(&h), "no Origin: the CSRF token decides");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://hub:8443"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil:8443"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://hub:8443"));
        assert!(!same_origin(&h));
    }
}
