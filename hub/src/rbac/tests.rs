//! Table tests of the policy engine, in the shape of Argo CD's enforcer
//! tests (our own policies and cases).

use super::*;
use crate::project::{AppProject, parse_projects};

fn enforcer(csv: &str, default_role: &str) -> Enforcer {
    Enforcer::new(
        &RbacConfig {
            policy_csv: csv.to_owned(),
            default_role: default_role.to_owned(),
        },
        &[],
    )
    .unwrap()
}

fn who(subject: &str, groups: &[&str]) -> Principal {
    Principal {
        subject: subject.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

#[test]
fn globs() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "", true),
        ("*", "team-a/web", true),
        ("*/*", "team-a/web", true),
        ("team-a/*", "team-a/web", true),
        ("team-a/*", "team-b/web", false),
        ("team-a/*", "team-a", false),
        ("team-?/web", "team-a/web", true),
        ("team-?/web", "team-ab/web", false),
        ("*-prod", "eu-prod", true),
        ("*-prod", "eu-prod-2", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("web", "web", true),
        ("web", "web2", false),
        ("action/*", "action/apps/Deployment/restart", true),
    ];
    for (p, v, want) in cases {
        assert_eq!(glob_match(p, v), *want, "{p:?} vs {v:?}");
    }
}

#[test]
fn builtin_roles() {
    let e = enforcer("", "");
    let ro = who("viewer", &[ROLE_READONLY]);
    let admin = who("root", &[ROLE_ADMIN]);
    let nobody = who("nobody", &[]);
    let cases: &[(&Principal, &str, &str, &str, bool)] = &[
        (&ro, "applications", "get", "team-a/web", true),
        (&ro, "applications", "sync", "team-a/web", false),
        (&ro, "applications", "delete", "team-a/web", false),
        (&ro, "clusters", "get", "eu-1", true),
        (&ro, "clusters", "update", "eu-1", false),
        (&ro, "accounts", "update", "ci", false),
        (&admin, "applications", "sync", "team-a/web", true),
        (
            &admin,
            "applications",
            "action/apps/Deployment/restart",
            "a/b",
            true,
        ),
        (&admin, "projects", "delete", "team-a", true),
        (&admin, "rbac", "update", "*", true),
        // Admin inherits readonly.
        (&admin, "logs", "get", "team-a/web", true),
        (&nobody, "applications", "get", "team-a/web", false),
    ];
    for (w, res, act, obj, want) in cases {
        assert_eq!(e.allows(w, res, act, obj), *want, "{w:?} {res} {act} {obj}");
    }
}

#[test]
fn deny_wins_within_a_subject() {
    let e = enforcer(
        "p, alice, applications, *, */*, allow\n\
         p, alice, applications, delete, prod/*, deny\n\
         g, bob, role:admin\n\
         p, bob, clusters, delete, *, deny\n",
        "",
    );
    let alice = who("alice", &[]);
    assert!(e.allows(&alice, "applications", "sync", "prod/web"));
    assert!(e.allows(&alice, "applications", "delete", "dev/web"));
    assert!(!e.allows(&alice, "applications", "delete", "prod/web"));
    // A deny on the subject beats an allow it inherits from a role.
    let bob = who("bob", &[]);
    assert!(e.allows(&bob, "clusters", "update", "eu-1"));
    assert!(!e.allows(&bob, "clusters", "delete", "eu-1"));
}

#[test]
fn default_role() {
    let e = enforcer("", ROLE_READONLY);
    let anyone = who("someone", &[]);
    assert!(e.allows(&anyone, "applications", "get", "x/y"));
    assert!(!e.allows(&anyone, "applications", "sync", "x/y"));
    // As in Argo CD the default role is checked on its own: an allow from
    // it is not undone by a deny on the subject.
    let e = enforcer("p, someone, applications, get, */*, deny", ROLE_READONLY);
    assert!(e.allows(&anyone, "applications", "get", "x/y"));
    let err = Enforcer::new(
        &RbacConfig {
            policy_csv: String::new(),
            default_role: "role:nope".into(),
        },
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("role:nope"), "{err}");
}

#[test]
fn groups_and_nested_roles() {
    let e = enforcer(
        "p, role:deployer, applications, sync, team-a/*, allow\n\
         p, role:deployer, applications, get, team-a/*, allow\n\
         g, role:lead, role:deployer\n\
         p, role:lead, applications, delete, team-a/*, allow\n\
         g, team-a-leads, role:lead\n\
         g, carol, team-a-leads\n\
         p, role:blocked, applications, *, */*, deny\n\
         g, team-b, role:blocked\n",
        "",
    );
    // Through the group carried by the caller (an OIDC groups claim).
    let dave = who("dave", &["team-a-leads"]);
    assert!(e.allows(&dave, "applications", "sync", "team-a/web"));
    assert!(e.allows(&dave, "applications", "delete", "team-a/web"));
    assert!(!e.allows(&dave, "applications", "sync", "team-b/web"));
    // Through a g line for the subject itself.
    let carol = who("carol", &[]);
    assert!(e.allows(&carol, "applications", "delete", "team-a/web"));
    // Groups are enforced one by one (Argo CD): a deny in one group does
    // not undo an allow in another.
    let both = who("erin", &["team-a-leads", "team-b"]);
    assert!(e.allows(&both, "applications", "sync", "team-a/web"));
    let only_b = who("frank", &["team-b"]);
    assert!(!e.allows(&only_b, "applications", "get", "team-a/web"));
}

fn project(name: &str, roles: &str) -> AppProject {
    let text = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata:\n  name: {name}\nspec:\n  roles:\n{roles}"
    );
    parse_projects(&text, "p.yaml").unwrap().remove(0)
}

#[test]
fn project_scoped_policies() {
    let a = project(
        "team-a",
        "  - name: ci\n    policies:\n    - p, proj:team-a:ci, applications, sync, team-a/*, allow\n    - p, proj:team-a:ci, applications, get, team-a/*, allow\n    groups: [team-a-devs]\n",
    );
    let e = Enforcer::new(&RbacConfig::default(), &[a.rbac_roles()]).unwrap();
    let token = who("proj:team-a:ci", &[]);
    assert!(e.allows(&token, "applications", "sync", "team-a/web"));
    assert!(!e.allows(&token, "applications", "sync", "team-b/web"));
    assert!(!e.allows(&token, "applications", "get", "team-b/web"));
    assert!(!e.allows(&token, "applications", "delete", "team-a/web"));
    // Its own project is visible; others are not.
    assert!(e.allows(&token, "projects", "get", "team-a"));
    assert!(!e.allows(&token, "projects", "get", "team-b"));
    // The role's groups get its policies.
    let dev = who("gina", &["team-a-devs"]);
    assert!(e.allows(&dev, "applications", "sync", "team-a/web"));
    assert!(!e.allows(&dev, "applications", "sync", "team-b/web"));
}

#[test]
fn project_roles_cannot_reach_outside_their_project() {
    let cases: &[(&str, &str)] = &[
        (
            "p, proj:team-a:ci, applications, sync, team-b/*, allow",
            "under \"team-a/\"",
        ),
        ("p, proj:team-a:ci, applications, sync, */*, allow", "under"),
        ("p, proj:team-a:ci, clusters, delete, *, allow", "under"),
        (
            "p, proj:team-b:ci, applications, sync, team-a/*, allow",
            "the subject must be \"proj:team-a:ci\"",
        ),
        ("g, proj:team-a:ci, role:admin", "spec.roles[].groups"),
        ("p, proj:team-a:ci, applications, sync", "5 or 6 fields"),
    ];
    for (line, want) in cases {
        // Refused when the project is read (API or Git), naming the role.
        let text = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata:\n  name: team-a\nspec:\n  roles:\n  - name: ci\n    policies:\n    - \"{line}\"\n"
        );
        let msg = parse_projects(&text, "p.yaml").unwrap_err().to_string();
        assert!(msg.contains(want), "{line}: {msg}");
        assert!(
            msg.contains("spec.roles[0]") && msg.contains("project \"team-a\""),
            "{msg}"
        );
    }
}

#[test]
fn bad_lines_are_named() {
    let cases: &[(&str, usize, &str)] = &[
        ("p, a, applications, get", 1, "5 or 6 fields"),
        (
            "\n# comment\np, a, applications, get, */*, maybe",
            3,
            "effect \"maybe\"",
        ),
        ("g, a", 1, "3 fields"),
        ("x, a, b", 1, "starts with p or g"),
        ("p, a, apps, get, *", 1, "unknown resource \"apps\""),
        ("p, a, applications, fly, *", 1, "unknown action \"fly\""),
        ("p, , applications, get, *", 1, "field 2 is empty"),
    ];
    for (text, line, want) in cases {
        let err = parse(text, "policy.csv").unwrap_err();
        let RbacError::Line { line: got, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(got, line, "{text}");
        let msg = err.to_string();
        assert!(msg.contains(want), "{text}: {msg}");
        assert!(
            msg.starts_with(&format!("policy.csv line {line}:")),
            "{msg}"
        );
    }
}

#[test]
fn may_write() {
    let e = enforcer("p, dev, applications, sync, a/*, allow", "");
    assert!(!e.may_write(&who("x", &[ROLE_READONLY])));
    assert!(e.may_write(&who("x", &[ROLE_ADMIN])));
    assert!(e.may_write(&who("dev", &[])));
}
