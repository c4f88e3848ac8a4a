//! Custom health checks in Lua, with the contract of Argo CD's
//! `resource.customizations` `health.lua`: the script sees the live object
//! as the global `obj` and returns a table `hs` with `status` (one of the
//! health status names) and `message`. Existing Argo CD scripts work
//! unchanged.
//!
//! Scripts are loaded from a directory laid out like Argo CD's
//! `resource_customizations`: `DIR/<group>/<Kind>/health.lua`, where the
//! core group is written `_` (or `core`). A custom check replaces the
//! built-in rule for its kind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlua::{HookTriggers, Lua, LuaSerdeExt, VmState};
use serde_json::Value;

use crate::health::{self, Health, HealthStatus};

/// Instruction budget of one script run; a script that loops forever is
/// stopped and reported Unknown.
const INSTRUCTION_BUDGET: u32 = 5_000_000;
const HOOK_EVERY: u32 = 10_000;

/// Errors loading custom checks.
#[derive(Debug, thiserror::Error)]
pub enum CustomHealthError {
    /// The directory or a script could not be read.
    #[error("reading health checks in {path}: {source}")]
    Io {
        /// What was read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Health assessment: custom Lua checks first, then the built-in rules.
#[derive(Debug, Clone, Default)]
pub struct HealthRules {
    scripts: HashMap<(String, String), (PathBuf, String)>,
}

impl HealthRules {
    /// Only the built-in rules.
    #[must_use]
    pub fn builtin() -> Self {
        Self::default()
    }

    /// Loads every `<group>/<Kind>/health.lua` under `dir`.
    ///
    /// # Errors
    /// When the directory or a script cannot be read.
    pub fn load(dir: &Path) -> Result<Self, CustomHealthError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CustomHealthError::Io { path, source }
        };
        let mut scripts = HashMap::new();
        for group in std::fs::read_dir(dir).map_err(io(dir))? {
            let group = group.map_err(io(dir))?.path();
            if !group.is_dir() {
                continue;
            }
            for kind in std::fs::read_dir(&group).map_err(io(&group))? {
                let kind = kind.map_err(io(&group))?.path();
                let script = kind.join("health.lua");
                if !script.is_file() {
                    continue;
                }
                let text = std::fs::read_to_string(&script).map_err(io(&script))?;
                let name = |p: &Path| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("")
                        .to_owned()
                };
                let group_name = match name(&group).as_str() {
                    "_" | "core" => String::new(),
                    g => g.to_owned(),
                };
                scripts.insert((group_name, name(&kind)), (script, text));
            }
        }
        Ok(Self { scripts })
    }

    /// Number of custom checks loaded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.scripts.len()
    }

    /// Whether no custom check is loaded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// Assesses a live object: an object being deleted is "Pending
    /// deletion" (before any script, as in Argo CD), then the custom check
    /// for its kind, then the built-in rule.
    #[must_use]
    pub fn assess(&self, obj: &Value) -> Health {
        if let Some(h) = health::pending_deletion(obj) {
            return h;
        }
        let group = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.rsplit_once('/'))
            .map_or("", |(g, _)| g);
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        match self.scripts.get(&(group.to_owned(), kind.to_owned())) {
            Some((path, script)) => run(path, script, obj).unwrap_or_else(|message| Health {
                status: HealthStatus::Unknown,
                message,
            }),
            None => health::assess(obj),
        }
    }
}

impl HealthRules {
    /// The health an object contributes to its application's status: as
    /// [`HealthRules::assess`], except that an object annotated
    /// `argocd.argoproj.io/ignore-healthcheck: "true"` is Healthy (it never
    /// makes its application worse, as in Argo CD), with its assessed
    /// health in the message. Sync waves still wait for the assessed
    /// health, as Argo CD's do.
    #[must_use]
    pub fn assess_for_app(&self, obj: &Value) -> Health {
        let assessed = self.assess(obj);
        if !health::ignores_health_check(obj) {
            return assessed;
        }
        let mut message = format!(
            "not counted ({}=true); assessed {}",
            health::IGNORE_HEALTHCHECK,
            assessed.status
        );
        if !assessed.message.is_empty() {
            message = format!("{message}: {}", assessed.message);
        }
        Health::new(HealthStatus::Healthy, message)
    }
}

/// Runs one script in a fresh interpreter.
fn run(path: &Path, script: &str, obj: &Value) -> Result<Health, String> {
    let lua = Lua::new();
    let spent = std::cell::Cell::new(0u32);
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| {
            spent.set(spent.get().saturating_add(HOOK_EVERY));
            if spent.get() > INSTRUCTION_BUDGET {
                Err(mlua::Error::runtime("health check ran too long"))
            } else {
                Ok(VmState::Continue)
            }
        },
    )
    .map_err(|e| e.to_string())?;
    let options = mlua::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
        .set_array_metatable(false);
    let value = lua.to_value_with(obj, options).map_err(|e| e.to_string())?;
    lua.globals().set("obj", value).map_err(|e| e.to_string())?;
    let hs: mlua::Table = lua
        .load(script)
        .set_name(path.display().to_string())
        .eval()
        .map_err(|e| format!("health check {}: {e}", path.display()))?;
    let status: Option<String> = hs.get("status").map_err(|e| e.to_string())?;
    let message: Option<String> = hs.get("message").map_err(|e| e.to_string())?;
    let status = status
        .as_deref()
        .and_then(HealthStatus::parse)
        .ok_or_else(|| format!("health check {} returned status {status:?}", path.display()))?;
    Ok(Health {
        status,
        message: message.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CERTIFICATE: &str = r#"
hs = {}
if obj.status ~= nil then
  if obj.status.conditions ~= nil then
    for i, condition in ipairs(obj.status.conditions) do
      if condition.type == "Ready" and condition.status == "False" then
        hs.status = "Degraded"
        hs.message = condition.message
        return hs
      end
      if condition.type == "Ready" and condition.status == "True" then
        hs.status = "Healthy"
        hs.message = condition.message
        return hs
      end
    end
  end
end
hs.status = "Progressing"
hs.message = "Waiting for certificate"
return hs
"#;

    fn load_rules(dir: &Path, group: &str, kind: &str, script: &str) -> HealthRules {
        let d = dir.join(group).join(kind);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("health.lua"), script).expect("write");
        HealthRules::load(dir).expect("load")
    }

    #[test]
    fn argo_style_script_decides_health() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = load_rules(dir.path(), "cert-manager.io", "Certificate", CERTIFICATE);
        assert_eq!(rules.len(), 1);
        let cert = |status: &str, message: &str| {
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c"},
                "status": {"conditions": [{"type": "Ready", "status": status, "message": message}]}})
        };
        let h = rules.assess(&cert("False", "issuer not found"));
        assert_eq!(
            (h.status, h.message.as_str()),
            (HealthStatus::Degraded, "issuer not found")
        );
        assert_eq!(
            rules.assess(&cert("True", "ok")).status,
            HealthStatus::Healthy
        );
        let pending =
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "spec": {"x": null}});
        assert_eq!(rules.assess(&pending).status, HealthStatus::Progressing);
        // Other kinds keep the built-in rules.
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": "Lost"}});
        assert_eq!(rules.assess(&pvc).status, HealthStatus::Degraded);
    }

    #[test]
    fn deletion_comes_before_scripts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = load_rules(dir.path(), "_", "ConfigMap", "return {status = 'Degraded'}");
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "deletionTimestamp": "2026-01-01T00:00:00Z"}});
        assert_eq!(
            rules.assess(&cm),
            Health::new(HealthStatus::Progressing, "Pending deletion")
        );
    }

    #[test]
    fn ignore_healthcheck_leaves_the_object_out_of_app_health_only() {
        let rules = HealthRules::builtin();
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"restartPolicy": "Always"},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}});
        assert_eq!(rules.assess_for_app(&pod).status, HealthStatus::Degraded);
        for value in ["false", "True", ""] {
            pod["metadata"]["annotations"] = json!({health::IGNORE_HEALTHCHECK: value});
            assert_eq!(
                rules.assess_for_app(&pod).status,
                HealthStatus::Degraded,
                "{value}"
            );
        }
        pod["metadata"]["annotations"] = json!({health::IGNORE_HEALTHCHECK: "true"});
        let h = rules.assess_for_app(&pod);
        assert_eq!(h.status, HealthStatus::Healthy);
        assert_eq!(
            h.message,
            "not counted (argocd.argoproj.io/ignore-healthcheck=true); assessed Degraded: back-off"
        );
        // Sync waves read the assessed health.
        assert_eq!(rules.assess(&pod).status, HealthStatus::Degraded);
    }

    #[test]
    fn core_group_is_underscore_and_broken_scripts_are_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = load_rules(
            dir.path(),
            "_",
            "ConfigMap",
            "hs = {status = 'Suspended'}\nreturn hs",
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        assert_eq!(rules.assess(&cm).status, HealthStatus::Suspended);

        let dir = tempfile::tempdir().expect("tempdir");
        let rules = load_rules(dir.path(), "_", "ConfigMap", "return {status = 'Fine'}");
        let h = rules.assess(&cm);
        assert_eq!(h.status, HealthStatus::Unknown);
        assert!(h.message.contains("Fine"), "{}", h.message);

        let dir = tempfile::tempdir().expect("tempdir");
        let rules = load_rules(dir.path(), "_", "ConfigMap", "while true do end");
        let h = rules.assess(&cm);
        assert_eq!(h.status, HealthStatus::Unknown);
        assert!(h.message.contains("too long"), "{}", h.message);
    }
}
