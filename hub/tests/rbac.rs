//! RBAC and audit over the real gRPC API with real tokens: project tokens
//! scoped to their project, read-only and admin tokens, a policy change
//! taking effect without a restart, and the audit log of changes and
//! refusals. The CLI's `rbac` and `audit` commands run as processes.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use flotilla_hub::server::{HubConfig, start};
use flotilla_proto as pb;
use tonic::Code;

mod support;
use support::{Api, api_as, flotilla, hub_with_c1, ok, sync, web_repo};

fn app_yaml(name: &str, project: &str, url: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  project: {project}\n  source:\n    repoURL: {url}\n    path: web\n  destination:\n    name: c1\n    namespace: default\n"
    )
}

fn project_yaml(name: &str, with_role: bool) -> String {
    let role = if with_role {
        format!(
            "  roles:\n  - name: ci\n    policies:\n    - p, proj:{name}:ci, applications, get, {name}/*, allow\n    - p, proj:{name}:ci, applications, sync, {name}/*, allow\n    - p, proj:{name}:ci, applicationsets, get, {name}/*, allow\n"
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata:\n  name: {name}\nspec:\n  sourceRepos: ['*']\n  destinations:\n  - name: c1\n    namespace: '*'\n{role}"
    )
}

/// An ApplicationSet of `project` that selects no cluster (generates
/// nothing).
fn appset_yaml(name: &str, project: &str, url: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: {name}\nspec:\n  generators:\n  - clusters:\n      selector:\n        matchLabels:\n          team: nobody\n  template:\n    metadata:\n      name: '{name}-{{{{name}}}}'\n    spec:\n      project: {project}\n      source:\n        repoURL: {url}\n        path: web\n      destination:\n        name: '{{{{name}}}}'\n        namespace: default\n"
    )
}

fn denied(err: &tonic::Status, what: &str) {
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(what), "{what}: {}", err.message());
}

async fn app_names(api: &mut Api) -> Vec<String> {
    api.list_applications(pb::ListApplicationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .applications
        .into_iter()
        .map(|a| a.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_tokens_readonly_admin_live_policy_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let url = web_repo(dir.path());

    let (hub, mut admin) = hub_with_c1(dir.path(), |config| {
        config.poll_interval = Duration::from_secs(600);
    })
    .await;
    for team in ["team-a", "team-b"] {
        admin
            .create_project(pb::CreateProjectRequest {
                manifest: project_yaml(team, true),
                upsert: false,
            })
            .await
            .unwrap();
    }
    for (app, team) in [("a-web", "team-a"), ("b-web", "team-b")] {
        admin
            .create_application(pb::CreateApplicationRequest {
                manifest: app_yaml(app, team, &url),
                upsert: false,
            })
            .await
            .unwrap();
    }

    // A project role policy reaching outside its project is refused,
    // naming the project, the role and the line.
    let err = admin
        .create_project(pb::CreateProjectRequest {
            manifest: project_yaml("team-a", true).replace(
                "applications, sync, team-a/*",
                "applications, sync, team-b/*",
            ),
            upsert: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("spec.roles[0]") && err.message().contains("line 2"),
        "{}",
        err.message()
    );

    // Team A's project token.
    let created = admin
        .create_token(pb::CreateTokenRequest {
            name: "ci".into(),
            project: "team-a".into(),
            role: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let info = created.info.unwrap();
    assert_eq!(info.subject, "proj:team-a:ci");
    assert_eq!(info.name, "proj:team-a:ci:ci");
    let mut team_a = api_as(&hub, &created.token).await;

    // It sees only its own applications and project...
    assert_eq!(app_names(&mut team_a).await, ["a-web"]);
    assert_eq!(app_names(&mut admin).await, ["a-web", "b-web"]);
    let projects: Vec<String> = team_a
        .list_projects(pb::ListProjectsRequest {})
        .await
        .unwrap()
        .into_inner()
        .projects
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(projects, ["team-a"]);
    // ...cannot get, sync, delete or see the history of team B's...
    let err = team_a
        .get_application(pb::GetApplicationRequest {
            name: "b-web".into(),
        })
        .await
        .unwrap_err();
    denied(&err, "applications, get, team-b/b-web");
    denied(
        &sync(&mut team_a, "b-web").await.unwrap_err(),
        "applications, sync, team-b/b-web",
    );
    let err = team_a
        .get_application_history(pb::GetApplicationHistoryRequest {
            name: "b-web".into(),
        })
        .await
        .unwrap_err();
    denied(&err, "team-b/b-web");
    // ...nor an application that does not exist (no existence leak)...
    denied(
        &sync(&mut team_a, "nowhere").await.unwrap_err(),
        "applications, sync, */nowhere",
    );
    // ...nor delete its own (its role grants get and sync only), nor mint
    // tokens, nor edit RBAC.
    let err = team_a
        .delete_application(pb::DeleteApplicationRequest {
            name: "a-web".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    denied(&err, "applications, delete, team-a/a-web");
    let err = team_a
        .create_token(pb::CreateTokenRequest {
            name: "evil".into(),
            groups: vec!["role:admin".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    denied(&err, "accounts, update, evil");
    let err = team_a
        .set_rbac_policy(pb::RbacPolicy {
            policy_csv: "g, proj:team-a:ci, role:admin".into(),
            default_role: String::new(),
        })
        .await
        .unwrap_err();
    denied(&err, "rbac, update");
    // Application sets: the same fence, by the template's project.
    for (set, team) in [("a-set", "team-a"), ("b-set", "team-b")] {
        admin
            .create_application_set(pb::CreateApplicationSetRequest {
                manifest: appset_yaml(set, team, &url),
                upsert: false,
            })
            .await
            .unwrap();
    }
    let sets: Vec<String> = team_a
        .list_application_sets(pb::ListApplicationSetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .application_sets
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(sets, ["a-set"]);
    let err = team_a
        .get_application_set(pb::GetApplicationSetRequest {
            name: "b-set".into(),
        })
        .await
        .unwrap_err();
    denied(&err, "applicationsets, get, team-b/b-set");
    let err = team_a
        .delete_application_set(pb::DeleteApplicationSetRequest {
            name: "b-set".into(),
        })
        .await
        .unwrap_err();
    denied(&err, "applicationsets, delete, team-b/b-set");
    let err = team_a
        .create_application_set(pb::CreateApplicationSetRequest {
            manifest: appset_yaml("b-set", "team-b", &url),
            upsert: true,
        })
        .await
        .unwrap_err();
    denied(&err, "applicationsets, update, team-b/b-set");

    // It can sync its own, and history says who did.
    let r = sync(&mut team_a, "a-web").await.unwrap();
    assert_eq!(r.not_connected, ["c1"]);
    let h = team_a
        .get_application_history(pb::GetApplicationHistoryRequest {
            name: "a-web".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.entries[0].initiated_by, "user:proj:team-a:ci");

    // A read-only token (role:readonly) sees everything and syncs nothing.
    let viewer = admin
        .create_token(pb::CreateTokenRequest {
            name: "viewer".into(),
            read_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut viewer = api_as(&hub, &viewer).await;
    assert_eq!(app_names(&mut viewer).await, ["a-web", "b-web"]);
    denied(
        &sync(&mut viewer, "a-web").await.unwrap_err(),
        "applications, sync, team-a/a-web (subject \"viewer\")",
    );
    // The admin can.
    sync(&mut admin, "b-web").await.unwrap();

    // An account token with a group the policy does not know yet: nothing.
    let dev = admin
        .create_token(pb::CreateTokenRequest {
            name: "dev".into(),
            groups: vec!["team-a-devs".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut dev = api_as(&hub, &dev).await;
    assert!(app_names(&mut dev).await.is_empty());
    denied(
        &sync(&mut dev, "a-web").await.unwrap_err(),
        "applications, sync, team-a/a-web",
    );
    // A bad policy is refused, naming the line; nothing changes.
    let err = admin
        .set_rbac_policy(pb::RbacPolicy {
            policy_csv: "p, team-a-devs, applications, get, team-a/*\np, team-a-devs, aplications, sync, team-a/*\n".into(),
            default_role: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("policy.csv line 2")
            && err.message().contains("unknown resource \"aplications\""),
        "{}",
        err.message()
    );
    // The policy takes effect on the next call, without a restart.
    admin
        .set_rbac_policy(pb::RbacPolicy {
            policy_csv: "p, team-a-devs, applications, get, team-a/*, allow\np, team-a-devs, applications, sync, team-a/*, allow\n".into(),
            default_role: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(app_names(&mut dev).await, ["a-web"]);
    sync(&mut dev, "a-web").await.unwrap();
    denied(
        &sync(&mut dev, "b-web").await.unwrap_err(),
        "applications, sync, team-b/b-web",
    );
    // A deny beats the allow, at once.
    admin
        .set_rbac_policy(pb::RbacPolicy {
            policy_csv: "p, team-a-devs, applications, get, team-a/*, allow\np, team-a-devs, applications, sync, team-a/*, allow\np, team-a-devs, applications, sync, team-a/a-web, deny\n".into(),
            default_role: String::new(),
        })
        .await
        .unwrap();
    denied(
        &sync(&mut dev, "a-web").await.unwrap_err(),
        "applications, sync, team-a/a-web",
    );
    // A default role applies to every caller.
    admin
        .set_rbac_policy(pb::RbacPolicy {
            policy_csv: String::new(),
            default_role: "role:readonly".into(),
        })
        .await
        .unwrap();
    assert_eq!(app_names(&mut dev).await, ["a-web", "b-web"]);

    // A token with an expiry is refused once it passed.
    let brief = admin
        .create_token(pb::CreateTokenRequest {
            name: "brief".into(),
            project: "team-a".into(),
            role: "ci".into(),
            expires_in_secs: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(brief.info.unwrap().expires_ms > 0);
    let mut brief = api_as(&hub, &brief.token).await;
    // (The default role, role:readonly, now shows it every application.)
    assert_eq!(app_names(&mut brief).await, ["a-web", "b-web"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let err = loop {
        match brief
            .list_applications(pb::ListApplicationsRequest::default())
            .await
        {
            Err(e) => break e,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "never expired"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("expired"), "{}", err.message());

    // Removing the role from the project revokes its tokens.
    admin
        .create_project(pb::CreateProjectRequest {
            manifest: project_yaml("team-a", false),
            upsert: true,
        })
        .await
        .unwrap();
    let err = team_a
        .list_applications(pb::ListApplicationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // The audit log: who, from where, what, and the result, refusals
    // included.
    let audit = admin
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let has = |subject: &str, action: &str, object: &str, result: &str| {
        audit.iter().any(|e| {
            e.subject == subject && e.action == action && e.object == object && e.result == result
        })
    };
    assert!(
        has("proj:team-a:ci", "sync", "team-a/a-web", "ok"),
        "{audit:#?}"
    );
    assert!(
        has("proj:team-a:ci", "sync", "team-b/b-web", "denied"),
        "{audit:#?}"
    );
    assert!(has("proj:team-a:ci", "delete", "team-a/a-web", "denied"));
    assert!(has("proj:team-a:ci", "delete", "team-b/b-set", "denied"));
    assert!(has("admin", "create", "team-b/b-set", "ok"));
    assert!(has("viewer", "sync", "team-a/a-web", "denied"));
    assert!(has("admin", "sync", "team-b/b-web", "ok"));
    assert!(has("dev", "sync", "team-a/a-web", "ok"));
    assert!(has("admin", "create-token", "team-a", "ok"));
    assert!(has("admin", "create-token", "viewer", "ok"));
    assert!(has("admin", "update", "policy.csv", "ok"));
    assert!(has("admin", "update", "policy.csv", "error"));
    assert!(has("admin", "add", "c1", "ok"));
    assert!(has("admin", "create", "team-a/a-web", "ok"));
    assert!(has("admin", "update", "team-a", "ok"));
    assert!(
        audit
            .iter()
            .all(|e| e.peer.starts_with("127.0.0.1:") && e.time_ms > 0),
        "{audit:#?}"
    );
    // Get is not a change: not audited.
    assert!(!audit.iter().any(|e| e.action == "get"));
    let only_viewer = admin
        .list_audit(pb::ListAuditRequest {
            subject: "viewer".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(!only_viewer.is_empty() && only_viewer.iter().all(|e| e.subject == "viewer"));

    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_rbac_validate_can_set_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(600);
    let hub = start(config).await.unwrap();

    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "# team policy\np, dev, applications, get, */*, allow\np, dev, applications, sync\n",
    )
    .unwrap();
    let out = flotilla(&hub, &["rbac", "validate", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("5 or 6 fields"),
        "{err}"
    );

    let good = dir.path().join("policy.csv");
    std::fs::write(
        &good,
        "p, role:dev, applications, *, dev/*, allow\np, role:dev, applications, delete, dev/*, deny\ng, alice, role:dev\n",
    )
    .unwrap();
    let good = good.to_str().unwrap();
    ok(&flotilla(&hub, &["rbac", "validate", good]));
    // Local checks against the file.
    let can = |args: &[&str]| {
        let mut all = vec!["rbac", "can"];
        all.extend_from_slice(args);
        flotilla(&hub, &all)
    };
    let yes = can(&[
        "alice",
        "sync",
        "applications",
        "dev/web",
        "--policy-file",
        good,
    ]);
    assert_eq!(ok(&yes).trim(), "yes");
    let no = can(&[
        "alice",
        "delete",
        "applications",
        "dev/web",
        "--policy-file",
        good,
    ]);
    assert_eq!(no.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    // Through the hub, before and after the policy is stored.
    let no = can(&["alice", "sync", "applications", "dev/web"]);
    assert_eq!(no.status.code(), Some(1));
    ok(&flotilla(&hub, &["rbac", "set", "-f", good]));
    assert_eq!(
        ok(&can(&["alice", "sync", "applications", "dev/web"])).trim(),
        "yes"
    );
    assert!(ok(&flotilla(&hub, &["rbac", "get"])).contains("g, alice, role:dev"));
    // Groups given on the command line (as an identity provider's claim).
    assert_eq!(
        ok(&can(&[
            "bob",
            "get",
            "applications",
            "dev/x",
            "--group",
            "role:dev"
        ]))
        .trim(),
        "yes"
    );

    // Token with a role; the audit log lists it, as JSON and as a table.
    ok(&flotilla(
        &hub,
        &["token", "create", "alice", "--group", "role:dev"],
    ));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&flotilla(&hub, &["audit", "-o", "json"]))).unwrap();
    let entries = json.as_array().unwrap();
    assert!(entries.iter().any(|e| e["action"] == "create-token"
        && e["object"] == "alice"
        && e["subject"] == "admin"
        && e["result"] == "ok"));
    assert!(
        entries
            .iter()
            .any(|e| e["resource"] == "rbac" && e["result"] == "ok")
    );
    let table = ok(&flotilla(
        &hub,
        &["audit", "--since", "1h", "--subject", "admin"],
    ));
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains("create-token"), "{table}");
    let none = ok(&flotilla(
        &hub,
        &["audit", "--subject", "nobody", "-o", "json"],
    ));
    assert_eq!(none.trim(), "[]");
    hub.shutdown().await.unwrap();
}
