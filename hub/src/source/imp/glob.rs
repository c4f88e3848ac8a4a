//! Glob patterns with the semantics Argo CD uses for `directory.include`
//! and `directory.exclude` (gobwas/glob compiled without separators):
//!
//! * `*` and `**` match any run of characters, `/` included, so
//!   `*.yaml` matches `sub/a.yaml` and `**/*.yaml` needs a `/` (it does
//!   not match a top-level `a.yaml`);
//! * `?` matches one character;
//! * `[abc]`, `[a-z]` and `[!a-z]` match one character of (not of) a set;
//! * `{a,b}` matches any of the comma-separated alternatives, which are
//!   patterns themselves and may nest;
//! * `\` makes the next character literal.
//!
//! The whole path must match. Patterns compile to a regular expression, so
//! matching is linear in the path whatever the pattern.

use regex::Regex;

/// A compiled pattern.
#[derive(Clone, Debug)]
pub(crate) struct Pattern(Regex);

impl Pattern {
    /// Compiles `glob`.
    ///
    /// # Errors
    /// An unclosed `[` or `{`, an empty or reversed range, a trailing `\`,
    /// or a pattern too large to compile.
    pub(crate) fn new(glob: &str) -> Result<Self, String> {
        let chars: Vec<char> = glob.chars().collect();
        let mut parser = Parser {
            chars: &chars,
            at: 0,
        };
        let body = parser.sequence(0)?;
        if parser.at < chars.len() {
            // Only a stray `}` or `,` at depth 0 can stop the sequence, and
            // both are literal there.
            return Err(format!("unexpected {:?}", chars[parser.at]));
        }
        regex::RegexBuilder::new(&format!("^(?s:{body})$"))
            .size_limit(1 << 20)
            .build()
            .map(Pattern)
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => "pattern is too large".to_owned(),
                other => other.to_string(),
            })
    }

    /// Whether the whole of `path` matches.
    pub(crate) fn is_match(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

struct Parser<'a> {
    chars: &'a [char],
    at: usize,
}

impl Parser<'_> {
    /// A sequence up to the end, or (inside `{}`, `depth > 0`) up to the
    /// `,` or `}` that ends the alternative.
    fn sequence(&mut self, depth: usize) -> Result<String, String> {
        let mut out = String::new();
        while let Some(&c) = self.chars.get(self.at) {
            match c {
                ',' | '}' if depth > 0 => break,
                '*' => {
                    self.at += 1;
                    out.push_str(".*");
                }
                '?' => {
                    self.at += 1;
                    out.push('.');
                }
                '\\' => {
                    let Some(&next) = self.chars.get(self.at + 1) else {
                        return Err("pattern ends with an escaping \\".to_owned());
                    };
                    self.at += 2;
                    out.push_str(&regex::escape(&next.to_string()));
                }
                '[' => out.push_str(&self.class()?),
                '{' => out.push_str(&self.alternatives(depth + 1)?),
                other => {
                    self.at += 1;
                    out.push_str(&regex::escape(&other.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// `{a,b,…}` starting at `{`.
    fn alternatives(&mut self, depth: usize) -> Result<String, String> {
        self.at += 1;
        let mut options = Vec::new();
        loop {
            options.push(self.sequence(depth)?);
            match self.chars.get(self.at) {
                Some(',') => self.at += 1,
                Some('}') => {
                    self.at += 1;
                    return Ok(format!("(?:{})", options.join("|")));
                }
                _ => return Err("unclosed {".to_owned()),
            }
        }
    }

    /// `[…]` starting at `[`.
    fn class(&mut self) -> Result<String, String> {
        self.at += 1;
        let negated = self.chars.get(self.at) == Some(&'!');
        if negated {
            self.at += 1;
        }
        let mut items = String::new();
        let mut count = 0;
        loop {
            let Some(&c) = self.chars.get(self.at) else {
                return Err("unclosed [".to_owned());
            };
            if c == ']' && count > 0 {
                self.at += 1;
                break;
            }
            let c = if c == '\\' {
                self.at += 1;
                *self.chars.get(self.at).ok_or("unclosed [")?
            } else {
                c
            };
            self.at += 1;
            count += 1;
            if self.chars.get(self.at) == Some(&'-')
                && self.chars.get(self.at + 1).is_some_and(|n| *n != ']')
            {
                let hi = self.chars[self.at + 1];
                self.at += 2;
                if hi < c {
                    return Err(format!("range {c}-{hi} is out of order"));
                }
                items.push_str(&class_char(c));
                items.push('-');
                items.push_str(&class_char(hi));
            } else {
                items.push_str(&class_char(c));
            }
        }
        Ok(format!("[{}{items}]", if negated { "^" } else { "" }))
    }
}

/// A character escaped for use inside a regex class.
fn class_char(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\x{{{:x}}}", c as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_argo_cd() {
        // (pattern, path, matches)
        let table: &[(&str, &str, bool)] = &[
            ("*.yaml", "a.yaml", true),
            ("*.yaml", "sub/a.yaml", true),
            ("*.yaml", "a.yml", false),
            ("**/*.yaml", "a.yaml", false),
            ("**/*.yaml", "sub/deep/a.yaml", true),
            ("sub/*", "sub/a.yaml", true),
            ("sub/*", "other/sub/a.yaml", false),
            ("*sub/*", "other/sub/a.yaml", true),
            ("?.yaml", "a.yaml", true),
            ("?.yaml", "ab.yaml", false),
            ("{app.yaml,*.json}", "app.yaml", true),
            ("{app.yaml,*.json}", "x/y.json", true),
            ("{app.yaml,*.json}", "db.yaml", false),
            ("{a,{b,c}d}.yaml", "cd.yaml", true),
            ("{a,{b,c}d}.yaml", "c.yaml", false),
            ("[abc].yaml", "b.yaml", true),
            ("[!abc].yaml", "b.yaml", false),
            ("[!abc].yaml", "d.yaml", true),
            ("[a-c]*.yaml", "cm.yaml", true),
            ("[a-c]*.yaml", "dm.yaml", false),
            ("a,b.yaml", "a,b.yaml", true),
            ("a}.yaml", "a}.yaml", true),
            ("\\*.yaml", "*.yaml", true),
            ("\\*.yaml", "a.yaml", false),
            ("a+b(c).yaml", "a+b(c).yaml", true),
            ("[.]yaml", ".yaml", true),
            ("", "", true),
            ("*", "anything/at/all", true),
        ];
        for (glob, path, want) in table {
            let p = Pattern::new(glob).unwrap_or_else(|e| panic!("{glob}: {e}"));
            assert_eq!(p.is_match(path), *want, "{glob:?} on {path:?}");
        }
    }

    #[test]
    fn bad_patterns_are_errors() {
        for (glob, want) in [
            ("{a,b", "unclosed {"),
            ("[ab", "unclosed ["),
            ("[z-a]", "out of order"),
            ("a\\", "escaping"),
        ] {
            let err = Pattern::new(glob).unwrap_err();
            assert!(err.contains(want), "{glob}: {err}");
        }
    }

    #[test]
    fn many_alternatives_do_not_blow_up() {
        let glob = "{a,b}".repeat(40);
        let p = Pattern::new(&glob).expect("compiles");
        assert!(p.is_match(&"ab".repeat(20)));
    }
}
