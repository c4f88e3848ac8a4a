//! The three ways Argo CD's `git` generator matches paths, each written out
//! so that Flotilla selects exactly the directories and files Argo CD does:
//!
//! - directories: Go's `path.Match` (`*` and `?` stop at `/`; no `**`, no
//!   `{a,b}`), see [`go_path_match`];
//! - files, by default: `git ls-files -- PATTERN` (a pathspec: `*` also
//!   matches `/`, a pattern without wildcards names a file or a whole
//!   directory), see [`git_pathspec_match`];
//! - files, with the opt-in "new globbing" (`--appset-enable-new-git-file-globbing`,
//!   Argo CD's `--enable-new-git-file-globbing`): doublestar (`**` matches
//!   any number of directories, `*` stops at `/`, `{a,b}` alternatives),
//!   see [`doublestar_match`].

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// `*`: any run of characters (with `stop_at_slash`, none of them `/`).
    Star,
    /// `?`: one character (with `stop_at_slash`, not `/`).
    Any,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Literal(char),
}

/// Pattern dialects: which negation marks a class accepts and whether a
/// `]` right after `[` is literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Go `path.Match`: `[^...]` only; `]` and `-` must be escaped.
    Go,
    /// git wildmatch and doublestar: `[!...]` or `[^...]`; a leading `]`
    /// is literal.
    Shell,
}

fn tokenize(pattern: &str, dialect: Dialect) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push(Token::Star),
            '?' => out.push(Token::Any),
            '\\' => match chars.next() {
                Some(e) => out.push(Token::Literal(e)),
                None => return Err("a trailing \\ escapes nothing".into()),
            },
            '[' => {
                let mut negated = false;
                if chars.peek() == Some(&'^')
                    || (dialect == Dialect::Shell && chars.peek() == Some(&'!'))
                {
                    negated = true;
                    chars.next();
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(c) = chars.next() else {
                        return Err("an unterminated [ character class".into());
                    };
                    if c == ']' && !(first && dialect == Dialect::Shell) {
                        break;
                    }
                    first = false;
                    let lo = if c == '\\' {
                        chars
                            .next()
                            .ok_or_else(|| "a trailing \\ escapes nothing".to_owned())?
                    } else {
                        if dialect == Dialect::Go && c == '-' {
                            return Err("an unescaped - in a character class".into());
                        }
                        c
                    };
                    let hi = if chars.peek() == Some(&'-') {
                        chars.next();
                        match chars.next() {
                            Some(']') if dialect == Dialect::Shell => {
                                // `[a-]`: a trailing `-` is literal.
                                ranges.push((lo, lo));
                                ranges.push(('-', '-'));
                                break;
                            }
                            Some('\\') => chars
                                .next()
                                .ok_or_else(|| "a trailing \\ escapes nothing".to_owned())?,
                            Some(h) => h,
                            None => return Err("an unterminated [ character class".into()),
                        }
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err(format!("the range {lo}-{hi} is reversed"));
                    }
                    ranges.push((lo, hi));
                }
                if ranges.is_empty() {
                    return Err("an empty [] character class".into());
                }
                out.push(Token::Class { negated, ranges });
            }
            c => out.push(Token::Literal(c)),
        }
    }
    Ok(out)
}

/// Whether `tokens` match all of `name`. With `stop_at_slash`, `*`, `?`
/// and classes never match `/`.
fn matches(tokens: &[Token], name: &[char], stop_at_slash: bool) -> bool {
    // Dynamic programming over (token, character) positions: linear in
    // the product, whatever the number of stars.
    let n = name.len();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    for t in tokens {
        let mut next = vec![false; n + 1];
        match t {
            Token::Star => {
                let mut open = false;
                for i in 0..=n {
                    if reach[i] {
                        open = true;
                    }
                    if open {
                        next[i] = true;
                    }
                    if i < n && stop_at_slash && name[i] == '/' {
                        open = false;
                    }
                }
            }
            single => {
                for i in 0..n {
                    if reach[i] && single_matches(single, name[i], stop_at_slash) {
                        next[i + 1] = true;
                    }
                }
            }
        }
        reach = next;
        if !reach.iter().any(|r| *r) {
            return false;
        }
    }
    reach[n]
}

fn single_matches(t: &Token, c: char, stop_at_slash: bool) -> bool {
    match t {
        Token::Star => true,
        Token::Any => !(stop_at_slash && c == '/'),
        Token::Literal(l) => *l == c,
        Token::Class { negated, ranges } => {
            if stop_at_slash && c == '/' {
                return false;
            }
            ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
        }
    }
}

/// Go's `path.Match(pattern, name)`, which Argo CD's directory generator
/// uses: `*` is any run of non-`/` characters, `?` one non-`/` character,
/// `[...]`/`[^...]` a class, `\` escapes.
///
/// # Errors
/// A malformed pattern (Go's `ErrBadPattern`), with the reason.
pub fn go_path_match(pattern: &str, name: &str) -> Result<bool, String> {
    let tokens = tokenize(pattern, Dialect::Go)?;
    let name: Vec<char> = name.chars().collect();
    Ok(matches(&tokens, &name, true))
}

/// Checks a pattern for [`go_path_match`] without matching anything.
///
/// # Errors
/// A malformed pattern, with the reason.
pub fn check_go_pattern(pattern: &str) -> Result<(), String> {
    tokenize(pattern, Dialect::Go).map(|_| ())
}

/// Whether `git ls-files -- PATTERN` run at the repository root lists
/// `path` (Argo CD's default file globbing). A pathspec without wildcard
/// characters names a file or every file below a directory; with them it
/// is matched against the whole path and `*` (like `**`) also matches
/// `/`. An empty pattern or `.` names the whole repository.
///
/// # Errors
/// A malformed pattern, with the reason.
pub fn git_pathspec_match(pattern: &str, path: &str) -> Result<bool, String> {
    let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
    if pattern.is_empty() || pattern == "." {
        return Ok(true);
    }
    // Git compares the part before the first wildcard literally, then
    // matches the rest with wildmatch (no WM_PATHNAME).
    let literal_len = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
    let literal = &pattern[..literal_len];
    let names_it = path == pattern
        || (path.starts_with(pattern)
            && (pattern.ends_with('/') || path[pattern.len()..].starts_with('/')));
    if literal_len == pattern.len() {
        return Ok(names_it);
    }
    if names_it {
        return Ok(true);
    }
    if !path.starts_with(literal) {
        // Still a syntax check, so a bad pattern fails whatever the tree.
        tokenize(pattern, Dialect::Shell)?;
        return Ok(false);
    }
    let tokens = tokenize(pattern, Dialect::Shell)?;
    let name: Vec<char> = path.chars().collect();
    Ok(matches(&tokens, &name, false))
}

/// doublestar's `Match(pattern, path)`, used by Argo CD's opt-in "new"
/// file globbing: components are separated by `/`; a `**` component
/// matches zero or more components; elsewhere `*` and `?` stop at `/`;
/// `{a,b}` lists alternatives; `[...]`, `[!...]`, `[^...]` are classes.
///
/// # Errors
/// A malformed pattern, with the reason.
pub fn doublestar_match(pattern: &str, path: &str) -> Result<bool, String> {
    let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
    let path_parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for alternative in expand_braces(pattern)? {
        let mut parts = Vec::new();
        for comp in alternative.split('/').filter(|c| !c.is_empty()) {
            if comp == "**" {
                parts.push(None);
            } else {
                parts.push(Some(tokenize(comp, Dialect::Shell)?));
            }
        }
        if components_match(&parts, &path_parts) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn components_match(pattern: &[Option<Vec<Token>>], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((None, rest)) => (0..=path.len()).any(|skip| components_match(rest, &path[skip..])),
        Some((Some(tokens), rest)) => match path.split_first() {
            Some((first, others)) => {
                let name: Vec<char> = first.chars().collect();
                matches(tokens, &name, true) && components_match(rest, others)
            }
            None => false,
        },
    }
}

/// Expands `{a,b}` alternatives (nested allowed, `\` escapes) into every
/// plain pattern they stand for.
fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    // Find the first top-level `{` and its matching `}`.
    let mut i = 0;
    let mut open = None;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '{' => {
                open = Some(i);
                break;
            }
            _ => {}
        }
        i += 1;
    }
    let Some(start) = open else {
        return Ok(vec![pattern.to_owned()]);
    };
    let mut depth = 0;
    let mut commas = Vec::new();
    let mut end = None;
    let mut j = start;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 1,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(j);
                    break;
                }
            }
            ',' if depth == 1 => commas.push(j),
            _ => {}
        }
        j += 1;
    }
    let end = end.ok_or_else(|| "an unterminated { alternative".to_owned())?;
    let prefix: String = chars[..start].iter().collect();
    let suffix: String = chars[end + 1..].iter().collect();
    let mut bounds = vec![start];
    bounds.extend(&commas);
    bounds.push(end);
    let mut out = Vec::new();
    for w in bounds.windows(2) {
        let alt: String = chars[w[0] + 1..w[1]].iter().collect();
        for tail in expand_braces(&format!("{alt}{suffix}"))? {
            out.push(format!("{prefix}{tail}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `path.Match`, rows after the table in Go's `path/match_test.go`
    /// and the cases Argo CD's directory generator tests rely on.
    #[test]
    fn go_path_match_table() {
        let rows: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            // Argo CD directory generator: one level only, `**` is `*`.
            (
                "applicationset/examples/*",
                "applicationset/examples/git",
                true,
            ),
            ("apps/*", "apps/a/b", false),
            ("apps/**", "apps/a/b", false),
            ("apps/**", "apps/a", true),
            ("apps/{a,b}", "apps/a", false),
        ];
        for (pattern, name, want) in rows {
            assert_eq!(
                go_path_match(pattern, name).unwrap(),
                *want,
                "path.Match({pattern:?}, {name:?})"
            );
        }
        for bad in ["[", "a[", "[^", "ab\\", "[-]", "[x-]", "a[]"] {
            assert!(go_path_match(bad, "x").is_err(), "{bad:?} is a bad pattern");
        }
    }

    /// `git ls-files -- PATTERN` (git's pathspec matching, without magic),
    /// as Argo CD's default file globbing uses it; rows follow the
    /// examples of Argo CD's Generators-Git-File-Globbing.md.
    #[test]
    fn git_pathspec_table() {
        let rows: &[(&str, &str, bool)] = &[
            // `*` crosses directories: the greedy behaviour the doc shows.
            (
                "cluster-charts/*/*/values.yaml",
                "cluster-charts/cluster1/mychart/values.yaml",
                true,
            ),
            (
                "cluster-charts/*/*/values.yaml",
                "cluster-charts/cluster1/mychart/charts/mysubchart/values.yaml",
                true,
            ),
            ("some-path/*.yaml", "some-path/a.yaml", true),
            ("some-path/*.yaml", "some-path/deep/er/a.yaml", true),
            ("some-path/*.yaml", "other/some-path/a.yaml", false),
            ("**/config.json", "a/b/config.json", true),
            // Needs the `/` the pattern has.
            ("**/config.json", "config.json", false),
            ("*.json", "config.json", true),
            ("*.json", "deep/config.json", true),
            ("config?.json", "config1.json", true),
            (
                "cluster-config/[ab]*/config.json",
                "cluster-config/a/x/config.json",
                true,
            ),
            (
                "cluster-config/[!ab]*/config.json",
                "cluster-config/a/config.json",
                false,
            ),
            // No wildcards: a file, or every file below a directory.
            ("apps/app-one.json", "apps/app-one.json", true),
            ("apps", "apps/app-one.json", true),
            ("apps/", "apps/x/y.json", true),
            ("apps", "apps-old/x.json", false),
            ("", "anything/at/all", true),
            (".", "anything", true),
            // Hidden files are listed like any other.
            ("*.json", ".github/x.json", true),
        ];
        for (pattern, path, want) in rows {
            assert_eq!(
                git_pathspec_match(pattern, path).unwrap(),
                *want,
                "git ls-files -- {pattern:?} lists {path:?}"
            );
        }
        assert!(git_pathspec_match("a/[b", "a/b").is_err());
    }

    /// doublestar `Match`, rows after the excerpt of doublestar's
    /// documentation in Argo CD's Generators-Git-File-Globbing.md.
    #[test]
    fn doublestar_table() {
        let rows: &[(&str, &str, bool)] = &[
            ("grandparent/**/child?", "grandparent/parent/child1", true),
            ("**/child*", "grandparent/parent/child2", true),
            ("**/parent/*", "grandparent/parent/child1", true),
            ("**", "grandparent/parent/child1", true),
            ("**/config.json", "config.json", true),
            // `*` stops at `/` in this mode.
            (
                "cluster-charts/*/*/values.yaml",
                "cluster-charts/cluster1/mychart/values.yaml",
                true,
            ),
            (
                "cluster-charts/*/*/values.yaml",
                "cluster-charts/cluster1/mychart/charts/mysubchart/values.yaml",
                false,
            ),
            ("some-path/*.yaml", "some-path/a.yaml", true),
            ("some-path/*.yaml", "some-path/deep/a.yaml", false),
            ("apps/{one,two}.json", "apps/two.json", true),
            ("apps/{one,two}.json", "apps/three.json", false),
            ("apps/{x,y/z}/c.json", "apps/y/z/c.json", true),
            ("a/**/b/**/c", "a/b/c", true),
            ("a/**/b/**/c", "a/x/y/b/z/c", true),
            // A `**` inside a component is a plain `*`.
            ("a/b**", "a/bcd", true),
            ("a/b**", "a/b/cd", false),
            ("[!a]*/x", "b/x", true),
            ("[^a]*/x", "a/x", false),
        ];
        for (pattern, path, want) in rows {
            assert_eq!(
                doublestar_match(pattern, path).unwrap(),
                *want,
                "doublestar.Match({pattern:?}, {path:?})"
            );
        }
        assert!(doublestar_match("a/{b", "a/b").is_err());
    }
}
