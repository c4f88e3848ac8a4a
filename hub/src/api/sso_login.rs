//! The `SsoLogin` service: how `flotilla login --sso` turns a login at
//! the identity provider into a hub session token. It takes no bearer
//! token; what it is given (a code and PKCE verifier) is only worth
//! something to the issuer, and the ID token that comes back is verified
//! here ([`crate::sso::Oidc::exchange`]) before any token is made.

use std::sync::Arc;

use flotilla_proto as pb;
use tonic::{Request, Response, Status};

use crate::sso::Oidc;
use crate::store::Store;

/// The service; `oidc` is `None` when SSO is not configured.
#[derive(Clone, Debug)]
pub struct SsoLoginService {
    store: Store,
    oidc: Option<Arc<Oidc>>,
}

impl SsoLoginService {
    pub fn new(store: Store, oidc: Option<Arc<Oidc>>) -> Self {
        Self { store, oidc }
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
