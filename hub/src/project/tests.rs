//! Table tests of the project rules (Argo CD's semantics, our own data).

use super::*;
use pb::project_rules::{is_destination_permitted, is_group_kind_permitted, is_source_permitted};

fn project(spec: &str) -> AppProject {
    let text = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata:\n  name: team-a\nspec:\n{spec}"
    );
    let mut p = parse_projects(&text, "p.yaml").unwrap();
    p.remove(0)
}

#[test]
fn source_repos() {
    let cases: &[(&str, &[&str], &str, bool)] = &[
        (
            "exact",
            &["https://git.example/team-a/apps.git"],
            "https://git.example/team-a/apps",
            true,
        ),
        (
            "case and .git",
            &["https://GIT.example/team-a/apps"],
            "https://git.example/team-a/apps.git/",
            true,
        ),
        (
            "other repo",
            &["https://git.example/team-a/apps"],
            "https://git.example/team-b/apps",
            false,
        ),
        (
            "star stays in one segment",
            &["https://git.example/*"],
            "https://git.example/team-a/apps",
            false,
        ),
        (
            "star per segment",
            &["https://git.example/team-a/*"],
            "https://git.example/team-a/apps",
            true,
        ),
        (
            "double star crosses segments",
            &["https://git.example/**"],
            "https://git.example/team-a/apps",
            true,
        ),
        ("everything", &["*"], "https://anything.example/x/y", true),
        (
            "nothing listed",
            &[],
            "https://git.example/team-a/apps",
            false,
        ),
        (
            "negation excludes",
            &["*", "!https://git.example/secret/*"],
            "https://git.example/secret/x",
            false,
        ),
        (
            "negation lets others through",
            &["*", "!https://git.example/secret/*"],
            "https://git.example/team-a/x",
            true,
        ),
        (
            "a lone negation permits the rest",
            &["!https://git.example/secret/*"],
            "https://git.example/team-a/x",
            true,
        ),
    ];
    for (name, repos, url, want) in cases {
        let rules = pb::ProjectRules {
            project: "p".into(),
            source_repos: repos.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(is_source_permitted(&rules, url), *want, "{name}");
    }
}

#[test]
fn destinations() {
    let spec = "  destinations:\n  - name: prod-*\n    namespace: team-a-*\n  - server: https://10.0.0.1:6443\n    namespace: team-a\n  - name: '*'\n    namespace: '!kube-system'\n";
    let rules = project(spec).rules();
    let cases: &[(&str, &str, &str, &str, bool)] = &[
        (
            "name glob and namespace glob",
            "",
            "prod-eu",
            "team-a-web",
            true,
        ),
        // The third entry admits every namespace but kube-system on any
        // named cluster.
        (
            "name glob, namespace admitted by another entry",
            "",
            "prod-eu",
            "team-b",
            true,
        ),
        (
            "server outside every entry",
            "https://10.0.0.9:6443",
            "",
            "team-a-web",
            false,
        ),
        ("server exact", "https://10.0.0.1:6443", "", "team-a", true),
        ("server other", "https://10.0.0.2:6443", "", "team-a", false),
        ("negated namespace denies", "", "dev", "kube-system", false),
        // The negated entry matches "anything but kube-system" on any
        // named cluster, as in Argo CD.
        (
            "negated namespace permits others",
            "",
            "dev",
            "team-b",
            true,
        ),
        ("neither name nor server known", "", "", "team-a", false),
    ];
    for (name, server, cluster, ns, want) in cases {
        assert_eq!(
            is_destination_permitted(&rules, server, cluster, ns),
            *want,
            "{name}"
        );
    }
    let empty = project("  sourceRepos: ['*']\n").rules();
    assert!(!is_destination_permitted(&empty, "https://x", "c1", "ns"));
}

#[test]
fn group_kinds() {
    // Unset namespaced whitelist: every namespaced kind; unset cluster
    // whitelist: no cluster-scoped kind.
    let open = project("  sourceRepos: ['*']\n").rules();
    let fenced = project(
        "  clusterResourceWhitelist:\n  - group: ''\n    kind: Namespace\n  - group: rbac.authorization.k8s.io\n    kind: ClusterRole\n    name: team-a-*\n  namespaceResourceWhitelist:\n  - group: 'apps'\n    kind: '*'\n  - group: ''\n    kind: ConfigMap\n  namespaceResourceBlacklist:\n  - group: apps\n    kind: DaemonSet\n",
    )
    .rules();
    let none = project("  namespaceResourceWhitelist: []\n").rules();
    let cases: &[(&str, &pb::ProjectRules, &str, &str, &str, bool, bool)] = &[
        (
            "open: namespaced kind",
            &open,
            "apps",
            "Deployment",
            "web",
            true,
            true,
        ),
        (
            "open: cluster kind refused",
            &open,
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "x",
            false,
            false,
        ),
        (
            "fenced: whitelisted cluster kind",
            &fenced,
            "",
            "Namespace",
            "team-a",
            false,
            true,
        ),
        (
            "fenced: named cluster kind, name matches",
            &fenced,
            "rbac.authorization.k8s.io",
            "ClusterRole",
            "team-a-view",
            false,
            true,
        ),
        (
            "fenced: named cluster kind, name does not",
            &fenced,
            "rbac.authorization.k8s.io",
            "ClusterRole",
            "admin",
            false,
            false,
        ),
        (
            "fenced: group glob",
            &fenced,
            "apps",
            "StatefulSet",
            "db",
            true,
            true,
        ),
        (
            "fenced: blacklisted",
            &fenced,
            "apps",
            "DaemonSet",
            "agent",
            true,
            false,
        ),
        (
            "fenced: not whitelisted",
            &fenced,
            "",
            "Secret",
            "s",
            true,
            false,
        ),
        (
            "fenced: core ConfigMap",
            &fenced,
            "",
            "ConfigMap",
            "c",
            true,
            true,
        ),
        (
            "empty whitelist allows nothing",
            &none,
            "",
            "ConfigMap",
            "c",
            true,
            false,
        ),
    ];
    for (name, rules, group, kind, obj, namespaced, want) in cases {
        assert_eq!(
            is_group_kind_permitted(rules, group, kind, obj, *namespaced),
            *want,
            "{name}"
        );
    }
}

#[test]
fn unknown_field_is_named() {
    let text = "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata:\n  name: p\nspec:\n  sourceRepo: ['*']\n";
    let err = parse_projects(text, "p.yaml").unwrap_err().to_string();
    assert!(err.contains("sourceRepo") && err.contains("\"p\""), "{err}");
    let text = "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata:\n  name: p\nspec:\n  destinations:\n  - namespace: x\n";
    let err = parse_projects(text, "p.yaml").unwrap_err().to_string();
    assert!(err.contains("spec.destinations[0]"), "{err}");
}

#[test]
fn a_bad_sync_window_refuses_the_project_naming_it() {
    let head = "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata:\n  name: shop\nspec:\n  syncWindows:\n  - kind: deny\n    schedule: '0 22 * * *'\n    duration: 1h\n    applications: ['*']\n";
    let cases = [
        (
            "  - kind: sometimes\n    schedule: '* * * * *'\n    duration: 1h\n",
            "spec.syncWindows[1].kind",
        ),
        (
            "  - kind: deny\n    schedule: '0 25 * * *'\n    duration: 1h\n",
            "spec.syncWindows[1].schedule",
        ),
        (
            "  - kind: deny\n    schedule: '0 22 * * *'\n    duration: 1day\n",
            "spec.syncWindows[1].duration",
        ),
        (
            "  - kind: deny\n    schedule: '0 22 * * *'\n    duration: 1h\n    timeZone: Europe/Atlantis\n",
            "spec.syncWindows[1].timeZone",
        ),
    ];
    for (second, field) in cases {
        let err = parse_projects(&format!("{head}{second}"), "shop.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AppProject \"shop\"") && err.contains(field),
            "{err}"
        );
    }
    // Argo CD's syncOverrun is not supported: refused, not ignored.
    let err = parse_projects(&format!("{head}    syncOverrun: true\n"), "shop.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("syncOverrun"), "{err}");
    assert!(parse_projects(head, "shop.yaml").is_ok());
}

#[test]
fn stored_fields_round_trip() {
    let p = project(
        "  sourceRepos: ['*']\n  syncWindows:\n  - kind: deny\n    schedule: '0 22 * * *'\n    duration: 1h\n    manualSync: true\n  roles:\n  - name: ci\n    policies: ['p, proj:team-a:ci, applications, sync, team-a/*, allow']\n  orphanedResources:\n    warn: true\n",
    );
    assert_eq!(p.spec.sync_windows[0].kind, "deny");
    assert_eq!(p.spec.roles[0].name, "ci");
    assert_eq!(p.spec.orphaned_resources.as_ref().unwrap().warn, Some(true));
    let back: AppProject = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

fn app(project: &str, repo: &str, cluster: &str, ns: &str) -> Application {
    let yaml = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: web\nspec:\n  project: {project}\n  source:\n    repoURL: {repo}\n    path: p\n  destination:\n    name: {cluster}\n    namespace: {ns}\n"
    );
    crate::model::parse_applications(&yaml, "t")
        .unwrap()
        .remove(0)
}

#[test]
fn admit_and_check_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_project(&ProjectRecord {
            project: project(
                "  sourceRepos: ['https://git.example/team-a/*']\n  destinations:\n  - name: c1\n    namespace: team-a\n",
            ),
            origin: "api".into(),
        })
        .unwrap();
    let ok = app("team-a", "https://git.example/team-a/apps", "c1", "team-a");
    let rules = admit(&store, &ok).unwrap().unwrap();
    let cases: &[(&str, Application, &str)] = &[
        (
            "missing project",
            app("nope", "https://git.example/team-a/apps", "c1", "team-a"),
            "Application referencing project nope which does not exist",
        ),
        (
            "repo",
            app("team-a", "https://git.example/team-b/apps", "c1", "team-a"),
            "application repo https://git.example/team-b/apps is not permitted in project 'team-a'",
        ),
        (
            "cluster",
            app("team-a", "https://git.example/team-a/apps", "c2", "team-a"),
            "application destination name 'c2' and namespace 'team-a' do not match",
        ),
        (
            "namespace",
            app("team-a", "https://git.example/team-a/apps", "c1", "team-b"),
            "namespace 'team-b' do not match",
        ),
    ];
    for (name, a, want) in cases {
        let err = admit(&store, a).unwrap().unwrap_err();
        assert!(
            err.starts_with(INVALID_SPEC) && err.contains(want),
            "{name}: {err}"
        );
    }
    // The implicit default project allows everything.
    assert!(
        admit(&store, &app("default", "https://x.example/y", "c9", "any"))
            .unwrap()
            .is_ok()
    );

    let objects = [
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ok"}}"#,
        r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"root"}}"#,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"elsewhere","namespace":"team-b"}}"#,
    ];
    assert!(check_objects(&rules, &ok, &[objects[0].to_owned()]).is_ok());
    let err = check_objects(&rules, &ok, &objects.map(str::to_owned)).unwrap_err();
    assert!(
        err.contains("ClusterRoleBinding/root: resource rbac.authorization.k8s.io:ClusterRoleBinding is not permitted in project team-a"),
        "{err}"
    );
    assert!(
        err.contains("ConfigMap/elsewhere: namespace team-b is not permitted in project 'team-a'"),
        "{err}"
    );
    assert!(!err.contains("ConfigMap/ok"), "{err}");

    // Escaped strings, fields of other types and unknown fields are read as
    // the full decoding read them: a field that is not a string counts as
    // empty, and the object is still checked.
    let odd = [
        r#"{"apiVersion":"rbac.authorization.k8s.io\/v1","kind":"ClusterRoleBinding","metadata":{"name":"r\u006fot"}}"#,
        r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":5,"labels":{"a":"b"}},"rules":[]}"#,
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s","namespace":"team-b"},"data":null}"#,
    ];
    let err = check_objects(&rules, &ok, &odd.map(str::to_owned)).unwrap_err();
    assert!(err.contains("ClusterRoleBinding/root: resource rbac.authorization.k8s.io:ClusterRoleBinding is not permitted"), "{err}");
    assert!(
        err.contains(
            "ClusterRole/: resource rbac.authorization.k8s.io:ClusterRole is not permitted"
        ),
        "{err}"
    );
    assert!(
        err.contains("Secret/s: namespace team-b is not permitted"),
        "{err}"
    );
}
