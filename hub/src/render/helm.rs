//! Helm: `helm template` arguments from Argo CD's `source.helm` options.
//!
//! Supported: `releaseName` (default: the application name), `namespace`
//! (default: `destination.namespace`), `valueFiles` (paths inside the
//! repository, relative to the chart), `values` (a YAML string),
//! `valuesObject` (a map), `parameters` (`[{name, value, forceString}]` →
//! `--set` / `--set-string`), `skipCrds`, `passCredentials` is ignored.
//! Chart dependencies must be vendored in `charts/`: the hub never runs
//! `helm dependency build` (no network).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository trees of `ref` sources on disk, by ref name (no `$`).
pub type RefDirs = BTreeMap<String, PathBuf>;

use super::kustomize::resolve_inside;

/// Arguments after the helm program: `template RELEASE CHART …`. Writes
/// inline values into `scratch`.
///
/// # Errors
/// A malformed option, or a value file outside the repository.
pub fn template_args(
    options: Option<&Value>,
    release: &str,
    namespace: &str,
    chart_dir: &Path,
    chart_path: &str,
    scratch: &Path,
    refs: &RefDirs,
) -> Result<Vec<String>, String> {
    let empty = Value::Object(Default::default());
    let o = options.filter(|v| !v.is_null()).unwrap_or(&empty);
    if !o.is_object() {
        return Err("source.helm: expected an object".to_owned());
    }
    let release = o["releaseName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(release);
    let namespace = o["namespace"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(namespace);
    let mut args = vec![
        "template".to_owned(),
        release.to_owned(),
        chart_dir.display().to_string(),
    ];
    if !namespace.is_empty() {
        args.push("--namespace".into());
        args.push(namespace.to_owned());
    }
    if o["skipCrds"].as_bool() == Some(true) {
        args.push("--skip-crds".into());
    }
    if let Some(files) = o.get("valueFiles").filter(|v| !v.is_null()) {
        let files = files
            .as_array()
            .ok_or("source.helm.valueFiles: expected a list")?;
        for f in files {
            let f = f
                .as_str()
                .ok_or("source.helm.valueFiles: expected a list of strings")?;
            if f.contains("://") {
                return Err(format!(
                    "source.helm.valueFiles {f:?}: remote value files are not allowed"
                ));
            }
            if let Some(rest) = f.strip_prefix('$') {
                let (name, file) = rest.split_once('/').unwrap_or((rest, ""));
                let Some(dir) = refs.get(name) else {
                    return Err(format!(
                        "source.helm.valueFiles {f:?}: ${name} is not a ref source of this application"
                    ));
                };
                if file.starts_with('/') || resolve_inside("", file).is_none() {
                    return Err(format!(
                        "source.helm.valueFiles {f:?} points outside the repository of ${name}"
                    ));
                }
                args.push("--values".into());
                args.push(dir.join(file).display().to_string());
                continue;
            }
            if resolve_inside(chart_path, f).is_none() {
                return Err(format!(
                    "source.helm.valueFiles {f:?} points outside the repository"
                ));
            }
            args.push("--values".into());
            args.push(chart_dir.join(f).display().to_string());
        }
    }
    let mut inline = 0;
    let mut write_values = |text: String| -> Result<String, String> {
        inline += 1;
        let p = scratch.join(format!("flotilla-values-{inline}.yaml"));
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
        Ok(p.display().to_string())
    };
    match &o["values"] {
        Value::Null => {}
        Value::String(s) if s.trim().is_empty() => {}
        Value::String(s) => {
            let p = write_values(s.clone())?;
            args.push("--values".into());
            args.push(p);
        }
        // Argo CD also accepts values as a map.
        v @ Value::Object(_) => {
            let p = write_values(v.to_string())?;
            args.push("--values".into());
            args.push(p);
        }
        _ => return Err("source.helm.values: expected a YAML string".to_owned()),
    }
    match &o["valuesObject"] {
        Value::Null => {}
        v @ Value::Object(_) => {
            let p = write_values(v.to_string())?;
            args.push("--values".into());
            args.push(p);
        }
        _ => return Err("source.helm.valuesObject: expected a map".to_owned()),
    }
    if let Some(params) = o.get("parameters").filter(|v| !v.is_null()) {
        let params = params
            .as_array()
            .ok_or("source.helm.parameters: expected a list")?;
        for p in params {
            let name = p["name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or("source.helm.parameters: each entry needs a name")?;
            let value = match &p["value"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let flag = if p["forceString"].as_bool() == Some(true) {
                "--set-string"
            } else {
                "--set"
            };
            args.push(flag.into());
            args.push(format!("{name}={value}"));
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn args_from_options() {
        let scratch = tempfile::tempdir().unwrap();
        let chart = Path::new("/t/repo/charts/web");
        let args = template_args(
            Some(&json!({
                "valueFiles": ["values-prod.yaml"],
                "values": "replicas: 2\n",
                "valuesObject": {"a": 1},
                "parameters": [{"name": "image.tag", "value": "v1"}, {"name": "n", "value": "01", "forceString": true}],
            })),
            "web-prod",
            "prod",
            chart,
            "charts/web",
            scratch.path(),
            &RefDirs::new(),
        )
        .unwrap();
        assert_eq!(&args[..3], ["template", "web-prod", "/t/repo/charts/web"]);
        let joined = args.join(" ");
        assert!(joined.contains("--namespace prod"), "{joined}");
        assert!(
            joined.contains("--values /t/repo/charts/web/values-prod.yaml"),
            "{joined}"
        );
        assert!(joined.contains("--set image.tag=v1"), "{joined}");
        assert!(joined.contains("--set-string n=01"), "{joined}");
        assert_eq!(args.iter().filter(|a| *a == "--values").count(), 3);

        let args = template_args(
            Some(&json!({"releaseName": "r"})),
            "app",
            "",
            chart,
            "charts/web",
            scratch.path(),
            &RefDirs::new(),
        )
        .unwrap();
        assert_eq!(args, ["template", "r", "/t/repo/charts/web"]);
    }

    #[test]
    fn value_files_must_stay_inside() {
        let scratch = tempfile::tempdir().unwrap();
        let err = template_args(
            Some(&json!({"valueFiles": ["../../../etc/passwd"]})),
            "a",
            "",
            Path::new("/t/repo/c"),
            "c",
            scratch.path(),
            &RefDirs::new(),
        )
        .unwrap_err();
        assert!(err.contains("outside the repository"), "{err}");
        let err = template_args(
            Some(&json!({"valueFiles": ["https://x/v.yaml"]})),
            "a",
            "",
            Path::new("/t/repo/c"),
            "c",
            scratch.path(),
            &RefDirs::new(),
        )
        .unwrap_err();
        assert!(err.contains("remote"), "{err}");
    }

    #[test]
    fn ref_value_files() {
        let scratch = tempfile::tempdir().unwrap();
        let mut refs = RefDirs::new();
        refs.insert("values".into(), PathBuf::from("/t/refs/values"));
        let args = template_args(
            Some(&json!({"valueFiles": ["$values/env/prod.yaml", "local.yaml"]})),
            "a",
            "",
            Path::new("/t/repo/c"),
            "c",
            scratch.path(),
            &refs,
        )
        .unwrap();
        let joined = args.join(" ");
        assert!(
            joined.contains("--values /t/refs/values/env/prod.yaml --values /t/repo/c/local.yaml"),
            "{joined}"
        );
        for (file, want) in [
            ("$other/x.yaml", "$other is not a ref source"),
            ("$values/../../x.yaml", "outside the repository of $values"),
            ("$values//etc/passwd", "outside the repository of $values"),
        ] {
            let err = template_args(
                Some(&json!({ "valueFiles": [file] })),
                "a",
                "",
                Path::new("/t/repo/c"),
                "c",
                scratch.path(),
                &refs,
            )
            .unwrap_err();
            assert!(err.contains(want), "{file}: {err}");
        }
    }
}
