//! The `SsoLogin` service: how `flotilla login --sso` turns a login at
//! the identity provider into a hub session token. It takes no bearer
//! token; what it is given (a code and PKCE verifier) is only worth
//! something to the issuer, and the ID token that comes back is verified
//! here ([`crate::sso::Oidc::exchange`]) before any token is made.
//!
//! Being unauthenticated, it is rate limited ([`LoginRate`]): a token
//! bucket per peer address and one for all peers together, so a caller
//! cannot make the hub hammer its issuer's token endpoint.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto as pb;
use tonic::{Request, Response, Status};

use crate::sso::Oidc;
use crate::store::Store;

/// How often `SsoLogin` may be called: each peer address has a bucket of
/// `burst` calls, refilled with one call every `refill`; all peers
/// together have [`ALL_PEERS`] times as much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRate {
    pub burst: u32,
    pub refill: Duration,
}

impl Default for LoginRate {
    /// 10 calls at once, then one every 2 s (a login is two calls).
    fn default() -> Self {
        Self {
            burst: 10,
            refill: Duration::from_secs(2),
        }
    }
}

/// How many peers' worth of calls all peers together may make.
pub const ALL_PEERS: u32 = 50;
/// Peer buckets kept at most: past this, full buckets (peers that have
/// been quiet long enough) are dropped, and if none is, new peers are
/// refused until one is.
const MAX_PEERS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, burst: f64, refill: Duration, now: Instant) {
        let earned = now.duration_since(self.at).as_secs_f64() / refill.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + earned).min(burst);
        self.at = now;
    }

    /// Takes one call; else how long until one is available.
    fn take(&mut self, burst: f64, refill: Duration, now: Instant) -> Result<(), Duration> {
        self.refill(burst, refill, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(refill.mul_f64(1.0 - self.tokens))
        }
    }
}

/// The token buckets of [`LoginRate`].
#[derive(Debug)]
struct LoginLimiter {
    rate: LoginRate,
    peers: Mutex<HashMap<IpAddr, Bucket>>,
    all: Mutex<Bucket>,
}

impl LoginLimiter {
    fn new(rate: LoginRate) -> Self {
        let burst = f64::from(rate.burst.saturating_mul(ALL_PEERS));
        Self {
            rate,
            peers: Mutex::default(),
            all: Mutex::new(Bucket::full(burst, Instant::now())),
        }
    }

    /// Takes one call for `peer` (and from the bucket of all peers).
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` naming the peer and when to try again.
    fn take(&self, method: &str, peer: Option<IpAddr>) -> Result<(), Status> {
        let now = Instant::now();
        let burst = f64::from(self.rate.burst);
        let refused = |who: String, wait: Duration| {
            if let Some(suppressed) = crate::listener::throttle().allow(("sso_login", "rate")) {
                tracing::warn!(peer = %who, method, suppressed, "too many SsoLogin calls (logged at most every 10s)");
            }
            Status::resource_exhausted(format!(
                "SsoLogin.{method}: too many login calls {who}; try again in {:.1}s",
                wait.as_secs_f64().max(0.1)
            ))
        };
        if let Some(ip) = peer {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
                peers.retain(|_, b| {
                    b.refill(burst, self.rate.refill, now);
                    b.tokens < burst
                });
                if peers.len() >= MAX_PEERS {
                    return Err(refused(
                        "from too many addresses".to_owned(),
                        self.rate.refill,
                    ));
                }
            }
            peers
                .entry(ip)
                .or_insert_with(|| Bucket::full(burst, now))
                .take(burst, self.rate.refill, now)
                .map_err(|wait| refused(format!("from {ip}"), wait))?;
        }
        let all_burst = burst * f64::from(ALL_PEERS);
        let all_refill = self.rate.refill.div_f64(f64::from(ALL_PEERS));
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(all_burst, all_refill, now)
            .map_err(|wait| refused("from all addresses together".to_owned(), wait))
    }
}

/// The service; `oidc` is `None` when SSO is not configured.
#[derive(Clone, Debug)]
pub struct SsoLoginService {
    store: Store,
    oidc: Option<Arc<Oidc>>,
    limiter: Arc<LoginLimiter>,
}

impl SsoLoginService {
    pub fn new(store: Store, oidc: Option<Arc<Oidc>>, rate: LoginRate) -> Self {
        Self {
            store,
            oidc,
            limiter: Arc::new(LoginLimiter::new(rate)),
        }
    }

    fn oidc(&self) -> Result<&Oidc, Status> {
        self.oidc.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "SSO is not configured on this hub (--oidc-issuer); log in with an API token",
            )
        })
    }
}

/// Whether `uri` is a loopback redirect a native client may use (RFC 8252
/// section 7.3): plain HTTP to 127.0.0.1, [::1] or localhost, any port.
pub fn is_loopback_redirect(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => authority,
    };
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
}

fn check_redirect(uri: &str) -> Result<(), Status> {
    if is_loopback_redirect(uri) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "redirect_uri {uri:?} is not a loopback address (http://127.0.0.1:PORT/...)"
        )))
    }
}

#[tonic::async_trait]
impl pb::sso_login_server::SsoLogin for SsoLoginService {
    async fn start(
        &self,
        req: Request<pb::SsoStartRequest>,
    ) -> Result<Response<pb::SsoStartResponse>, Status> {
        self.limiter
            .take("Start", req.remote_addr().map(|a| a.ip()))?;
        let oidc = self.oidc()?;
        let r = req.into_inner();
        check_redirect(&r.redirect_uri)?;
        for (name, v) in [
            ("state", &r.state),
            ("nonce", &r.nonce),
            ("code_challenge", &r.code_challenge),
        ] {
            if v.len() < 16 {
                return Err(Status::invalid_argument(format!(
                    "{name} must be at least 16 random characters"
                )));
            }
        }
        let url = oidc
            .authorization_url(&r.redirect_uri, &r.state, &r.nonce, &r.code_challenge)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::SsoStartResponse {
            authorization_url: url,
        }))
    }

    async fn finish(
        &self,
        req: Request<pb::SsoFinishRequest>,
    ) -> Result<Response<pb::SsoFinishResponse>, Status> {
        self.limiter
            .take("Finish", req.remote_addr().map(|a| a.ip()))?;
        let oidc = self.oidc()?;
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        check_redirect(&r.redirect_uri)?;
        let identity = oidc
            .exchange(&r.code, &r.code_verifier, &r.redirect_uri, &r.nonce)
            .await
            .map_err(|e| {
                tracing::info!(peer = %peer, reason = %e, "cli sso login refused");
                Status::unauthenticated(e.to_string())
            })?;
        let (secret, rec) = super::auth::sso_session_token(&self.store, &identity)?;
        tracing::info!(subject = %identity.subject, groups = ?identity.groups, token = %rec.name, peer = %peer, "cli sso login");
        Ok(Response::new(pb::SsoFinishResponse {
            token: secret,
            subject: identity.subject,
            groups: identity.groups,
            expires_unix_ms: identity.expires_ms,
            token_name: rec.name,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_past_the_burst_and_refill_in_time() {
        let rate = LoginRate {
            burst: 3,
            refill: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut b = Bucket::full(3.0, t0);
        for _ in 0..3 {
            assert!(b.take(3.0, rate.refill, t0).is_ok());
        }
        let wait = b.take(3.0, rate.refill, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        let half = t0 + Duration::from_secs(5);
        assert_eq!(
            b.take(3.0, rate.refill, half).unwrap_err(),
            Duration::from_secs(5)
        );
        assert!(
            b.take(3.0, rate.refill, t0 + Duration::from_secs(10))
                .is_ok()
        );
        // Never more than the burst, however long it waited.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(3.0, rate.refill, later).is_ok());
        }
        assert!(b.take(3.0, rate.refill, later).is_err());
    }

    #[test]
    fn one_peer_is_refused_others_are_not() {
        let limiter = LoginLimiter::new(LoginRate {
            burst: 2,
            refill: Duration::from_secs(3600),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.take("Start", Some(a)).is_ok());
        assert!(limiter.take("Finish", Some(a)).is_ok());
        let e = limiter.take("Start", Some(a)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message()
                .contains("SsoLogin.Start: too many login calls from 192.0.2.1"),
            "{}",
            e.message()
        );
        assert!(limiter.take("Start", Some(b)).is_ok());
    }

    #[test]
    fn only_loopback_redirects_are_accepted() {
        for ok in [
            "http://127.0.0.1:5555/callback",
            "http://localhost:1/x",
            "http://[::1]:80/",
        ] {
            assert!(is_loopback_redirect(ok), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:5555/callback",
            "http://127.0.0.1.evil.example/cb",
            "http://evil.example/cb?127.0.0.1",
            "http://localhost@evil.example/",
        ] {
            assert!(!is_loopback_redirect(bad), "{bad}");
        }
    }
}
