//! Sprig's encoding functions (masterminds.github.io/sprig/encoding.html).

use base64::Engine;
use gtmpl_ng::{Func, Value};

use super::{Res, string_arg, want};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("b64enc", b64enc),
    ("b64dec", b64dec),
    ("b32enc", b32enc),
    ("b32dec", b32dec),
];

fn b64enc(args: &[Value]) -> Res {
    want("b64enc", args, 1)?;
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(string_arg("b64enc", args, 0)?),
    ))
}

/// Like Sprig, a decoding failure renders as the error's text.
fn b64dec(args: &[Value]) -> Res {
    want("b64dec", args, 1)?;
    let text = string_arg("b64dec", args, 0)?;
    Ok(Value::String(
        match base64::engine::general_purpose::STANDARD.decode(&text) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => go_corrupt(&e.to_string(), &text),
        },
    ))
}

fn go_corrupt(_detail: &str, text: &str) -> String {
    // Go names the offset of the first byte it could not use.
    let at = text
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='))
        .unwrap_or(text.len().saturating_sub(text.len() % 4));
    format!("illegal base64 data at input byte {at}")
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn b32enc(args: &[Value]) -> Res {
    want("b32enc", args, 1)?;
    let data = string_arg("b32enc", args, 0)?.into_bytes();
    let mut out = String::new();
    for chunk in data.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let bits = u64::from_be_bytes([0, 0, 0, buf[0], buf[1], buf[2], buf[3], buf[4]]);
        let chars = match chunk.len() {
            1 => 2,
            2 => 4,
            3 => 5,
            4 => 7,
            _ => 8,
        };
        for i in 0..8 {
            if i < chars {
                out.push(char::from(B32[((bits >> (35 - 5 * i)) & 31) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    Ok(Value::String(out))
}

fn b32dec(args: &[Value]) -> Res {
    want("b32dec", args, 1)?;
    let text = string_arg("b32dec", args, 0)?;
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    if bytes.len() % 8 != 0 {
        return Ok(Value::String(format!(
            "illegal base32 data at input byte {}",
            bytes.len() - bytes.len() % 8
        )));
    }
    for (ci, chunk) in bytes.chunks(8).enumerate() {
        let mut bits: u64 = 0;
        let mut n = 0;
        for (i, b) in chunk.iter().enumerate() {
            if *b == b'=' {
                break;
            }
            let Some(v) = B32.iter().position(|c| c == b) else {
                return Ok(Value::String(format!(
                    "illegal base32 data at input byte {}",
                    ci * 8 + i
                )));
            };
            bits |= (v as u64) << (35 - 5 * i);
            n += 1;
        }
        let take = match n {
            2 => 1,
            4 => 2,
            5 => 3,
            7 => 4,
            8 => 5,
            _ => {
                return Ok(Value::String(format!(
                    "illegal base32 data at input byte {}",
                    ci * 8 + n
                )));
            }
        };
        let be = bits.to_be_bytes();
        out.extend_from_slice(&be[3..3 + take]);
    }
    Ok(Value::String(String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "Encoding Functions" page
    /// (masterminds.github.io/sprig/encoding.html) and RFC 4648's test
    /// vectors.
    #[test]
    fn encoding_functions() {
        let n = json!({});
        table(&[
            (r#"{{ b64enc "hello" }}"#, n.clone(), Ok("aGVsbG8=")),
            (r#"{{ b64dec "aGVsbG8=" }}"#, n.clone(), Ok("hello")),
            (
                r#"{{ b64dec "!!" }}"#,
                n.clone(),
                Ok("illegal base64 data at input byte 0"),
            ),
            (
                r#"{{ b32enc "foobar" }}"#,
                n.clone(),
                Ok("MZXW6YTBOI======"),
            ),
            (r#"{{ b32enc "f" }}"#, n.clone(), Ok("MY======")),
            (
                r#"{{ b32dec "MZXW6YTBOI======" }}"#,
                n.clone(),
                Ok("foobar"),
            ),
            (r#"{{ b32dec "MZXW6===" }}"#, n.clone(), Ok("foo")),
        ]);
    }
}
