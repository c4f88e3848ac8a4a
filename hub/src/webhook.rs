//! Git push webhooks: `POST /api/webhook` from GitHub, GitLab or Gitea
//! triggers an immediate fetch of the repositories the payload names.
//!
//! The listener is plain HTTP on its own address (`flotilla-hub serve
//! --webhook-listen ADDR`, served by `crate::listener`); put it behind an ingress or load balancer for
//! TLS. With `--webhook-secret`, every request must prove it: GitHub's
//! `X-Hub-Signature-256` (HMAC-SHA256 of the body, `sha256=<hex>`), Gitea's
//! `X-Gitea-Signature` (the same HMAC, hex), or GitLab's `X-Gitlab-Token`
//! (the secret itself). Answers: 200 with the repositories refreshed, 202
//! for events that are not pushes or name no registered repository, 400
//! for a body that is not a push payload, 401 for a missing or wrong
//! signature.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::gitsync::GitSync;
use crate::store::Store;

/// Largest payload accepted (GitHub caps its payloads at 25 MB).
const MAX_BODY: usize = 25 * 1024 * 1024;

/// Which forge sent a request, from its event header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    Gitea,
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The forge and event name of a request, from its headers.
pub fn event(headers: &HeaderMap) -> Option<(Forge, String)> {
    // Gitea also sends X-GitHub-Event for compatibility: check it first.
    if let Some(e) = header(headers, "x-gitea-event") {
        return Some((Forge::Gitea, e.to_owned()));
    }
    if let Some(e) = header(headers, "x-gitlab-event") {
        return Some((Forge::GitLab, e.to_owned()));
    }
    header(headers, "x-github-event").map(|e| (Forge::GitHub, e.to_owned()))
}

/// Checks the request's proof of the shared secret.
pub fn verify(forge: Forge, secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let mac = || hex::encode(hmac_sha256(secret.as_bytes(), body));
    match forge {
        Forge::GitHub => header(headers, "x-hub-signature-256")
            .and_then(|s| s.strip_prefix("sha256="))
            .is_some_and(|sig| {
                crate::secret::same(sig.to_ascii_lowercase().as_bytes(), mac().as_bytes())
            }),
        Forge::Gitea => header(headers, "x-gitea-signature")
            .or_else(|| {
                header(headers, "x-hub-signature-256").and_then(|s| s.strip_prefix("sha256="))
            })
            .is_some_and(|sig| {
                crate::secret::same(sig.to_ascii_lowercase().as_bytes(), mac().as_bytes())
            }),
        Forge::GitLab => header(headers, "x-gitlab-token")
            .is_some_and(|t| crate::secret::same(t.as_bytes(), secret.as_bytes())),
    }
}

/// Whether the event is a push (branch or tag).
pub fn is_push(forge: Forge, event: &str) -> bool {
    match forge {
        Forge::GitHub | Forge::Gitea => event == "push",
        Forge::GitLab => event == "Push Hook" || event == "Tag Push Hook",
    }
}

/// Every repository URL a push payload names.
pub fn payload_urls(payload: &Value) -> Vec<String> {
    let mut urls = Vec::new();
    for (object, fields) in [
        (
            "repository",
            &[
                "clone_url",
                "ssh_url",
                "html_url",
                "git_url",
                "url",
                "git_http_url",
                "git_ssh_url",
                "homepage",
            ][..],
        ),
        (
            "project",
            &[
                "git_http_url",
                "git_ssh_url",
                "web_url",
                "http_url",
                "ssh_url",
            ][..],
        ),
    ] {
        for f in fields {
            if let Some(u) = payload[object][f].as_str().filter(|u| !u.is_empty()) {
                urls.push(u.to_owned());
            }
        }
    }
    urls
}

/// A repository URL reduced to host and path, lowercase, without scheme,
/// credentials, port-less `git@host:` form differences, trailing `/` or
/// `.git`, so the https, ssh and web URLs of one repository compare equal.
pub fn normalize_url(url: &str) -> String {
    let mut u = url.trim().to_ascii_lowercase();
    if let Some((_, rest)) = u.split_once("://") {
        u = rest.to_owned();
    } else if let Some((userhost, path)) = u.split_once(':')
        && !userhost.contains('/')
    {
        // scp-like `git@host:owner/repo`.
        u = format!("{userhost}/{path}");
    }
    // Credentials.
    if let Some((userinfo, rest)) = u.split_once('@')
        && !userinfo.contains('/')
    {
        u = rest.to_owned();
    }
    // A port on ssh URLs (`host:22/owner`) does not name another repository.
    if let Some((host, rest)) = u.split_once('/')
        && let Some((h, port)) = host.split_once(':')
        && port.chars().all(|c| c.is_ascii_digit())
    {
        u = format!("{h}/{rest}");
    }
    let mut u = u.trim_end_matches('/').to_owned();
    if let Some(s) = u.strip_suffix(".git") {
        u = s.trim_end_matches('/').to_owned();
    }
    u
}

/// The registered URLs (repositories and application sources) that one of
/// `payload_urls` names.
pub fn matching(registered: &BTreeSet<String>, payload_urls: &[String]) -> Vec<String> {
    let wanted: BTreeSet<String> = payload_urls.iter().map(|u| normalize_url(u)).collect();
    registered
        .iter()
        .filter(|r| wanted.contains(&normalize_url(r)))
        .cloned()
        .collect()
}

/// What the webhook handler needs.
#[derive(Clone, Debug)]
pub struct WebhookState {
    pub store: Store,
    pub git: Arc<GitSync>,
    pub secret: Option<String>,
}

async fn handle(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some((forge, name)) = event(&headers) else {
        return (
            StatusCode::BAD_REQUEST,
            "no X-GitHub-Event, X-Gitlab-Event or X-Gitea-Event header\n".into(),
        );
    };
    if let Some(secret) = state.secret.as_deref().filter(|s| !s.is_empty())
        && !verify(forge, secret, &headers, &body)
    {
        tracing::warn!(?forge, "webhook with a missing or wrong signature refused");
        return (StatusCode::UNAUTHORIZED, "signature mismatch\n".into());
    }
    if !is_push(forge, &name) {
        return (StatusCode::ACCEPTED, format!("event {name:?} ignored\n"));
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid JSON payload: {e}\n"),
            );
        }
    };
    let urls = payload_urls(&payload);
    let mut registered = BTreeSet::new();
    match (state.store.repos(), state.store.apps()) {
        (Ok(repos), Ok(apps)) => {
            registered.extend(repos.into_iter().map(|r| r.url));
            registered.extend(apps.iter().flat_map(|a| {
                a.app
                    .spec
                    .effective_sources()
                    .iter()
                    .map(|s| s.repo_url.clone())
            }));
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "webhook: store read failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "store unavailable\n".into(),
            );
        }
    }
    let matched = matching(&registered, &urls);
    if matched.is_empty() {
        tracing::info!(?forge, urls = ?urls.iter().map(|u| crate::source::redact_url(u)).collect::<Vec<_>>(), "webhook push for no registered repository; ignored");
        return (
            StatusCode::ACCEPTED,
            "no registered repository matches; ignored\n".into(),
        );
    }
    tracing::info!(?forge, repositories = ?matched.iter().map(|u| crate::source::redact_url(u)).collect::<Vec<_>>(), "webhook push: refreshing");
    state.git.refresh_urls(&matched);
    let shown: Vec<String> = matched
        .iter()
        .map(|u| crate::source::redact_url(u))
        .collect();
    (StatusCode::OK, format!("refreshing {}\n", shown.join(", ")))
}

/// The webhook router (`POST /api/webhook`).
pub fn router(state: WebhookState) -> axum::Router {
    axum::Router::new()
        .route("/api/webhook", post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Keys longer than the block are hashed first (RFC 4231 case 6).
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn signatures() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = hex::encode(hmac_sha256(b"s3cret", body));
        let gh = headers(&[
            ("x-github-event", "push"),
            ("x-hub-signature-256", &format!("sha256={sig}")),
        ]);
        assert_eq!(event(&gh), Some((Forge::GitHub, "push".into())));
        assert!(verify(Forge::GitHub, "s3cret", &gh, body));
        assert!(!verify(Forge::GitHub, "other", &gh, body));
        assert!(!verify(Forge::GitHub, "s3cret", &gh, b"tampered"));
        assert!(!verify(
            Forge::GitHub,
            "s3cret",
            &headers(&[("x-github-event", "push")]),
            body
        ));

        let gitea = headers(&[
            ("x-gitea-event", "push"),
            ("x-github-event", "push"),
            ("x-gitea-signature", &sig),
        ]);
        assert_eq!(event(&gitea).map(|e| e.0), Some(Forge::Gitea));
        assert!(verify(Forge::Gitea, "s3cret", &gitea, body));
        assert!(!verify(Forge::Gitea, "nope", &gitea, body));

        let gl = headers(&[
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-token", "s3cret"),
        ]);
        assert_eq!(event(&gl), Some((Forge::GitLab, "Push Hook".into())));
        assert!(verify(Forge::GitLab, "s3cret", &gl, body));
        assert!(!verify(Forge::GitLab, "s3cret2", &gl, body));
        assert!(is_push(Forge::GitLab, "Tag Push Hook"));
        assert!(!is_push(Forge::GitHub, "ping"));
    }

    #[test]
    fn urls_normalize() {
        let same = [
            "https://github.com/Org/Config.git",
            "https://github.com/org/config",
            "https://user:token@github.com/org/config/",
            "git@github.com:org/config.git",
            "ssh://git@github.com:22/org/config.git",
            "github.com/org/config",
        ];
        for u in same {
            assert_eq!(normalize_url(u), "github.com/org/config", "{u}");
        }
        assert_eq!(normalize_url("file:///tmp/repo"), "/tmp/repo");
        assert_ne!(
            normalize_url("https://github.com/org/config2"),
            "github.com/org/config"
        );
    }

    #[test]
    fn payloads_match_registered_repositories() {
        let github = serde_json::json!({"ref": "refs/heads/main", "repository": {
            "clone_url": "https://github.com/org/config.git",
            "ssh_url": "git@github.com:org/config.git",
            "html_url": "https://github.com/org/config"}});
        let gitlab = serde_json::json!({"object_kind": "push", "project": {
            "git_http_url": "https://gitlab.example/team/apps.git",
            "git_ssh_url": "git@gitlab.example:team/apps.git",
            "web_url": "https://gitlab.example/team/apps"}});
        let registered: BTreeSet<String> = [
            "https://github.com/org/config".to_owned(),
            "git@gitlab.example:team/apps.git".to_owned(),
            "https://github.com/org/other.git".to_owned(),
        ]
        .into();
        assert_eq!(
            matching(&registered, &payload_urls(&github)),
            ["https://github.com/org/config"]
        );
        assert_eq!(
            matching(&registered, &payload_urls(&gitlab)),
            ["git@gitlab.example:team/apps.git"]
        );
        assert!(matching(&registered, &payload_urls(&serde_json::json!({}))).is_empty());
    }
}
