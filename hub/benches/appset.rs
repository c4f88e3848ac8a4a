//! ApplicationSet rendering over a large inventory: one set with a
//! `clusters` generator over 10,000 clusters, fasttemplate vs goTemplate,
//! with the selector choosing 2/3 of the clusters and with it choosing
//! every cluster (the goal, 200 ms, is for every cluster selected). Each
//! case is generated 9 times (the first, warming the template cache, is
//! included); min and median are printed. Run with
//! `cargo bench -p flotilla-hub --bench appset`.

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
    (count, times[0], times[times.len() / 2])
}

fn main() {
    let clusters = inventory(10_000);
    println!(
        "ApplicationSet over {} clusters (clusters generator)",
        clusters.len()
    );
    println!(
        "{:<14} {:>10} {:>8} {:>12} {:>12} {:>8}",
        "mode", "selected", "apps", "min", "median", "goal"
    );
    // The selector picks env in (prod, staging): 2/3; with dev added, all.
    let all = |doc: &str| doc.replace("[prod, staging]", "[prod, staging, dev]");
    let cases = [
        ("fasttemplate", "2/3", FAST.to_owned()),
        ("fasttemplate", "all", all(FAST)),
        ("goTemplate", "2/3", GO.to_owned()),
        ("goTemplate", "all", all(GO)),
    ];
    for (name, selected, doc) in cases {
        let (count, min, median) = measure(&doc, &clusters, 9);
        println!(
            "{name:<14} {selected:>10} {count:>8} {:>10.1}ms {:>10.1}ms {:>8}",
            min.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            if median <= Duration::from_millis(200) {
                "≤200ms"
            } else {
                "MISSED"
            }
        );
    }
}
