//! Sprig's string and string-slice functions
//! (masterminds.github.io/sprig/strings.html, string_slice.html).

use gtmpl_ng::{Func, Value};
use rand::Rng;

use super::{
    Res, arg, fail, go_quote, int_arg, list_arg, new_map, string_arg, strings_value, strval, want,
    want_at_least,
};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("hello", hello),
    ("abbrev", abbrev),
    ("abbrevboth", abbrevboth),
    ("trunc", trunc),
    ("trim", trim),
    ("upper", upper),
    ("lower", lower),
    ("title", title),
    ("untitle", untitle),
    ("substr", substr),
    ("repeat", repeat),
    ("trimall", trim_all),
    ("trimAll", trim_all),
    ("trimSuffix", trim_suffix),
    ("trimPrefix", trim_prefix),
    ("nospace", nospace),
    ("initials", initials),
    ("randAlphaNum", rand_alpha_num),
    ("randAlpha", rand_alpha),
    ("randAscii", rand_ascii),
    ("randNumeric", rand_numeric),
    ("swapcase", swapcase),
    ("shuffle", shuffle),
    ("snakecase", snakecase),
    ("camelcase", camelcase),
    ("kebabcase", kebabcase),
    ("wrap", wrap),
    ("wrapWith", wrap_with),
    ("contains", contains),
    ("hasPrefix", has_prefix),
    ("hasSuffix", has_suffix),
    ("quote", quote),
    ("squote", squote),
    ("cat", cat),
    ("indent", indent),
    ("nindent", nindent),
    ("replace", replace),
    ("plural", plural),
    ("split", split),
    ("splitList", split_list),
    ("splitn", splitn),
    ("toStrings", to_strings),
    ("join", join),
    ("sortAlpha", sort_alpha),
];

fn s(name: &str, args: &[Value], i: usize) -> Result<String, gtmpl_ng::FuncError> {
    string_arg(name, args, i)
}

fn hello(args: &[Value]) -> Res {
    want("hello", args, 0)?;
    Ok(Value::from("Hello!"))
}

/// goutils' `AbbreviateFull` (byte offsets, as in Go).
fn abbreviate_full(text: &str, offset: i64, width: i64) -> Result<String, String> {
    if text.is_empty() {
        return Ok(String::new());
    }
    if width < 4 {
        return Err("minimum abbreviation width is 4".into());
    }
    let len = text.len() as i64;
    if len <= width {
        return Ok(text.to_owned());
    }
    let mut offset = offset.min(len);
    if len - offset < width - 3 {
        offset = len - (width - 3);
    }
    if offset <= 4 {
        return Ok(format!("{}...", byte_slice(text, 0, (width - 3) as usize)));
    }
    if width < 7 {
        return Err("minimum abbreviation width with offset is 7".into());
    }
    if offset + width - 3 < len {
        let rest = abbreviate_full(byte_slice(text, offset as usize, text.len()), 0, width - 3)?;
        return Ok(format!("...{rest}"));
    }
    Ok(format!(
        "...{}",
        byte_slice(text, (len - (width - 3)) as usize, text.len())
    ))
}

/// `s[from..to]` by bytes, as Go slices strings; a cut inside a character
/// keeps the whole character rather than producing invalid UTF-8.
fn byte_slice(text: &str, from: usize, to: usize) -> &str {
    let mut from = from.min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let mut to = to.clamp(from, text.len());
    while !text.is_char_boundary(to) {
        to += 1;
    }
    &text[from..to]
}

fn abbrev(args: &[Value]) -> Res {
    want("abbrev", args, 2)?;
    let width = int_arg("abbrev", args, 0)?;
    let text = s("abbrev", args, 1)?;
    if width < 4 {
        return Ok(Value::String(text));
    }
    Ok(Value::String(
        abbreviate_full(&text, 0, width).unwrap_or_default(),
    ))
}

fn abbrevboth(args: &[Value]) -> Res {
    want("abbrevboth", args, 3)?;
    let left = int_arg("abbrevboth", args, 0)?;
    let right = int_arg("abbrevboth", args, 1)?;
    let text = s("abbrevboth", args, 2)?;
    if right < 4 || left > 0 && right < 7 {
        return Ok(Value::String(text));
    }
    Ok(Value::String(
        abbreviate_full(&text, left, right).unwrap_or_default(),
    ))
}

fn trunc(args: &[Value]) -> Res {
    want("trunc", args, 2)?;
    let c = int_arg("trunc", args, 0)?;
    let text = s("trunc", args, 1)?;
    let len = text.len() as i64;
    Ok(Value::from(if c < 0 && len + c > 0 {
        byte_slice(&text, (len + c) as usize, text.len())
    } else if c >= 0 && len > c {
        byte_slice(&text, 0, c as usize)
    } else {
        &text
    }))
}

fn trim(args: &[Value]) -> Res {
    want("trim", args, 1)?;
    Ok(Value::from(s("trim", args, 0)?.trim()))
}

fn upper(args: &[Value]) -> Res {
    want("upper", args, 1)?;
    Ok(Value::from(s("upper", args, 0)?.to_uppercase()))
}

fn lower(args: &[Value]) -> Res {
    want("lower", args, 1)?;
    Ok(Value::from(s("lower", args, 0)?.to_lowercase()))
}

/// Go's deprecated `strings.Title`: the first letter of every word (after
/// anything that is not a letter, digit, `_` or `'`) upper-cased.
fn title(args: &[Value]) -> Res {
    want("title", args, 1)?;
    let text = s("title", args, 0)?;
    let mut out = String::with_capacity(text.len());
    let mut prev = ' ';
    for c in text.chars() {
        let separator = !(prev.is_alphanumeric() || prev == '_' || prev == '\'');
        if separator {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev = c;
    }
    Ok(Value::String(out))
}

fn untitle(args: &[Value]) -> Res {
    want("untitle", args, 1)?;
    let text = s("untitle", args, 0)?;
    let mut out = String::with_capacity(text.len());
    let mut next = true;
    for c in text.chars() {
        if c.is_whitespace() {
            next = true;
            out.push(c);
        } else if next {
            out.extend(c.to_lowercase());
            next = false;
        } else {
            out.push(c);
        }
    }
    Ok(Value::String(out))
}

fn substr(args: &[Value]) -> Res {
    want("substr", args, 3)?;
    let start = int_arg("substr", args, 0)?;
    let end = int_arg("substr", args, 1)?;
    let text = s("substr", args, 2)?;
    let len = text.len() as i64;
    let out_of_range = |a: i64, b: i64| {
        fail(format!(
            "error calling substr: runtime error: slice bounds out of range [{a}:{b}]"
        ))
    };
    let (from, to) = if start < 0 {
        (0, end)
    } else if end < 0 || end > len {
        (start, len)
    } else {
        (start, end)
    };
    if to < 0 || to > len || from > to {
        return Err(out_of_range(from, to));
    }
    Ok(Value::from(byte_slice(&text, from as usize, to as usize)))
}

fn repeat(args: &[Value]) -> Res {
    want("repeat", args, 2)?;
    let count = int_arg("repeat", args, 0)?;
    let text = s("repeat", args, 1)?;
    if count < 0 {
        return Err(fail("error calling repeat: strings: negative Repeat count"));
    }
    let total = (count as usize).saturating_mul(text.len());
    if total > 1 << 20 {
        return Err(fail(format!(
            "error calling repeat: {total} bytes is more than the 1048576 allowed"
        )));
    }
    Ok(Value::String(text.repeat(count as usize)))
}

fn trim_all(args: &[Value]) -> Res {
    want("trimAll", args, 2)?;
    let cut = s("trimAll", args, 0)?;
    let text = s("trimAll", args, 1)?;
    Ok(Value::from(text.trim_matches(|c| cut.contains(c))))
}

fn trim_suffix(args: &[Value]) -> Res {
    want("trimSuffix", args, 2)?;
    let suffix = s("trimSuffix", args, 0)?;
    let text = s("trimSuffix", args, 1)?;
    Ok(Value::from(text.strip_suffix(&*suffix).unwrap_or(&text)))
}

fn trim_prefix(args: &[Value]) -> Res {
    want("trimPrefix", args, 2)?;
    let prefix = s("trimPrefix", args, 0)?;
    let text = s("trimPrefix", args, 1)?;
    Ok(Value::from(text.strip_prefix(&*prefix).unwrap_or(&text)))
}

/// goutils' `DeleteWhiteSpace`, which looks at bytes: a string without
/// ASCII whitespace comes back unchanged.
fn nospace(args: &[Value]) -> Res {
    want("nospace", args, 1)?;
    let text = s("nospace", args, 0)?;
    if !text.bytes().any(is_go_space_byte) {
        return Ok(Value::String(text));
    }
    // Go re-encodes each remaining byte as a rune of that value.
    Ok(Value::String(
        text.bytes()
            .filter(|b| !is_go_space_byte(*b))
            .map(char::from)
            .collect(),
    ))
}

fn is_go_space_byte(b: u8) -> bool {
    // unicode.IsSpace over a byte widened to a rune.
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0x85 | 0xa0)
}

fn initials(args: &[Value]) -> Res {
    want("initials", args, 1)?;
    let text = s("initials", args, 0)?;
    let mut out = String::new();
    let mut gap = true;
    for b in text.bytes() {
        if is_go_space_byte(b) {
            gap = true;
        } else if gap {
            out.push(char::from(b));
            gap = false;
        }
    }
    Ok(Value::String(out))
}

fn random_from(name: &str, args: &[Value], alphabet: &[u8]) -> Res {
    want(name, args, 1)?;
    let count = int_arg(name, args, 0)?;
    if count < 0 {
        return Err(fail(format!(
            "error calling {name}: requested random string length {count} is less than 0"
        )));
    }
    if count > 1 << 20 {
        return Err(fail(format!(
            "error calling {name}: {count} characters is more than the 1048576 allowed"
        )));
    }
    let mut rng = rand::rng();
    Ok(Value::String(
        (0..count)
            .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
            .collect(),
    ))
}

const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const NUMERIC: &[u8] = b"0123456789";
const ALPHANUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

fn rand_alpha_num(args: &[Value]) -> Res {
    random_from("randAlphaNum", args, ALPHANUM)
}

fn rand_alpha(args: &[Value]) -> Res {
    random_from("randAlpha", args, ALPHA)
}

fn rand_numeric(args: &[Value]) -> Res {
    random_from("randNumeric", args, NUMERIC)
}

fn rand_ascii(args: &[Value]) -> Res {
    // goutils: printable ASCII, 32 (space) to 126 (~).
    let printable: Vec<u8> = (32u8..=126).collect();
    random_from("randAscii", args, &printable)
}

fn swapcase(args: &[Value]) -> Res {
    want("swapcase", args, 1)?;
    let text = s("swapcase", args, 0)?;
    let mut out = String::with_capacity(text.len());
    // goutils turns a lower-case letter into title case after whitespace
    // and upper case elsewhere; for every cased script but a few digraphs
    // those are the same letter.
    for c in text.chars() {
        if c.is_uppercase() {
            out.extend(c.to_lowercase());
        } else if c.is_lowercase() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
    }
    Ok(Value::String(out))
}

fn shuffle(args: &[Value]) -> Res {
    want("shuffle", args, 1)?;
    let text = s("shuffle", args, 0)?;
    let mut chars: Vec<char> = text.chars().collect();
    let mut rng = rand::rng();
    for i in (1..chars.len()).rev() {
        let j = rng.random_range(0..=i);
        chars.swap(i, j);
    }
    Ok(Value::String(chars.into_iter().collect()))
}

fn is_connector(c: char) -> bool {
    c == '-' || c == '_' || c.is_whitespace()
}

/// xstrings' `isAlphabet`: a letter that is not a CJK ideograph.
fn is_alphabet(c: char) -> bool {
    c.is_alphabetic() && !matches!(c as u32, 0x4E00..=0x9FCC | 0x3400..=0x4D85 | 0x20000..=0x2B81D)
}

fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation()
        && !is_connector(c)
        && c != '$'
        && c != '+'
        && c != '<'
        && c != '='
        && c != '>'
        && c != '^'
        && c != '`'
        && c != '|'
        && c != '~'
        || (!c.is_ascii() && !c.is_alphanumeric() && !c.is_whitespace() && !c.is_control())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Word {
    Invalid,
    Number,
    Upper,
    Alphabet,
    Connector,
    Punct,
    Other,
}

/// Splits the next word off `text` the way xstrings does for its case
/// conversions.
fn next_word(text: &str) -> (Word, &str, &str) {
    let mut chars = text.char_indices().peekable();
    let Some((_, first)) = chars.next() else {
        return (Word::Invalid, "", "");
    };
    let end_of = |pred: &dyn Fn(char) -> bool, from: usize| -> usize {
        text[from..]
            .char_indices()
            .find(|(_, c)| !pred(*c))
            .map_or(text.len(), |(i, _)| from + i)
    };
    let after_first = first.len_utf8();
    let (kind, end) = if is_connector(first) {
        (Word::Connector, end_of(&is_connector, after_first))
    } else if is_punct(first) {
        (Word::Punct, end_of(&is_punct, after_first))
    } else if first.is_uppercase() {
        match text[after_first..].chars().next() {
            Some(c) if c.is_uppercase() => {
                // A run of capitals; the last one starts the next word when a
                // lower-case letter follows ("HTTPServer" → "HTTP", "Server").
                let run_end = end_of(&|c: char| c.is_uppercase(), after_first);
                let next = text[run_end..].chars().next();
                if next.is_some_and(is_alphabet) {
                    let last = text[..run_end]
                        .chars()
                        .next_back()
                        .map_or(0, char::len_utf8);
                    (Word::Upper, run_end - last)
                } else {
                    (Word::Upper, run_end)
                }
            }
            Some(c) if is_alphabet(c) => (
                Word::Upper,
                end_of(&|c: char| is_alphabet(c) && !c.is_uppercase(), after_first),
            ),
            _ => (Word::Upper, after_first),
        }
    } else if is_alphabet(first) {
        (
            Word::Alphabet,
            end_of(&|c: char| is_alphabet(c) && !c.is_uppercase(), after_first),
        )
    } else if first.is_numeric() {
        (Word::Number, end_of(&|c: char| c.is_numeric(), after_first))
    } else {
        (
            Word::Other,
            end_of(
                &|c: char| !(is_connector(c) || is_alphabet(c) || c.is_numeric() || is_punct(c)),
                after_first,
            ),
        )
    };
    (kind, &text[..end], &text[end..])
}

fn push_lower(out: &mut String, kind: Word, word: &str, connector: char) {
    if kind != Word::Upper && kind != Word::Connector {
        out.push_str(word);
        return;
    }
    for c in word.chars() {
        if is_connector(c) {
            out.push(connector);
        } else if c.is_uppercase() {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
}

/// xstrings' `camelCaseToLowerCase`, behind `snakecase` and `kebabcase`.
fn to_lower_case(text: &str, connector: char) -> String {
    let mut out = String::new();
    if text.is_empty() {
        return out;
    }
    let (mut kind, mut word, mut rest) = next_word(text);
    while !rest.is_empty() {
        if kind != Word::Connector {
            push_lower(&mut out, kind, word, connector);
        }
        let prev = kind;
        let last = word;
        (kind, word, rest) = next_word(rest);
        match prev {
            Word::Number => {
                while kind == Word::Alphabet || kind == Word::Number {
                    push_lower(&mut out, kind, word, connector);
                    (kind, word, rest) = next_word(rest);
                }
                if !matches!(kind, Word::Invalid | Word::Punct | Word::Connector) {
                    out.push(connector);
                }
            }
            Word::Connector => push_lower(&mut out, prev, last, connector),
            Word::Punct => {}
            _ => {
                if kind != Word::Number {
                    if kind != Word::Connector && kind != Word::Punct {
                        out.push(connector);
                    }
                    continue;
                }
                if rest.is_empty() {
                    continue;
                }
                let number = word;
                (kind, word, rest) = next_word(rest);
                if kind != Word::Alphabet {
                    push_lower(&mut out, Word::Number, number, connector);
                    if kind != Word::Connector && kind != Word::Punct {
                        out.push(connector);
                    }
                    continue;
                }
                out.push(connector);
                push_lower(&mut out, Word::Number, number, connector);
                while kind == Word::Alphabet || kind == Word::Number {
                    push_lower(&mut out, kind, word, connector);
                    (kind, word, rest) = next_word(rest);
                }
                if !matches!(kind, Word::Invalid | Word::Connector | Word::Punct) {
                    out.push(connector);
                }
            }
        }
    }
    push_lower(&mut out, kind, word, connector);
    out
}

fn snakecase(args: &[Value]) -> Res {
    want("snakecase", args, 1)?;
    Ok(Value::String(to_lower_case(&s("snakecase", args, 0)?, '_')))
}

fn kebabcase(args: &[Value]) -> Res {
    want("kebabcase", args, 1)?;
    Ok(Value::String(to_lower_case(&s("kebabcase", args, 0)?, '-')))
}

/// xstrings' `ToPascalCase`: connectors dropped, the letter after each (and
/// the first) upper-cased, other letters kept.
fn camelcase(args: &[Value]) -> Res {
    want("camelcase", args, 1)?;
    let text = s("camelcase", args, 0)?;
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    let mut current = None;
    for c in chars.by_ref() {
        if !is_connector(c) {
            current = Some(c.to_uppercase().next().unwrap_or(c));
            break;
        }
        out.push(c);
    }
    let Some(mut r0) = current else {
        return Ok(Value::String(out));
    };
    for c in chars {
        let r1 = r0;
        r0 = c;
        if is_connector(r0) && is_connector(r1) {
            out.push(r1);
            continue;
        }
        if is_connector(r1) {
            r0 = r0.to_uppercase().next().unwrap_or(r0);
        } else {
            out.push(r1);
        }
    }
    out.push(r0);
    Ok(Value::String(out))
}

/// goutils' `WrapCustom` (byte-based, as in Go).
fn wrap_custom(text: &str, width: i64, newline: &str, long_words: bool) -> String {
    if text.is_empty() {
        return String::new();
    }
    let newline = if newline.is_empty() { "\n" } else { newline };
    let width = width.max(1) as usize;
    let bytes = text.as_bytes();
    let len = bytes.len();
    let mut offset = 0usize;
    let mut out = String::new();
    while len - offset > width {
        if bytes[offset] == b' ' {
            offset += 1;
            continue;
        }
        let end = (width + offset + 1).min(len);
        match text[offset..end].rfind(' ') {
            Some(i) => {
                let at = offset + i;
                out.push_str(byte_slice(text, offset, at));
                out.push_str(newline);
                offset = at + 1;
            }
            None if long_words => {
                let end = byte_slice(text, offset, offset + width).len() + offset;
                out.push_str(&text[offset..end]);
                out.push_str(newline);
                offset = end;
            }
            None => {
                let end = offset + width;
                match text[end..].find(' ') {
                    None => {
                        out.push_str(&text[offset..]);
                        offset = len;
                    }
                    Some(i) => {
                        let at = end + i;
                        out.push_str(&text[offset..at]);
                        out.push_str(newline);
                        offset = at + 1;
                    }
                }
            }
        }
    }
    out.push_str(byte_slice(text, offset, len));
    out
}

fn wrap(args: &[Value]) -> Res {
    want("wrap", args, 2)?;
    let width = int_arg("wrap", args, 0)?;
    let text = s("wrap", args, 1)?;
    Ok(Value::String(wrap_custom(&text, width, "", false)))
}

fn wrap_with(args: &[Value]) -> Res {
    want("wrapWith", args, 3)?;
    let width = int_arg("wrapWith", args, 0)?;
    let sep = s("wrapWith", args, 1)?;
    let text = s("wrapWith", args, 2)?;
    Ok(Value::String(wrap_custom(&text, width, &sep, true)))
}

fn contains(args: &[Value]) -> Res {
    want("contains", args, 2)?;
    let sub = s("contains", args, 0)?;
    Ok(Value::Bool(s("contains", args, 1)?.contains(&*sub)))
}

fn has_prefix(args: &[Value]) -> Res {
    want("hasPrefix", args, 2)?;
    let sub = s("hasPrefix", args, 0)?;
    Ok(Value::Bool(s("hasPrefix", args, 1)?.starts_with(&*sub)))
}

fn has_suffix(args: &[Value]) -> Res {
    want("hasSuffix", args, 2)?;
    let sub = s("hasSuffix", args, 0)?;
    Ok(Value::Bool(s("hasSuffix", args, 1)?.ends_with(&*sub)))
}

fn is_nil(v: &Value) -> bool {
    matches!(v, Value::Nil | Value::NoValue)
}

fn quote(args: &[Value]) -> Res {
    Ok(Value::String(
        args.iter()
            .filter(|v| !is_nil(v))
            .map(|v| go_quote(&strval(v)))
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

fn squote(args: &[Value]) -> Res {
    Ok(Value::String(
        args.iter()
            .filter(|v| !is_nil(v))
            .map(|v| format!("'{v}'"))
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

fn cat(args: &[Value]) -> Res {
    Ok(Value::String(
        args.iter()
            .filter(|v| !is_nil(v))
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

fn indent_text(spaces: i64, text: &str) -> String {
    let pad = " ".repeat(spaces.max(0) as usize);
    format!("{pad}{}", text.replace('\n', &format!("\n{pad}")))
}

fn indent(args: &[Value]) -> Res {
    want("indent", args, 2)?;
    let n = int_arg("indent", args, 0)?;
    Ok(Value::String(indent_text(n, &s("indent", args, 1)?)))
}

fn nindent(args: &[Value]) -> Res {
    want("nindent", args, 2)?;
    let n = int_arg("nindent", args, 0)?;
    Ok(Value::String(format!(
        "\n{}",
        indent_text(n, &s("nindent", args, 1)?)
    )))
}

fn replace(args: &[Value]) -> Res {
    want("replace", args, 3)?;
    let old = s("replace", args, 0)?;
    let new = s("replace", args, 1)?;
    let src = s("replace", args, 2)?;
    Ok(Value::String(go_replace_all(&src, &old, &new)))
}

/// Go's `strings.Replace(s, old, new, -1)`: an empty `old` inserts `new`
/// before every character and at the end.
fn go_replace_all(src: &str, old: &str, new: &str) -> String {
    if !old.is_empty() {
        return src.replace(old, new);
    }
    let mut out = String::with_capacity(src.len() + new.len() * (src.len() + 1));
    for c in src.chars() {
        out.push_str(new);
        out.push(c);
    }
    out.push_str(new);
    out
}

fn plural(args: &[Value]) -> Res {
    want("plural", args, 3)?;
    let one = s("plural", args, 0)?;
    let many = s("plural", args, 1)?;
    let n = int_arg("plural", args, 2)?;
    Ok(Value::String(if n == 1 { one } else { many }))
}

/// Go's `strings.Split` / `SplitN` (n < 0: all; n == 0: none).
pub(super) fn go_split(text: &str, sep: &str, n: i64) -> Vec<String> {
    if n == 0 {
        return Vec::new();
    }
    let parts: Vec<String> = if sep.is_empty() {
        text.chars().map(String::from).collect()
    } else {
        text.split(sep).map(str::to_owned).collect()
    };
    if n > 0 && parts.len() > n as usize {
        let n = n as usize;
        if sep.is_empty() {
            let mut head: Vec<String> = parts[..n - 1].to_vec();
            head.push(parts[n - 1..].concat());
            return head;
        }
        return text.splitn(n, sep).map(str::to_owned).collect();
    }
    parts
}

fn indexed(parts: Vec<String>) -> Value {
    new_map(
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| (format!("_{i}"), Value::String(p)))
            .collect(),
    )
}

fn split(args: &[Value]) -> Res {
    want("split", args, 2)?;
    let sep = s("split", args, 0)?;
    Ok(indexed(go_split(&s("split", args, 1)?, &sep, -1)))
}

fn splitn(args: &[Value]) -> Res {
    want("splitn", args, 3)?;
    let sep = s("splitn", args, 0)?;
    let n = int_arg("splitn", args, 1)?;
    Ok(indexed(go_split(&s("splitn", args, 2)?, &sep, n)))
}

fn split_list(args: &[Value]) -> Res {
    want("splitList", args, 2)?;
    let sep = s("splitList", args, 0)?;
    Ok(strings_value(go_split(&s("splitList", args, 1)?, &sep, -1)))
}

/// Sprig's `strslice`: a list's non-nil elements as strings; nil is empty;
/// anything else a one-element list.
pub(super) fn strslice(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter(|v| !is_nil(v)).map(strval).collect(),
        Value::Nil | Value::NoValue => Vec::new(),
        other => vec![strval(other)],
    }
}

fn to_strings(args: &[Value]) -> Res {
    want("toStrings", args, 1)?;
    Ok(strings_value(strslice(arg(args, 0))))
}

fn join(args: &[Value]) -> Res {
    want("join", args, 2)?;
    let sep = s("join", args, 0)?;
    Ok(Value::String(strslice(arg(args, 1)).join(&sep)))
}

fn sort_alpha(args: &[Value]) -> Res {
    want_at_least("sortAlpha", args, 1)?;
    want("sortAlpha", args, 1)?;
    let v = arg(args, 0);
    if list_arg("sortAlpha", v).is_err() {
        return Ok(strings_value([strval(v)]));
    }
    let mut items = strslice(v);
    items.sort();
    Ok(strings_value(items))
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "String Functions" and "String Slice
    /// Functions" pages (masterminds.github.io/sprig/strings.html,
    /// string_slice.html), checked against Go's text/template with Sprig.
    #[test]
    fn string_functions() {
        let n = json!({});
        table(&[
            ("{{ hello }}", n.clone(), Ok("Hello!")),
            (r#"{{ trim "   hello    " }}"#, n.clone(), Ok("hello")),
            (r#"{{ trimAll "$" "$5.00" }}"#, n.clone(), Ok("5.00")),
            (r#"{{ trimall "$" "$5.00$" }}"#, n.clone(), Ok("5.00")),
            (r#"{{ trimSuffix "-" "hello-" }}"#, n.clone(), Ok("hello")),
            (r#"{{ trimPrefix "-" "-hello" }}"#, n.clone(), Ok("hello")),
            (r#"{{ upper "hello" }}"#, n.clone(), Ok("HELLO")),
            (r#"{{ lower "HELLO" }}"#, n.clone(), Ok("hello")),
            (r#"{{ title "hello world" }}"#, n.clone(), Ok("Hello World")),
            (
                r#"{{ untitle "Hello World" }}"#,
                n.clone(),
                Ok("hello world"),
            ),
            (
                r#"{{ repeat 3 "hello" }}"#,
                n.clone(),
                Ok("hellohellohello"),
            ),
            (r#"{{ substr 0 5 "hello world" }}"#, n.clone(), Ok("hello")),
            (r#"{{ substr 6 -1 "hello world" }}"#, n.clone(), Ok("world")),
            (r#"{{ substr -1 5 "hello world" }}"#, n.clone(), Ok("hello")),
            (
                r#"{{ nospace "hello w o r l d" }}"#,
                n.clone(),
                Ok("helloworld"),
            ),
            (r#"{{ trunc 5 "hello world" }}"#, n.clone(), Ok("hello")),
            (r#"{{ trunc -5 "hello world" }}"#, n.clone(), Ok("world")),
            (r#"{{ trunc 50 "hello" }}"#, n.clone(), Ok("hello")),
            (r#"{{ abbrev 5 "hello world" }}"#, n.clone(), Ok("he...")),
            (
                r#"{{ abbrev 3 "hello world" }}"#,
                n.clone(),
                Ok("hello world"),
            ),
            (
                r#"{{ abbrevboth 5 10 "1234 5678 9123" }}"#,
                n.clone(),
                Ok("...5678..."),
            ),
            (r#"{{ initials "First Try" }}"#, n.clone(), Ok("FT")),
            (r#"{{ wrap 80 "short" }}"#, n.clone(), Ok("short")),
            (
                r#"{{ wrap 5 "Hello World" }}"#,
                n.clone(),
                Ok("Hello\nWorld"),
            ),
            (
                r#"{{ wrapWith 5 "\t" "Hello World" }}"#,
                n.clone(),
                Ok("Hello\tWorld"),
            ),
            (
                r#"{{ wrapWith 3 "|" "abcdefg" }}"#,
                n.clone(),
                Ok("abc|def|g"),
            ),
            (r#"{{ contains "cat" "catch" }}"#, n.clone(), Ok("true")),
            (r#"{{ hasPrefix "cat" "catch" }}"#, n.clone(), Ok("true")),
            (r#"{{ hasSuffix "cat" "catch" }}"#, n.clone(), Ok("false")),
            (r#"{{ quote "a" "b\"c" }}"#, n.clone(), Ok(r#""a" "b\"c""#)),
            (r#"{{ squote "a" 1 }}"#, n.clone(), Ok("'a' '1'")),
            (
                r#"{{ cat "hello" "beautiful" "world" }}"#,
                n.clone(),
                Ok("hello beautiful world"),
            ),
            (r#"{{ cat "a" .missing "b" }}"#, n.clone(), Ok("a b")),
            (r#"{{ indent 4 "a\nb" }}"#, n.clone(), Ok("    a\n    b")),
            (r#"{{ nindent 4 "a\nb" }}"#, n.clone(), Ok("\n    a\n    b")),
            (
                r#"{{ "I Am Henry VIII" | replace " " "-" }}"#,
                n.clone(),
                Ok("I-Am-Henry-VIII"),
            ),
            (r#"{{ replace "" "-" "ab" }}"#, n.clone(), Ok("-a-b-")),
            (
                r#"{{ plural "one anchovy" "many anchovies" 1 }}"#,
                n.clone(),
                Ok("one anchovy"),
            ),
            (
                r#"{{ plural "one anchovy" "many anchovies" 2 }}"#,
                n.clone(),
                Ok("many anchovies"),
            ),
            (
                r#"{{ snakecase "FirstName" }}"#,
                n.clone(),
                Ok("first_name"),
            ),
            (
                r#"{{ snakecase "HTTPServer" }}"#,
                n.clone(),
                Ok("http_server"),
            ),
            (
                r#"{{ snakecase "version2Beta" }}"#,
                n.clone(),
                Ok("version2_beta"),
            ),
            (
                r#"{{ kebabcase "FirstName" }}"#,
                n.clone(),
                Ok("first-name"),
            ),
            (
                r#"{{ camelcase "http_server" }}"#,
                n.clone(),
                Ok("HttpServer"),
            ),
            (
                r#"{{ camelcase "_complex__case_" }}"#,
                n.clone(),
                Ok("_Complex_Case_"),
            ),
            (
                r#"{{ swapcase "This Is A.Test" }}"#,
                n.clone(),
                Ok("tHIS iS a.tEST"),
            ),
            (r#"{{ len (shuffle "hello") }}"#, n.clone(), Ok("5")),
            (r#"{{ randAlphaNum 12 | len }}"#, n.clone(), Ok("12")),
            (
                r#"{{ regexMatch "^[a-zA-Z]{7}$" (randAlpha 7) }}"#,
                n.clone(),
                Ok("true"),
            ),
            (
                r#"{{ regexMatch "^[0-9]{9}$" (randNumeric 9) }}"#,
                n.clone(),
                Ok("true"),
            ),
            (r#"{{ randAscii 20 | len }}"#, n.clone(), Ok("20")),
            (
                r#"{{ upper 3 }}"#,
                n.clone(),
                Err("expected string; got int"),
            ),
            (
                r#"{{ substr 4 2 "abc" }}"#,
                n.clone(),
                Err("slice bounds out of range"),
            ),
        ]);
    }

    #[test]
    fn string_slice_functions() {
        let n = json!({"list": ["b", "a", "c"], "mixed": ["x", 1, null, true]});
        table(&[
            (r#"{{ list "a" "b" | join "," }}"#, n.clone(), Ok("a,b")),
            (r#"{{ join "-" .mixed }}"#, n.clone(), Ok("x-1-true")),
            (r#"{{ join "," "solo" }}"#, n.clone(), Ok("solo")),
            (
                r#"{{ splitList "$" "foo$bar$baz" }}"#,
                n.clone(),
                Ok("[foo bar baz]"),
            ),
            (
                r#"{{ $a := split "$" "foo$bar$baz" }}{{ $a._0 }}{{ $a._2 }}"#,
                n.clone(),
                Ok("foobaz"),
            ),
            (
                r#"{{ $a := splitn "$" 2 "foo$bar$baz" }}{{ $a._1 }}"#,
                n.clone(),
                Ok("bar$baz"),
            ),
            (r#"{{ sortAlpha .list }}"#, n.clone(), Ok("[a b c]")),
            (r#"{{ sortAlpha "x" }}"#, n.clone(), Ok("[x]")),
            (
                r#"{{ toStrings (list 1 2 3) | join "+" }}"#,
                n.clone(),
                Ok("1+2+3"),
            ),
        ]);
    }
}
