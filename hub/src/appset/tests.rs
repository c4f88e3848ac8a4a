//! Table tests for generators and both template modes, with Argo CD's
//! documented edge cases.

use std::collections::BTreeMap;

use super::*;

fn clusters() -> Vec<ClusterInfo> {
    let mk = |name: &str, labels: &[(&str, &str)]| ClusterInfo {
        name: name.into(),
        server: format!("https://{name}.example:6443"),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        annotations: BTreeMap::from([("owner".to_owned(), format!("team-{name}"))]),
        project: String::new(),
    };
    vec![
        mk("prod-eu", &[("env", "prod"), ("region", "eu")]),
        mk("prod-us", &[("env", "prod"), ("region", "us")]),
        mk("Staging_EU", &[("env", "staging"), ("region", "eu")]),
    ]
}

struct Files(BTreeMap<String, String>);

impl GitFiles for Files {
    fn list(&self, _: &str, _: &str) -> Result<Vec<String>, String> {
        Ok(self.0.keys().cloned().collect())
    }
    fn read(&self, _: &str, _: &str, path: &str) -> Result<Vec<u8>, String> {
        self.0
            .get(path)
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| format!("{path}: not found"))
    }
}

fn repo() -> Files {
    Files(BTreeMap::from([
        ("apps/guestbook/deploy.yaml".into(), "kind: x".into()),
        ("apps/podinfo/deploy.yaml".into(), "kind: x".into()),
        ("apps/excluded/deploy.yaml".into(), "kind: x".into()),
        ("apps/podinfo/nested/x.yaml".into(), "kind: x".into()),
        (
            "clusters/eu/config.json".into(),
            r#"{"cluster": {"name": "prod-eu", "address": "https://eu"}, "replicas": 3, "tags": ["a","b"]}"#.into(),
        ),
        (
            "clusters/us/config.yaml".into(),
            "cluster:\n  name: prod-us\n  address: https://us\nreplicas: 1\n".into(),
        ),
    ]))
}

fn set(yaml: &str) -> ApplicationSet {
    parse_application_sets(yaml, "test.yaml")
        .unwrap()
        .pop()
        .unwrap()
}

fn names(g: &Generated) -> Vec<String> {
    g.applications
        .iter()
        .map(|a| a.metadata.name.clone())
        .collect()
}

const HEAD: &str =
    "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: s\nspec:\n";

fn with(spec: &str) -> String {
    format!("{HEAD}{spec}")
}

const TEMPLATE: &str = r#"
  template:
    metadata:
      name: '{{name}}-guestbook'
      labels:
        env: '{{metadata.labels.env}}'
    spec:
      project: default
      source:
        repoURL: https://git.example/config.git
        targetRevision: HEAD
        path: guestbook
      destination:
        name: '{{name}}'
        namespace: guestbook
"#;

#[test]
fn list_generator_fasttemplate() {
    let s = set(&with(
        r#"  generators:
  - list:
      elements:
      - cluster: engineering-dev
        url: https://kubernetes.default.svc
        values:
          replicas: "2"
      - cluster: engineering-prod
        url: https://prod
  template:
    metadata:
      name: '{{cluster}}-guestbook'
      annotations:
        replicas: '{{values.replicas}}'
    spec:
      source:
        repoURL: https://git.example/config.git
        path: guestbook
      destination:
        server: '{{url}}'
"#,
    ));
    let g = s.generate(&[], None).unwrap();
    assert_eq!(
        names(&g),
        ["engineering-dev-guestbook", "engineering-prod-guestbook"]
    );
    let a = &g.applications[0];
    assert_eq!(a.metadata.annotations["replicas"], "2");
    // A missing key stays literal in fasttemplate mode.
    assert_eq!(
        g.applications[1].metadata.annotations["replicas"],
        "{{values.replicas}}"
    );
    assert_eq!(
        a.spec.destination.server.as_deref(),
        Some("https://kubernetes.default.svc")
    );
}

#[test]
fn list_generator_non_string_needs_go_template() {
    let s = set(&with(
        "  generators:\n  - list:\n      elements:\n      - cluster: a\n        replicas: 3\n  template:\n    metadata:\n      name: x\n    spec:\n      source: {repoURL: r, path: p}\n      destination: {name: a}\n",
    ));
    let err = s.generate(&[], None).unwrap_err().to_string();
    assert!(
        err.contains("spec.generators[0].list.elements[0].replicas"),
        "{err}"
    );
}

#[test]
fn elements_yaml_and_go_template() {
    let s = set(&with(
        r#"  goTemplate: true
  goTemplateOptions: ["missingkey=error"]
  generators:
  - list:
      elementsYaml: |
        - cluster: a
          replicas: 3
        - cluster: b
          replicas: 1
  template:
    metadata:
      name: '{{.cluster}}-app'
      annotations:
        replicas: '{{.replicas}}'
    spec:
      source: {repoURL: r, path: p}
      destination: {name: '{{.cluster}}'}
"#,
    ));
    let g = s.generate(&[], None).unwrap();
    assert_eq!(names(&g), ["a-app", "b-app"]);
    assert_eq!(g.applications[0].metadata.annotations["replicas"], "3");
}

#[test]
fn clusters_generator_selectors() {
    let cases = [
        ("{}", vec!["prod-eu", "prod-us", "Staging_EU"]),
        ("{matchLabels: {env: prod}}", vec!["prod-eu", "prod-us"]),
        (
            "{matchExpressions: [{key: region, operator: In, values: [eu]}]}",
            vec!["prod-eu", "Staging_EU"],
        ),
        (
            "{matchLabels: {env: prod}, matchExpressions: [{key: region, operator: NotIn, values: [eu]}]}",
            vec!["prod-us"],
        ),
        ("{matchExpressions: [{key: gpu, operator: Exists}]}", vec![]),
        (
            "{matchExpressions: [{key: gpu, operator: DoesNotExist}]}",
            vec!["prod-eu", "prod-us", "Staging_EU"],
        ),
    ];
    for (selector, want) in cases {
        let s = set(&with(&format!(
            "  generators:\n  - clusters:\n      selector: {selector}\n  template:\n    metadata:\n      name: '{{{{nameNormalized}}}}-app'\n    spec:\n      source: {{repoURL: r, path: p}}\n      destination: {{name: '{{{{name}}}}'}}\n"
        )));
        let g = s.generate(&clusters(), None).unwrap();
        let got: Vec<String> = g
            .applications
            .iter()
            .map(|a| a.spec.destination.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(got, want, "selector {selector}");
    }
}

#[test]
fn clusters_parameters_and_values() {
    let s = set(&with(
        r#"  generators:
  - clusters:
      selector:
        matchLabels: {env: staging}
      values:
        revision: 'release-{{metadata.labels.region}}'
  template:
    metadata:
      name: '{{nameNormalized}}'
      annotations:
        server: '{{server}}'
        owner: '{{metadata.annotations.owner}}'
        rev: '{{values.revision}}'
    spec:
      source: {repoURL: r, path: p}
      destination: {name: '{{name}}'}
"#,
    ));
    let g = s.generate(&clusters(), None).unwrap();
    let a = &g.applications[0];
    assert_eq!(a.metadata.name, "staging-eu");
    assert_eq!(
        a.metadata.annotations["server"],
        "https://Staging_EU.example:6443"
    );
    assert_eq!(a.metadata.annotations["owner"], "team-Staging_EU");
    assert_eq!(a.metadata.annotations["rev"], "release-eu");
}

#[test]
fn clusters_go_template_nested_parameters() {
    let s = set(&with(
        r#"  goTemplate: true
  generators:
  - clusters:
      selector: {matchLabels: {env: prod}}
      values:
        tier: '{{ .metadata.labels.region | upper }}'
  template:
    metadata:
      name: '{{ .name }}-{{ .values.tier | lower }}'
    spec:
      source: {repoURL: r, path: p}
      destination: {name: '{{ .name }}'}
"#,
    ));
    assert_eq!(
        names(&s.generate(&clusters(), None).unwrap()),
        ["prod-eu-eu", "prod-us-us"]
    );
}

#[test]
fn git_directories_with_exclude() {
    let s = set(&with(
        r#"  generators:
  - git:
      repoURL: https://git.example/config.git
      revision: HEAD
      directories:
      - path: apps/*
      - path: apps/excluded
        exclude: true
  template:
    metadata:
      name: '{{path.basename}}'
      annotations:
        full: '{{path}}'
        first: '{{path[0]}}'
    spec:
      source: {repoURL: r, path: '{{path}}'}
      destination: {name: in-cluster}
"#,
    ));
    let g = s.generate(&[], Some(&repo())).unwrap();
    assert_eq!(names(&g), ["guestbook", "podinfo"]);
    assert_eq!(
        g.applications[1].metadata.annotations["full"],
        "apps/podinfo"
    );
    assert_eq!(g.applications[1].metadata.annotations["first"], "apps");
}

#[test]
fn git_files_flattened() {
    let s = set(&with(
        r#"  generators:
  - git:
      repoURL: https://git.example/config.git
      files:
      - path: "clusters/**/config.*"
  template:
    metadata:
      name: '{{cluster.name}}-{{path.basename}}'
      annotations:
        replicas: '{{replicas}}'
        file: '{{path.filename}}'
        tag: '{{tags.1}}'
    spec:
      source: {repoURL: r, path: p}
      destination: {server: '{{cluster.address}}'}
"#,
    ));
    let g = s.generate(&[], Some(&repo())).unwrap();
    assert_eq!(names(&g), ["prod-eu-eu", "prod-us-us"]);
    assert_eq!(g.applications[0].metadata.annotations["replicas"], "3");
    assert_eq!(
        g.applications[0].metadata.annotations["file"],
        "config.json"
    );
    assert_eq!(g.applications[0].metadata.annotations["tag"], "b");
    assert_eq!(g.applications[1].metadata.annotations["tag"], "{{tags.1}}");
}

#[test]
fn matrix_of_three_with_interpolation() {
    let s = set(&with(
        r#"  generators:
  - matrix:
      generators:
      - clusters:
          selector: {matchLabels: {env: prod}}
      - list:
          elements:
          - app: guestbook
          - app: podinfo
      - list:
          elements:
          - tier: '{{metadata.labels.region}}-{{app}}'
  template:
    metadata:
      name: '{{name}}-{{app}}'
      annotations:
        tier: '{{tier}}'
    spec:
      source: {repoURL: r, path: '{{app}}'}
      destination: {name: '{{name}}'}
"#,
    ));
    let g = s.generate(&clusters(), None).unwrap();
    assert_eq!(
        names(&g),
        [
            "prod-eu-guestbook",
            "prod-eu-podinfo",
            "prod-us-guestbook",
            "prod-us-podinfo"
        ]
    );
    assert_eq!(g.applications[3].metadata.annotations["tier"], "us-podinfo");
}

#[test]
fn nested_matrix_in_merge() {
    let s = set(&with(
        r#"  generators:
  - merge:
      mergeKeys: [name]
      generators:
      - matrix:
          generators:
          - clusters: {}
          - list:
              elements:
              - size: small
      - list:
          elements:
          - name: prod-us
            size: large
  template:
    metadata:
      name: '{{nameNormalized}}-{{size}}'
    spec:
      source: {repoURL: r, path: p}
      destination: {name: '{{name}}'}
"#,
    ));
    let g = s.generate(&clusters(), None).unwrap();
    assert_eq!(
        names(&g),
        ["prod-eu-small", "prod-us-large", "staging-eu-small"]
    );
}

#[test]
fn merge_precedence_later_wins() {
    let s = set(&with(
        r#"  generators:
  - merge:
      mergeKeys: [server]
      generators:
      - clusters:
          values:
            kafka: 'true'
            redis: 'false'
      - clusters:
          selector: {matchLabels: {region: eu}}
          values:
            redis: 'true'
      - list:
          elements:
          - server: https://prod-eu.example:6443
            values.redis: 'override'
  template:
    metadata:
      name: '{{nameNormalized}}'
      annotations:
        kafka: '{{values.kafka}}'
        redis: '{{values.redis}}'
    spec:
      source: {repoURL: r, path: p}
      destination: {server: '{{server}}'}
"#,
    ));
    let g = s.generate(&clusters(), None).unwrap();
    let by_name: BTreeMap<_, _> = g
        .applications
        .iter()
        .map(|a| (a.metadata.name.clone(), a.metadata.annotations.clone()))
        .collect();
    assert_eq!(by_name["prod-eu"]["redis"], "override");
    assert_eq!(by_name["staging-eu"]["redis"], "true");
    assert_eq!(by_name["prod-us"]["redis"], "false");
    assert_eq!(by_name["prod-us"]["kafka"], "true");
}

#[test]
fn generator_template_overrides_field_by_field() {
    let s = set(&with(&format!(
        r#"  generators:
  - clusters:
      selector: {{matchLabels: {{env: staging}}}}
      template:
        metadata: {{}}
        spec:
          source:
            path: staging-path
  - clusters:
      selector: {{matchLabels: {{region: us}}}}
{TEMPLATE}"#
    )));
    let g = s.generate(&clusters(), None).unwrap();
    // Staging_EU is not a valid name: reported, not fatal; prod-us rendered.
    assert_eq!(names(&g), ["prod-us-guestbook"]);
    assert_eq!(g.errors.len(), 1);
    assert!(
        g.errors[0].message.contains("metadata.name"),
        "{:?}",
        g.errors
    );
    let us = &g.applications[0];
    assert_eq!(us.spec.source.path, "guestbook");
    assert_eq!(us.metadata.labels["env"], "prod");
}

#[test]
fn generator_template_override_applies_to_valid_apps() {
    let s = set(&with(
        r#"  generators:
  - clusters:
      selector: {matchLabels: {env: prod}}
      template:
        metadata: {}
        spec:
          source:
            path: prod-path
  template:
    metadata:
      name: '{{name}}-x'
    spec:
      source: {repoURL: r, path: base, targetRevision: v1}
      destination: {name: '{{name}}'}
"#,
    ));
    let g = s.generate(&clusters(), None).unwrap();
    assert_eq!(g.applications[0].spec.source.path, "prod-path");
    assert_eq!(g.applications[0].spec.source.target_revision, "v1");
}

#[test]
fn template_patch() {
    let s = set(&with(
        r#"  goTemplate: true
  generators:
  - list:
      elements:
      - cluster: a
        autoSync: true
      - cluster: b
        autoSync: false
  template:
    metadata:
      name: '{{.cluster}}-app'
    spec:
      source: {repoURL: r, path: p}
      destination: {name: '{{.cluster}}'}
  templatePatch: |
    {{- if .autoSync }}
    spec:
      syncPolicy:
        automated:
          prune: true
    {{- end }}
"#,
    ));
    let g = s.generate(&[], None).unwrap();
    assert!(g.applications[0].spec.sync_policy.is_some());
    assert!(g.applications[1].spec.sync_policy.is_none());
}

#[test]
fn bad_input_names_the_cause() {
    let unknown = set(&with(
        "  generators:\n  - scmProvider: {}\n  template:\n    metadata: {name: x}\n    spec: {}\n",
    ));
    let err = unknown.generate(&[], None).unwrap_err().to_string();
    assert!(
        err.contains("generator \"scmProvider\" is not supported"),
        "{err}"
    );

    let syntax = set(&with(
        "  goTemplate: true\n  generators:\n  - list:\n      elements: [{c: a}]\n  template:\n    metadata: {name: '{{ .c '}\n    spec:\n      source: {repoURL: r, path: p}\n      destination: {name: a}\n",
    ));
    let g = syntax.generate(&[], None).unwrap();
    assert!(g.applications.is_empty());
    assert!(
        g.errors[0].message.contains("metadata.name"),
        "{:?}",
        g.errors
    );

    let missing = set(&with(
        "  goTemplate: true\n  goTemplateOptions: [missingkey=error]\n  generators:\n  - list:\n      elements: [{c: a}]\n  template:\n    metadata: {name: '{{ .nope }}'}\n    spec:\n      source: {repoURL: r, path: p}\n      destination: {name: a}\n",
    ));
    let g = missing.generate(&[], None).unwrap();
    assert!(
        g.errors[0]
            .message
            .contains(r#"map has no entry for key "nope""#),
        "{:?}",
        g.errors
    );

    let dup = set(&with(
        "  generators:\n  - list:\n      elements: [{c: a}, {c: a}]\n  template:\n    metadata: {name: 'same'}\n    spec:\n      source: {repoURL: r, path: p}\n      destination: {name: '{{c}}'}\n",
    ));
    assert!(matches!(
        dup.generate(&[], None),
        Err(AppSetError::Duplicate { .. })
    ));

    let bad_policy = parse_application_sets(
        &with("  syncPolicy: {applicationsSync: sometimes}\n  generators: [{list: {elements: []}}]\n  template: {metadata: {}, spec: {}}\n"),
        "x.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad_policy.contains("spec.syncPolicy.applicationsSync"),
        "{bad_policy}"
    );
}

#[test]
fn one_bad_application_does_not_block_the_rest() {
    let s = set(&with(
        "  generators:\n  - list:\n      elements: [{c: good}, {c: Bad_Name}, {c: also-good}]\n  template:\n    metadata: {name: '{{c}}'}\n    spec:\n      source: {repoURL: r, path: p}\n      destination: {name: '{{c}}'}\n",
    ));
    let g = s.generate(&[], None).unwrap();
    assert_eq!(names(&g), ["good", "also-good"]);
    assert_eq!(g.errors.len(), 1);
    assert_eq!(g.errors[0].application, "Bad_Name");
}

#[test]
fn nesting_is_bounded() {
    let leaf = "{list: {elements: [{a: x}]}}";
    let mut g = leaf.to_owned();
    for _ in 0..4 {
        g = format!("{{matrix: {{generators: [{g}, {leaf}]}}}}");
    }
    let s = set(&with(&format!(
        "  generators:\n  - {g}\n  template:\n    metadata: {{name: x}}\n    spec:\n      source: {{repoURL: r, path: p}}\n      destination: {{name: a}}\n"
    )));
    let err = s.generate(&[], None).unwrap_err().to_string();
    assert!(err.contains("nested too deeply"), "{err}");
}
