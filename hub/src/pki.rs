//! The hub CA: its key and certificate, the hub's TLS server certificate,
//! client certificates naming a cluster, and reading a cluster identity back
//! out of a verified peer certificate.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::time::ASN1Time;

/// Prefix of the URI SAN that names a cluster in its client certificate.
pub const SPIFFE_CLUSTER_PREFIX: &str = "spiffe://flotilla/cluster/";
/// Lifetime of a directly issued client certificate.
pub const CLIENT_CERT_DAYS: i64 = 30;
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 365;

/// Errors from the hub PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: invalid CA material: {message}")]
    InvalidCa { path: PathBuf, message: String },
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    #[error("certificate signing request: {0}")]
    Csr(String),
}

/// A certificate with its private key, PEM encoded.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("IssuedCertificate")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Identity taken from a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub cluster: String,
    pub serial: String,
    /// The certificate's notAfter, Unix milliseconds.
    pub not_after_ms: i64,
}

/// The hub CA and the hub's own server certificate.
pub struct Pki {
    ca_cert_pem: String,
    ca_key: KeyPair,
    server: IssuedCertificate,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `content` to `path` readable by the owner only.
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // The mode above only applies on creation.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(content)?;
    f.sync_all()
}

fn set_validity(params: &mut CertificateParams, days: i64) -> Result<(), PkiError> {
    let now = ASN1Time::now().timestamp();
    let bad = |e: x509_parser::error::X509Error| PkiError::PeerCertificate(e.to_string());
    params.not_before = ASN1Time::from_timestamp(now - 300)
        .map_err(bad)?
        .to_datetime();
    params.not_after = ASN1Time::from_timestamp(now + days * 86_400)
        .map_err(bad)?
        .to_datetime();
    Ok(())
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so DER keeps it as is.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// Normalises a serial for comparison: lowercase hex, no leading zeros.
pub fn normalize_serial(raw: &[u8]) -> String {
    let s = hex::encode(raw);
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0".to_owned()
    } else {
        t.to_owned()
    }
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Flotilla hub CA");
    dn.push(DnType::OrganizationName, "Flotilla");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_DAYS)?;
    Ok(params)
}

impl Pki {
    /// Loads the CA from `DATA/ca.crt` + `DATA/ca.key`, creating both on
    /// first start, and issues a fresh server certificate for `localhost`,
    /// `127.0.0.1` and each of `advertise_hosts`.
    ///
    /// # Errors
    /// The files cannot be read or written, or hold no usable CA.
    pub fn load_or_create(data_dir: &Path, advertise_hosts: &[String]) -> Result<Self, PkiError> {
        let cert_path = data_dir.join("ca.crt");
        let key_path = data_dir.join("ca.key");
        let (ca_cert_pem, ca_key) = if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            let key = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            let key = KeyPair::from_pem(&key).map_err(|e| PkiError::InvalidCa {
                path: key_path.clone(),
                message: e.to_string(),
            })?;
            (cert, key)
        } else {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io_err(&key_path))?;
            std::fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))?;
            tracing::info!(path = %cert_path.display(), "created hub CA");
            (cert.pem(), key)
        };
        // Fail early on a mismatched or unreadable CA certificate.
        Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key).map_err(|e| PkiError::InvalidCa {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
        let mut pki = Self {
            ca_cert_pem,
            ca_key,
            server: IssuedCertificate {
                cert_pem: String::new(),
                key_pem: String::new(),
                serial: String::new(),
            },
        };
        pki.server = pki.issue_server(advertise_hosts)?;
        let crt = data_dir.join("hub.crt");
        let key = data_dir.join("hub.key");
        std::fs::write(&crt, &pki.server.cert_pem).map_err(io_err(&crt))?;
        write_private(&key, pki.server.key_pem.as_bytes()).map_err(io_err(&key))?;
        Ok(pki)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The hub's TLS server certificate and key.
    pub fn server(&self) -> &IssuedCertificate {
        &self.server
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_pem(&self.ca_cert_pem, &self.ca_key)?)
    }

    fn issue_server(&self, advertise_hosts: &[String]) -> Result<IssuedCertificate, PkiError> {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        for h in advertise_hosts {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "flotilla-hub");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, SERVER_DAYS)?;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: normalize_serial(&hex::decode(serial_hex).unwrap_or_default()),
        })
    }

    /// Issues a client certificate naming `cluster` (CN and SAN URI
    /// `spiffe://flotilla/cluster/NAME`), valid for [`CLIENT_CERT_DAYS`].
    ///
    /// # Errors
    /// The name cannot be encoded in a certificate.
    pub fn issue_client(&self, cluster: &str) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let (cert_pem, serial) = self.sign_client(cluster, &key)?;
        Ok(IssuedCertificate {
            cert_pem,
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// Signs a client certificate for `cluster` over the public key of a
    /// PKCS#10 request (DER). Only the key is taken from the request: the
    /// names, usages and validity are the hub's.
    ///
    /// # Errors
    /// The request does not parse or its signature is wrong.
    pub fn sign_csr(&self, cluster: &str, csr_der: &[u8]) -> Result<(String, String), PkiError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der);
        let csr = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        self.sign_client(cluster, &csr.public_key)
    }

    /// SHA-256 (hex) of the CA's SubjectPublicKeyInfo: the pin an agent
    /// checks before it trusts the hub.
    pub fn ca_pin(&self) -> String {
        ca_pin_of(&self.ca_cert_pem).unwrap_or_default()
    }

    fn sign_client(
        &self,
        cluster: &str,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(
            format!("{SPIFFE_CLUSTER_PREFIX}{cluster}").try_into()?,
        )];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cluster);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, CLIENT_CERT_DAYS)?;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        let cert = params.signed_by(public_key, &self.issuer()?)?;
        Ok((
            cert.pem(),
            normalize_serial(&hex::decode(serial_hex).unwrap_or_default()),
        ))
    }
}

/// Prefix (format version) of bootstrap tokens.
pub const BOOTSTRAP_PREFIX: &str = "flt1";

/// Creates a bootstrap token `flt1.<secret>.<ca-pin>`; returns it with the
/// hash under which it is stored.
pub fn new_bootstrap_token(ca_pin: &str) -> (String, String) {
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let hash = bootstrap_hash(&secret);
    (format!("{BOOTSTRAP_PREFIX}.{secret}.{ca_pin}"), hash)
}

/// The storage hash of a presented bootstrap token, or `None` when it is not
/// one. Only the secret part counts; the pin is for the agent.
pub fn bootstrap_token_hash(token: &str) -> Option<String> {
    let mut parts = token.trim().split('.');
    let (prefix, secret) = (parts.next()?, parts.next()?);
    (prefix == BOOTSTRAP_PREFIX && secret.len() == 64).then(|| bootstrap_hash(secret))
}

fn bootstrap_hash(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// SHA-256 (hex) of the SubjectPublicKeyInfo of a PEM certificate.
///
/// # Errors
/// The PEM holds no parsable certificate.
pub fn ca_pin_of(cert_pem: &str) -> Result<String, PkiError> {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::PeerCertificate(e.to_string()))?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| PkiError::PeerCertificate(e.to_string()))?;
    Ok(hex::encode(sha2::Sha256::digest(
        cert.tbs_certificate.subject_pki.raw,
    )))
}

/// Reads the cluster identity from a client certificate that TLS already
/// verified against the hub CA: the `spiffe://flotilla/cluster/NAME` URI SAN
/// and the serial number.
///
/// # Errors
/// The certificate does not parse or carries no cluster URI.
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::PeerCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::PeerCertificate(e.to_string()))?
        .ok_or_else(|| PkiError::PeerCertificate("no subjectAltName".into()))?;
    let cluster = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) => u.strip_prefix(SPIFFE_CLUSTER_PREFIX),
            _ => None,
        })
        .filter(|n| crate::model::is_dns_subdomain(n))
        .ok_or_else(|| PkiError::PeerCertificate("no cluster URI in subjectAltName".into()))?;
    Ok(PeerIdentity {
        cluster: cluster.to_owned(),
        serial: normalize_serial(cert.raw_serial()),
        not_after_ms: cert.validity().not_after.timestamp().saturating_mul(1000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
    use std::sync::Arc;

    #[test]
    fn client_cert_verifies_against_ca_and_names_cluster() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["hub.example".into()]).unwrap();
        let issued = pki.issue_client("east-1").unwrap();

        let ca = CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        verifier
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .unwrap();

        let id = peer_identity(&leaf).unwrap();
        assert_eq!(id.cluster, "east-1");
        assert_eq!(id.serial, issued.serial);

        // The key file is private, and a restart reuses the same CA.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(again.ca_pem(), pki.ca_pem());
    }

    #[test]
    fn csr_is_signed_for_the_bound_cluster_only() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // The request asks for another identity; the hub ignores that.
        let mut req = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        req.subject_alt_names.push(SanType::URI(
            "spiffe://flotilla/cluster/other".try_into().unwrap(),
        ));
        let csr = req.serialize_request(&key).unwrap();
        let (pem, serial) = pki.sign_csr("east-1", csr.der()).unwrap();
        let leaf = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let id = peer_identity(&leaf).unwrap();
        assert_eq!(id.cluster, "east-1");
        assert_eq!(id.serial, serial);
        assert!(pki.sign_csr("east-1", b"not a csr").is_err());
        assert_eq!(pki.ca_pin().len(), 64);
    }

    #[test]
    fn certificate_from_another_ca_is_rejected() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let hub = Pki::load_or_create(a.path(), &[]).unwrap();
        let other = Pki::load_or_create(b.path(), &[]).unwrap();
        let issued = other.issue_client("east-1").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(hub.ca_pem().as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert!(
            verifier
                .verify_client_cert(&leaf, &[], UnixTime::now())
                .is_err()
        );
    }
}
