//! Keeping credentials embedded in repository URLs out of messages.

/// What replaces the userinfo of a URL.
const MASK: &str = "***";

/// Returns `url` with any userinfo (`user:token@`) replaced by `***@`.
///
/// Both parts are masked: hosts accept a token as the user name as well as
/// the password, so neither is safe to show. Strings that are not
/// `scheme://` URLs (local paths, scp-like `host:path`) are returned as is.
pub fn redact_url(url: &str) -> String {
    match userinfo_span(url) {
        Some((start, end)) => format!("{}{MASK}{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
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
    fn redacts_messages() {
        let url = "https://user:s3cr%2Ft@example.com/r.git";
        let msg = format!("fetching {url} failed; auth s3cr/t for user:s3cr%2Ft rejected");
        let out = redact_message(&msg, url);
        assert!(!out.contains("s3cr"), "{out}");
        assert!(out.contains("https://***@example.com/r.git"), "{out}");
        assert_eq!(redact_message("plain", "/srv/repo"), "plain");
    }
}
