//! The agent's identity (key, certificate, hub CA) kept in a Secret of its
//! own namespace when it runs in a cluster, so it survives pod restarts
//! (the state directory is an `emptyDir`, and the bootstrap token is spent
//! after the first enrollment).
//!
//! At start the Secret is restored into the state directory when that has
//! no certificate; after enrollment and after every renewal the files are
//! written back. The files stay the agent's working copy (0600 key).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use tracing::info;

use crate::files::write_atomic;
use crate::link::{CA_FILE, CERT_FILE, KEY_FILE};

/// Name of the identity Secret in the agent's namespace.
pub const SECRET_NAME: &str = "flotilla-agent-identity";
const FIELD_MANAGER: &str = "flotilla-agent";

/// The identity Secret of one agent.
#[derive(Clone)]
pub struct IdentitySecret {
    api: Api<Secret>,
    namespace: String,
}

impl std::fmt::Debug for IdentitySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySecret")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl IdentitySecret {
    /// The Secret [`SECRET_NAME`] in `namespace`.
    #[must_use]
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    /// The agent's namespace, where the Secret lives.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Writes the Secret's key, certificate and CA into `state_dir`.
    /// Returns false when the Secret does not exist or lacks a key.
    ///
    /// # Errors
    /// The API call or a file write fails.
    pub async fn restore(&self, state_dir: &Path) -> anyhow::Result<bool> {
        let Some(secret) = self.api.get_opt(SECRET_NAME).await? else {
            return Ok(false);
        };
        let data = secret.data.unwrap_or_default();
        let (Some(cert), Some(key), Some(ca)) =
            (data.get(CERT_FILE), data.get(KEY_FILE), data.get(CA_FILE))
        else {
            return Ok(false);
        };
        write_atomic(&state_dir.join(CA_FILE), &ca.0, false)
            .with_context(|| format!("writing {}", state_dir.join(CA_FILE).display()))?;
        write_atomic(&state_dir.join(KEY_FILE), &key.0, true)
            .with_context(|| format!("writing {}", state_dir.join(KEY_FILE).display()))?;
        write_atomic(&state_dir.join(CERT_FILE), &cert.0, false)
            .with_context(|| format!("writing {}", state_dir.join(CERT_FILE).display()))?;
        info!(namespace = %self.namespace, secret = SECRET_NAME, "identity restored from the Secret");
        Ok(true)
    }

    /// Stores the state directory's key, certificate and CA in the Secret.
    ///
    /// # Errors
    /// A file cannot be read or the API call fails.
    pub async fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let mut data = BTreeMap::new();
        for file in [CERT_FILE, KEY_FILE, CA_FILE] {
            let bytes = std::fs::read(state_dir.join(file))?;
            data.insert(file.to_owned(), ByteString(bytes));
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(SECRET_NAME.to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Default::default()
        };
        self.api
            .patch(
                SECRET_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        info!(namespace = %self.namespace, secret = SECRET_NAME, "identity stored in the Secret");
        Ok(())
    }
}
