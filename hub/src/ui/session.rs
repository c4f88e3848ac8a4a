//! Browser sessions: a random id in an HttpOnly, Secure, SameSite=Strict
//! cookie names an in-memory entry holding the API token the user logged
//! in with and a per-session CSRF token. The token is checked again by the
//! API's own bearer check on every request, so a revoked token ends its
//! sessions at once; sessions end on logout, on expiry and when the hub
//! restarts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "flotilla_session";
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (the oldest goes first), so logins cannot grow
/// the hub's memory without bound.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct Session {
    /// The API token's secret, as the user gave it.
    pub secret: String,
    pub csrf: String,
    pub expires: Instant,
    /// One message shown on the next page (the result of a POST).
    pub flash: Option<String>,
}

/// The sessions of one hub.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

impl Sessions {
    /// Starts a session for `secret`; returns its id.
    pub fn create(&self, secret: String) -> String {
        self.create_within(secret, SESSION_TTL)
    }

    /// Starts a session for `secret` that ends after `ttl` or
    /// [`SESSION_TTL`], whichever is sooner (an SSO session ends with its
    /// ID token); returns its id.
    pub fn create_within(&self, secret: String, ttl: Duration) -> String {
        let id = random_hex();
        let now = Instant::now();
        let ttl = ttl.min(SESSION_TTL);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                secret,
                csrf: random_hex(),
                expires: now + ttl,
                flash: None,
            },
        );
        id
    }

    /// The live session `id`, if any.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Takes the flash message of session `id`.
    pub fn take_flash(&self, id: &str) -> Option<String> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(id).and_then(|s| s.flash.take())
    }

    /// Sets the flash message of session `id`.
    pub fn set_flash(&self, id: &str, message: String) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(id) {
            s.flash = Some(message);
        }
    }

    /// Ends session `id`.
    pub fn remove(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str) -> String {
    set_cookie_within(id, SESSION_TTL)
}

/// The `Set-Cookie` value of a new session lasting `ttl` (at most
/// [`SESSION_TTL`]).
pub fn set_cookie_within(id: &str, ttl: Duration) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        ttl.min(SESSION_TTL).as_secs()
    )
}

/// Name of the cookie binding a started SSO login to the browser that
/// started it (Lax: it must come back on the issuer's redirect).
pub const SSO_STATE_COOKIE: &str = "flotilla_sso_state";

/// The `Set-Cookie` value holding a started SSO login's state.
pub fn set_sso_state_cookie(state: &str) -> String {
    format!(
        "{SSO_STATE_COOKIE}={state}; Path=/auth/callback; HttpOnly; Secure; SameSite=Lax; Max-Age={}",
        crate::sso::LOGIN_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that ends a started SSO login.
pub fn clear_sso_state_cookie() -> String {
    format!("{SSO_STATE_COOKIE}=; Path=/auth/callback; HttpOnly; Secure; SameSite=Lax; Max-Age=0")
}

/// The value of cookie `name` in a `Cookie` header.
pub fn named_cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// The session id in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == COOKIE && !v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_http_only_secure_and_strict() {
        let c = set_cookie("abc");
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Max-Age=28800"] {
            assert!(c.contains(part), "{c}");
        }
    }

    #[test]
    fn the_session_id_is_found_among_other_cookies() {
        assert_eq!(cookie_value("a=1; flotilla_session=xyz; b=2"), Some("xyz"));
        assert_eq!(cookie_value("flotilla_session="), None);
        assert_eq!(cookie_value("other=1"), None);
    }

    #[test]
    fn sessions_end_on_logout_and_each_has_its_own_csrf_token() {
        let s = Sessions::default();
        let a = s.create("t1".into());
        let b = s.create("t1".into());
        let (sa, sb) = (s.get(&a).unwrap(), s.get(&b).unwrap());
        assert_ne!(sa.csrf, sb.csrf);
        assert_eq!(sa.csrf.len(), 64);
        s.remove(&a);
        assert!(s.get(&a).is_none());
        assert!(s.get(&b).is_some());
    }

    #[test]
    fn secrets_compare_exactly() {}
}
