//! Keeping credentials embedded in repository URLs out of messages.
//!
//! Credentials are redacted by type: a URL that is logged, put in an error
//! or returned by the API is wrapped in [`SafeUrl`], whose `Display` and
//! `Debug` never show its userinfo. Only the code that talks to the network
//! uses the bare string. `repo add` moves credentials out of the URL into
//! the stored (sealed) credentials, [`split_credentials`].

use std::fmt;

/// What replaces the userinfo of a URL.
const MASK: &str = "***";

/// A URL shown without its credentials: `Display` and `Debug` replace any
/// userinfo (`user:token@`) by `***@`.
///
/// Both parts are masked: hosts accept a token as the user name as well as
/// the password, so neither is safe to show. Strings that are not
/// `scheme://` URLs (local paths, scp-like `host:path`) show as they are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SafeUrl<'a>(pub &'a str);

impl fmt::Display for SafeUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match userinfo_span(self.0) {
            Some((start, end)) => {
                f.write_str(&self.0[..start])?;
                f.write_str(MASK)?;
                f.write_str(&self.0[end..])
            }
            None => f.write_str(self.0),
        }
    }
}

impl fmt::Debug for SafeUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// Returns `url` with any userinfo replaced by `***@` ([`SafeUrl`]).
pub fn redact_url(url: &str) -> String {
    SafeUrl(url).to_string()
}

/// A registered repository URL as shown: as it is when it carries no
/// credentials (an ssh user name such as `git@` is an address, and the
/// repository is addressed by it), else with its userinfo masked.
pub fn display_repo_url(url: &str) -> String {
    match split_credentials(url) {
        Ok((_, None)) => url.to_owned(),
        _ => redact_url(url),
    }
}

/// Credentials found in a URL's userinfo, percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlCredentials {
    /// Empty for a bare token (`https://TOKEN@host/...`): the fetch then
    /// uses its default user name.
    pub username: String,
    pub password: String,
}

impl fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlCredentials").finish_non_exhaustive()
    }
}

/// Splits the credentials off an http(s) URL: the URL without userinfo,
/// and the credentials it carried. `https://user:pass@host/r` gives `user`
/// and `pass`; `https://TOKEN@host/r` gives the token as the password. An
/// ssh user name (`ssh://git@host/r`, `git@host:r`) is an address, not a
/// credential, and stays.
///
/// # Errors
/// An ssh URL with a password in it (ssh repositories authenticate with a
/// key).
pub fn split_credentials(url: &str) -> Result<(String, Option<UrlCredentials>), String> {
    let Some((start, end)) = userinfo_span(url) else {
        return Ok((url.to_owned(), None));
    };
    let scheme = url[..start].trim_end_matches("://").to_ascii_lowercase();
    let userinfo = &url[start..end];
    if scheme != "http" && scheme != "https" {
        if userinfo.contains(':') {
            return Err(format!(
                "{} has a password in it; ssh repositories authenticate with a key (--ssh-private-key-path)",
                SafeUrl(url)
            ));
        }
        return Ok((url.to_owned(), None));
    }
    let bare = format!("{}{}", &url[..start], &url[end + 1..]);
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => UrlCredentials {
            username: percent_decode(user),
            password: percent_decode(password),
        },
        None => UrlCredentials {
            username: String::new(),
            password: percent_decode(userinfo),
        },
    };
    Ok((bare, Some(credentials)))
}

/// Byte range of the userinfo (without the `@`) in a `scheme://` URL.
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last `@` ends the userinfo: a password may itself contain `@`
    // when the URL was written without percent-encoding.
    let at = rest[..authority_len].rfind('@')?;
    Some((start, start + at))
}

/// Removes every trace of `url`'s credentials from `message`: the URL
/// itself, and its userinfo and password in raw and percent-decoded form
/// (libraries sometimes print them separately).
pub(crate) fn redact_message(message: &str, url: &str) -> String {
    let Some((start, end)) = userinfo_span(url) else {
        return message.to_owned();
    };
    let mut out = message.replace(url, &redact_url(url));
    let userinfo = &url[start..end];
    let mut secrets = vec![userinfo.to_owned(), percent_decode(userinfo)];
    for part in userinfo.split(':') {
        secrets.push(part.to_owned());
        secrets.push(percent_decode(part));
    }
    // Longest first, so a secret containing a shorter one goes as a whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        // Very short parts (a user name like `git`) would mangle unrelated
        // words, and do not carry a secret worth the noise.
        if secret.len() >= 4 {
            out = out.replace(&secret, MASK);
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo() {
        let cases = [
            (
                "https://user:tok3n@example.com/org/repo.git",
                "https://***@example.com/org/repo.git",
            ),
            (
                "https://ghp_secret@github.com/o/r",
                "https://***@github.com/o/r",
            ),
            (
                "https://u:p%40ss@host:8443/r?x=1",
                "https://***@host:8443/r?x=1",
            ),
            ("https://u:p@ss@host/r", "https://***@host/r"),
            ("ssh://git@host/r.git", "ssh://***@host/r.git"),
            (
                "https://example.com/org/repo.git",
                "https://example.com/org/repo.git",
            ),
            ("https://example.com/a@b", "https://example.com/a@b"),
            ("file:///srv/git/repo", "file:///srv/git/repo"),
            ("/srv/git/repo", "/srv/git/repo"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn safe_url_hides_credentials_in_display_and_debug() {
        let u = SafeUrl("https://user:tok3n@example.com/r.git");
        assert_eq!(u.to_string(), "https://***@example.com/r.git");
        assert_eq!(format!("{u:?}"), "\"https://***@example.com/r.git\"");
        assert!(!format!("{u} {u:?}").contains("tok3n"));
    }

    #[test]
    fn credentials_split_off_http_urls_only() {
        let (url, c) = split_credentials("https://u%40x:p%3As@host:8443/r.git?x=1").unwrap();
        assert_eq!(url, "https://host:8443/r.git?x=1");
        let c = c.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u@x", "p:s"));
        assert!(!format!("{c:?}").contains("p:s"));
        let (url, c) = split_credentials("https://ghp_token@github.com/o/r").unwrap();
        assert_eq!(url, "https://github.com/o/r");
        let c = c.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("", "ghp_token")
        );
        assert_eq!(
            split_credentials("https://github.com/o/r").unwrap(),
            ("https://github.com/o/r".to_owned(), None)
        );
        assert_eq!(
            split_credentials("ssh://git@host/r.git").unwrap(),
            ("ssh://git@host/r.git".to_owned(), None)
        );
        assert_eq!(
            split_credentials("git@host:r.git").unwrap(),
            ("git@host:r.git".to_owned(), None)
        );
        assert_eq!(
            display_repo_url("ssh://git@host/r.git"),
            "ssh://git@host/r.git"
        );
        assert_eq!(
            display_repo_url("https://u:p@host/r.git"),
            "https://***@host/r.git"
        );
        assert_eq!(
            display_repo_url("ssh://git:pw@host/r.git"),
            "ssh://***@host/r.git"
        );
        let err = split_credentials("ssh://git:pw@host/r.git").unwrap_err();
        assert!(
            err.contains("ssh://***@host/r.git") && !err.contains("pw@"),
            "{err}"
        );
    }

    #[test]
    fn redacts_messages() {
        let url = "https://user:s3cr%2Ft@example.com/r.git";
        let msg = format!("fetching {url} failed; auth s3cr/t for user:s3cr%2Ft rejected");
        let out = redact_message(&msg, url);
        assert!(!out.contains("s3cr"), "{out}");
        assert!(out.contains("https://***@example.com/r.git"), "{out}");
        assert_eq!(redact_message("plain", "/srv/repo"), "plain");
    }
}
