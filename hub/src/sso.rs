//! Single sign-on with OpenID Connect: the hub is a confidential OIDC
//! client of one issuer (Dex, Keycloak, Okta, ...).
//!
//! - The issuer is found through its discovery document
//!   (`ISSUER/.well-known/openid-configuration`), whose `issuer` must be
//!   the configured one.
//! - Its signing keys (JWKS) are fetched once and cached; a token naming a
//!   key id the cache lacks makes the hub fetch them again, at most once
//!   per [`JWKS_MIN_REFRESH`], so a stream of forged key ids cannot make
//!   the hub hammer the issuer.
//! - Logins use the authorization code flow with PKCE (S256), `state` and
//!   `nonce`; the code is exchanged at the token endpoint with the client
//!   secret, which never leaves the hub (the CLI hands its code and PKCE
//!   verifier to the hub, [`Oidc::exchange`]).
//! - The ID token is verified here: signature (RS256/384/512, PS256,
//!   ES256/384, with the JWKS key its `kid` names), `iss`, `aud`, `exp`,
//!   `nbf` and `iat` with [`LEEWAY_SECS`] of clock skew, and `nonce`.
//!
//! A verified login becomes an [`Identity`]: the subject (`email`, else
//! `sub`), the groups claim (RBAC groups, `g, GROUP, role:...` in
//! policy.csv) and the token's expiry, which bounds the hub session made
//! from it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Clock skew allowed on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 60;
/// Shortest time between two JWKS fetches caused by unknown key ids.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// How long a started login (its state, nonce and PKCE verifier) waits for
/// its callback.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Started logins kept at most; the oldest goes first.
const MAX_PENDING: usize = 10_000;
/// Longest any request to the issuer may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// The ID token signature algorithms accepted.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// How the hub talks to its issuer (`--oidc-*`).
#[derive(Clone, Default)]
pub struct OidcConfig {
    /// The issuer URL, exactly as its tokens' `iss` claim spells it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// The web UI's callback, `https://HOST/auth/callback`, as registered
    /// at the issuer.
    pub redirect_url: String,
    /// Scopes requested (`openid` is always added).
    pub scopes: Vec<String>,
    /// The claim holding the user's groups.
    pub groups_claim: String,
    /// PEM file of CAs the issuer's certificate is verified against, on
    /// top of the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The default scopes: the ID token, the email and the groups.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "profile", "email", "groups"];
/// The default groups claim.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("oidc configuration: {0}")]
    Config(String),
    #[error("oidc issuer {url}: {message}")]
    Issuer { url: String, message: String },
    #[error("oidc login: {0}")]
    Login(String),
    /// The ID token failed verification.
    #[error("id token refused: {0}")]
    Token(String),
}

/// A verified login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `email`, else `sub`.
    pub subject: String,
    /// The groups claim.
    pub groups: Vec<String>,
    /// The ID token's `exp`, Unix ms.
    pub expires_ms: i64,
}

/// What a started login needs at its callback.
#[derive(Clone, Debug)]
struct Pending {
    verifier: String,
    nonce: String,
    started: Instant,
}

/// The parts of the discovery document the hub uses.
#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Debug, Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

/// The hub's OIDC client.
#[derive(Debug)]
pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    discovery: tokio::sync::OnceCell<Discovery>,
    keys: tokio::sync::Mutex<Keys>,
    pending: Mutex<HashMap<String, Pending>>,
}

/// A started browser login: where to send the browser, and the `state`
/// the callback must carry.
#[derive(Clone, Debug)]
pub struct Started {
    pub url: String,
    pub state: String,
}

fn random_b64(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    for x in &mut b {
        *x = rand::random();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The PKCE S256 challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A new PKCE verifier (43 characters of base64url, RFC 7636's minimum
/// entropy of 256 bits).
pub fn pkce_verifier() -> String {
    random_b64(32)
}

/// A new random `state` or `nonce`.
pub fn random_token() -> String {
    random_b64(24)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `base?k=v&...` with the values percent-encoded.
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    format!("{base}{sep}{}", q.join("&"))
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Oidc {
    /// A client for `config`; nothing is fetched yet.
    ///
    /// # Errors
    /// A required setting is missing, or the CA file does not load.
    pub fn new(config: OidcConfig) -> Result<Self, SsoError> {
        for (name, value) in [
            ("--oidc-issuer", &config.issuer),
            ("--oidc-client-id", &config.client_id),
            (
                "the client secret (--oidc-client-secret-file or FLOTILLA_OIDC_CLIENT_SECRET)",
                &config.client_secret,
            ),
        ] {
            if value.trim().is_empty() {
                return Err(SsoError::Config(format!("{name} is required")));
            }
        }
        let mut builder = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| SsoError::Config(format!("--oidc-ca-file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| SsoError::Config(format!("--oidc-ca-file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(SsoError::Config(format!(
                    "--oidc-ca-file {}: no certificate in it",
                    path.display()
                )));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| SsoError::Config(format!("http client: {e}")))?;
        Ok(Self {
            config,
            http,
            discovery: tokio::sync::OnceCell::new(),
            keys: tokio::sync::Mutex::default(),
            pending: Mutex::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// A failed request to the issuer, with what to do when its
    /// certificate is not trusted (a private CA is the usual cause).
    fn http_failure(&self, e: &reqwest::Error) -> String {
        let message = http_error(e);
        if !message.to_ascii_lowercase().contains("certificate") {
            return message;
        }
        match &self.config.ca_file {
            None => format!(
                "{message} (the issuer's TLS certificate is not trusted by the system's roots; give its CA with --oidc-ca-file)"
            ),
            Some(path) => format!(
                "{message} (the issuer's TLS certificate verifies neither against --oidc-ca-file {} nor the system's roots)",
                path.display()
            ),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, SsoError> {
        let err = |message: String| SsoError::Issuer {
            url: url.to_owned(),
            message,
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| err(self.http_failure(&e)))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| err(self.http_failure(&e)))?;
        if !status.is_success() {
            return Err(err(format!("HTTP {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| err(format!("not the expected JSON: {e}")))
    }

    async fn discovery(&self) -> Result<&Discovery, SsoError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let d: Discovery = self.get_json(&url).await?;
                if d.issuer != self.config.issuer {
                    return Err(SsoError::Issuer {
                        url,
                        message: format!(
                            "the discovery document names issuer {:?}, not the configured {:?}",
                            d.issuer, self.config.issuer
                        ),
                    });
                }
                Ok(d)
            })
            .await
    }

    /// The scopes requested, `openid` first.
    fn scope(&self) -> String {
        let mut s = vec!["openid".to_owned()];
        s.extend(
            self.config
                .scopes
                .iter()
                .filter(|x| *x != "openid")
                .cloned(),
        );
        s.join(" ")
    }

    /// The issuer's authorization URL for a login returning to
    /// `redirect_uri` (the CLI's own loopback address, or the UI's).
    ///
    /// # Errors
    /// The discovery document cannot be read.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, SsoError> {
        let d = self.discovery().await?;
        let scope = self.scope();
        Ok(with_query(
            &d.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", &self.config.client_id),
                ("redirect_uri", redirect_uri),
                ("scope", &scope),
                ("state", state),
                ("nonce", nonce),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ],
        ))
    }

    /// Starts a browser login: a fresh state, nonce and PKCE verifier,
    /// kept for [`LOGIN_TTL`].
    ///
    /// # Errors
    /// The discovery document cannot be read.
    pub async fn begin(&self) -> Result<Started, SsoError> {
        let state = random_token();
        let p = Pending {
            verifier: pkce_verifier(),
            nonce: random_token(),
            started: Instant::now(),
        };
        let url = self
            .authorization_url(
                &self.config.redirect_url,
                &state,
                &p.nonce,
                &pkce_challenge(&p.verifier),
            )
            .await?;
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, p| p.started.elapsed() < LOGIN_TTL);
        if map.len() >= MAX_PENDING
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(state.clone(), p);
        Ok(Started { url, state })
    }

    /// Completes a browser login: `state` must be one this hub started
    /// (each is used once), `code` is exchanged and the ID token verified.
    ///
    /// # Errors
    /// An unknown or expired state, a refused exchange, or a token that
    /// fails verification.
    pub async fn finish(&self, state: &str, code: &str) -> Result<Identity, SsoError> {
        let p = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)
            .filter(|p| p.started.elapsed() < LOGIN_TTL)
            .ok_or_else(|| {
                SsoError::Login("unknown or expired state: start again at /auth/login".to_owned())
            })?;
        let redirect = self.config.redirect_url.clone();
        self.exchange(code, &p.verifier, &redirect, &p.nonce).await
    }

    /// Exchanges an authorization `code` (with its PKCE `verifier` and the
    /// `redirect_uri` it was issued for) at the token endpoint and
    /// verifies the ID token, which must carry `nonce`.
    ///
    /// # Errors
    /// The issuer refuses the exchange or the ID token fails verification.
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<Identity, SsoError> {
        let d = self.discovery().await?;
        let url = d.token_endpoint.clone();
        let err = |message: String| SsoError::Issuer {
            url: url.clone(),
            message,
        };
        let body = with_query(
            "",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
                ("client_id", &self.config.client_id),
            ],
        );
        let body = body.trim_start_matches('?').to_owned();
        let resp = self
            .http
            .post(&url)
            .basic_auth(
                percent_encode(&self.config.client_id),
                Some(percent_encode(&self.config.client_secret)),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| err(self.http_failure(&e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| err(self.http_failure(&e)))?;
        let parsed: Result<TokenResponse, _> = serde_json::from_slice(&bytes);
        let answer = match parsed {
            Ok(t) => t,
            Err(e) => return Err(err(format!("HTTP {status}, not a token response: {e}"))),
        };
        if let Some(e) = answer.error {
            return Err(err(format!(
                "code exchange refused: {e}{}",
                answer
                    .error_description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )));
        }
        if !status.is_success() {
            return Err(err(format!("code exchange refused: HTTP {status}")));
        }
        let id_token = answer.id_token.ok_or_else(|| {
            err("the token response has no id_token (is the openid scope allowed?)".to_owned())
        })?;
        self.verify(&id_token, nonce).await
    }

    /// The key `kid` names, fetching the JWKS when it is not cached (or
    /// not known, at most once per [`JWKS_MIN_REFRESH`]).
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, SsoError> {
        let d = self.discovery().await?;
        let mut keys = self.keys.lock().await;
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            // No kid: only an issuer with one key can be understood.
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let cached = keys.set.as_ref().and_then(find);
        let jwk = match cached {
            Some(j) => j,
            None => {
                let may_fetch = keys.fetched.is_none_or(|t| t.elapsed() >= JWKS_MIN_REFRESH)
                    || keys.set.is_none();
                if may_fetch {
                    let set: JwkSet = self.get_json(&d.jwks_uri).await?;
                    keys.set = Some(set);
                    keys.fetched = Some(Instant::now());
                    tracing::info!(jwks = %d.jwks_uri, "fetched the oidc issuer's signing keys");
                }
                keys.set.as_ref().and_then(find).ok_or_else(|| {
                    SsoError::Token(match kid {
                        Some(k) => format!("no key {k:?} in the issuer's JWKS ({})", d.jwks_uri),
                        None => {
                            "the token names no key (kid) and the issuer has several".to_owned()
                        }
                    })
                })?
            }
        };
        DecodingKey::from_jwk(&jwk)
            .map_err(|e| SsoError::Token(format!("the issuer's key {kid:?} is unusable: {e}")))
    }

    /// Verifies an ID token: signature against the issuer's JWKS, `iss`,
    /// `aud` (this client), `exp`, `nbf`, `iat`, and `nonce`.
    ///
    /// # Errors
    /// [`SsoError::Token`] naming what failed.
    pub async fn verify(&self, id_token: &str, nonce: &str) -> Result<Identity, SsoError> {
        let header = jsonwebtoken::decode_header(id_token)
            .map_err(|e| SsoError::Token(format!("not a JWT: {e}")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(SsoError::Token(format!(
                "signature algorithm {:?} is not accepted (RS256/384/512, PS256, ES256/384 are)",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(id_token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            SsoError::Token(match e.kind() {
                K::ExpiredSignature => "expired (exp is in the past)".to_owned(),
                K::ImmatureSignature => "not valid yet (nbf is in the future)".to_owned(),
                K::InvalidSignature => "bad signature: not signed by the issuer's key".to_owned(),
                K::InvalidIssuer => format!("wrong issuer (iss is not {:?})", self.config.issuer),
                K::InvalidAudience => format!(
                    "wrong audience (aud does not name client {:?})",
                    self.config.client_id
                ),
                K::MissingRequiredClaim(c) => format!("the {c} claim is missing"),
                _ => e.to_string(),
            })
        })?;
        let claims = data.claims;
        let now = crate::clock::now_ms() / 1000;
        match claims.get("iat").and_then(serde_json::Value::as_i64) {
            Some(iat) if iat > now + LEEWAY_SECS as i64 => {
                return Err(SsoError::Token(
                    "issued in the future (iat is ahead of the hub's clock)".to_owned(),
                ));
            }
            Some(_) => {}
            None => return Err(SsoError::Token("the iat claim is missing".to_owned())),
        }
        match claims.get("nonce").and_then(serde_json::Value::as_str) {
            Some(n) if crate::secret::same(n.as_bytes(), nonce.as_bytes()) => {}
            Some(_) => {
                return Err(SsoError::Token(
                    "bad nonce: the token was not issued for this login".to_owned(),
                ));
            }
            None => {
                return Err(SsoError::Token("the nonce claim is missing".to_owned()));
            }
        }
        identity_of(&claims, &self.config.groups_claim)
    }
}

/// The identity in verified claims.
///
/// # Errors
/// The groups claim is there but neither a string nor a list of strings.
pub fn identity_of(claims: &serde_json::Value, groups_claim: &str) -> Result<Identity, SsoError> {
    let email = claims
        .get("email")
        .and_then(serde_json::Value::as_str)
        .filter(|e| !e.is_empty())
        // An issuer that says the address is unverified does not name the
        // user by it.
        .filter(|_| claims.get("email_verified") != Some(&serde_json::Value::Bool(false)));
    let sub = claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let subject = email.unwrap_or(sub).to_owned();
    if subject.is_empty() {
        return Err(SsoError::Token("the sub claim is empty".to_owned()));
    }
    let groups = match claims.get(groups_claim) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(g)) => vec![g.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|g| {
                g.as_str().map(str::to_owned).ok_or_else(|| {
                    SsoError::Token(format!("the {groups_claim} claim holds a non-string {g}"))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(SsoError::Token(format!(
                "the {groups_claim} claim is neither a string nor a list: {other}"
            )));
        }
    };
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| SsoError::Token("the exp claim is not a number".to_owned()))?;
    Ok(Identity {
        subject,
        groups,
        expires_ms: exp.saturating_mul(1000),
    })
}

fn http_error(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc_7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(pkce_verifier().len(), 43);
    }

    #[test]
    fn the_subject_is_the_verified_email_else_sub() {
        let c =
            serde_json::json!({"sub": "123", "email": "a@x", "exp": 10, "groups": ["ops", "dev"]});
        let id = identity_of(&c, "groups").unwrap();
        assert_eq!(id.subject, "a@x");
        assert_eq!(id.groups, ["ops", "dev"]);
        assert_eq!(id.expires_ms, 10_000);
        let c = serde_json::json!({"sub": "123", "email": "a@x", "email_verified": false, "exp": 10, "roles": "ops"});
        let id = identity_of(&c, "roles").unwrap();
        assert_eq!(id.subject, "123");
        assert_eq!(id.groups, ["ops"]);
        let c = serde_json::json!({"sub": "1", "exp": 10, "groups": [1]});
        assert!(
            identity_of(&c, "groups")
                .unwrap_err()
                .to_string()
                .contains("non-string")
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            with_query(
                "https://i/auth?x=1",
                &[
                    ("redirect_uri", "http://127.0.0.1:8/cb"),
                    ("scope", "openid email")
                ]
            ),
            "https://i/auth?x=1&redirect_uri=http%3A%2F%2F127.0.0.1%3A8%2Fcb&scope=openid%20email"
        );
    }
}
