//! Sprig's cryptographic, random and UUID functions
//! (masterminds.github.io/sprig/crypto.html, uuid.html).

use base64::Engine;
use gtmpl_ng::{Func, Value};
use rand::Rng;
use sha2::Digest;

use super::{Res, fail, int_arg, string_arg, want};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("sha1sum", sha1sum),
    ("sha256sum", sha256sum),
    ("sha512sum", sha512sum),
    ("adler32sum", adler32sum),
    ("bcrypt", bcrypt_fn),
    ("htpasswd", htpasswd),
    ("randBytes", rand_bytes),
    ("uuidv4", uuidv4),
    ("genPrivateKey", gen_private_key),
    ("genCA", gen_ca),
    ("genSelfSignedCert", gen_self_signed_cert),
    ("genSignedCert", gen_signed_cert),
    ("genCAWithKey", unsupported_cert),
    ("genSelfSignedCertWithKey", unsupported_cert),
    ("genSignedCertWithKey", unsupported_cert),
    ("buildCustomCert", unsupported_cert),
    ("derivePassword", derive_password),
    ("encryptAES", encrypt_aes),
    ("decryptAES", decrypt_aes),
];

fn sha1sum(args: &[Value]) -> Res {
    want("sha1sum", args, 1)?;
    Ok(Value::String(hex::encode(sha1::Sha1::digest(string_arg(
        "sha1sum", args, 0,
    )?))))
}

fn sha256sum(args: &[Value]) -> Res {
    want("sha256sum", args, 1)?;
    Ok(Value::String(hex::encode(sha2::Sha256::digest(
        string_arg("sha256sum", args, 0)?,
    ))))
}

fn sha512sum(args: &[Value]) -> Res {
    want("sha512sum", args, 1)?;
    Ok(Value::String(hex::encode(sha2::Sha512::digest(
        string_arg("sha512sum", args, 0)?,
    ))))
}

/// Adler-32 (RFC 1950), printed in decimal as Sprig does.
fn adler32sum(args: &[Value]) -> Res {
    want("adler32sum", args, 1)?;
    let (mut a, mut b) = (1u32, 0u32);
    for byte in string_arg("adler32sum", args, 0)?.bytes() {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    Ok(Value::String(((b << 16) | a).to_string()))
}

fn bcrypt_hash(name: &str, password: &str) -> Result<String, gtmpl_ng::FuncError> {
    // Go's bcrypt.DefaultCost, in Go's "$2a$" form.
    bcrypt::hash_with_result(password, 10)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| fail(format!("error calling {name}: {e}")))
}

fn bcrypt_fn(args: &[Value]) -> Res {
    want("bcrypt", args, 1)?;
    Ok(Value::String(bcrypt_hash(
        "bcrypt",
        &string_arg("bcrypt", args, 0)?,
    )?))
}

fn htpasswd(args: &[Value]) -> Res {
    want("htpasswd", args, 2)?;
    let user = string_arg("htpasswd", args, 0)?;
    let password = string_arg("htpasswd", args, 1)?;
    if user.contains(':') {
        return Ok(Value::String(format!("invalid username: {user}")));
    }
    Ok(Value::String(format!(
        "{user}:{}",
        bcrypt_hash("htpasswd", &password)?
    )))
}

fn rand_bytes(args: &[Value]) -> Res {
    want("randBytes", args, 1)?;
    let n = int_arg("randBytes", args, 0)?;
    if !(0..=1 << 20).contains(&n) {
        return Err(fail(format!(
            "error calling randBytes: {n} bytes is outside 0..=1048576"
        )));
    }
    let mut buf = vec![0u8; n as usize];
    rand::rng().fill(buf.as_mut_slice());
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(buf),
    ))
}

fn uuidv4(args: &[Value]) -> Res {
    want("uuidv4", args, 0)?;
    Ok(Value::String(uuid::Uuid::new_v4().to_string()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The private key inside a PKCS#8 `PrivateKeyInfo` (its OCTET STRING),
/// which is the PKCS#1 key for RSA and the SEC1 key for EC.
fn inner_key(pkcs8: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let (_, seq) = x509_parser::der_parser::parse_der(pkcs8).ok()?;
    let items = seq.as_sequence().ok()?;
    match &items.get(2)?.content {
        BerObjectContent::OctetString(b) => Some(b.to_vec()),
        _ => None,
    }
}

/// `genPrivateKey "rsa"|"ecdsa"|"ed25519"`: a PEM key as Sprig writes it
/// (PKCS#1 RSA 4096, SEC1 P-256, PKCS#8 Ed25519).
fn gen_private_key(args: &[Value]) -> Res {
    want("genPrivateKey", args, 1)?;
    let kind = string_arg("genPrivateKey", args, 0)?;
    let err = |e: rcgen::Error| fail(format!("error calling genPrivateKey: {e}"));
    let text = match kind.as_str() {
        "rsa" => {
            let key =
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
                    .map_err(err)?;
            match inner_key(&key.serialize_der()) {
                Some(der) => pem("RSA PRIVATE KEY", &der),
                None => return Ok(Value::from("failed to marshal the RSA key")),
            }
        }
        "ecdsa" => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
            match inner_key(&key.serialize_der()) {
                Some(der) => pem("EC PRIVATE KEY", &der),
                None => return Ok(Value::from("failed to marshal the EC key")),
            }
        }
        "ed25519" => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(err)?;
            pem("PRIVATE KEY", &key.serialize_der())
        }
        "dsa" => {
            return Err(fail(
                "error calling genPrivateKey: dsa keys are not supported by Flotilla (use rsa, ecdsa or ed25519)",
            ));
        }
        other => format!("Unknown type {other}"),
    };
    Ok(Value::String(text))
}

fn gen_ca(args: &[Value]) -> Res {
    want("genCA", args, 2)?;
    gtmpl_ng::helm_functions::certs::gen_ca(args)
        .map_err(|e| fail(format!("error calling genCA: {e}")))
}

fn gen_self_signed_cert(args: &[Value]) -> Res {
    want("genSelfSignedCert", args, 4)?;
    gtmpl_ng::helm_functions::certs::gen_self_signed_cert(args)
        .map_err(|e| fail(format!("error calling genSelfSignedCert: {e}")))
}

fn gen_signed_cert(args: &[Value]) -> Res {
    want("genSignedCert", args, 5)?;
    let mut owned = args.to_vec();
    if let Some(ca) = owned.get_mut(4)
        && let Value::Object(m) = ca
    {
        *ca = Value::Map(m.clone());
    }
    gtmpl_ng::helm_functions::certs::gen_signed_cert(&owned)
        .map_err(|e| fail(format!("error calling genSignedCert: {e}")))
}

fn unsupported_cert(_args: &[Value]) -> Res {
    Err(fail(
        "certificates from a supplied key (genCAWithKey, genSelfSignedCertWithKey, genSignedCertWithKey, buildCustomCert) are not supported by Flotilla",
    ))
}

fn derive_password(_args: &[Value]) -> Res {
    Err(fail(
        "error calling derivePassword: derivePassword is not supported by Flotilla",
    ))
}

fn aes_key(password: &str) -> [u8; 32] {
    // Sprig copies the password into a zeroed 32-byte key (truncating).
    let mut key = [0u8; 32];
    let bytes = password.as_bytes();
    let n = bytes.len().min(32);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

fn encrypt_aes(args: &[Value]) -> Res {
    use aws_lc_rs::cipher::{
        AES_256, DecryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey,
    };
    want("encryptAES", args, 2)?;
    let password = string_arg("encryptAES", args, 0)?;
    let text = string_arg("encryptAES", args, 1)?;
    let err = |_| fail("error calling encryptAES: encryption failed");
    let key = UnboundCipherKey::new(&AES_256, &aes_key(&password)).map_err(err)?;
    let enc = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(err)?;
    let mut buf = text.into_bytes();
    let ctx = enc.encrypt(&mut buf).map_err(err)?;
    let DecryptionContext::Iv128(iv) = ctx else {
        return Err(fail("error calling encryptAES: no IV"));
    };
    let mut out = iv.as_ref().to_vec();
    out.extend_from_slice(&buf);
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(out),
    ))
}

fn decrypt_aes(args: &[Value]) -> Res {
    use aws_lc_rs::cipher::{
        AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey,
    };
    use aws_lc_rs::iv::FixedLength;
    want("decryptAES", args, 2)?;
    let password = string_arg("decryptAES", args, 0)?;
    let text = string_arg("decryptAES", args, 1)?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| fail(format!("error calling decryptAES: {e}")))?;
    if data.len() < 16 || data.len() % 16 != 0 {
        return Err(fail(
            "error calling decryptAES: ciphertext is not a multiple of the block size",
        ));
    }
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&data[..16]);
    let mut buf = data[16..].to_vec();
    let err = |_| fail("error calling decryptAES: decryption failed");
    let key = UnboundCipherKey::new(&AES_256, &aes_key(&password)).map_err(err)?;
    let dec = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(err)?;
    let plain = dec
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(err)?;
    Ok(Value::String(String::from_utf8_lossy(plain).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "Cryptographic and Security Functions" and
    /// "UUID Functions" pages (masterminds.github.io/sprig/crypto.html,
    /// uuid.html) and the hash algorithms' published test vectors.
    #[test]
    fn crypto_functions() {
        let n = json!({});
        table(&[
            (
                r#"{{ sha1sum "Hello world!" }}"#,
                n.clone(),
                Ok("d3486ae9136e7856bc42212385ea797094475802"),
            ),
            (
                r#"{{ sha256sum "Hello world!" }}"#,
                n.clone(),
                Ok("c0535e4be2b79ffd93291305436bf889314e4a3faec05ecffcbb7df31ad9e51a"),
            ),
            (
                r#"{{ sha512sum "abc" | trunc 16 }}"#,
                n.clone(),
                Ok("ddaf35a193617aba"),
            ),
            (
                r#"{{ adler32sum "Hello world!" }}"#,
                n.clone(),
                Ok("487130206"),
            ),
            (
                r#"{{ adler32sum "Wikipedia" }}"#,
                n.clone(),
                Ok("300286872"),
            ),
            (r#"{{ bcrypt "pw" | trunc 7 }}"#, n.clone(), Ok("$2a$10$")),
            (
                r#"{{ htpasswd "myUser" "myPassword" | trunc 14 }}"#,
                n.clone(),
                Ok("myUser:$2a$10$"),
            ),
            (
                r#"{{ htpasswd "a:b" "pw" }}"#,
                n.clone(),
                Ok("invalid username: a:b"),
            ),
            (r#"{{ randBytes 24 | len }}"#, n.clone(), Ok("32")),
            (
                r#"{{ regexMatch "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$" uuidv4 }}"#,
                n.clone(),
                Ok("true"),
            ),
            (
                r#"{{ genPrivateKey "ecdsa" | trunc 30 }}"#,
                n.clone(),
                Ok("-----BEGIN EC PRIVATE KEY-----"),
            ),
            (
                r#"{{ genPrivateKey "ed25519" | trunc 27 }}"#,
                n.clone(),
                Ok("-----BEGIN PRIVATE KEY-----"),
            ),
            (
                r#"{{ genPrivateKey "nope" }}"#,
                n.clone(),
                Ok("Unknown type nope"),
            ),
            (
                r#"{{ $ca := genCA "my-ca" 365 }}{{ $ca.Cert | trunc 27 }}"#,
                n.clone(),
                Ok("-----BEGIN CERTIFICATE-----"),
            ),
            (
                r#"{{ $c := genSelfSignedCert "foo.com" (list "10.0.0.1") (list "foo.com") 365 }}{{ $c.Key | contains "PRIVATE KEY" }}"#,
                n.clone(),
                Ok("true"),
            ),
            (
                r#"{{ $ca := genCA "ca" 30 }}{{ $c := genSignedCert "foo.com" nil (list "foo.com") 30 $ca }}{{ $c.Cert | contains "CERTIFICATE" }}"#,
                n.clone(),
                Ok("true"),
            ),
            (
                r#"{{ encryptAES "secretkey" "plaintext" | decryptAES "secretkey" }}"#,
                n.clone(),
                Ok("plaintext"),
            ),
            // IV + two blocks (a full block of padding), base64.
            (
                r#"{{ encryptAES "k" "0123456789abcdef" | len }}"#,
                n.clone(),
                Ok("64"),
            ),
            (
                r#"{{ derivePassword 1 "long" "password" "user" "example.com" }}"#,
                n.clone(),
                Err("not supported by Flotilla"),
            ),
            (
                r#"{{ genCAWithKey "ca" 30 (genPrivateKey "ecdsa") }}"#,
                n.clone(),
                Err("not supported by Flotilla"),
            ),
        ]);
    }
}
