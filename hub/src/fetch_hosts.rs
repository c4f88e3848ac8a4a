//! The hosts the hub may fetch from at all (`--allowed-fetch-hosts`): any
//! Application can name any `repoURL`, so without a bound every app author
//! can make the hub send requests to internal addresses on every poll.
//! The check runs on the URL before any connection is made.
//!
//! Each rule is a glob (`*` any run of characters, dots included; `?` one
//! character), matched without regard to case against the URL's host, or,
//! when the rule has a port (`git.example:8443`), against `host:port` with
//! the scheme's default port filled in. Local repositories (`file://` URLs
//! and paths) have no host: only the rule `file://` allows them.

use globset::{Glob, GlobMatcher};

/// A parsed allow-list; empty allows everything.
#[derive(Clone, Debug, Default)]
pub struct FetchHosts {
    rules: Vec<(String, GlobMatcher)>,
    allow_local: bool,
}

/// What a fetch URL is reached at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A local repository (`file://` or a path).
    Local,
    /// A remote host, lower case, and its port (explicit or the scheme's).
    Remote { host: String, port: Option<u16> },
}

/// The host of `url`: `scheme://[user[:pw]@]host[:port]/...`, the scp-like
/// `user@host:path`, or a local path / `file://` URL.
pub fn target_of(url: &str) -> Target {
    let url = url.trim();
    if let Some((scheme, rest)) = url.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            return Target::Local;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_port(hostport);
        let port = port.or(match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            "ssh" | "git+ssh" | "ssh+git" => Some(22),
            "git" => Some(9418),
            _ => None,
        });
        return Target::Remote {
            host: host.to_ascii_lowercase(),
            port,
        };
    }
    // scp-like: [user@]host:path, where host has no slash before the colon.
    if let Some((before, _)) = url.split_once(':')
        && !before.contains('/')
        && !before.is_empty()
    {
        let host = before.rsplit_once('@').map_or(before, |(_, h)| h);
        return Target::Remote {
            host: host.to_ascii_lowercase(),
            port: Some(22),
        };
    }
    Target::Local
}

fn split_port(hostport: &str) -> (&str, Option<u16>) {
    // [v6]:port
    if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (h, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (hostport, None),
        },
        None => (hostport, None),
    }
}

impl FetchHosts {
    /// Parses the rules (blank ones are skipped).
    ///
    /// # Errors
    /// A rule that is not a valid glob, naming it.
    pub fn new<S: AsRef<str>>(rules: &[S]) -> Result<Self, String> {
        let mut out = Self::default();
        for r in rules {
            let r = r.as_ref().trim();
            if r.is_empty() {
                continue;
            }
            if r == "file://" {
                out.allow_local = true;
                continue;
            }
            let glob = Glob::new(&r.to_ascii_lowercase())
                .map_err(|e| format!("--allowed-fetch-hosts rule {r:?}: {e}"))?;
            out.rules.push((r.to_owned(), glob.compile_matcher()));
        }
        Ok(out)
    }

    /// Whether no rule is set (everything allowed).
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && !self.allow_local
    }

    /// Checks `url`.
    ///
    /// # Errors
    /// A message naming the host and the rules when no rule allows it.
    pub fn check(&self, url: &str) -> Result<(), String> {
        if self.is_open() {
            return Ok(());
        }
        let rules = || {
            let mut names: Vec<&str> = self.rules.iter().map(|(r, _)| r.as_str()).collect();
            if self.allow_local {
                names.push("file://");
            }
            names.join(", ")
        };
        match target_of(url) {
            Target::Local if self.allow_local => Ok(()),
            Target::Local => Err(format!(
                "local repositories are not allowed by --allowed-fetch-hosts ({}); add the rule file:// to allow them; refused before any fetch",
                rules()
            )),
            Target::Remote { host, port } => {
                let with_port = port.map(|p| format!("{host}:{p}"));
                let ok = self.rules.iter().any(|(rule, m)| {
                    if rule.contains(':') {
                        with_port.as_deref().is_some_and(|hp| m.is_match(hp))
                    } else {
                        m.is_match(&host)
                    }
                });
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "host {host:?} is not allowed by --allowed-fetch-hosts ({}); refused before any request",
                        rules()
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_found_in_every_url_form() {
        let r = |h: &str, p: Option<u16>| Target::Remote {
            host: h.into(),
            port: p,
        };
        for (url, want) in [
            (
                "https://GitHub.com/org/repo.git",
                r("github.com", Some(443)),
            ),
            (
                "https://user:pw@git.example:8443/x",
                r("git.example", Some(8443)),
            ),
            ("http://10.0.0.1/x", r("10.0.0.1", Some(80))),
            (
                "ssh://git@git.example/org/r.git",
                r("git.example", Some(22)),
            ),
            ("git@github.com:org/repo.git", r("github.com", Some(22))),
            ("https://[::1]:99/x", r("::1", Some(99))),
            ("oci://registry.example/charts", r("registry.example", None)),
            ("file:///srv/git/repo", Target::Local),
            ("/srv/git/repo", Target::Local),
            ("./relative/repo", Target::Local),
        ] {
            assert_eq!(target_of(url), want, "{url}");
        }
    }

    #[test]
    fn rules_allow_what_they_name_and_nothing_else() {
        let h = FetchHosts::new(&["github.com", "*.corp.example", "git.example:8443"]).unwrap();
        for ok in [
            "https://github.com/a/b",
            "git@github.com:a/b",
            "https://git.team.corp.example/x",
            "https://git.example:8443/x",
        ] {
            assert!(h.check(ok).is_ok(), "{ok}");
        }
        for (bad, host) in [
            ("https://evil.example/x", "evil.example"),
            ("https://corp.example/x", "corp.example"),
            ("https://git.example/x", "git.example"),
            ("http://169.254.169.254/latest", "169.254.169.254"),
            (
                "https://github.com.evil.example/x",
                "github.com.evil.example",
            ),
        ] {
            let e = h.check(bad).unwrap_err();
            assert!(
                e.contains(&format!("host {host:?}")) && e.contains("*.corp.example"),
                "{e}"
            );
        }
        assert!(h.check("file:///srv/repo").unwrap_err().contains("file://"));
        let local = FetchHosts::new(&["file://"]).unwrap();
        assert!(local.check("/srv/repo").is_ok());
        assert!(local.check("https://github.com/a").is_err());
        assert!(
            FetchHosts::new::<&str>(&[])
                .unwrap()
                .check("https://any/x")
                .is_ok()
        );
        assert!(FetchHosts::new(&["[z"]).unwrap_err().contains("\"[z\""));
    }
}
