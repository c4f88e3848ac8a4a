//! A Helm repository's parts for tests: chart archives built with tar and
//! flate2, and a fake `helm` that renders them.

use std::path::{Path, PathBuf};

/// A chart archive: `podinfo/Chart.yaml` and one ConfigMap template that
/// carries the version, release and namespace.
pub fn chart_tgz(chart: &str, version: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let files = [
        (
            format!("{chart}/Chart.yaml"),
            format!("apiVersion: v2\nname: {chart}\nversion: {version}\n"),
        ),
        (
            format!("{chart}/templates/configmap.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: RELEASE-{chart}\n  namespace: NAMESPACE\ndata:\n  version: \"{version}\"\n"
            ),
        ),
    ];
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, content.as_bytes())
            .expect("append");
    }
    tar.into_inner().expect("tar").finish().expect("gzip")
}

/// A fake helm: `template RELEASE CHART [--namespace NS] …` prints every
/// template of CHART with RELEASE and NAMESPACE replaced. It runs with an
/// empty PATH, so the tools it uses are given as full paths.
pub fn fake_helm(dir: &Path) -> PathBuf {
    let find = |p: &str| {
        flotilla_hub::render::exec::find_program(p)
            .unwrap_or_else(|| panic!("{p} on PATH"))
            .display()
            .to_string()
    };
    let script = format!(
        r#"#!/bin/sh
[ "$1" = template ] || exit 2
release=$2
chart=$3
ns=default
shift 3
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) ns=$2; shift 2 ;;
    *) shift ;;
  esac
done
for f in "$chart"/templates/*.yaml; do
  echo ---
  {sed} -e "s/RELEASE/$release/g" -e "s/NAMESPACE/$ns/g" "$f"
done
"#,
        sed = find("sed")
    );
    let path = dir.join("helm");
    std::fs::write(&path, script).expect("write helm");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    path
}
