//! `flotilla login --sso`: the authorization code flow with PKCE for a
//! native client (RFC 8252). The CLI listens on 127.0.0.1 on a free port,
//! sends the user's browser to the identity provider (through the hub's
//! `SsoLogin.Start`, which knows the issuer and client id), receives the
//! redirect with the code, and hands code and PKCE verifier to the hub
//! (`SsoLogin.Finish`), which exchanges them with its client secret,
//! verifies the ID token and answers with a hub session token.

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_proto as pb;
use pb::sso_login_client::SsoLoginClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{self, resolve};
use super::exit::usage;
use super::{Global, channel, status_err};
use crate::sso::{pkce_challenge, pkce_verifier, random_token};

/// How long the CLI waits for the browser to come back.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest request head the callback listener reads.
const MAX_HEAD: usize = 16 * 1024;

/// Runs the login and saves the session token as a context.
///
/// # Errors
/// The hub has no SSO, the provider refused, the callback did not come
/// within [`CALLBACK_TIMEOUT`], its state did not match, or the hub
/// refused the ID token.
pub(super) async fn login(g: &Global, name: Option<String>, no_browser: bool) -> Result<()> {
    let r = resolve(g)?;
    let ch = channel(&r).await?;
    let mut client = SsoLoginClient::new(ch);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("listening on 127.0.0.1 for the login callback")?;
    let port = listener.local_addr()?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let state = random_token();
    let nonce = random_token();
    let verifier = pkce_verifier();
    let url = client
        .start(pb::SsoStartRequest {
            redirect_uri: redirect_uri.clone(),
            state: state.clone(),
            nonce: nonce.clone(),
            code_challenge: pkce_challenge(&verifier),
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .authorization_url;
    eprintln!("To log in, open this URL in a browser:\n{url}");
    if !no_browser {
        open_browser(&url);
    }
    let code = tokio::time::timeout(CALLBACK_TIMEOUT, wait_for_code(&listener, &state))
        .await
        .map_err(|_| {
            usage(format!(
                "no login callback within {}s on {redirect_uri}",
                CALLBACK_TIMEOUT.as_secs()
            ))
        })??;
    let done = client
        .finish(pb::SsoFinishRequest {
            code,
            code_verifier: verifier,
            redirect_uri,
            nonce,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    config::save_login(
        g,
        &r,
        name,
        done.token,
        Some((done.subject, done.groups, done.expires_unix_ms)),
    )
}

/// Starts the desktop's browser on `url`, if there is one; the URL was
/// printed either way.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let started = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if started.is_err() {
        eprintln!("(no {opener} here: open the URL yourself)");
    }
}

/// Serves the loopback listener until the provider's redirect to
/// `/callback` arrives; returns its code. Other paths get 404 and are
/// ignored.
async fn wait_for_code(listener: &tokio::net::TcpListener, state: &str) -> Result<String> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_default()
            .to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if path != "/callback" {
            respond(&mut conn, "404 Not Found", "not the login callback").await;
            continue;
        }
        let params = parse_query(query);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let Some(e) = get("error") {
            let desc = get("error_description").unwrap_or_default();
            respond(
                &mut conn,
                "401 Unauthorized",
                "login refused; see the terminal",
            )
            .await;
            return Err(usage(format!(
                "the identity provider refused the login: {e} {desc}"
            )));
        }
        if get("state").as_deref() != Some(state) {
            respond(
                &mut conn,
                "400 Bad Request",
                "state mismatch; see the terminal",
            )
            .await;
            return Err(usage(
                "the login callback carries another state: not the login this CLI started",
            ));
        }
        let Some(code) = get("code").filter(|c| !c.is_empty()) else {
            respond(&mut conn, "400 Bad Request", "no code; see the terminal").await;
            return Err(usage("the login callback carries no code"));
        };
        respond(
            &mut conn,
            "200 OK",
            "Logged in to Flotilla; you can close this window.",
        )
        .await;
        return Ok(code);
    }
}

async fn respond(conn: &mut tokio::net::TcpStream, status: &str, text: &str) {
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    // The browser going away changes nothing for the login.
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// `k=v&...`, percent-decoded (`+` is a space).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                    Some(Ok(v)) => {
                        out.push(v);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_queries_are_decoded() {
        let q = parse_query("code=a%2Fb+c&state=xyz&error_description=bad%20thing&x");
        assert_eq!(q[0], ("code".into(), "a/b c".into()));
        assert_eq!(q[1], ("state".into(), "xyz".into()));
        assert_eq!(q[2].1, "bad thing");
        assert_eq!(q[3], ("x".into(), String::new()));
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
