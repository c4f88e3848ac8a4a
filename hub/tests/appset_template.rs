//! goTemplate determinism at the hub: a set whose template walks maps
//! (`toJson`, `toYaml`, `range`, `keys`) generates byte-identical
//! Applications on every evaluation, and the hub never rewrites them
//! (issue 14, point 1).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use flotilla_hub::appset::lifecycle::{AppSets, DEFAULT_DELETION_BUDGET};
use flotilla_hub::fleet::Fleet;
use flotilla_hub::source::GitCache;
use flotilla_hub::store::Store;

const SET: &str = r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: maps
spec:
  goTemplate: true
  generators:
  - list:
      elements:
      - name: web
        config: {zeta: 1, alpha: {y: "2", b: [x, z]}, mid: m, kappa: true, beta: null, k1: a, k2: b, k3: c, k4: d, k5: e, k6: f}
      - name: api
        config: {one: 1, two: {three: 3, four: [4]}, five: "5"}
  template:
    metadata:
      name: '{{ .name }}'
      annotations:
        json: '{{ toJson . }}'
        pretty: '{{ toPrettyJson .config }}'
        yaml: '{{ toYaml . }}'
        range: '{{ range $k, $v := .config }}{{ $k }}={{ $v }};{{ end }}'
        keys: '{{ keys .config | join "," }}'
        values: '{{ values .config | toJson }}'
        printed: '{{ .config }}'
    spec:
      project: default
      source:
        repoURL: file:///r
        path: '{{ .name }}'
      destination:
        name: c1
"#;

#[test]
fn generating_the_same_set_fifty_times_is_byte_identical() {
    let set = flotilla_hub::appset::parse_application_sets(SET, "test")
        .unwrap()
        .remove(0);
    let first = serde_json::to_vec(&set.generate(&[], None).unwrap().applications).unwrap();
    for _ in 0..50 {
        let again = serde_json::to_vec(&set.generate(&[], None).unwrap().applications).unwrap();
        assert_eq!(again, first, "a second evaluation rendered different bytes");
    }
    let text = String::from_utf8(first).unwrap();
    assert!(
        text.contains("alpha,beta,k1,k2,k3,k4,k5,k6,kappa,mid,zeta"),
        "{text}"
    );
}

#[tokio::test]
async fn the_hub_never_rewrites_an_unchanged_generated_application() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let sets = AppSets::new(
        Fleet::load(store.clone()).unwrap(),
        DEFAULT_DELETION_BUDGET,
        Duration::from_secs(3600),
    );
    let cache = GitCache::new(dir.path().join("git"));
    sets.put_from_api(SET, false).unwrap();

    sets.reconcile_all(&cache, true).await.unwrap();
    assert_eq!(sets.evaluations("maps").evaluations, 1);
    let written = store.app_writes();
    assert!(written >= 2, "the first evaluation creates both apps");
    let before: Vec<_> = ["web", "api"]
        .iter()
        .map(|n| serde_json::to_string(&store.app(n).unwrap().unwrap().app).unwrap())
        .collect();

    // Forced: every pass renders afresh rather than reusing the result.
    for pass in 2..=50u64 {
        sets.reconcile_all(&cache, true).await.unwrap();
        assert_eq!(sets.evaluations("maps").evaluations, pass);
    }
    assert_eq!(
        store.app_writes(),
        written,
        "49 more evaluations rewrote an application"
    );
    let after: Vec<_> = ["web", "api"]
        .iter()
        .map(|n| serde_json::to_string(&store.app(n).unwrap().unwrap().app).unwrap())
        .collect();
    assert_eq!(after, before);
}
