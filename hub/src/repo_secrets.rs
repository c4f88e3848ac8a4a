//! Repositories and credential templates declared as Secrets, in Argo CD's
//! declarative shape: a Secret labelled
//! `argocd.argoproj.io/secret-type: repository` declares one repository
//! (`url`, `type`, `name`, `project` and its own credentials), one labelled
//! `repo-creds` declares credentials for every repository whose URL starts
//! with its `url` (the longest matching prefix wins; a repository's own
//! credentials win over any template).
//!
//! The hub reads them from a directory ([`load_dir`]): Secret manifests
//! (`*.yaml`, `*.yml`, `*.json`, the label saying which kind), and Secrets
//! mounted as volumes (one file per key) under `repository/NAME/` and
//! `repo-creds/NAME/`, which is how the hub chart mounts the Secrets it
//! renders. It reads the directory at start and again while it runs
//! ([`reload`]), so Secrets added, changed or removed take effect without a
//! restart.
//!
//! What flotilla cannot honour is an error naming the Secret and the key,
//! never a silently ignored field: TLS client certificates, GitHub App and
//! cloud credentials, proxies and `insecure` TLS for https.
//!
//! `project: P` scopes the Secret's credentials to project P's
//! applications (Argo CD's project-scoped repositories): an application of
//! another project naming the URL is refused, never fetched anonymously
//! from the mirror P's credentials filled ([`crate::repo_fetch::credential_scope`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::gitsync::RepoKind;
use crate::inventory::ARGO_SECRET_TYPE_LABEL;
use crate::store::RepoCredentials;

pub mod reload;

/// `secret-type` of a repository Secret.
pub const REPOSITORY: &str = "repository";
/// `secret-type` of a credential template Secret.
pub const REPO_CREDS: &str = "repo-creds";

/// Keys flotilla reads.
const SUPPORTED: &[&str] = &[
    "url",
    "type",
    "name",
    "project",
    "username",
    "password",
    "sshPrivateKey",
    "insecure",
    "insecureIgnoreHostKey",
];

/// Boolean keys of Argo CD that are fine when false.
const OFF_BY_DEFAULT: &[&str] = &[
    "enableLfs",
    "enableOCI",
    "forceHttpBasicAuth",
    "useAzureWorkloadIdentity",
    "insecureOCIForceHttp",
];

/// Errors reading repository Secrets.
#[derive(Debug, thiserror::Error)]
pub enum RepoSecretError {
    /// A Secret declares something invalid or unsupported.
    #[error("{origin}: Secret {secret:?}: {message}")]
    Invalid {
        /// File or directory it came from.
        origin: String,
        /// `metadata.name` (or the mounted directory's name).
        secret: String,
        /// What is wrong.
        message: String,
    },
    /// A file is not YAML.
    #[error("{origin}: {message}")]
    Parse {
        /// The file.
        origin: String,
        /// The parser's words.
        message: String,
    },
    /// A file or directory cannot be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Which kind of Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// One repository.
    Repository,
    /// Credentials for URLs with a prefix.
    RepoCreds,
}

/// Credentials from a Secret. `Debug` hides the password and the key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub ssh_private_key: String,
    /// ssh: do not verify the host key (`insecure` or
    /// `insecureIgnoreHostKey`).
    pub insecure_ignore_host_key: bool,
    /// The project whose applications alone may use these credentials
    /// (Argo CD's project-scoped repositories); empty (or `default`
    /// given): every application.
    pub project: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("ssh_private_key", &hidden(&self.ssh_private_key))
            .field("insecure_ignore_host_key", &self.insecure_ignore_host_key)
            .field("project", &self.project)
            .finish()
    }
}

impl Credentials {
    fn is_empty(&self) -> bool {
        self.username.is_empty() && self.password.is_empty() && self.ssh_private_key.is_empty()
    }

    /// As the store keeps them.
    #[must_use]
    pub fn to_store(&self) -> RepoCredentials {
        RepoCredentials {
            username: if self.username.is_empty() && self.ssh_private_key.is_empty() {
                // Token-only hosts accept any user name (as `repo add`).
                "git".to_owned()
            } else {
                self.username.clone()
            },
            password: self.password.clone(),
            ssh_private_key: self.ssh_private_key.clone(),
            insecure_ignore_host_key: self.insecure_ignore_host_key,
            project: self.project.clone(),
        }
    }
}

/// One Secret, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredSecret {
    /// Repository or credential template.
    pub kind: SecretKind,
    /// The Secret's name (for messages).
    pub secret: String,
    /// The repository URL, or the template's URL prefix.
    pub url: String,
    /// `type`: git (default) or helm.
    pub repo_kind: RepoKind,
    /// `name`: a display name (shown in the hub's log).
    pub name: String,
    /// Credentials, when any are given.
    pub credentials: Option<Credentials>,
}

/// The kind a document declares, if it is a repository or repo-creds
/// Secret.
#[must_use]
pub fn secret_kind(doc: &Value) -> Option<SecretKind> {
    if doc.get("kind").and_then(Value::as_str) != Some("Secret") {
        return None;
    }
    match doc
        .pointer("/metadata/labels")
        .and_then(|l| l.get(ARGO_SECRET_TYPE_LABEL))
        .and_then(Value::as_str)
    {
        Some(REPOSITORY) => Some(SecretKind::Repository),
        Some(REPO_CREDS) => Some(SecretKind::RepoCreds),
        _ => None,
    }
}

/// Go's `strconv.ParseBool`, as Argo CD reads these keys.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Some(false),
        _ => None,
    }
}

fn is_ssh_url(url: &str) -> bool {
    url.starts_with("ssh://") || (!url.contains("://") && url.contains('@') && url.contains(':'))
}

/// Reads a Secret's keys (`data` base64-decoded, `stringData` winning as
/// the API server merges them).
///
/// # Errors
/// A `data` value that is not base64.
pub fn from_document(doc: &Value, origin: &str) -> Result<DeclaredSecret, RepoSecretError> {
    let secret = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let invalid = |message: String| RepoSecretError::Invalid {
        origin: origin.to_owned(),
        secret: secret.clone(),
        message,
    };
    let kind = secret_kind(doc).ok_or_else(|| {
        invalid(format!(
            "not a repository Secret (label {ARGO_SECRET_TYPE_LABEL}: {REPOSITORY} or {REPO_CREDS})"
        ))
    })?;
    let mut fields = BTreeMap::new();
    if let Some(data) = doc.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            let text = v.as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| invalid(format!("data.{k}: invalid base64: {e}")))?;
            let value = String::from_utf8(bytes)
                .map_err(|_| invalid(format!("data.{k}: not UTF-8 text")))?;
            fields.insert(k.clone(), value);
        }
    }
    if let Some(data) = doc.get("stringData").and_then(Value::as_object) {
        for (k, v) in data {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            fields.insert(k.clone(), value);
        }
    }
    from_fields(kind, &secret, &fields, origin)
}

/// Reads one Secret's keys.
///
/// # Errors
/// No `url`, an unknown `type`, a key flotilla cannot honour, a boolean
/// that is not one, a password together with an ssh key.
pub fn from_fields(
    kind: SecretKind,
    secret: &str,
    fields: &BTreeMap<String, String>,
    origin: &str,
) -> Result<DeclaredSecret, RepoSecretError> {
    let invalid = |message: String| RepoSecretError::Invalid {
        origin: origin.to_owned(),
        secret: secret.to_owned(),
        message,
    };
    let get = |k: &str| fields.get(k).map(|v| v.trim()).unwrap_or_default();
    for (k, v) in fields {
        if SUPPORTED.contains(&k.as_str()) {
            continue;
        }
        if OFF_BY_DEFAULT.contains(&k.as_str()) {
            match parse_bool(v) {
                Some(false) => continue,
                Some(true) => {
                    return Err(invalid(format!("{k}: true is not supported by flotilla")));
                }
                None => return Err(invalid(format!("{k}: {v:?} is not a boolean"))),
            }
        }
        if v.trim().is_empty() {
            continue;
        }
        return Err(invalid(format!(
            "key {k:?} is not supported by flotilla (supported: {})",
            SUPPORTED.join(", ")
        )));
    }
    let url = get("url").trim_end_matches('/').to_owned();
    if url.is_empty() {
        return Err(invalid("url is required".to_owned()));
    }
    let repo_kind = match get("type") {
        "" | "git" => RepoKind::Git,
        "helm" => RepoKind::Helm,
        other => {
            return Err(invalid(format!(
                "type {other:?} is not supported (git or helm)"
            )));
        }
    };
    let project = match get("project").trim() {
        "" | "default" => String::new(),
        p => p.to_owned(),
    };
    let boolean = |k: &str| {
        parse_bool(get(k)).ok_or_else(|| invalid(format!("{k}: {:?} is not a boolean", get(k))))
    };
    let insecure = boolean("insecure")?;
    let ignore_host_key = boolean("insecureIgnoreHostKey")?;
    let ssh = is_ssh_url(&url);
    if insecure && !ssh {
        return Err(invalid(format!(
            "insecure: skipping TLS certificate verification of {url} is not supported \
             (give the hub the server's CA instead)"
        )));
    }
    let credentials = Credentials {
        username: get("username").to_owned(),
        password: fields.get("password").cloned().unwrap_or_default(),
        ssh_private_key: fields.get("sshPrivateKey").cloned().unwrap_or_default(),
        insecure_ignore_host_key: ssh && (insecure || ignore_host_key),
        project,
    };
    if !credentials.password.is_empty() && !credentials.ssh_private_key.is_empty() {
        return Err(invalid(
            "password and sshPrivateKey exclude each other".to_owned(),
        ));
    }
    if !credentials.ssh_private_key.is_empty() && !ssh && kind == SecretKind::Repository {
        return Err(invalid(format!(
            "sshPrivateKey needs an ssh URL, not {url}"
        )));
    }
    if !credentials.password.is_empty() && ssh {
        return Err(invalid(format!(
            "password needs an https URL, not {url} (use sshPrivateKey)"
        )));
    }
    let has_credentials = !credentials.is_empty();
    if kind == SecretKind::RepoCreds
        && credentials.password.is_empty()
        && credentials.ssh_private_key.is_empty()
    {
        return Err(invalid(
            "a repo-creds Secret needs credentials (password, with or without username, or sshPrivateKey)"
                .to_owned(),
        ));
    }
    Ok(DeclaredSecret {
        kind,
        secret: secret.to_owned(),
        url,
        repo_kind,
        name: get("name").to_owned(),
        credentials: has_credentials.then_some(credentials),
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoSecretError + '_ {
    move |source| RepoSecretError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Entries of a directory, sorted, without hidden ones (a mounted Secret's
/// `..data` links).
fn entries(dir: &Path) -> Result<Vec<PathBuf>, RepoSecretError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// A Secret mounted as a volume: one file per key.
fn mounted(dir: &Path, kind: SecretKind) -> Result<DeclaredSecret, RepoSecretError> {
    let secret = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut fields = BTreeMap::new();
    for file in entries(dir)? {
        if !file.is_file() {
            continue;
        }
        let key = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(&file).map_err(io(&file))?;
        let value = String::from_utf8(bytes).map_err(|_| RepoSecretError::Invalid {
            origin: dir.display().to_string(),
            secret: secret.clone(),
            message: format!("{key}: not UTF-8 text"),
        })?;
        fields.insert(key, value);
    }
    from_fields(kind, &secret, &fields, &dir.display().to_string())
}

/// Reads every repository and repo-creds Secret under `dir` (see the
/// module documentation). Documents of other kinds in the manifests are
/// skipped.
///
/// # Errors
/// Every Secret or file that cannot be read, not only the first.
pub fn load_dir(dir: &Path) -> Result<Vec<DeclaredSecret>, Vec<RepoSecretError>> {
    let (found, errors) = load_dir_all(dir)?;
    if errors.is_empty() {
        Ok(found)
    } else {
        Err(errors)
    }
}

/// Reads `dir` as [`load_dir`], returning the Secrets that could be read
/// together with the errors of those that could not, so one bad file does
/// not hide the others.
///
/// # Errors
/// `dir` itself cannot be read.
pub fn load_dir_all(
    dir: &Path,
) -> Result<(Vec<DeclaredSecret>, Vec<RepoSecretError>), Vec<RepoSecretError>> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let top = match entries(dir) {
        Ok(t) => t,
        Err(e) => return Err(vec![e]),
    };
    for path in top {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() {
            let kind = match file_name.as_str() {
                REPOSITORY => SecretKind::Repository,
                REPO_CREDS => SecretKind::RepoCreds,
                _ => continue,
            };
            match entries(&path) {
                Ok(secrets) => {
                    for s in secrets.iter().filter(|p| p.is_dir()) {
                        match mounted(s, kind) {
                            Ok(d) => found.push(d),
                            Err(e) => errors.push(e),
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
            continue;
        }
        let lower = file_name.to_ascii_lowercase();
        if !(lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")) {
            continue;
        }
        let origin = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(io(&path)(e));
                continue;
            }
        };
        let docs = match crate::yaml::parse_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                errors.push(RepoSecretError::Parse {
                    origin,
                    message: e.to_string(),
                });
                continue;
            }
        };
        for doc in docs.iter().filter(|d| secret_kind(d).is_some()) {
            match from_document(doc, &origin) {
                Ok(d) => found.push(d),
                Err(e) => errors.push(e),
            }
        }
    }
    Ok((found, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Value {
        crate::yaml::parse_documents(yaml).unwrap().remove(0)
    }

    fn read(yaml: &str) -> Result<DeclaredSecret, String> {
        from_document(&doc(yaml), "repos.yaml").map_err(|e| e.to_string())
    }

    const PRIVATE: &str = "apiVersion: v1
kind: Secret
metadata:
  name: private-repo
  labels:
    argocd.argoproj.io/secret-type: repository
stringData:
  type: git
  url: https://git.example.com/team/private.git
  password: s3cret
  username: bot
";

    #[test]
    fn a_repository_secret_is_read_from_string_data_and_data() {
        let s = read(PRIVATE).unwrap();
        assert_eq!(s.kind, SecretKind::Repository);
        assert_eq!(s.url, "https://git.example.com/team/private.git");
        assert_eq!(s.repo_kind, RepoKind::Git);
        let c = s.credentials.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("bot", "s3cret")
        );
        // data is base64; type helm.
        let s = read(
            "kind: Secret
metadata:
  name: charts
  labels: {argocd.argoproj.io/secret-type: repository}
data:
  url: aHR0cHM6Ly9jaGFydHMuZXhhbXBsZS5jb20=
  type: aGVsbQ==
  name: Y2hhcnRz
",
        )
        .unwrap();
        assert_eq!(s.url, "https://charts.example.com");
        assert_eq!(s.repo_kind, RepoKind::Helm);
        assert_eq!(s.name, "charts");
        assert_eq!(s.credentials, None);
    }

    #[test]
    fn bad_secrets_are_refused_naming_the_secret_and_the_cause() {
        let secret = |name: &str, kind: &str, fields: &str| {
            format!(
                "kind: Secret\nmetadata:\n  name: {name}\n  labels: {{argocd.argoproj.io/secret-type: {kind}}}\nstringData:\n{fields}"
            )
        };
        let cases = [
            (
                secret("no-url", "repository", "  username: bot\n"),
                "repos.yaml: Secret \"no-url\": url is required",
            ),
            (
                secret("creds-no-url", "repo-creds", "  password: x\n"),
                "repos.yaml: Secret \"creds-no-url\": url is required",
            ),
            (
                secret(
                    "creds-empty",
                    "repo-creds",
                    "  url: https://g.example.com/org\n  username: bot\n",
                ),
                "Secret \"creds-empty\": a repo-creds Secret needs credentials",
            ),
            (
                secret(
                    "oci",
                    "repository",
                    "  url: oci://r.example.com/x\n  type: oci\n",
                ),
                "Secret \"oci\": type \"oci\" is not supported (git or helm)",
            ),
            (
                secret(
                    "tls",
                    "repository",
                    "  url: https://g.example.com/x\n  tlsClientCertData: abc\n",
                ),
                "Secret \"tls\": key \"tlsClientCertData\" is not supported by flotilla",
            ),
            (
                secret(
                    "lfs",
                    "repository",
                    "  url: https://g.example.com/x\n  enableLfs: \"true\"\n",
                ),
                "Secret \"lfs\": enableLfs: true is not supported",
            ),
            (
                secret(
                    "tls-off",
                    "repository",
                    "  url: https://g.example.com/x\n  insecure: \"true\"\n",
                ),
                "Secret \"tls-off\": insecure: skipping TLS certificate verification",
            ),
            (
                secret(
                    "notbool",
                    "repository",
                    "  url: ssh://git@g.example.com/x\n  insecure: \"maybe\"\n",
                ),
                "Secret \"notbool\": insecure: \"maybe\" is not a boolean",
            ),
            (
                secret(
                    "both",
                    "repository",
                    "  url: ssh://git@g.example.com/x\n  password: p\n  sshPrivateKey: k\n",
                ),
                "Secret \"both\": password and sshPrivateKey exclude each other",
            ),
            (
                secret(
                    "keyhttps",
                    "repository",
                    "  url: https://g.example.com/x\n  sshPrivateKey: k\n",
                ),
                "Secret \"keyhttps\": sshPrivateKey needs an ssh URL",
            ),
        ];
        for (yaml, want) in cases {
            let err = read(&yaml).unwrap_err();
            assert!(err.contains(want), "{err}\n  should contain {want}");
        }
        let bad_base64 = "kind: Secret
metadata:
  name: b64
  labels: {argocd.argoproj.io/secret-type: repository}
data:
  url: '%%%'
";
        assert!(
            read(bad_base64)
                .unwrap_err()
                .contains("Secret \"b64\": data.url: invalid base64")
        );
    }

    #[test]
    fn ssh_insecure_means_no_host_key_check_and_project_default_is_fine() {
        let s = read(
            "kind: Secret
metadata:
  name: ssh
  labels: {argocd.argoproj.io/secret-type: repository}
stringData:
  url: git@g.example.com:team/x.git
  sshPrivateKey: KEY
  insecure: \"true\"
  project: default
  enableLfs: \"false\"
",
        )
        .unwrap();
        let c = s.credentials.unwrap();
        assert!(c.insecure_ignore_host_key);
        assert_eq!(c.ssh_private_key, "KEY");
        assert_eq!(c.to_store().username, "");
    }

    #[test]
    fn a_template_with_a_token_only_gets_a_user_name() {
        let s = read(
            "kind: Secret
metadata:
  name: org
  labels: {argocd.argoproj.io/secret-type: repo-creds}
stringData:
  url: https://git.example.com/org
  password: token
",
        )
        .unwrap();
        assert_eq!(s.kind, SecretKind::RepoCreds);
        let c = s.credentials.unwrap().to_store();
        // Token-only hosts accept any user name (as `repo add`).
        assert_eq!((c.username.as_str(), c.password.as_str()), ("git", "token"));
    }

    #[test]
    fn a_directory_holds_manifests_and_mounted_secrets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("repos.yaml"),
            format!(
                "{PRIVATE}---\nkind: ConfigMap\nmetadata: {{name: other}}\n---\nkind: Secret\nmetadata:\n  name: org\n  labels: {{argocd.argoproj.io/secret-type: repo-creds}}\nstringData:\n  url: https://git.example.com/org\n  password: t\n"
            ),
        )
        .unwrap();
        let mounted = dir.path().join("repository").join("mounted");
        std::fs::create_dir_all(&mounted).unwrap();
        std::fs::write(mounted.join("url"), "https://git.example.com/org/x").unwrap();
        std::fs::create_dir_all(mounted.join("..2026_data")).unwrap();
        let found = load_dir(dir.path()).unwrap();
        let names: Vec<(&str, SecretKind)> =
            found.iter().map(|s| (s.secret.as_str(), s.kind)).collect();
        assert_eq!(
            names,
            [
                ("private-repo", SecretKind::Repository),
                ("org", SecretKind::RepoCreds),
                ("mounted", SecretKind::Repository),
            ]
        );
        // Every bad Secret is reported, not only the first.
        let broken = dir.path().join("repository").join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("username"), "bot").unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: Secret\nmetadata:\n  name: nourl\n  labels: {argocd.argoproj.io/secret-type: repository}\n").unwrap();
        let errors: Vec<String> = load_dir(dir.path())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("Secret \"nourl\": url is required"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("Secret \"broken\": url is required"),
            "{errors:?}"
        );
    }
}
