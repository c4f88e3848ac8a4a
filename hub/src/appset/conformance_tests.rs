//! Conformance with Argo CD's ApplicationSet generators and template
//! handling, one row per behaviour. Every row says which Argo CD document
//! (docs/operator-manual/applicationset/*.md) or test
//! (applicationset/generators/*_test.go, applicationset/controllers/...)
//! it follows; fixtures and expectations are our own, worked out from
//! those semantics.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::generators::{Inputs, generate};
use super::template::TemplateMode;
use super::*;

/// A repository as a map of path → content.
struct Repo(BTreeMap<String, String>);

impl Repo {
    fn new(files: &[(&str, &str)]) -> Self {
        Self(
            files
                .iter()
                .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
                .collect(),
        )
    }
}

impl GitFiles for Repo {
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

fn cluster(name: &str, server: &str, labels: &[(&str, &str)], project: &str) -> ClusterInfo {
    ClusterInfo {
        name: name.into(),
        server: server.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        annotations: BTreeMap::new(),
        project: project.into(),
    }
}

/// The inventory of Argo CD's cluster_test.go, in our own words: two
/// clusters with an environment label, one scoped to a project.
fn inventory() -> Vec<ClusterInfo> {
    let mut prod = cluster(
        "production_01/west",
        "https://production-01.example.com",
        &[("environment", "production"), ("org", "bar")],
        "prod-project",
    );
    prod.annotations
        .insert("foo.argoproj.io".into(), "production".into());
    let staging = cluster(
        "staging-01",
        "https://staging-01.example.com",
        &[("environment", "staging"), ("org", "foo")],
        "",
    );
    vec![prod, staging]
}

struct Outcome {
    params: Vec<Value>,
    notices: Vec<Notice>,
}

fn mode(go: bool) -> TemplateMode {
    TemplateMode {
        go_template: go,
        ..TemplateMode::default()
    }
}

/// Runs one generator entry (YAML) as `spec.generators[0]`.
fn run(
    generator: &str,
    go: bool,
    clusters: &[ClusterInfo],
    repo: Option<&Repo>,
    options: GenerateOptions,
) -> Result<Outcome, String> {
    let spec: Value = serde_saphyr::from_str(generator).map_err(|e| e.to_string())?;
    let inputs = Inputs::new(clusters, repo.map(|r| r as &dyn GitFiles), options);
    let params = generate(&spec, &inputs, mode(go), "spec.generators[0]", 0)?;
    Ok(Outcome {
        params: params.into_iter().map(Value::Object).collect(),
        notices: inputs.notices.into_inner(),
    })
}

/// Whether every key of `want` is in `got` with the same value (objects,
/// and lists of the same length, compared the same way, recursively).
fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| contains(gv, wv))),
        (Value::Array(g), Value::Array(w)) => {
            g.len() == w.len() && g.iter().zip(w).all(|(g, w)| contains(g, w))
        }
        (g, w) => g == w,
    }
}

enum Expect {
    /// The parameter sets, in order; each given key must match.
    Params(&'static str),
    /// An error containing this text.
    Error(&'static str),
}

struct Row {
    name: &'static str,
    follows: &'static str,
    go: bool,
    generator: &'static str,
    expect: Expect,
    /// Keys none of the parameter sets may have.
    absent: &'static [&'static str],
    /// Condition types the generator must report (in addition).
    notices: &'static [&'static str],
}

fn check(rows: Vec<Row>, clusters: &[ClusterInfo], repo: Option<&Repo>, options: GenerateOptions) {
    for row in rows {
        let what = format!("{} (follows {})", row.name, row.follows);
        let got = run(row.generator, row.go, clusters, repo, options);
        match (&row.expect, got) {
            (Expect::Error(text), Err(e)) => {
                assert!(e.contains(text), "{what}: error {e:?} lacks {text:?}");
            }
            (Expect::Error(text), Ok(o)) => {
                panic!(
                    "{what}: expected an error with {text:?}, got {:?}",
                    o.params
                )
            }
            (Expect::Params(_), Err(e)) => panic!("{what}: unexpected error {e}"),
            (Expect::Params(want), Ok(o)) => {
                let want: Vec<Value> = serde_saphyr::from_str(want).unwrap();
                assert_eq!(
                    o.params.len(),
                    want.len(),
                    "{what}: got {}",
                    serde_json::to_string_pretty(&o.params).unwrap()
                );
                for (i, (g, w)) in o.params.iter().zip(&want).enumerate() {
                    assert!(
                        contains(g, w),
                        "{what}: set {i} is {}\nwanted at least {}",
                        serde_json::to_string_pretty(g).unwrap(),
                        serde_json::to_string_pretty(w).unwrap()
                    );
                    for k in row.absent {
                        assert!(g.get(k).is_none(), "{what}: set {i} has {k}: {g}");
                    }
                }
                for kind in row.notices {
                    assert!(
                        o.notices.iter().any(|n| n.kind == *kind),
                        "{what}: no {kind} notice in {:?}",
                        o.notices
                    );
                }
                if row.notices.is_empty() {
                    assert!(o.notices.is_empty(), "{what}: {:?}", o.notices);
                }
            }
        }
    }
}

#[test]
fn matrix() {
    let repo = Repo::new(&[
        // Generators-Matrix.md "Overriding parameters": stage values first,
        // global defaults second.
        (
            "test/stage.values.yaml",
            "stageName: test\ncpuRequest: 100m\ndebugEnabled: true\n",
        ),
        ("staging/stage.values.yaml", "stageName: staging\n"),
        (
            "production/stage.values.yaml",
            "stageName: production\nmemoryLimit: 512Mi\ndebugEnabled: false\n",
        ),
        (
            "global.values.yaml",
            "cpuRequest: 200m\nmemoryLimit: 256Mi\ndebugEnabled: true\n",
        ),
        (
            "cluster-config/engineering/dev/config.json",
            r#"{"size": "small"}"#,
        ),
        (
            "cluster-config/engineering/prod/config.json",
            r#"{"size": "large"}"#,
        ),
    ]);
    let mut clusters = inventory();
    clusters.push(cluster(
        "dev-1",
        "https://dev-1.example.com",
        &[("kubernetes.io/environment", "dev")],
        "",
    ));
    clusters.push(cluster(
        "prod-1",
        "https://prod-1.example.com",
        &[("kubernetes.io/environment", "prod")],
        "",
    ));
    let rows = vec![
        Row {
            name: "goTemplate: the first child's value wins, missing ones come from the second",
            follows: "Generators-Matrix.md, Overriding parameters from one child generator in another",
            go: true,
            generator: r#"
matrix:
  generators:
  - git: {repoURL: r, revision: HEAD, files: [{path: "**/stage.values.yaml"}]}
  - git: {repoURL: r, revision: HEAD, files: [{path: "global.values.yaml"}]}
"#,
            expect: Expect::Params(
                r#"
- {stageName: production, cpuRequest: 200m, memoryLimit: 512Mi, debugEnabled: false}
- {stageName: staging, cpuRequest: 200m, memoryLimit: 256Mi, debugEnabled: true}
- {stageName: test, cpuRequest: 100m, memoryLimit: 256Mi, debugEnabled: true}
"#,
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "goTemplate: booleans and strings of the first list win",
            follows: "matrix_test.go, parameter override: first list elements take precedence",
            go: true,
            generator: r#"
matrix:
  generators:
  - list: {elements: [{off: false, on: true, s: "false"}]}
  - list: {elements: [{off: true, on: false, s: "true"}]}
"#,
            expect: Expect::Params(r#"[{off: false, on: true, s: "false"}]"#),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "goTemplate: nested objects merge, the first child's leaves win",
            follows: "matrix.go (mergo.Merge of the first child over the second, WithOverride)",
            go: true,
            generator: r#"
matrix:
  generators:
  - list: {elements: [{values: {a: first}}]}
  - list: {elements: [{values: {a: second, b: second}}]}
"#,
            expect: Expect::Params("[{values: {a: first, b: second}}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "fasttemplate: the same parameter with different values is an error",
            follows: "matrix.go via utils.CombineStringMaps (found duplicate key with different value)",
            go: false,
            generator: r#"
matrix:
  generators:
  - list: {elements: [{env: a}]}
  - list: {elements: [{env: b}]}
"#,
            expect: Expect::Error("parameter \"env\" has different values"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "fasttemplate: the same parameter with the same value combines",
            follows: "utils.CombineStringMaps (equal values are accepted)",
            go: false,
            generator: r#"
matrix:
  generators:
  - list: {elements: [{env: a, x: "1"}]}
  - list: {elements: [{env: a, y: "2"}]}
"#,
            expect: Expect::Params(r#"[{env: a, x: "1", y: "2"}]"#),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "the second child is rendered with each of the first child's parameter sets",
            follows: "Generators-Matrix.md, Using Parameters from one child generator in another",
            go: true,
            generator: r#"
matrix:
  generators:
  - git: {repoURL: r, revision: HEAD, files: [{path: "cluster-config/**/config.json"}]}
  - clusters:
      selector:
        matchLabels:
          kubernetes.io/environment: '{{.path.basename}}'
"#,
            expect: Expect::Params(
                r#"
- {name: dev-1, size: small, path: {basename: dev}}
- {name: prod-1, size: large, path: {basename: prod}}
"#,
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "a child's values may use the earlier child's parameters or its own",
            follows: "utils.RenderGeneratorParams (values pre-resolved with missingkey=error, unresolved ones kept for the generator)",
            go: true,
            generator: r#"
matrix:
  generators:
  - list: {elements: [{team: blue}]}
  - clusters:
      selector: {matchLabels: {environment: staging}}
      values:
        owner: '{{.team}}'
        cluster: '{{.name}}'
"#,
            expect: Expect::Params(
                "[{name: staging-01, team: blue, values: {owner: blue, cluster: staging-01}}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "two git generators avoid clashing path parameters with pathParamPrefix",
            follows: "Generators-Matrix.md, Two Git Generators Using pathParamPrefix",
            go: false,
            generator: r#"
matrix:
  generators:
  - git: {repoURL: r, revision: HEAD, files: [{path: "global.values.yaml"}], pathParamPrefix: global}
  - git: {repoURL: r, revision: HEAD, files: [{path: "staging/stage.values.yaml"}]}
"#,
            expect: Expect::Params(
                r#"[{global.path: ".", global.path.filename: global.values.yaml, path: staging, stageName: staging, cpuRequest: 200m}]"#,
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "one child is an error",
            follows: "matrix_test.go, returns error if there is less than two base generators",
            go: false,
            generator: "matrix: {generators: [{list: {elements: [{a: x}]}}]}",
            expect: Expect::Error("a matrix needs two generators, found 1"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "three children combine left to right, reported as a Flotilla extension",
            follows: "matrix_test.go, returns error if there is more than two base generators (Flotilla extension)",
            go: false,
            generator: r#"
matrix:
  generators:
  - list: {elements: [{a: "1"}, {a: "2"}]}
  - list: {elements: [{b: x}]}
  - list: {elements: [{c: '{{a}}{{b}}'}]}
"#,
            expect: Expect::Params(r#"[{a: "1", b: x, c: 1x}, {a: "2", b: x, c: 2x}]"#),
            absent: &[],
            notices: &[NOTICE_EXTENSION],
        },
        Row {
            name: "a matrix inside a matrix is fine",
            follows: "Generators-Matrix.md, Restrictions (combination generators nest once)",
            go: false,
            generator: r#"
matrix:
  generators:
  - matrix:
      generators:
      - list: {elements: [{a: "1"}]}
      - list: {elements: [{b: "2"}]}
  - list: {elements: [{c: "3"}]}
"#,
            expect: Expect::Params(r#"[{a: "1", b: "2", c: "3"}]"#),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "a third level of nesting is an error",
            follows: "Generators-Matrix.md, Restrictions (this third level is invalid)",
            go: false,
            generator: r#"
matrix:
  generators:
  - matrix:
      generators:
      - matrix:
          generators:
          - list: {elements: [{a: "1"}]}
          - list: {elements: [{b: "2"}]}
      - list: {elements: [{c: "3"}]}
  - list: {elements: [{d: "4"}]}
"#,
            expect: Expect::Error("nested too deeply"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "a template on a child is not applied, and the set says so",
            follows: "Generators-Matrix.md, Restrictions (template on child generators is not processed)",
            go: false,
            generator: r#"
matrix:
  generators:
  - list:
      elements: [{a: "1"}]
      template: {metadata: {name: ignored}}
  - list: {elements: [{b: "2"}]}
"#,
            expect: Expect::Params(r#"[{a: "1", b: "2"}]"#),
            absent: &[],
            notices: &[NOTICE_UNSUPPORTED],
        },
        Row {
            name: "two generators in one child entry is an error",
            follows: "Generators-Matrix.md, Restrictions (one generator per array entry)",
            go: false,
            generator: r#"
matrix:
  generators:
  - list: {elements: [{a: "1"}]}
    clusters: {}
  - list: {elements: [{b: "2"}]}
"#,
            expect: Expect::Error("exactly one generator per entry"),
            absent: &[],
            notices: &[],
        },
    ];
    check(rows, &clusters, Some(&repo), GenerateOptions::default());
}

#[test]
fn merge() {
    let rows = vec![
        Row {
            name: "one generator is an error",
            follows: "merge_test.go, one generator (ErrLessThanTwoGeneratorsInMerge)",
            go: false,
            generator: "merge: {mergeKeys: [a], generators: [{list: {elements: [{a: x}]}}]}",
            expect: Expect::Error("a merge needs at least two generators, found 1"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "no merge keys is an error",
            follows: "merge_test.go, no merge keys (ErrNoMergeKeys)",
            go: false,
            generator: "merge: {generators: [{list: {elements: [{a: x}]}}, {list: {elements: [{a: y}]}}]}",
            expect: Expect::Error("mergeKeys: at least one key is required"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "the base generator's sets must be unique by the merge keys",
            follows: "merge_test.go, simple key, non-unique paramSets (ErrNonUniqueParamSets)",
            go: false,
            generator: r#"
merge:
  mergeKeys: [key]
  generators:
  - list: {elements: [{key: a}, {key: b}, {key: b}]}
  - list: {elements: [{key: a, extra: "1"}]}
"#,
            expect: Expect::Error(
                r#"generators[0]: parameter sets are not unique by mergeKeys: {"key":"b"}"#,
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "a later generator's sets must be unique too",
            follows: "merge.go (getParamSetsByMergeKey on every generator)",
            go: false,
            generator: r#"
merge:
  mergeKeys: [key1, key2]
  generators:
  - list: {elements: [{key1: a, key2: a}]}
  - list: {elements: [{key1: a, key2: a, x: "1"}, {key1: a, key2: a, x: "2"}]}
"#,
            expect: Expect::Error(
                r#"generators[1]: parameter sets are not unique by mergeKeys: {"key1":"a","key2":"a"}"#,
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "a repeated merge key name counts once",
            follows: "merge_test.go, simple key, duplicated key name, unique paramSets",
            go: false,
            generator: r#"
merge:
  mergeKeys: [key, key]
  generators:
  - list: {elements: [{key: a}, {key: b}]}
  - list: {elements: [{key: b, extra: "2"}]}
"#,
            expect: Expect::Params(r#"[{key: a}, {key: b, extra: "2"}]"#),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "later generators override the base; sets without a match are untouched",
            follows: "Generators-Merge.md example; merge_test.go, happy flow and merge key present in first set, absent in second",
            go: false,
            generator: r#"
merge:
  mergeKeys: [server]
  generators:
  - list: {elements: [{server: s1, kafka: "true", redis: "false"}, {server: s2, kafka: "true", redis: "false"}]}
  - list: {elements: [{server: s2, redis: "true"}, {server: s3, redis: "true"}]}
"#,
            expect: Expect::Params(
                r#"[{server: s1, kafka: "true", redis: "false"}, {server: s2, kafka: "true", redis: "true"}]"#,
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "goTemplate merges objects deeply, the later generator's leaves win",
            follows: "merge.go (mergo.Merge WithOverride in goTemplate mode)",
            go: true,
            generator: r#"
merge:
  mergeKeys: [server]
  generators:
  - list: {elements: [{server: s1, values: {a: base, b: base}}]}
  - list: {elements: [{server: s1, values: {b: override}}]}
"#,
            expect: Expect::Params("[{server: s1, values: {a: base, b: override}}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "a matrix may be merged",
            follows: "merge_test.go, merge nested matrix with some lists",
            go: false,
            generator: r#"
merge:
  mergeKeys: [a]
  generators:
  - matrix:
      generators:
      - list: {elements: [{a: "1"}, {a: "2"}]}
      - list: {elements: [{b: x}]}
  - list: {elements: [{a: "2", b: z}]}
"#,
            expect: Expect::Params(r#"[{a: "1", b: x}, {a: "2", b: z}]"#),
            absent: &[],
            notices: &[],
        },
    ];
    check(rows, &[], None, GenerateOptions::default());
}

fn git_repo() -> Repo {
    Repo::new(&[
        (
            "applicationset/examples/git-generator-directory/cluster-addons/argo-workflows/kustomization.yaml",
            "k",
        ),
        (
            "applicationset/examples/git-generator-directory/cluster-addons/prometheus-operator/Chart.yaml",
            "c",
        ),
        (
            "applicationset/examples/git-generator-directory/cluster-addons/exclude-me/x.yaml",
            "x",
        ),
        ("addons/.github/workflows/ci.yaml", "x"),
        ("addons/.hidden/nested/x.yaml", "x"),
        ("addons/visible/x.yaml", "x"),
        ("addons/visible/deeper/x.yaml", "x"),
        (
            "cluster-charts/cluster1/mychart/values.yaml",
            "chart: mychart\n",
        ),
        (
            "cluster-charts/cluster1/mychart/charts/mysubchart/values.yaml",
            "chart: mysubchart\n",
        ),
        (
            "cluster-charts/cluster1/myotherchart/values.yaml",
            "chart: myotherchart\n",
        ),
        ("some-path/top.yaml", "level: top\n"),
        ("some-path/deep/er.yaml", "level: deep\n"),
        ("path/dir/file_name.yaml", "foo:\n  bar: baz\n"),
        ("path/dir/empty.yaml", ""),
        ("lists/two.yaml", "- {name: one}\n- {name: two}\n"),
        ("lists/empty-list.yaml", "[]\n"),
        ("bad/scalar.yaml", "this is not json or yaml\n"),
        ("bad/two-docs.yaml", "a: 1\n---\na: 2\n"),
        ("root.json", r#"{"where": "root"}"#),
    ])
}

#[test]
fn git() {
    let rows = vec![
        Row {
            name: "directories: `*` matches one level, exclude wins whatever the order",
            follows: "git_test.go, It filters application according to the paths with Exclude / Expecting same exclude behavior with different order",
            go: false,
            generator: r#"
git:
  repoURL: r
  revision: HEAD
  directories:
  - {path: applicationset/examples/git-generator-directory/cluster-addons/exclude-me, exclude: true}
  - {path: applicationset/examples/git-generator-directory/cluster-addons/*}
"#,
            expect: Expect::Params(
                "[{path.basename: argo-workflows, 'path[3]': cluster-addons}, {path.basename: prometheus-operator}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "directories: hidden directories (and what is below them) are skipped; `*` does not cross `/`, neither does `**`",
            follows: "reposerver GetGitDirectories (hidden directories skipped); Go path.Match",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, directories: [{path: 'addons/*'}, {path: 'addons/**'}, {path: 'addons/.hidden/*'}]}",
            expect: Expect::Params("[{path: addons/visible}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "directories: values interpolate the path parameters",
            follows: "git_test.go, Value variable interpolation",
            go: false,
            generator: r#"
git:
  repoURL: r
  revision: HEAD
  directories: [{path: addons/visible}]
  values:
    foo: bar
    aaa: '{{ path[0] }}'
    no-op: '{{ this-does-not-exist }}'
"#,
            expect: Expect::Params(
                "[{values.foo: bar, values.aaa: addons, values.no-op: '{{ this-does-not-exist }}'}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "directories: pathParamPrefix",
            follows: "git_test.go, It prefixes path parameters with PathParamPrefix",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, directories: [{path: addons/visible}], pathParamPrefix: myRepo}",
            expect: Expect::Params(
                "[{myRepo.path: addons/visible, myRepo.path.basename: visible, 'myRepo.path[1]': visible}]",
            ),
            absent: &["path", "path.basename"],
            notices: &[],
        },
        Row {
            name: "directories: pathParamPrefix with goTemplate nests the path object",
            follows: "git_test.go, It prefixes path parameters with PathParamPrefix (goTemplate)",
            go: true,
            generator: "git: {repoURL: r, revision: HEAD, directories: [{path: addons/visible}], pathParamPrefix: myRepo}",
            expect: Expect::Params(
                "[{myRepo: {path: {path: addons/visible, basename: visible, segments: [addons, visible]}}}]",
            ),
            absent: &["path"],
            notices: &[],
        },
        Row {
            name: "files: an empty file gives the path parameters only",
            follows: "git_test.go, empty file returns path parameters",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: path/dir/empty.yaml}]}",
            expect: Expect::Params(
                "[{path: path/dir, path.basename: dir, path.filename: empty.yaml, path.basenameNormalized: dir, path.filenameNormalized: empty.yaml, 'path[0]': path, 'path[1]': dir}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "files: flattened keys, prefixed path parameters",
            follows: "git_test.go, path parameter are prefixed",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: path/dir/file_name.yaml}], pathParamPrefix: myRepo}",
            expect: Expect::Params(
                "[{foo.bar: baz, myRepo.path: path/dir, myRepo.path.filename: file_name.yaml, myRepo.path.filenameNormalized: file-name.yaml, 'myRepo.path[0]': path}]",
            ),
            absent: &["path"],
            notices: &[],
        },
        Row {
            name: "files: goTemplate values use the prefixed path object",
            follows: "git_test.go, path parameter are prefixed with go template and values",
            go: true,
            generator: r#"
git:
  repoURL: r
  revision: HEAD
  files: [{path: path/dir/file_name.yaml}]
  pathParamPrefix: myRepo
  values: {somekey: '{{.myRepo.path.basename}}'}
"#,
            expect: Expect::Params(
                "[{foo: {bar: baz}, myRepo: {path: {path: path/dir, filename: file_name.yaml, segments: [path, dir]}}, values: {somekey: dir}}]",
            ),
            absent: &["path"],
            notices: &[],
        },
        Row {
            name: "files: a list gives one set per entry; an empty list none",
            follows: "git_test.go, test YAML array / test empty YAML array",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: 'lists/*.yaml'}]}",
            expect: Expect::Params("[{name: one, path: lists}, {name: two, path: lists}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "files: a file that is neither an object nor a list is an error",
            follows: "git_test.go, invalid json/yaml file returns error",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: bad/scalar.yaml}]}",
            expect: Expect::Error("bad/scalar.yaml: must be an object or a list of objects"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "files: several YAML documents are refused (Argo CD would read the first only)",
            follows: "git.go generateParamsFromGitFile (sigs.k8s.io/yaml reads one document)",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: bad/two-docs.yaml}]}",
            expect: Expect::Error("bad/two-docs.yaml: holds 2 YAML documents"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "files: a file at the root has path `.`",
            follows: "git.go generateParamsFromGitFile (path.Dir)",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: root.json}]}",
            expect: Expect::Params(
                "[{where: root, path: '.', path.basename: '.', 'path[0]': '.'}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "files (default globbing): `*` crosses directories, as git ls-files does",
            follows: "Generators-Git-File-Globbing.md, Problem Statement (cluster-charts/*/*/values.yaml)",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: 'cluster-charts/*/*/values.yaml'}]}",
            expect: Expect::Params(
                "[{chart: mysubchart}, {chart: mychart}, {chart: myotherchart}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "files (default globbing): some-path/*.yaml finds files at any depth",
            follows: "Generators-Git-File-Globbing.md, Problem Statement (some-path/*.yaml)",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: 'some-path/*.yaml'}]}",
            expect: Expect::Params("[{level: deep}, {level: top}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "files: exclude patterns remove what the include patterns found",
            follows: "git_test.go, filter files according to file-path with exclude",
            go: false,
            generator: r#"
git:
  repoURL: r
  revision: HEAD
  files:
  - {path: 'cluster-charts/**/values.yaml'}
  - {path: 'cluster-charts/*/mychart/charts/**', exclude: true}
"#,
            expect: Expect::Params("[{chart: mychart}, {chart: myotherchart}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "files: an unknown field is an error, not ignored",
            follows: "ApplicationSet CRD GitGenerator fields (Flotilla refuses what the schema lacks)",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: root.json}], pathParamPrefx: x}",
            expect: Expect::Error("pathParamPrefx: unknown field"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "values must be strings",
            follows: "ApplicationSet CRD (values is map[string]string)",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: root.json}], values: {replicas: 3}}",
            expect: Expect::Error("values.replicas: must be a string"),
            absent: &[],
            notices: &[],
        },
    ];
    check(rows, &[], Some(&git_repo()), GenerateOptions::default());
}

#[test]
fn git_new_globbing() {
    let rows = vec![
        Row {
            name: "doublestar: `*` stays within one directory",
            follows: "Generators-Git-File-Globbing.md; git_test.go, test to verify the solution for Git File Generator Problem",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: 'cluster-charts/*/*/values.yaml'}]}",
            expect: Expect::Params("[{chart: mychart}, {chart: myotherchart}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "doublestar: some-path/*.yaml finds only direct children",
            follows: "Generators-Git-File-Globbing.md, Problem Statement",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: 'some-path/*.yaml'}]}",
            expect: Expect::Params("[{level: top}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "doublestar: `**` crosses directories, including none",
            follows: "Generators-Git-File-Globbing.md, Usage (doublestar)",
            go: false,
            generator: "git: {repoURL: r, revision: HEAD, files: [{path: 'some-path/**/*.yaml'}]}",
            expect: Expect::Params("[{level: deep}, {level: top}]"),
            absent: &[],
            notices: &[],
        },
    ];
    check(
        rows,
        &[],
        Some(&git_repo()),
        GenerateOptions {
            new_git_file_globbing: true,
        },
    );
}

#[test]
fn clusters() {
    let mut clusters = inventory();
    // Registered under the in-cluster address: Flotilla's local cluster.
    clusters.push(cluster(
        "hub-local",
        "https://kubernetes.default.svc",
        &[],
        "",
    ));
    let rows = vec![
        Row {
            name: "the Secret's project is a parameter; values interpolate, never each other",
            follows: "cluster_test.go, flat mode without selectors / production-only (project, values)",
            go: false,
            generator: r#"
clusters:
  selector: {matchLabels: {environment: production}}
  values:
    lol1: lol
    lol2: '{{values.lol1}}'
    bar: '{{ metadata.annotations.foo.argoproj.io }}'
    aaa: '{{ server }}'
"#,
            expect: Expect::Params(
                r#"[{name: production_01/west, nameNormalized: production-01-west, project: prod-project, values.lol1: lol, values.lol2: '{{values.lol1}}', values.bar: production, values.aaa: "https://production-01.example.com", metadata.labels.environment: production}]"#,
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "every registered cluster carries the cluster Secret's type label",
            follows: "cluster_test.go, secret type label selector",
            go: false,
            generator: "clusters: {selector: {matchLabels: {argocd.argoproj.io/secret-type: cluster}}}",
            expect: Expect::Params(
                "[{name: production_01/west, metadata.labels.argocd.argoproj.io/secret-type: cluster}, {name: staging-01}, {name: hub-local}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "an empty selector selects every cluster, the local one (registered under https://kubernetes.default.svc) included; none is invented",
            follows: "Generators-Cluster.md (local cluster); cluster_test.go, no label selector",
            go: false,
            generator: "clusters: {}",
            expect: Expect::Params(
                r#"[{name: production_01/west}, {name: staging-01, project: ""}, {name: hub-local, server: "https://kubernetes.default.svc", project: ""}]"#,
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "a non-empty selector leaves out a local cluster without the label",
            follows: "cluster.go (ignoreLocalClusters when the selector is not empty)",
            go: false,
            generator: "clusters: {selector: {matchExpressions: [{key: environment, operator: In, values: [production, staging]}]}}",
            expect: Expect::Params("[{name: production_01/west}, {name: staging-01}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "flatList gives one set listing every selected cluster",
            follows: "Generators-Cluster.md flatList; cluster_test.go, production or staging with flat mode",
            go: true,
            generator: r#"
clusters:
  flatList: true
  selector: {matchExpressions: [{key: environment, operator: In, values: [production, staging]}]}
  values: {foo: bar}
"#,
            expect: Expect::Params(
                "[{clusters: [{name: production_01/west, project: prod-project, values: {foo: bar}}, {name: staging-01, project: '', values: {foo: bar}}]}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "goTemplate: metadata.labels and metadata.annotations, the latter empty when the cluster has none",
            follows: "cluster.go getClusterParameters (Argo CD omits empty annotations; Flotilla keeps an empty map, see docs)",
            go: true,
            generator: "clusters: {selector: {matchLabels: {environment: staging}}}",
            expect: Expect::Params(
                "[{name: staging-01, metadata: {labels: {environment: staging, org: foo}, annotations: {}}}]",
            ),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "post-selector over the generated parameters",
            follows: "Generators-Post-Selector.md",
            go: false,
            generator: "clusters: {}\nselector: {matchLabels: {project: prod-project}}",
            expect: Expect::Params("[{name: production_01/west}]"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "an unknown field is an error",
            follows: "ApplicationSet CRD ClusterGenerator fields",
            go: false,
            generator: "clusters: {flatlist: true}",
            expect: Expect::Error("clusters.flatlist: unknown field"),
            absent: &[],
            notices: &[],
        },
        Row {
            name: "a generator Argo CD has but Flotilla does not is named as such",
            follows: "Generators.md (scmProvider, pullRequest, clusterDecisionResource, plugin)",
            go: false,
            generator: "pullRequest: {github: {owner: o, repo: r}}",
            expect: Expect::Error("generator \"pullRequest\" is not supported by Flotilla"),
            absent: &[],
            notices: &[],
        },
    ];
    check(rows, &clusters, None, GenerateOptions::default());
}

/// The generated Applications of a whole set.
fn generate_set(yaml: &str) -> Result<Generated, AppSetError> {
    let set = parse_application_sets(yaml, "set.yaml")?
        .pop()
        .ok_or_else(|| AppSetError::Invalid {
            name: String::new(),
            field: String::new(),
            message: "no set".into(),
        })?;
    set.generate(&inventory(), None)
}

fn set_yaml(extra_spec: &str, template_metadata: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: s
  namespace: argocd
spec:
  goTemplate: true
  generators:
  - list:
      elements: [{{app: one}}]
{extra_spec}  template:
    metadata:
      name: '{{{{.app}}}}'
{template_metadata}    spec:
      project: default
      source: {{repoURL: r, path: p}}
      destination: {{name: c1}}
"#
    )
}

#[test]
fn template_and_fields() {
    struct Case {
        name: &'static str,
        follows: &'static str,
        extra_spec: &'static str,
        metadata: &'static str,
        check: fn(&Result<Generated, AppSetError>) -> Result<(), String>,
    }
    fn notice(g: &Result<Generated, AppSetError>, kind: &str, text: &str) -> Result<(), String> {
        let g = g.as_ref().map_err(|e| e.to_string())?;
        if g.notices
            .iter()
            .any(|n| n.kind == kind && n.message.contains(text))
        {
            Ok(())
        } else {
            Err(format!("no {kind} with {text:?} in {:?}", g.notices))
        }
    }
    fn error(g: &Result<Generated, AppSetError>, text: &str) -> Result<(), String> {
        match g {
            Err(e) if e.to_string().contains(text) => Ok(()),
            other => Err(format!("expected an error with {text:?}, got {other:?}")),
        }
    }
    let cases = [
        Case {
            name: "templatePatch cannot change spec.project: the template's project is kept and reported",
            follows: "controllers/template/patch.go applyTemplatePatch (project protected)",
            extra_spec: "  templatePatch: |\n    spec:\n      project: admin\n      source:\n        path: patched\n",
            metadata: "",
            check: |g| {
                let app = &g.as_ref().map_err(|e| e.to_string())?.applications[0];
                if app.spec.project != "default" || app.spec.source.path != "patched" {
                    return Err(format!("{app:?}"));
                }
                notice(g, NOTICE_PROJECT_REFUSED, "from \"default\" to \"admin\"")
            },
        },
        Case {
            name: "metadata.namespace is the set's namespace, whatever the template says",
            follows: "controllers/template/template.go GenerateApplications (app.Namespace = appset namespace)",
            extra_spec: "",
            metadata: "      namespace: elsewhere\n",
            check: |g| {
                let app = &g.as_ref().map_err(|e| e.to_string())?.applications[0];
                if app.metadata.namespace.as_deref() != Some("argocd") {
                    return Err(format!("{:?}", app.metadata));
                }
                notice(g, NOTICE_UNSUPPORTED, "spec.template.metadata.namespace")
            },
        },
        Case {
            name: "finalizers are kept; the resources finalizer is carried out, not reported",
            follows: "Application-Deletion.md; utils.RenderTemplateParams (finalizers)",
            extra_spec: "",
            metadata: "      finalizers: [resources-finalizer.argocd.argoproj.io]\n",
            check: |g| {
                let app = &g.as_ref().map_err(|e| e.to_string())?.applications[0];
                if app.metadata.finalizers != ["resources-finalizer.argocd.argoproj.io"] {
                    return Err(format!("{:?}", app.metadata));
                }
                if g.as_ref()
                    .is_ok_and(|g| g.notices.iter().any(|n| n.kind == NOTICE_UNSUPPORTED))
                {
                    return Err("the resources finalizer is reported as unsupported".into());
                }
                Ok(())
            },
        },
        Case {
            name: "an unknown finalizer is reported",
            follows: "Application-Deletion.md (only the resources finalizer is acted on)",
            extra_spec: "",
            metadata: "      finalizers: [example.com/custom]\n",
            check: |g| notice(g, NOTICE_UNSUPPORTED, "example.com/custom"),
        },
        Case {
            name: "strategy RollingSync with steps is carried out, not reported",
            follows: "Progressive-Syncs.md (RollingSync)",
            extra_spec: "  strategy:\n    type: RollingSync\n    rollingSync:\n      steps:\n        - matchExpressions: [{key: env, operator: In, values: [dev]}]\n        - matchExpressions: [{key: env, operator: In, values: [prod]}]\n          maxUpdate: 10%\n",
            metadata: "",
            check: |g| {
                let g = g.as_ref().map_err(|e| e.to_string())?;
                if g.notices.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{:?}", g.notices))
                }
            },
        },
        Case {
            name: "RollingSync without steps stops the set, as Argo CD",
            follows: "applicationset_controller.go (No steps defined for rollout)",
            extra_spec: "  strategy:\n    type: RollingSync\n    rollingSync:\n      steps: []\n",
            metadata: "",
            check: |g| {
                error(
                    g,
                    "spec.strategy.rollingSync.steps: No steps defined for rollout",
                )
            },
        },
        Case {
            name: "a maxUpdate that is neither an integer nor a string is an error",
            follows: "ApplicationSetRolloutStep.maxUpdate (int-or-string)",
            extra_spec: "  strategy:\n    type: RollingSync\n    rollingSync:\n      steps:\n        - maxUpdate: [1]\n",
            metadata: "",
            check: |g| error(g, "spec.strategy.rollingSync.steps[0].maxUpdate"),
        },
        Case {
            name: "deletionOrder Reverse with RollingSync is carried out, not reported",
            follows: "Progressive-Syncs.md (Reverse Deletion)",
            extra_spec: "  strategy:\n    type: RollingSync\n    deletionOrder: Reverse\n    rollingSync:\n      steps:\n        - matchExpressions: [{key: env, operator: In, values: [dev]}]\n",
            metadata: "",
            check: |g| {
                let g = g.as_ref().map_err(|e| e.to_string())?;
                if g.notices.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{:?}", g.notices))
                }
            },
        },
        Case {
            name: "deletionOrder Reverse without RollingSync steps does nothing, as Argo CD, and is reported",
            follows: "progressive_sync.go IsDeletionOrderReversed (RollingSync with steps only)",
            extra_spec: "  strategy: {type: AllAtOnce, deletionOrder: Reverse}\n",
            metadata: "",
            check: |g| {
                notice(
                    g,
                    NOTICE_UNSUPPORTED,
                    "Reverse has no effect without RollingSync steps",
                )
            },
        },
        Case {
            name: "an unknown strategy type is an error",
            follows: "Progressive-Syncs.md (AllAtOnce, RollingSync)",
            extra_spec: "  strategy: {type: Canary}\n",
            metadata: "",
            check: |g| error(g, "spec.strategy.type"),
        },
        Case {
            name: "AllAtOnce is what Flotilla does anyway",
            follows: "Progressive-Syncs.md",
            extra_spec: "  strategy: {type: AllAtOnce}\n",
            metadata: "",
            check: |g| {
                let g = g.as_ref().map_err(|e| e.to_string())?;
                if g.notices.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{:?}", g.notices))
                }
            },
        },
        Case {
            name: "a spec field Flotilla does not know is reported",
            follows: "applicationset-specification.md (every spec field)",
            extra_spec: "  someFutureField: true\n",
            metadata: "",
            check: |g| notice(g, NOTICE_UNSUPPORTED, "spec.someFutureField"),
        },
    ];
    for c in cases {
        let g = generate_set(&set_yaml(c.extra_spec, c.metadata));
        if let Err(e) = (c.check)(&g) {
            panic!("{} (follows {}): {e}", c.name, c.follows);
        }
    }
    // Multi-source templates generate multi-source Applications, templated
    // in every source (Controlling-Resource-Modification.md and
    // Template.md show `sources` in templates).
    let sources = set_yaml("", "").replace(
        "      source: {repoURL: r, path: p}\n",
        "      sources: [{repoURL: r, path: p}, {repoURL: r2, path: \"{{.app}}\", ref: values}]\n",
    );
    let g = generate_set(&sources).expect("a multi-source template generates");
    let app = &g.applications[0];
    assert_eq!(app.spec.sources.len(), 2, "{:?}", app.spec);
    assert_eq!(app.spec.sources[1].path, "one");
    assert!(
        g.notices.iter().all(|n| !n.message.contains("sources")),
        "{:?}",
        g.notices
    );
}

#[test]
fn deletion_keeps_objects_per_finalizers() {
    let app = |finalizers: &[&str]| {
        let mut a = crate::model::parse_applications(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: a}\nspec: {source: {repoURL: r, path: p}, destination: {name: c}}\n",
            "t",
        )
        .unwrap()
        .remove(0);
        a.metadata.finalizers = finalizers.iter().map(|s| (*s).to_owned()).collect();
        a
    };
    // (finalizers, preserveResourcesOnDeletion, objects kept), after
    // utils.RenderTemplateParams (the resources finalizer is added when the
    // template has none, unless preserveResourcesOnDeletion).
    let rows: &[(&[&str], bool, bool)] = &[
        (&[], false, false),
        (&[], true, true),
        (&["resources-finalizer.argocd.argoproj.io"], false, false),
        (&["resources-finalizer.argocd.argoproj.io"], true, false),
        (
            &["resources-finalizer.argocd.argoproj.io/background"],
            false,
            false,
        ),
        (&["post-delete-finalizer.argocd.argoproj.io"], false, true),
        (&["example.com/custom"], false, true),
    ];
    for (finalizers, preserve, kept) in rows {
        assert_eq!(
            keeps_objects_on_deletion(&app(finalizers), *preserve),
            *kept,
            "{finalizers:?} preserve={preserve}"
        );
    }
}

#[test]
fn offline_checkout_reads_the_generators_revision() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(root.join("apps/one")).unwrap();
    std::fs::write(root.join("apps/one/x.yaml"), "a: 1\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
    git(&["tag", "v1"]);
    std::fs::create_dir_all(root.join("apps/two")).unwrap();
    std::fs::write(root.join("apps/two/x.yaml"), "a: 2\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "two"]);
    // Not committed: only the files on disk (revision HEAD) have it.
    std::fs::create_dir_all(root.join("apps/three")).unwrap();
    std::fs::write(root.join("apps/three/x.yaml"), "a: 3\n").unwrap();
    let checkout = LocalCheckout::new(root);
    let dirs = |revision: &str| -> Result<Vec<Value>, String> {
        let g = format!(
            "git: {{repoURL: https://example.com/x.git, revision: '{revision}', directories: [{{path: 'apps/*'}}]}}"
        );
        let spec: Value = serde_saphyr::from_str(&g).unwrap();
        let inputs = Inputs::new(&[], Some(&checkout), GenerateOptions::default());
        generate(&spec, &inputs, mode(false), "g", 0).map(|ps| {
            ps.into_iter()
                .map(|p| p.get("path").cloned().unwrap_or(Value::Null))
                .collect()
        })
    };
    assert_eq!(
        dirs("HEAD").unwrap(),
        [json!("apps/one"), json!("apps/three"), json!("apps/two")]
    );
    assert_eq!(dirs("v1").unwrap(), [json!("apps/one")]);
    assert_eq!(
        dirs("main").unwrap(),
        [json!("apps/one"), json!("apps/two")]
    );
    let err = dirs("no-such-branch").unwrap_err();
    assert!(err.contains("no-such-branch"), "{err}");
}
