//! ApplicationSet rendering over a large inventory: one set with a
//! `clusters` generator over 10,000 clusters, fasttemplate vs goTemplate.
//! Prints a table; run with `cargo bench -p flotilla-hub --bench appset`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_hub::appset::{ClusterInfo, parse_application_sets};

const FAST: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: guestbook
spec:
  generators:
  - clusters:
      selector:
        matchExpressions:
        - {key: env, operator: In, values: [prod, staging]}
      values:
        revision: 'release-{{metadata.labels.region}}'
  template:
    metadata:
      name: '{{nameNormalized}}-guestbook'
      labels:
        env: '{{metadata.labels.env}}'
        region: '{{metadata.labels.region}}'
    spec:
      project: default
      source:
        repoURL: https://git.example.com/platform/config.git
        targetRevision: '{{values.revision}}'
        path: 'guestbook/overlays/{{metadata.labels.env}}'
      destination:
        name: '{{name}}'
        namespace: guestbook
      syncPolicy:
        automated: {prune: true, selfHeal: true}
"#;

const GO: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: guestbook
spec:
  goTemplate: true
  goTemplateOptions: ["missingkey=error"]
  generators:
  - clusters:
      selector:
        matchExpressions:
        - {key: env, operator: In, values: [prod, staging]}
      values:
        revision: 'release-{{ .metadata.labels.region }}'
  template:
    metadata:
      name: '{{ .nameNormalized }}-guestbook'
      labels:
        env: '{{ .metadata.labels.env }}'
        region: '{{ .metadata.labels.region }}'
    spec:
      project: default
      source:
        repoURL: https://git.example.com/platform/config.git
        targetRevision: '{{ .values.revision }}'
        path: 'guestbook/overlays/{{ .metadata.labels.env }}'
      destination:
        name: '{{ .name }}'
        namespace: guestbook
      syncPolicy:
        automated: {prune: true, selfHeal: true}
"#;

fn inventory(n: usize) -> Vec<ClusterInfo> {
    let envs = ["prod", "staging", "dev"];
    let regions = ["eu", "us", "ap"];
    (0..n)
        .map(|i| ClusterInfo {
            name: format!("cluster-{i:05}"),
            server: format!("https://10.{}.{}.1:6443", i / 250, i % 250),
            labels: BTreeMap::from([
                ("env".to_owned(), envs[i % 3].to_owned()),
                ("region".to_owned(), regions[(i / 3) % 3].to_owned()),
            ]),
            annotations: BTreeMap::new(),
            project: String::new(),
        })
        .collect()
}

fn measure(doc: &str, clusters: &[ClusterInfo], runs: usize) -> (usize, Duration, Duration) {
    let set = parse_application_sets(doc, "bench.yaml")
        .expect("bench set parses")
        .pop()
        .expect("one set");
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let out = set.generate(clusters, None).expect("bench set generates");
        times.push(start.elapsed());
        assert!(out.errors.is_empty(), "{:?}", out.errors.first());
        count = out.applications.len();
    }
    times.sort();
    (count, times[times.len() / 2], times[times.len() - 1])
}

fn main() {
    let clusters = inventory(10_000);
    println!(
        "ApplicationSet over {} clusters (clusters generator, 2/3 selected)",
        clusters.len()
    );
    println!(
        "{:<14} {:>8} {:>12} {:>12} {:>8}",
        "mode", "apps", "median", "max", "goal"
    );
    for (name, doc) in [("fasttemplate", FAST), ("goTemplate", GO)] {
        let (count, median, max) = measure(doc, &clusters, 7);
        println!(
            "{name:<14} {count:>8} {:>10.1}ms {:>10.1}ms {:>8}",
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            if median <= Duration::from_millis(200) {
                "≤200ms"
            } else {
                "MISSED"
            }
        );
    }
}
