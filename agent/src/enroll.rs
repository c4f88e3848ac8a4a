//! Enrollment and renewal of the agent's client certificate.
//!
//! Enrollment: with no `tls.crt`/`tls.key` in the state directory, the agent
//! takes a bootstrap token `flt1.<secret>.<ca-pin>`, opens a TLS connection
//! to the hub and accepts it only when the presented chain holds a
//! certificate whose SubjectPublicKeyInfo hashes (SHA-256) to the pin and
//! the hub's server certificate verifies against that certificate. It then
//! generates its own ECDSA P-256 key, sends a CSR with the token to
//! `AgentLink.Enroll` (trusting only the pinned CA) and writes `tls.crt`,
//! `tls.key` (0600) and `ca.crt` atomically. The key never leaves the agent.
//!
//! Renewal: past two thirds of the certificate's lifetime, the agent sends a
//! CSR for a new key to `AgentLink.Renew` over mutual TLS, stores the new
//! pair and asks the link to reconnect with it.
//!
//! Tokens and keys are never logged (nor put in error messages).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::agent_link_client::AgentLinkClient;
use flotilla_proto::{EnrollRequest, EnrollResponse, RenewRequest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use tokio::sync::Notify;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::link::{AGENT_VERSION, CA_FILE, CERT_FILE, KEY_FILE};

/// Prefix (format version) of bootstrap tokens.
pub const TOKEN_PREFIX: &str = "flt1";

/// Why enrollment or renewal failed. Never carries a token or a key.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token is not a Flotilla bootstrap token.
    #[error("the bootstrap token is malformed (expected flt1.<secret>.<ca-pin>)")]
    MalformedToken,
    /// The pin is not 64 hex digits.
    #[error("the CA pin is malformed (expected 64 hex digits, optionally prefixed sha256:)")]
    MalformedPin,
    /// The hub's CA does not hash to the pin.
    #[error(
        "refusing to enroll: the hub at {hub} did not present a CA matching the pinned hash sha256:{pin} ({reason})"
    )]
    PinMismatch {
        /// The hub.
        hub: String,
        /// The expected pin.
        pin: String,
        /// What the handshake said.
        reason: String,
    },
    /// The hub URL is not usable.
    #[error("invalid hub URL {0}")]
    Url(String),
    /// A network error.
    #[error("connecting to {hub}: {message}")]
    Connect {
        /// The hub.
        hub: String,
        /// Why.
        message: String,
    },
    /// The hub refused the request.
    #[error("the hub refused ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The hub's message.
        message: String,
    },
    /// The hub answered with something unusable.
    #[error("the hub's answer is unusable: {0}")]
    Answer(String),
    /// Key or CSR generation.
    #[error("generating the key: {0}")]
    Key(String),
    /// Reading or writing the state directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A parsed bootstrap token: the whole token (sent to the hub) and the pin.
pub struct Token {
    token: String,
    pin: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

fn normalize_pin(pin: &str) -> Result<String, EnrollError> {
    let pin = pin.trim();
    let pin = pin
        .strip_prefix("sha256:")
        .unwrap_or(pin)
        .to_ascii_lowercase();
    if pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(pin)
    } else {
        Err(EnrollError::MalformedPin)
    }
}

impl Token {
    /// Parses `flt1.<secret>.<pin>`; `pin_override` (from `--ca-pin`)
    /// replaces the pin inside the token.
    ///
    /// # Errors
    /// The token or the pin is malformed.
    pub fn parse(token: &str, pin_override: Option<&str>) -> Result<Self, EnrollError> {
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(prefix), Some(secret), pin, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(EnrollError::MalformedToken);
        };
        if prefix != TOKEN_PREFIX || secret.len() != 64 {
            return Err(EnrollError::MalformedToken);
        }
        let pin = match (pin_override.filter(|p| !p.trim().is_empty()), pin) {
            (Some(p), _) | (None, Some(p)) => normalize_pin(p)?,
            (None, None) => return Err(EnrollError::MalformedPin),
        };
        Ok(Self {
            token: token.to_owned(),
            pin,
        })
    }

    /// The pinned CA hash (hex).
    #[must_use]
    pub fn pin(&self) -> &str {
        &self.pin
    }
}

/// SHA-256 (hex) of a certificate's SubjectPublicKeyInfo, as the hub
/// computes its pin.
///
/// # Errors
/// The certificate does not parse.
pub fn spki_pin(der: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    Ok(hex::encode(sha2::Sha256::digest(
        cert.tbs_certificate.subject_pki.raw,
    )))
}

/// Accepts the hub only if its chain holds the pinned CA and the server
/// certificate verifies against it; remembers that CA, or why it refused.
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    ca: Mutex<Option<CertificateDer<'static>>>,
    /// Set when the hub's chain was seen and refused. A handshake that
    /// fails before the chain arrives (the hub closed the connection) is a
    /// network error, not a pin mismatch.
    refused: Mutex<Option<String>>,
}

impl PinVerifier {
    fn verify_pinned(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| spki_pin(c).is_ok_and(|p| p == self.pin))
        else {
            return Err(rustls::Error::General(
                "no certificate in the hub's chain matches the pin".to_owned(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self
            .ca
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ca.clone().into_owned());
        Ok(verified)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.verify_pinned(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(e) = &verified {
            *self
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Host and port of a hub URL.
fn host_port(hub: &str) -> Result<(String, u16), EnrollError> {
    let uri: http::Uri = hub.parse().map_err(|_| EnrollError::Url(hub.to_owned()))?;
    let host = uri
        .host()
        .ok_or_else(|| EnrollError::Url(hub.to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// Handshakes with the hub, accepting it only under the pin, and returns
/// the pinned CA certificate (PEM).
fn fetch_pinned_ca(hub: &str, pin: &str) -> Result<String, EnrollError> {
    let (host, port) = host_port(hub)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinVerifier {
        pin: pin.to_owned(),
        provider: provider.clone(),
        ca: Mutex::new(None),
        refused: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EnrollError::Answer(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(|_| EnrollError::Url(hub.to_owned()))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| EnrollError::Answer(e.to_string()))?;
    let connect_err = |e: std::io::Error| EnrollError::Connect {
        hub: hub.to_owned(),
        message: e.to_string(),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| EnrollError::Url(hub.to_owned()))?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(connect_err)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(connect_err)?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(connect_err)?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let refused = verifier
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            return Err(match refused {
                Some(reason) => EnrollError::PinMismatch {
                    hub: hub.to_owned(),
                    pin: pin.to_owned(),
                    reason,
                },
                None => connect_err(e),
            });
        }
    }
    let ca = verifier
        .ca
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or_else(|| EnrollError::PinMismatch {
            hub: hub.to_owned(),
            pin: pin.to_owned(),
            reason: "no certificate verified".to_owned(),
        })?;
    Ok(der_to_pem(&ca))
}

fn der_to_pem(der: &[u8]) -> String {
    use base64_lite::encode;
    let b64 = encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Standard base64 (no dependency for a dozen lines).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk.first().copied().unwrap_or(0),
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    let idx = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
                    out.push(char::from(ALPHABET[idx]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// A new key and a CSR for it: (key PEM, CSR DER).
fn new_key_and_csr() -> Result<(String, Vec<u8>), EnrollError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    let params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Writes `content` to `path` through a temporary file and a rename, so a
/// reader sees the old or the new content, never a part. Mode 0600 when
/// `private`.
///
/// # Errors
/// The file cannot be written.
pub fn write_atomic(path: &Path, content: &[u8], private: bool) -> Result<(), EnrollError> {
    crate::files::write_atomic(path, content, private).map_err(|source| EnrollError::Io {
        path: path.to_owned(),
        source,
    })
}

fn store(state_dir: &Path, resp: &EnrollResponse, key_pem: &str) -> Result<(), EnrollError> {
    write_atomic(&state_dir.join(CA_FILE), resp.ca_pem.as_bytes(), false)?;
    write_atomic(&state_dir.join(KEY_FILE), key_pem.as_bytes(), true)?;
    write_atomic(
        &state_dir.join(CERT_FILE),
        resp.certificate_pem.as_bytes(),
        false,
    )
}

/// Creates the state directory if needed and makes it private (0700): it
/// holds the key and the desired-state cache, which carries rendered
/// Secrets.
///
/// # Errors
/// The directory cannot be created or its mode set.
pub fn prepare_state_dir(state_dir: &Path) -> Result<(), EnrollError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| EnrollError::Io {
        path: state_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Whether the state directory holds a client certificate and key.
#[must_use]
pub fn is_enrolled(state_dir: &Path) -> bool {
    state_dir.join(CERT_FILE).exists() && state_dir.join(KEY_FILE).exists()
}

fn pem_pin(pem: &str) -> Option<String> {
    let mut reader = pem.as_bytes();
    let der = rustls_pemfile::certs(&mut reader).next()?.ok()?;
    spki_pin(&der).ok()
}

fn status_err(s: &tonic::Status) -> EnrollError {
    EnrollError::Refused {
        code: s.code(),
        message: s.message().to_owned(),
    }
}

impl EnrollError {
    /// Whether the same request may succeed later: the hub is unreachable,
    /// busy, rate limiting or failing inside. A refused token, a pin
    /// mismatch or a bad request needs a person instead.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            Self::Connect { .. } => true,
            Self::Refused { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Internal
                    | Code::Unknown
                    | Code::Cancelled
            ),
            _ => false,
        }
    }
}

const ENROLL_RETRY_START: Duration = Duration::from_secs(1);
const ENROLL_RETRY_MAX: Duration = Duration::from_secs(60);

/// The delay before enrollment attempt `failures + 1`: 1 s doubling up to
/// 60 s, with ±20 % jitter so agents behind one address spread out.
fn enroll_retry_delay(failures: u32) -> Duration {
    use rand::Rng;
    ENROLL_RETRY_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(ENROLL_RETRY_MAX)
        .mul_f64(rand::rng().random_range(0.8..1.2))
}

/// [`enroll`], tried again with backoff and jitter while the failure is
/// transient (the hub is down or busy, or rate limits enrollment); returns
/// the first definitive failure (a refused token, a pin mismatch).
///
/// # Errors
/// As [`enroll`], for failures that trying again cannot fix.
pub async fn enroll_with_retry(
    hub: &str,
    state_dir: &Path,
    token: &Token,
) -> Result<String, EnrollError> {
    let mut failures = 0u32;
    loop {
        match enroll(hub, state_dir, token).await {
            Ok(cluster) => return Ok(cluster),
            Err(e) if e.is_transient() => {
                failures = failures.saturating_add(1);
                let delay = enroll_retry_delay(failures);
                warn!(
                    hub = %hub,
                    error = %e,
                    attempt = failures,
                    retry_in_ms = delay.as_millis(),
                    "enrollment failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens a TLS channel to `hub` with `tls` (10 s connect timeout).
async fn connect(hub: &str, tls: ClientTlsConfig) -> Result<Channel, EnrollError> {
    Endpoint::from_shared(hub.to_owned())
        .map_err(|_| EnrollError::Url(hub.to_owned()))?
        .tls_config(tls)
        .map_err(|e| EnrollError::Url(format!("{hub}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| EnrollError::Connect {
            hub: hub.to_owned(),
            message: e.to_string(),
        })
}

/// Enrolls with `token`: pins the hub, sends a CSR for a fresh key and
/// stores the certificate. Returns the cluster name the hub bound.
///
/// # Errors
/// The hub does not match the pin, refuses the token, or the state
/// directory cannot be written.
pub async fn enroll(hub: &str, state_dir: &Path, token: &Token) -> Result<String, EnrollError> {
    let pin = token.pin.clone();
    let hub_owned = hub.to_owned();
    let ca_pem = tokio::task::spawn_blocking(move || fetch_pinned_ca(&hub_owned, &pin))
        .await
        .map_err(|e| EnrollError::Answer(e.to_string()))??;
    info!(hub = %hub, pin = %token.pin, "hub CA matches the pin; enrolling");
    let (host, _) = host_port(hub)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(host);
    let channel = connect(hub, tls).await?;
    let (key_pem, csr_der) = new_key_and_csr()?;
    let resp = AgentLinkClient::new(channel)
        .enroll(EnrollRequest {
            token: token.token.clone(),
            csr_der,
            agent_version: AGENT_VERSION.to_owned(),
        })
        .await
        .map_err(|s| status_err(&s))?
        .into_inner();
    if pem_pin(&resp.ca_pem).as_deref() != Some(token.pin.as_str()) {
        return Err(EnrollError::Answer(
            "the CA in the answer does not match the pin".to_owned(),
        ));
    }
    store(state_dir, &resp, &key_pem)?;
    info!(cluster = %resp.cluster_name, state_dir = %state_dir.display(), "enrolled");
    Ok(resp.cluster_name)
}

/// Validity (not before, not after) of the first certificate in a PEM, as
/// Unix seconds.
#[must_use]
pub fn validity(pem: &[u8]) -> Option<(i64, i64)> {
    let mut reader = pem;
    let der = rustls_pemfile::certs(&mut reader).next()?.ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// When the certificate should be renewed: two thirds into its lifetime.
#[must_use]
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Renews the certificate now over mutual TLS with a new key.
///
/// # Errors
/// The hub refuses or the files cannot be read or written.
pub async fn renew(hub: &str, state_dir: &Path) -> Result<(), EnrollError> {
    let read = |file: &str| {
        let path = state_dir.join(file);
        std::fs::read(&path).map_err(|source| EnrollError::Io { path, source })
    };
    let (ca, cert, key) = (read(CA_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?);
    let (host, _) = host_port(hub)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(host);
    let channel = connect(hub, tls).await?;
    let (key_pem, csr_der) = new_key_and_csr()?;
    let resp = AgentLinkClient::new(channel)
        .renew(RenewRequest { csr_der })
        .await
        .map_err(|s| status_err(&s))?
        .into_inner();
    if pem_pin(&resp.ca_pem) != pem_pin(&String::from_utf8_lossy(&ca)) {
        return Err(EnrollError::Answer(
            "the renewed certificate comes with another CA".to_owned(),
        ));
    }
    store(state_dir, &resp, &key_pem)?;
    info!(cluster = %resp.cluster_name, "certificate renewed");
    Ok(())
}

/// Options of `flotilla-agent renew`.
#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    /// Hub URL, e.g. https://hub.example.com:7443.
    #[arg(long, env = "FLOTILLA_HUB")]
    pub hub: String,
    /// State directory holding tls.crt, tls.key and ca.crt.
    #[arg(long, env = "FLOTILLA_STATE_DIR")]
    pub state_dir: PathBuf,
}

/// `flotilla-agent renew`: renews once, now.
///
/// # Errors
/// As [`renew`].
pub async fn renew_command(args: &RenewArgs) -> anyhow::Result<()> {
    renew(&args.hub, &args.state_dir).await?;
    Ok(())
}

/// Renews the certificate past two thirds of its lifetime, forever; after
/// each renewal `reconnect` is notified so the link uses the new pair.
/// Failures are retried every minute (or sooner near expiry).
/// With `identity` (in a cluster), the renewed pair is also stored in the
/// identity Secret.
pub async fn renew_loop(
    hub: String,
    state_dir: PathBuf,
    reconnect: Arc<Notify>,
    identity: Option<crate::identity::IdentitySecret>,
) {
    loop {
        let due = std::fs::read(state_dir.join(CERT_FILE))
            .ok()
            .and_then(|pem| validity(&pem))
            .map(|(nb, na)| renew_at(nb, na));
        let Some(due) = due else {
            warn!("cannot read the client certificate's validity; renewal disabled");
            return;
        };
        let wait = u64::try_from(due - now_secs()).unwrap_or(0);
        if wait > 0 {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        match renew(&hub, &state_dir).await {
            Ok(()) => {
                if let Some(identity) = &identity
                    && let Err(e) = identity.save(&state_dir).await
                {
                    warn!(error = %e, "could not store the renewed identity in its Secret");
                }
                reconnect.notify_one();
                // However short the hub makes certificates, never renew in
                // a tight loop.
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Err(e) => {
                warn!(error = %e, "certificate renewal failed; retrying in 60s");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn token_parsing_and_pin_override() {
        let pin = "ab".repeat(32);
        let t = Token::parse(&format!("flt1.{SECRET}.{pin}"), None).unwrap();
        assert_eq!(t.pin(), pin);
        let other = "cd".repeat(32);
        let t = Token::parse(
            &format!("flt1.{SECRET}.{pin}"),
            Some(&format!("sha256:{other}")),
        )
        .unwrap();
        assert_eq!(t.pin(), other);
        assert!(Token::parse(&format!("flt2.{SECRET}.{pin}"), None).is_err());
        assert!(Token::parse("flt1.short.x", None).is_err());
        assert!(Token::parse(&format!("flt1.{SECRET}"), None).is_err());
        assert!(Token::parse(&format!("flt1.{SECRET}.nothex"), None).is_err());
        // Debug never shows the secret.
        assert!(!format!("{t:?}").contains(SECRET));
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64_lite::encode(b""), "");
        assert_eq!(base64_lite::encode(b"f"), "Zg==");
        assert_eq!(base64_lite::encode(b"fo"), "Zm8=");
        assert_eq!(base64_lite::encode(b"foo"), "Zm9v");
        assert_eq!(base64_lite::encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn only_transient_enrollment_failures_are_retried() {
        let refused = |code| EnrollError::Refused {
            code,
            message: String::new(),
        };
        for code in [
            tonic::Code::ResourceExhausted,
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Internal,
        ] {
            assert!(refused(code).is_transient(), "{code:?}");
        }
        for code in [
            tonic::Code::Unauthenticated,
            tonic::Code::InvalidArgument,
            tonic::Code::PermissionDenied,
        ] {
            assert!(!refused(code).is_transient(), "{code:?}");
        }
        assert!(
            EnrollError::Connect {
                hub: "h".into(),
                message: "refused".into()
            }
            .is_transient()
        );
        assert!(
            !EnrollError::PinMismatch {
                hub: "h".into(),
                pin: "p".into(),
                reason: "r".into()
            }
            .is_transient()
        );
        let first = enroll_retry_delay(1);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        assert!(enroll_retry_delay(50) <= ENROLL_RETRY_MAX.mul_f64(1.2));
    }

    #[test]
    fn renewal_is_due_at_two_thirds() {
        assert_eq!(renew_at(0, 30), 20);
        assert_eq!(renew_at(100, 100 + 90 * 86_400), 100 + 60 * 86_400);
    }

    #[test]
    fn atomic_private_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls.key");
        write_atomic(&p, b"one", true).unwrap();
        write_atomic(&p, b"two", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn csr_parses_and_key_is_p256() {
        let (key, csr) = new_key_and_csr().unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr.as_slice());
        rcgen::CertificateSigningRequestParams::from_der(&der).unwrap();
    }
}
