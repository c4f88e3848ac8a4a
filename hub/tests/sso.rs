//! SSO with OpenID Connect against a small issuer running on loopback in
//! the test: discovery document, JWKS (an RSA and a P-256 key generated
//! here), an authorization endpoint that checks PKCE's method and a token
//! endpoint that checks the client secret and the PKCE verifier, signing
//! ID tokens the hub must verify for real. Covered: the browser flow at
//! the HTTP level (redirects followed by hand, cookies carried), the
//! CLI's service (`SsoLogin`) and the `flotilla login --sso` process; the
//! groups claim giving RBAC roles; and the ID tokens the hub must refuse
//! (expired, signed by another key, wrong audience, wrong issuer, bad
//! nonce, wrong PKCE verifier).

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use flotilla_hub::api::sso_login::LoginRate;
use flotilla_hub::server::{HubConfig, RunningHub};
use flotilla_hub::sso::OidcConfig;
use flotilla_proto as pb;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Code;

mod support;
use support::{Api, api_as, hub_with_c1, sync, web_repo};

const CLIENT_ID: &str = "flotilla";
const CLIENT_SECRET: &str = "s3cret-of-the-hub";
/// The UI's callback as registered at the issuer; the test follows it to
/// the UI's real address (as an ingress would).
const REDIRECT: &str = "https://flotilla.test/auth/callback";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the next ID token looks like (the faults the hub must catch).
#[derive(Clone, Debug, Default)]
struct Mode {
    /// Sign with the P-256 key (ES256) instead of RSA (RS256).
    ec: bool,
    /// Sign with a key the JWKS does not hold, under the JWKS key's kid.
    other_key: bool,
    /// Seconds added to `exp` (negative: expired).
    exp_offset: Option<i64>,
    aud: Option<String>,
    iss: Option<String>,
    nonce: Option<String>,
    groups: Vec<String>,
    email: String,
}

struct Grant {
    challenge: String,
    nonce: String,
    redirect_uri: String,
}

struct Issuer {
    url: String,
    rsa: RsaKeyPair,
    other_rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    mode: Mutex<Mode>,
    grants: Mutex<HashMap<String, Grant>>,
    /// Token requests whose PKCE verifier did not match.
    pkce_failures: Mutex<u32>,
}

impl Issuer {
    fn jwks(&self) -> Value {
        let pk = self.rsa.public_key();
        let comps: aws_lc_rs::rsa::PublicKeyComponents<Vec<u8>> = pk.into();
        let ec = self.ec.public_key().as_ref();
        // Uncompressed point: 0x04 || x || y.
        let (x, y) = ec[1..].split_at(32);
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": b64(&comps.n), "e": b64(&comps.e)},
            {"kty": "EC", "kid": "ec-1", "use": "sig", "alg": "ES256", "crv": "P-256", "x": b64(x), "y": b64(y)},
        ]})
    }

    fn id_token(&self, nonce: &str) -> String {
        let m = self.mode.lock().unwrap().clone();
        let now = jiff::Timestamp::now().as_second();
        let claims = json!({
            "iss": m.iss.clone().unwrap_or_else(|| self.url.clone()),
            "sub": format!("uid-{}", m.email),
            "aud": m.aud.clone().unwrap_or_else(|| CLIENT_ID.to_owned()),
            "exp": now + m.exp_offset.unwrap_or(3600),
            "iat": now - if m.exp_offset.is_some_and(|o| o < 0) { 7200 } else { 0 },
            "nonce": m.nonce.clone().unwrap_or_else(|| nonce.to_owned()),
            "email": m.email,
            "email_verified": true,
            "groups": m.groups,
        });
        let (alg, kid) = if m.ec {
            ("ES256", "ec-1")
        } else {
            ("RS256", "rsa-1")
        };
        let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = if m.ec {
            let other;
            let key = if m.other_key {
                other =
                    EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
                &other
            } else {
                &self.ec
            };
            key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        } else {
            let key = if m.other_key {
                &self.other_rsa
            } else {
                &self.rsa
            };
            let mut sig = vec![0u8; key.public_modulus_len()];
            key.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
            sig
        };
        format!("{input}.{}", b64(&sig))
    }
}

async fn discovery(State(i): State<Arc<Issuer>>) -> Response {
    axum::Json(json!({
        "issuer": i.url,
        "authorization_endpoint": format!("{}/authorize", i.url),
        "token_endpoint": format!("{}/token", i.url),
        "jwks_uri": format!("{}/jwks", i.url),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn jwks(State(i): State<Arc<Issuer>>) -> Response {
    axum::Json(i.jwks()).into_response()
}

async fn authorize(
    State(i): State<Arc<Issuer>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID
        || get("response_type") != "code"
        || get("code_challenge_method") != "S256"
        || get("code_challenge").len() != 43
        || !get("scope").split(' ').any(|s| s == "openid")
        || get("nonce").is_empty()
        || get("state").is_empty()
    {
        return (
            StatusCode::BAD_REQUEST,
            format!("bad authorize request {q:?}"),
        )
            .into_response();
    }
    let code = b64(&rand_bytes());
    i.grants.lock().unwrap().insert(
        code.clone(),
        Grant {
            challenge: get("code_challenge"),
            nonce: get("nonce"),
            redirect_uri: get("redirect_uri"),
        },
    );
    let to = flotilla_hub::sso::with_query(
        &get("redirect_uri"),
        &[("code", &code), ("state", &get("state"))],
    );
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b
}

async fn token(
    State(i): State<Arc<Issuer>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let err = |e: &str, d: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": e, "error_description": d})),
        )
            .into_response()
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(basic.as_str())
    {
        return err("invalid_client", "bad client credentials");
    }
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    if get("grant_type") != "authorization_code" {
        return err("unsupported_grant_type", "");
    }
    let Some(g) = i.grants.lock().unwrap().remove(&get("code")) else {
        return err("invalid_grant", "unknown code");
    };
    if g.redirect_uri != get("redirect_uri") {
        return err(
            "invalid_grant",
            "redirect_uri differs from the authorization request",
        );
    }
    if b64(&Sha256::digest(get("code_verifier").as_bytes())) != g.challenge {
        *i.pkce_failures.lock().unwrap() += 1;
        return err("invalid_grant", "PKCE verification failed");
    }
    axum::Json(json!({
        "access_token": "opaque",
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": i.id_token(&g.nonce),
    }))
    .into_response()
}

/// The issuer, over plain HTTP, or over https with a private CA made in
/// `https_ca_dir`.
async fn issuer(https_ca_dir: Option<&Path>) -> Arc<Issuer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if https_ca_dir.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let issuer = Arc::new(Issuer {
        url,
        rsa: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
        other_rsa: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
        ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        mode: Mutex::default(),
        grants: Mutex::default(),
        pkce_failures: Mutex::default(),
    });
    let router = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(discovery),
        )
        .route("/jwks", axum::routing::get(jwks))
        .route("/authorize", axum::routing::get(authorize))
        .route("/token", axum::routing::post(token))
        .with_state(issuer.clone());
    match https_ca_dir {
        Some(dir) => support::serve_https(listener, router, dir),
        None => {
            tokio::spawn(async move { axum::serve(listener, router).await });
        }
    }
    issuer
}

struct Setup {
    _dir: tempfile::TempDir,
    hub: RunningHub,
    issuer: Arc<Issuer>,
    admin: Api,
    /// Trusts the hub's CA; follows no redirects.
    http: reqwest::Client,
}

async fn setup() -> Setup {
    setup_with(None, |config| {
        // A test makes a dozen logins at once; the limit has its own test.
        config.sso_login_rate = LoginRate {
            burst: 100,
            refill: Duration::from_millis(10),
        };
    })
    .await
}

/// A hub with SSO; `issuer_ca_dir`: the issuer is served over https with
/// a private CA made there (the test's own client trusts it).
async fn setup_with(issuer_ca_dir: Option<&Path>, tune: impl FnOnce(&mut HubConfig)) -> Setup {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let issuer = issuer(issuer_ca_dir).await;
    let dir = tempfile::tempdir().unwrap();
    let url = web_repo(dir.path());
    let (hub, mut admin) = hub_with_c1(dir.path(), |config| {
        config.poll_interval = Duration::from_secs(600);
        config.ui_listen = Some("127.0.0.1:0".parse().unwrap());
        config.oidc = Some(OidcConfig {
            issuer: issuer.url.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_url: REDIRECT.into(),
            scopes: vec!["openid".into(), "email".into(), "groups".into()],
            groups_claim: "groups".into(),
            ca_file: None,
        });
        tune(config);
    })
    .await;
    admin
        .create_application(pb::CreateApplicationRequest {
            manifest: format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: web\nspec:\n  source:\n    repoURL: {url}\n    path: web\n  destination:\n    name: c1\n    namespace: default\n"
            ),
            upsert: false,
        })
        .await
        .unwrap();
    admin
        .set_rbac_policy(pb::RbacPolicy {
            policy_csv: "g, platform-admins, role:admin\ng, viewers, role:readonly\n".into(),
            default_role: String::new(),
        })
        .await
        .unwrap();
    let ca = std::fs::read(hub.ca_file()).unwrap();
    let mut http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .redirect(reqwest::redirect::Policy::none());
    if let Some(dir) = issuer_ca_dir {
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
    }
    let http = http.build().unwrap();
    Setup {
        _dir: dir,
        hub,
        issuer,
        admin,
        http,
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(header::LOCATION)
        .unwrap_or_else(|| panic!("no Location on {}", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// A client of the hub's `SsoLogin` service (no token).
async fn sso_client(
    hub: &RunningHub,
) -> pb::sso_login_client::SsoLoginClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = Channel::from_shared(hub.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::sso_login_client::SsoLoginClient::new(channel)
}

/// A login as the CLI does it, through `SsoLogin`, with the issuer in
/// `mode`; `verifier` overrides the PKCE verifier sent to Finish.
async fn cli_login(
    s: &Setup,
    mode: Mode,
    bad_verifier: bool,
) -> Result<pb::SsoFinishResponse, tonic::Status> {
    *s.issuer.mode.lock().unwrap() = mode;
    let mut c = sso_client(&s.hub).await;
    let verifier = flotilla_hub::sso::pkce_verifier();
    let nonce = flotilla_hub::sso::random_token();
    let state = flotilla_hub::sso::random_token();
    let redirect = "http://127.0.0.1:9/callback".to_owned();
    let url = c
        .start(pb::SsoStartRequest {
            redirect_uri: redirect.clone(),
            state: state.clone(),
            nonce: nonce.clone(),
            code_challenge: flotilla_hub::sso::pkce_challenge(&verifier),
        })
        .await?
        .into_inner()
        .authorization_url;
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "{:?}", r.text().await);
    let to = location(&r);
    assert!(to.starts_with(&redirect), "{to}");
    assert!(to.contains(&format!("state={state}")), "{to}");
    let code = to.split("code=").nth(1).unwrap().split('&').next().unwrap();
    c.finish(pb::SsoFinishRequest {
        code: code.to_owned(),
        code_verifier: if bad_verifier {
            flotilla_hub::sso::pkce_verifier()
        } else {
            verifier
        },
        redirect_uri: redirect,
        nonce,
    })
    .await
    .map(tonic::Response::into_inner)
}

fn user(email: &str, groups: &[&str]) -> Mode {
    Mode {
        email: email.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..Mode::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_groups_claim_gives_the_groups_role_over_the_api() {
    let s = setup().await;
    // An admin-group user, with an ES256 token: may sync.
    let alice = cli_login(
        &s,
        Mode {
            ec: true,
            ..user("alice@example.com", &["platform-admins"])
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(alice.subject, "alice@example.com");
    assert_eq!(alice.groups, ["platform-admins"]);
    let now = jiff::Timestamp::now().as_millisecond();
    assert!(
        alice.expires_unix_ms > now && alice.expires_unix_ms <= now + 3_700_000,
        "the session ends with the ID token: {}",
        alice.expires_unix_ms
    );
    let mut as_alice = api_as(&s.hub, &alice.token).await;
    sync(&mut as_alice, "web").await.unwrap();

    // A readonly-group user, with an RS256 token: may read, not sync.
    let bob = cli_login(&s, user("bob@example.com", &["viewers"]), false)
        .await
        .unwrap();
    let mut as_bob = api_as(&s.hub, &bob.token).await;
    as_bob
        .get_application(pb::GetApplicationRequest { name: "web".into() })
        .await
        .unwrap();
    let err = sync(&mut as_bob, "web").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("applications, sync, default/web")
            && err.message().contains("bob@example.com"),
        "{}",
        err.message()
    );

    // A user in no mapped group gets nothing (never admin by default).
    let eve = cli_login(&s, user("eve@example.com", &[]), false)
        .await
        .unwrap();
    let mut as_eve = api_as(&s.hub, &eve.token).await;
    let err = sync(&mut as_eve, "web").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The audit log names the SSO subject.
    let audit = s
        .admin
        .clone()
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let text = format!("{audit:?}");
    assert!(text.contains("alice@example.com"), "{text}");
    assert!(text.contains("bob@example.com"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_id_tokens_are_refused_with_the_reason() {
    let s = setup().await;
    let base = || user("mallory@example.com", &["platform-admins"]);
    let cases: Vec<(&str, Mode, bool, &str)> = vec![
        (
            "expired",
            Mode {
                exp_offset: Some(-3600),
                ..base()
            },
            false,
            "expired",
        ),
        (
            "signed by another RSA key",
            Mode {
                other_key: true,
                ..base()
            },
            false,
            "bad signature",
        ),
        (
            "signed by another P-256 key",
            Mode {
                other_key: true,
                ec: true,
                ..base()
            },
            false,
            "bad signature",
        ),
        (
            "for another client",
            Mode {
                aud: Some("someone-else".into()),
                ..base()
            },
            false,
            "wrong audience",
        ),
        (
            "from another issuer",
            Mode {
                iss: Some("https://evil.example".into()),
                ..base()
            },
            false,
            "wrong issuer",
        ),
        (
            "for another login",
            Mode {
                nonce: Some("not-the-nonce-of-this-login".into()),
                ..base()
            },
            false,
            "bad nonce",
        ),
        (
            "with the wrong PKCE verifier",
            base(),
            true,
            "PKCE verification failed",
        ),
    ];
    for (what, mode, bad_verifier, want) in cases {
        let err = cli_login(&s, mode, bad_verifier).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains(want), "{what}: {}", err.message());
    }
    assert_eq!(*s.issuer.pkce_failures.lock().unwrap(), 1);
    // None of them got a token.
    let tokens = s
        .admin
        .clone()
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!format!("{tokens:?}").contains("mallory"), "{tokens:?}");

    // Only loopback redirects are accepted from the CLI.
    let err = sso_client(&s.hub)
        .await
        .start(pb::SsoStartRequest {
            redirect_uri: "https://evil.example/callback".into(),
            state: "x".repeat(20),
            nonce: "y".repeat(20),
            code_challenge: "z".repeat(43),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// The browser flow: /auth/login → issuer → /auth/callback → session.
async fn browser_login(s: &Setup, mode: Mode) -> (reqwest::Response, String) {
    *s.issuer.mode.lock().unwrap() = mode;
    let ui = s.hub.ui_url().unwrap().replace("127.0.0.1", "localhost");
    let r = s.http.get(format!("{ui}auth/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let state_cookie = cookie_pair(&set_cookie(&r, "flotilla_sso_state").unwrap());
    let to_issuer = location(&r);
    assert!(to_issuer.starts_with(&s.issuer.url), "{to_issuer}");
    assert!(
        to_issuer.contains("code_challenge_method=S256"),
        "{to_issuer}"
    );
    let r = s.http.get(&to_issuer).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let back = location(&r);
    let callback = back.replace("https://flotilla.test/", &ui);
    assert!(
        callback.starts_with(&format!("{ui}auth/callback?")),
        "{back}"
    );
    (
        s.http
            .get(&callback)
            .header(header::COOKIE, &state_cookie)
            .send()
            .await
            .unwrap(),
        callback,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_flow_makes_a_session_with_the_groups_role() {
    let s = setup().await;
    let ui = s.hub.ui_url().unwrap().replace("127.0.0.1", "localhost");
    // The login page offers SSO.
    let page = s
        .http
        .get(format!("{ui}login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("href=\"/auth/login\""), "{page}");

    for (email, group, role) in [
        ("alice@example.com", "platform-admins", "(admin)"),
        ("bob@example.com", "viewers", "(read-only)"),
    ] {
        let (r, _) = browser_login(&s, user(email, &[group])).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{:?}", r.text().await);
        assert_eq!(location(&r), "/");
        let session = set_cookie(&r, "flotilla_session").unwrap();
        let max_age: u64 = session.split("Max-Age=").nth(1).unwrap().parse().unwrap();
        assert!(max_age <= 3600, "no longer than the ID token: {session}");
        let home = s
            .http
            .get(&ui)
            .header(header::COOKIE, cookie_pair(&session))
            .send()
            .await
            .unwrap();
        assert_eq!(home.status(), StatusCode::OK);
        let home = home.text().await.unwrap();
        assert!(
            home.contains(&format!("sso:{email}:")) && home.contains(role),
            "{email}: {home}"
        );
    }

    // An expired ID token makes no session, and says why.
    let (r, _) = browser_login(
        &s,
        Mode {
            exp_offset: Some(-600),
            ..user("carol@example.com", &["platform-admins"])
        },
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&r, "flotilla_session").is_none());
    let body = r.text().await.unwrap();
    assert!(
        body.contains("sso login refused") && body.contains("expired"),
        "{body}"
    );

    // A callback replayed from another browser (no state cookie) is
    // refused before any exchange.
    *s.issuer.mode.lock().unwrap() = user("dave@example.com", &["platform-admins"]);
    let r = s.http.get(format!("{ui}auth/login")).send().await.unwrap();
    let r = s.http.get(location(&r)).send().await.unwrap();
    let callback = location(&r).replace("https://flotilla.test/", &ui);
    let r = s.http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("state does not match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flotilla_login_sso_saves_a_working_context() {
    let s = setup().await;
    *s.issuer.mode.lock().unwrap() = user("alice@example.com", &["platform-admins"]);
    let config = s._dir.path().join("cli-config.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["login", "--sso", "--no-browser", "--name", "corp"])
        .env("FLOTILLA_HUB", s.hub.url())
        .env("FLOTILLA_CA_FILE", s.hub.ca_file())
        .env_remove("FLOTILLA_TOKEN")
        .env_remove("FLOTILLA_TOKEN_FILE")
        .env("FLOTILLA_CONFIG", &config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The URL is printed on stderr; the test is the browser.
    let stderr = child.stderr.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("http"))
    })
    .await
    .unwrap()
    .expect("the CLI prints the login URL");
    assert!(
        url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{url}"
    );
    let r = s.http.get(&url).send().await.unwrap();
    let callback = location(&r);
    let page = reqwest::get(&callback).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("as alice@example.com"), "{stdout}");
    // The saved context works for the next command.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["app", "get", "web"])
        .env("FLOTILLA_CONFIG", &config)
        .env_remove("FLOTILLA_HUB")
        .env_remove("FLOTILLA_CA_FILE")
        .env_remove("FLOTILLA_TOKEN")
        .env_remove("FLOTILLA_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hub chart's `oidc` and `allowedFetchHosts` values become the flags
/// and the client secret an environment variable from a Secret (rendered
/// by the hub's own chart engine, as `cli_logs` does).
#[test]
fn the_chart_passes_oidc_settings_and_the_secret_by_reference() {
    use flotilla_hub::chart::{Chart, Release, merge_values, render};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/flotilla-hub");
    let chart = Chart::load(&dir).unwrap();
    let mut values = chart.values.clone();
    merge_values(
        &mut values,
        json!({
            "oidc": {
                "enabled": true,
                "issuer": "https://dex.example.com",
                "clientId": "flotilla",
                "redirectUrl": "https://flotilla.example.com/auth/callback",
                "clientSecret": {"existingSecret": "flotilla-oidc"},
                "caConfigMap": "dex-ca",
            },
            "allowedFetchHosts": ["github.com", "*.corp.example"],
        }),
    );
    let text = render(&chart, &Release::new("r", "flotilla"), values).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let joined = args.join(" ");
    for want in [
        "--oidc-issuer https://dex.example.com",
        "--oidc-client-id flotilla",
        "--oidc-redirect-url https://flotilla.example.com/auth/callback",
        "--oidc-scopes openid --oidc-scopes profile",
        "--oidc-groups-claim groups",
        "--oidc-ca-file /etc/flotilla/oidc-ca/ca.crt",
        "--allowed-fetch-hosts github.com --allowed-fetch-hosts *.corp.example",
    ] {
        assert!(joined.contains(want), "{want}: {joined}");
    }
    let env = c["env"].as_array().unwrap();
    let secret = env
        .iter()
        .find(|e| e["name"] == "FLOTILLA_OIDC_CLIENT_SECRET")
        .unwrap();
    assert_eq!(
        secret["valueFrom"]["secretKeyRef"],
        json!({"name": "flotilla-oidc", "key": "clientSecret"})
    );
    // Without oidc, nothing of it.
    let plain = render(&chart, &Release::new("r", "flotilla"), chart.values.clone()).unwrap();
    assert!(!plain.contains("oidc") && !plain.contains("allowed-fetch-hosts"));
}

/// `SsoLogin` takes no token, so it is rate limited per peer address: past
/// the burst, Start and Finish are refused with `RESOURCE_EXHAUSTED` and a
/// message saying who and when to try again, and once the bucket has
/// refilled a call passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_login_calls_are_rate_limited_per_peer() {
    let refill = Duration::from_millis(300);
    let s = setup_with(None, |config| {
        config.sso_login_rate = LoginRate { burst: 3, refill };
    })
    .await;
    let mut c = sso_client(&s.hub).await;
    let start = || pb::SsoStartRequest {
        redirect_uri: "http://127.0.0.1:9/callback".into(),
        state: flotilla_hub::sso::random_token(),
        nonce: flotilla_hub::sso::random_token(),
        code_challenge: flotilla_hub::sso::pkce_challenge(&flotilla_hub::sso::pkce_verifier()),
    };
    for i in 0..3 {
        c.start(start())
            .await
            .unwrap_or_else(|e| panic!("call {i} within the burst: {e:?}"));
    }
    let refused = c.start(start()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("SsoLogin.Start: too many login calls from 127.0.0.1; try again in "),
        "{}",
        refused.message()
    );
    // Finish draws from the same bucket, before any exchange is tried.
    let refused = c
        .finish(pb::SsoFinishRequest {
            code: "whatever".into(),
            code_verifier: flotilla_hub::sso::pkce_verifier(),
            redirect_uri: "http://127.0.0.1:9/callback".into(),
            nonce: flotilla_hub::sso::random_token(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("SsoLogin.Finish: too many"),
        "{}",
        refused.message()
    );
    // The bucket refills: a later call passes (polled; each refused poll
    // costs nothing, so it waits only for the refill).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.start(start()).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(refill / 4).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    s.hub.shutdown().await.unwrap();
}

/// An issuer on a private CA: without `--oidc-ca-file` the hub cannot
/// reach it, and the login fails saying so and naming the flag; with the
/// CA file, the same login works and gets the group's role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_issuer_needs_oidc_ca_file() {
    let ca_dir = tempfile::tempdir().unwrap();
    let admins = || user("alice@example.com", &["platform-admins"]);

    let without = setup_with(Some(ca_dir.path()), |_| {}).await;
    assert!(
        without.issuer.url.starts_with("https://"),
        "{}",
        without.issuer.url
    );
    let e = cli_login(&without, admins(), false).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&format!(
            "oidc issuer {}/.well-known/openid-configuration",
            without.issuer.url
        )) && e.message().contains("give its CA with --oidc-ca-file"),
        "{}",
        e.message()
    );
    without.hub.shutdown().await.unwrap();

    let ca_file = ca_dir.path().join("ca.crt");
    let with = setup_with(Some(ca_dir.path()), |config| {
        if let Some(oidc) = config.oidc.as_mut() {
            oidc.ca_file = Some(ca_file.clone());
        }
    })
    .await;
    let login = cli_login(&with, admins(), false).await.unwrap();
    assert_eq!(login.subject, "alice@example.com");
    let mut alice = api_as(&with.hub, &login.token).await;
    sync(&mut alice, "web").await.unwrap();
    with.hub.shutdown().await.unwrap();
}
