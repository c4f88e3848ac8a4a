//! Connection settings: flags and environment, then the contexts saved by
//! `flotilla login` (one per hub) in the user's config file.
//!
//! The file (`$FLOTILLA_CONFIG`, else `$XDG_CONFIG_HOME/flotilla/config.json`,
//! else `~/.config/flotilla/config.json`, mode 0600) is JSON:
//!
//! ```json
//! {
//!   "currentContext": "prod",
//!   "contexts": {
//!     "prod": { "hub": "https://hub.prod:7443", "caPem": "-----BEGIN …", "token": "…" }
//!   }
//! }
//! ```
//!
//! Writers change only their own context and `currentContext`; every other
//! key and context is written back as it was read. A file in the format of
//! earlier versions (`hub`, `ca_file`, `token` at the top) reads as one
//! context named after its hub.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use serde_json::{Map, Value, json};

use super::exit::{CliError, usage};
use super::{DEFAULT_HUB, Global};

/// One saved hub.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HubContext {
    pub hub: String,
    /// The hub CA certificate (PEM), kept in the file so the context does
    /// not depend on where the CA file was.
    pub ca_pem: Option<String>,
    /// A CA file path (files of earlier versions).
    pub ca_file: Option<PathBuf>,
    pub token: String,
}

/// The config file as read: its JSON (kept whole, so writes change only
/// what they mean to) and where it lives.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    doc: Map<String, Value>,
}

/// Where the contexts are kept.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOTILLA_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("flotilla").join("config.json"))
}

/// `https://` prepended to a hub address given without a scheme
/// (`hub.example:7443`, `127.0.0.1:7443`).
///
/// # Errors
/// An empty address, or a scheme other than http and https.
pub fn hub_url(hub: &str) -> Result<String> {
    let hub = hub.trim();
    if hub.is_empty() {
        return Err(usage("the hub address is empty"));
    }
    match hub.split_once("://") {
        None => Ok(format!("https://{}", hub.trim_end_matches('/'))),
        Some(("https" | "http", rest)) if !rest.trim_end_matches('/').is_empty() => {
            Ok(hub.trim_end_matches('/').to_owned())
        }
        Some(_) => Err(usage(format!(
            "invalid hub address {hub:?}: use HOST:PORT or https://HOST:PORT"
        ))),
    }
}

/// A context name for `hub`: its host and port.
pub fn default_context_name(hub: &str) -> String {
    let rest = hub.split_once("://").map_or(hub, |(_, r)| r);
    rest.trim_end_matches('/').to_owned()
}

impl ConfigFile {
    /// Reads the file at `path`; a missing file is an empty one.
    ///
    /// # Errors
    /// The file cannot be read or is not a JSON object (never silently
    /// replaced: a login would lose its other contexts).
    pub fn load(path: &Path) -> Result<Self> {
        let doc = match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Map::new(),
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(doc)) => doc,
                Ok(_) => return Err(anyhow!("{}: not a JSON object", path.display())),
                Err(e) => return Err(anyhow!("{}: invalid JSON: {e}", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            path: path.to_owned(),
            doc: upgrade(doc),
        })
    }

    /// The user's file ([`config_path`]).
    ///
    /// # Errors
    /// No HOME and no FLOTILLA_CONFIG, or [`ConfigFile::load`]'s.
    pub fn user() -> Result<Self> {
        let path = config_path().ok_or_else(|| usage("no HOME: set FLOTILLA_CONFIG"))?;
        Self::load(&path)
    }

    /// The current context's name, if any.
    pub fn current(&self) -> Option<&str> {
        self.doc
            .get("currentContext")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Every context, by name.
    pub fn contexts(&self) -> BTreeMap<String, HubContext> {
        let Some(Value::Object(all)) = self.doc.get("contexts") else {
            return BTreeMap::new();
        };
        all.iter()
            .map(|(name, v)| {
                let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                (
                    name.clone(),
                    HubContext {
                        hub: s("hub").unwrap_or_default(),
                        ca_pem: s("caPem"),
                        ca_file: s("caFile").map(PathBuf::from),
                        token: s("token").unwrap_or_default(),
                    },
                )
            })
            .collect()
    }

    /// The context `name`.
    pub fn context(&self, name: &str) -> Option<HubContext> {
        self.contexts().remove(name)
    }

    /// Sets context `name` (replacing only that entry).
    pub fn set_context(&mut self, name: &str, c: &HubContext) {
        let mut entry = Map::new();
        entry.insert("hub".into(), json!(c.hub));
        if let Some(pem) = &c.ca_pem {
            entry.insert("caPem".into(), json!(pem));
        }
        if let Some(f) = &c.ca_file {
            entry.insert("caFile".into(), json!(f));
        }
        entry.insert("token".into(), json!(c.token));
        let contexts = self
            .doc
            .entry("contexts")
            .or_insert_with(|| Value::Object(Map::new()));
        if !contexts.is_object() {
            *contexts = Value::Object(Map::new());
        }
        if let Value::Object(all) = contexts {
            all.insert(name.to_owned(), Value::Object(entry));
        }
    }

    /// Removes context `name`; whether it was there. The current context
    /// is unset when it was this one.
    pub fn remove_context(&mut self, name: &str) -> bool {
        let removed = match self.doc.get_mut("contexts") {
            Some(Value::Object(all)) => all.remove(name).is_some(),
            _ => false,
        };
        if self.current() == Some(name) {
            self.doc.remove("currentContext");
        }
        removed
    }

    /// Makes `name` the current context.
    pub fn set_current(&mut self, name: &str) {
        self.doc.insert("currentContext".into(), json!(name));
    }

    /// Writes the file atomically (a new file renamed over the old one),
    /// mode 0600, creating its directory.
    ///
    /// # Errors
    /// The directory or the file cannot be written.
    pub fn save(&self) -> Result<()> {
        use std::io::Write as _;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_string_pretty(&Value::Object(self.doc.clone()))?;
        // NamedTempFile is created 0600.
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.write_all(b"\n"))
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", self.path.display()))?;
        tmp.persist(&self.path)
            .map_err(|e| e.error)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

/// A file of earlier versions (`{"hub", "ca_file", "token"}`) as one
/// context named after its hub, made current.
fn upgrade(mut doc: Map<String, Value>) -> Map<String, Value> {
    let Some(Value::String(hub)) = doc.get("hub").cloned() else {
        return doc;
    };
    if doc.contains_key("contexts") {
        return doc;
    }
    let name = default_context_name(&hub);
    let mut entry = Map::new();
    entry.insert("hub".into(), json!(hub));
    if let Some(Value::String(f)) = doc.remove("ca_file") {
        entry.insert("caFile".into(), json!(f));
    }
    if let Some(token) = doc.remove("token") {
        entry.insert("token".into(), token);
    }
    doc.remove("hub");
    doc.insert("contexts".into(), json!({ name.clone(): entry }));
    doc.insert("currentContext".into(), json!(name));
    doc
}

/// Connection settings after flags, environment and the context.
#[derive(Debug)]
pub struct Resolved {
    pub hub: String,
    /// PEM of the hub CA.
    pub ca_pem: Option<String>,
    /// Where the CA came from, for messages.
    pub ca_source: Option<String>,
    pub token: Option<String>,
    /// The context used, if any.
    pub context: Option<String>,
    /// Largest gRPC message the CLI sends or accepts.
    pub max_message_size: usize,
}

/// Settings for this invocation: flags and environment first, then the
/// context (`--context`, else the current one). A context is only used
/// for the hub it was saved for: `--hub` naming another hub ignores it.
///
/// # Errors
/// An unknown `--context`, an unreadable token or CA file, a broken config
/// file.
pub fn resolve(g: &Global) -> Result<Resolved> {
    let file = match config_path() {
        Some(p) => Some(ConfigFile::load(&p)?),
        None => None,
    };
    let hub_flag = g.hub.as_deref().map(hub_url).transpose()?;
    let (context_name, context) = match (&g.context, &file) {
        (Some(name), Some(f)) => match f.context(name) {
            Some(c) => (Some(name.clone()), Some(c)),
            None => {
                return Err(CliError::NotFound(format!(
                    "context {name:?} not found in {} (see `flotilla context`)",
                    f.path.display()
                ))
                .into());
            }
        },
        (Some(name), None) => {
            return Err(usage(format!(
                "context {name:?}: no config file (no HOME; set FLOTILLA_CONFIG)"
            )));
        }
        (None, Some(f)) => {
            let current = f.current().map(str::to_owned);
            let c = current.as_deref().and_then(|n| f.context(n));
            let same_hub = |c: &HubContext| {
                hub_flag
                    .as_deref()
                    .is_none_or(|h| hub_url(&c.hub).is_ok_and(|ch| ch == h))
            };
            match c.filter(same_hub) {
                Some(c) => (current, Some(c)),
                None => (None, None),
            }
        }
        (None, None) => (None, None),
    };
    let token = match (&g.token, &g.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => context
            .as_ref()
            .map(|c| c.token.clone())
            .filter(|t| !t.is_empty()),
    };
    let hub = match (hub_flag, &context) {
        (Some(h), _) => h,
        (None, Some(c)) if !c.hub.is_empty() => hub_url(&c.hub)?,
        _ => DEFAULT_HUB.to_owned(),
    };
    let (ca_pem, ca_source) = match (&g.ca_file, &context) {
        (Some(f), _) => (
            Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading CA file {}", f.display()))?,
            ),
            Some(f.display().to_string()),
        ),
        (
            None,
            Some(HubContext {
                ca_pem: Some(pem), ..
            }),
        ) => (
            Some(pem.clone()),
            context_name.as_ref().map(|n| format!("context {n}")),
        ),
        (
            None,
            Some(HubContext {
                ca_file: Some(f), ..
            }),
        ) => (
            Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading CA file {}", f.display()))?,
            ),
            Some(f.display().to_string()),
        ),
        _ => (None, None),
    };
    Ok(Resolved {
        hub,
        ca_pem,
        ca_source,
        token,
        context: context_name,
        max_message_size: g.max_message_size,
    })
}

/// `flotilla login [--name NAME]`, after the connection was checked:
/// saves the settings in use as context NAME and makes it current.
///
/// # Errors
/// No token, or the config file cannot be read or written.
pub(super) fn login(g: &Global, r: &Resolved, name: Option<String>) -> Result<()> {
    let token = r
        .token
        .clone()
        .ok_or_else(|| usage("no API token to save: pass --token or --token-file"))?;
    save_login(g, r, name, token, None)
}

/// Saves `token` for the hub of `r` as context NAME, made current;
/// `who` (subject, groups, expiry) is printed for an SSO login.
///
/// # Errors
/// The config file cannot be read or written.
pub(super) fn save_login(
    g: &Global,
    r: &Resolved,
    name: Option<String>,
    token: String,
    who: Option<(String, Vec<String>, i64)>,
) -> Result<()> {
    let name = name.unwrap_or_else(|| default_context_name(&r.hub));
    if name.trim().is_empty() {
        return Err(usage("the context name is empty"));
    }
    let mut file = ConfigFile::user()?;
    let replaced = file.context(&name).is_some();
    file.set_context(
        &name,
        &HubContext {
            hub: r.hub.clone(),
            ca_pem: r.ca_pem.clone(),
            ca_file: None,
            token,
        },
    );
    file.set_current(&name);
    file.save()?;
    let path = file.path.display().to_string();
    let hub = &r.hub;
    let mut doc = json!({"context": name, "hub": hub, "config": path, "updated": replaced});
    if let Some((subject, groups, expires_ms)) = &who {
        doc["subject"] = json!(subject);
        doc["groups"] = json!(groups);
        doc["expiresUnixMs"] = json!(expires_ms);
    }
    super::print_out(g.output, doc, || {
        let by = who
            .as_ref()
            .map(|(s, gs, exp)| {
                let until = jiff::Timestamp::from_millisecond(*exp)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| exp.to_string());
                format!(" as {s} (groups: {}; until {until})", gs.join(", "))
            })
            .unwrap_or_default();
        format!(
            "logged in to {hub}{by}; context {name} {} in {path} and made current\n",
            if replaced { "updated" } else { "saved" }
        )
    });
    Ok(())
}

/// `flotilla logout [NAME]`.
///
/// # Errors
/// No such context (exit 3), no current one, or the file cannot be written.
pub(super) fn logout(g: &Global, name: Option<&str>) -> Result<()> {
    let mut file = ConfigFile::user()?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => file
            .current()
            .map(str::to_owned)
            .ok_or_else(|| usage("no current context: name the one to log out of"))?,
    };
    if !file.remove_context(&name) {
        return Err(CliError::NotFound(format!(
            "context {name:?} not found in {}",
            file.path.display()
        ))
        .into());
    }
    file.save()?;
    super::print_out(g.output, json!({"loggedOut": name}), || {
        format!("logged out of context {name}; its token is forgotten\n")
    });
    Ok(())
}

/// `flotilla context [NAME]`: the table of contexts, or switch to NAME.
///
/// # Errors
/// No such context (exit 3), or the file cannot be read or written.
pub(super) fn context_command(g: &Global, name: Option<&str>) -> Result<()> {
    let mut file = ConfigFile::user()?;
    if let Some(name) = name {
        if file.context(name).is_none() {
            return Err(CliError::NotFound(format!(
                "context {name:?} not found in {} (`flotilla login --name {name}` saves one)",
                file.path.display()
            ))
            .into());
        }
        let unchanged = file.current() == Some(name);
        if !unchanged {
            file.set_current(name);
            file.save()?;
        }
        super::print_out(
            g.output,
            json!({"currentContext": name, "changed": !unchanged}),
            || {
                if unchanged {
                    format!("context {name} is already current\n")
                } else {
                    format!("switched to context {name}\n")
                }
            },
        );
        return Ok(());
    }
    let current = file.current().map(str::to_owned);
    let contexts = file.contexts();
    super::print_out(
        g.output,
        Value::Array(
            contexts
                .iter()
                .map(|(n, c)| json!({"name": n, "hub": c.hub, "current": current.as_deref() == Some(n)}))
                .collect(),
        ),
        || {
            let rows = contexts
                .iter()
                .map(|(n, c)| {
                    vec![
                        if current.as_deref() == Some(n) { "*" } else { "" }.to_owned(),
                        n.clone(),
                        c.hub.clone(),
                    ]
                })
                .collect();
            super::table(&["CURRENT", "NAME", "HUB"], rows)
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_addresses_without_a_scheme_are_https() {
        assert_eq!(
            hub_url("hub.example:7443").unwrap(),
            "https://hub.example:7443"
        );
        assert_eq!(
            hub_url(" 127.0.0.1:7443/ ").unwrap(),
            "https://127.0.0.1:7443"
        );
        assert_eq!(hub_url("https://h:1").unwrap(), "https://h:1");
        assert_eq!(hub_url("http://h:1").unwrap(), "http://h:1");
        assert!(hub_url("").is_err());
        assert!(hub_url("ftp://h").is_err());
        assert!(hub_url("https://").is_err());
        assert_eq!(
            default_context_name("https://hub.example:7443"),
            "hub.example:7443"
        );
    }

    #[test]
    fn writes_keep_other_contexts_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        let mut f = ConfigFile::load(&path).unwrap();
        assert!(f.contexts().is_empty());
        let a = HubContext {
            hub: "https://a:1".into(),
            ca_pem: Some("PEM".into()),
            token: "ta".into(),
            ..HubContext::default()
        };
        f.set_context("a", &a);
        f.set_current("a");
        f.save().unwrap();
        // Someone else's key survives our writes.
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        doc["editor"] = json!("vim");
        std::fs::write(&path, doc.to_string()).unwrap();
        let mut f = ConfigFile::load(&path).unwrap();
        let b = HubContext {
            hub: "https://b:2".into(),
            token: "tb".into(),
            ..HubContext::default()
        };
        f.set_context("b", &b);
        f.save().unwrap();
        let f = ConfigFile::load(&path).unwrap();
        assert_eq!(f.context("a"), Some(a));
        assert_eq!(f.context("b"), Some(b));
        assert_eq!(f.current(), Some("a"));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["editor"], "vim");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut f = ConfigFile::load(&path).unwrap();
        assert!(f.remove_context("a"));
        assert!(!f.remove_context("a"));
        assert_eq!(f.current(), None);
        assert_eq!(f.contexts().len(), 1);
    }

    #[test]
    fn a_broken_file_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn files_of_earlier_versions_read_as_one_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"hub": "https://h:7443", "ca_file": "/x/ca.crt", "token": "t"}"#,
        )
        .unwrap();
        let f = ConfigFile::load(&path).unwrap();
        assert_eq!(f.current(), Some("h:7443"));
        assert_eq!(
            f.context("h:7443"),
            Some(HubContext {
                hub: "https://h:7443".into(),
                ca_file: Some("/x/ca.crt".into()),
                token: "t".into(),
                ..HubContext::default()
            })
        );
    }
}
