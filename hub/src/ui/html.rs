//! HTML escaping and the page frame. Every value that reaches a page goes
//! through [`esc`] (text and attribute values alike), so a name, label or
//! message from Git or a cluster cannot inject markup.

use std::fmt::Write as _;

/// `s` escaped for HTML text and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a URL path segment or query value.
pub fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Unix milliseconds as a UTC timestamp (seconds), "-" for 0.
pub fn time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_owned();
    }
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => ms.to_string(),
    }
}

/// Who is looking at a page, as the pages need it.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub token_name: String,
    pub can_write: bool,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
}

impl Viewer {
    /// A POST form opening tag with the CSRF field; `class` names it for
    /// styling and tests.
    pub fn form(&self, action: &str, class: &str) -> String {
        format!(
            "<form method=\"post\" action=\"{}\" class=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(action),
            esc(class),
            esc(&self.csrf)
        )
    }
}

/// The whole document around a page's `<main>`.
pub fn layout(title: &str, viewer: Option<&Viewer>, flash: Option<&str>, main: &str) -> String {
    let mut nav = String::new();
    if let Some(v) = viewer {
        let _ = write!(
            nav,
            "<nav><a href=\"/\" class=\"brand\">Flotilla</a><a href=\"/\">Overview</a><a href=\"/clusters\">Clusters</a><a href=\"/repos\">Repositories</a><a href=\"/appsets\">ApplicationSets</a><span class=\"who\" id=\"who\">{} ({})</span>{}<button type=\"submit\">Log out</button></form></nav>",
            esc(&v.token_name),
            if v.can_write { "admin" } else { "read-only" },
            v.form("/logout", "logout"),
        );
    }
    let flash = flash
        .map(|f| format!("<div id=\"flash\" class=\"flash\">{}</div>", esc(f)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Flotilla</title><link rel=\"stylesheet\" href=\"/static/ui.css\"><script src=\"/static/ui.js\" defer></script></head><body>{nav}{flash}<main id=\"main\">{main}</main></body></html>",
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            esc("<script>alert(\"x\")</script>&'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn url_parts_are_percent_encoded() {
        assert_eq!(url_part("a b/c?d=e&f"), "a%20b%2Fc%3Fd%3De%26f");
        assert_eq!(url_part("env=prod"), "env%3Dprod");
    }

    #[test]
    fn forms_carry_the_csrf_token() {
        let v = Viewer {
            token_name: "admin".into(),
            can_write: true,
            csrf: "abc\"".into(),
        };
        let f = v.form("/apps/x/sync", "sync");
        assert!(f.contains("name=\"csrf\" value=\"abc&quot;\""), "{f}");
    }
}
