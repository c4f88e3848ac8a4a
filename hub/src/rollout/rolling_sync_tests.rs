use super::*;
use serde_json::json;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn expr(key: &str, op: &str, values: &[&str]) -> MatchExpression {
    MatchExpression {
        key: key.into(),
        operator: op.into(),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn step(exprs: Vec<MatchExpression>, max: Option<MaxUpdate>) -> Step {
    Step {
        match_expressions: exprs,
        max_update: max,
    }
}

fn env_steps(max: [Option<MaxUpdate>; 3]) -> Vec<Step> {
    let [a, b, c] = max;
    vec![
        step(vec![expr("env", "In", &["dev"])], a),
        step(vec![expr("env", "In", &["staging"])], b),
        step(vec![expr("env", "In", &["prod"])], c),
    ]
}

#[test]
fn step_matching_table() {
    struct Case {
        name: &'static str,
        steps: Vec<Step>,
        apps: Vec<(&'static str, BTreeMap<String, String>)>,
        want: Vec<Vec<&'static str>>,
        shown: Vec<(&'static str, i64)>,
    }
    let cases = [
        Case {
            name: "In selects the listed value only",
            steps: vec![step(vec![expr("env", "In", &["dev"])], None)],
            apps: vec![
                ("a", labels(&[("env", "dev")])),
                ("b", labels(&[("env", "prod")])),
            ],
            want: vec![vec!["a"]],
            shown: vec![("a", 1), ("b", -1)],
        },
        Case {
            name: "In with several values is an OR",
            steps: vec![step(vec![expr("env", "In", &["dev", "qa"])], None)],
            apps: vec![
                ("a", labels(&[("env", "dev")])),
                ("b", labels(&[("env", "qa")])),
            ],
            want: vec![vec!["a", "b"]],
            shown: vec![("a", 1), ("b", 1)],
        },
        Case {
            name: "a missing label fails In and satisfies NotIn",
            steps: vec![
                step(vec![expr("env", "In", &["dev"])], None),
                step(vec![expr("env", "NotIn", &["dev"])], None),
            ],
            apps: vec![("a", labels(&[])), ("b", labels(&[("env", "dev")]))],
            want: vec![vec!["b"], vec!["a"]],
            shown: vec![("a", 2), ("b", 1)],
        },
        Case {
            name: "every expression of a step must hold (AND)",
            steps: vec![step(
                vec![
                    expr("env", "In", &["prod"]),
                    expr("region", "NotIn", &["eu"]),
                ],
                None,
            )],
            apps: vec![
                ("a", labels(&[("env", "prod"), ("region", "us")])),
                ("b", labels(&[("env", "prod"), ("region", "eu")])),
            ],
            want: vec![vec!["a"]],
            shown: vec![("a", 1), ("b", -1)],
        },
        Case {
            name: "an application selected twice is listed in both, its step is the first",
            steps: vec![
                step(vec![expr("env", "In", &["dev"])], None),
                step(vec![expr("env", "NotIn", &["prod"])], None),
            ],
            apps: vec![("a", labels(&[("env", "dev")]))],
            want: vec![vec!["a"], vec!["a"]],
            shown: vec![("a", 1)],
        },
        Case {
            name: "an unknown operator selects nothing",
            steps: vec![step(vec![expr("env", "Exists", &["dev"])], None)],
            apps: vec![("a", labels(&[("env", "dev")]))],
            want: vec![vec![]],
            shown: vec![("a", -1)],
        },
    ];
    for c in cases {
        let got = assign_steps(&c.steps, c.apps.iter().map(|(n, l)| (*n, l)));
        let want: Vec<Vec<String>> = c
            .want
            .iter()
            .map(|s| s.iter().map(|a| (*a).to_owned()).collect())
            .collect();
        assert_eq!(got.steps, want, "{}", c.name);
        for (app, step) in c.shown {
            assert_eq!(got.shown_step(app), step, "{}: step of {app}", c.name);
        }
    }
}

#[test]
fn max_update_table() {
    let int = MaxUpdate::Int;
    let pct = |s: &str| MaxUpdate::Str(s.to_owned());
    let cases: Vec<(MaxUpdate, usize, Result<i64, &str>)> = vec![
        (int(1), 5, Ok(1)),
        (int(0), 5, Ok(0)),
        (int(10), 3, Ok(10)),
        (int(-1), 3, Ok(-1)),
        (pct("50%"), 4, Ok(2)),
        // Rounds down ...
        (pct("50%"), 3, Ok(1)),
        (pct("75%"), 10, Ok(7)),
        // ... but never below one application for more than 0 %.
        (pct("10%"), 5, Ok(1)),
        (pct("1%"), 1, Ok(1)),
        (pct("0%"), 10, Ok(0)),
        (pct("100%"), 6, Ok(6)),
        (pct("200%"), 2, Ok(4)),
        (pct("10%"), 1000, Ok(100)),
        (pct("10"), 5, Err("is not a percentage")),
        (pct("abc%"), 5, Err("invalid value")),
        (pct("12.5%"), 5, Err("invalid value")),
    ];
    for (m, total, want) in cases {
        let got = max_update_value(&m, total);
        match (&got, want) {
            (Ok(v), Ok(w)) => assert_eq!(*v, w, "{m} of {total}"),
            (Err(e), Err(w)) => assert!(e.contains(w), "{m}: {e}"),
            _ => panic!("{m} of {total}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn strategy_parse_table() {
    let ok = |v: Value| Strategy::parse(Some(&v));
    // Absent, null and AllAtOnce: no rollout.
    assert_eq!(Strategy::parse(None), Ok(Strategy::default()));
    assert_eq!(ok(json!({"type": "AllAtOnce"})), Ok(Strategy::default()));
    // Argo CD needs the rollingSync block to roll out at all; reported.
    let bare = json!({"type": "RollingSync"});
    assert_eq!(ok(bare.clone()), Ok(Strategy::default()));
    let unused = Strategy::default().unused(Some(&bare));
    assert!(
        unused[0].contains("without spec.strategy.rollingSync"),
        "{unused:?}"
    );
    // Reverse without steps: what Argo CD does (nothing), reported.
    let reverse = json!({"type": "AllAtOnce", "deletionOrder": "Reverse"});
    let s = ok(reverse.clone()).unwrap();
    assert!(!s.reverse_deletion());
    assert!(s.unused(Some(&reverse))[0].contains("Reverse has no effect"));
    let s = ok(json!({
        "type": "RollingSync",
        "deletionOrder": "reverse",
        "rollingSync": {"steps": [
            {"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]},
            {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}], "maxUpdate": "10%"},
            {"matchExpressions": [], "maxUpdate": 0},
        ]}
    }))
    .unwrap();
    let steps = s.rolling_sync.clone().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].max_update, None);
    assert_eq!(steps[1].max_update, Some(MaxUpdate::Str("10%".into())));
    assert_eq!(steps[2].max_update, Some(MaxUpdate::Int(0)));
    assert!(s.reverse_deletion());

    let errors: Vec<(Value, &str, &str)> = vec![
        (json!("RollingSync"), "spec.strategy", "must be an object"),
        (
            json!({"type": "Canary"}),
            "spec.strategy.type",
            "not one of AllAtOnce, RollingSync",
        ),
        (
            json!({"type": "RollingSync", "rollingSync": {"steps": []}}),
            "spec.strategy.rollingSync.steps",
            "No steps defined for rollout",
        ),
        (
            json!({"type": "RollingSync", "rollingSync": {}}),
            "spec.strategy.rollingSync.steps",
            "No steps defined for rollout",
        ),
        (
            json!({"type": "RollingSync", "rollingSync": {"steps": {}}}),
            "spec.strategy.rollingSync.steps",
            "must be a list",
        ),
        (
            json!({"type": "RollingSync", "rollingSync": {"steps": [{"maxUpdate": 1.5}]}}),
            "spec.strategy.rollingSync.steps[0].maxUpdate",
            "not an integer or a percentage",
        ),
        (
            json!({"type": "RollingSync", "rollingSync": {"steps": [{"maxUpdate": true}]}}),
            "spec.strategy.rollingSync.steps[0].maxUpdate",
            "not an integer or a percentage",
        ),
        (
            json!({"type": "RollingSync", "rollingSync": {"steps": [{"matchExpressions": [{"key": "env", "values": "dev"}]}]}}),
            "spec.strategy.rollingSync.steps[0].matchExpressions[0].values",
            "must be a list of strings",
        ),
        (
            json!({"deletionOrder": "Sideways"}),
            "spec.strategy.deletionOrder",
            "not one of AllAtOnce, Reverse",
        ),
    ];
    for (v, field, text) in errors {
        match ok(v.clone()) {
            Err((f, m)) => {
                assert_eq!(f, field, "{v}");
                assert!(m.contains(text), "{v}: {m}");
            }
            Ok(s) => panic!("{v} was accepted: {s:?}"),
        }
    }
}

#[test]
fn validation_messages_table() {
    type Labelled<'a> = Vec<(&'a str, &'a [(&'a str, &'a str)])>;
    let cases: Vec<(Vec<Step>, Labelled, Option<&str>)> = vec![
        (
            vec![step(vec![expr("env", "In", &["dev"])], None)],
            vec![("a", &[("env", "dev")])],
            None,
        ),
        (
            vec![
                step(vec![expr("env", "In", &["dev"])], None),
                step(vec![expr("env", "In", &["prod"])], None),
            ],
            vec![("a", &[("env", "dev")])],
            Some("Steps [2] have no applications matching their criteria"),
        ),
        (
            vec![step(vec![expr("env", "Exists", &["dev"])], None)],
            vec![("a", &[("env", "dev")])],
            Some(
                "Step 1 has invalid matchExpression operators: Exists. Supported Operators are 'In' and 'NotIn'",
            ),
        ),
        (
            vec![
                step(vec![expr("env", "In", &["dev"])], None),
                step(vec![expr("env", "NotIn", &["prod"])], None),
            ],
            vec![("a", &[("env", "dev")]), ("b", &[("env", "qa")])],
            Some("Application 'a' is selected by multiple steps: (1-2)"),
        ),
        (
            vec![step(
                vec![expr("env", "In", &["dev"])],
                Some(MaxUpdate::Str("ten".into())),
            )],
            vec![("a", &[("env", "dev")])],
            Some("Step 1 has an invalid maxUpdate value: ten"),
        ),
    ];
    for (steps, apps, want) in cases {
        let apps: Vec<Observed> = apps
            .iter()
            .map(|(n, l)| Observed {
                name: (*n).into(),
                labels: labels(l),
                ..Default::default()
            })
            .collect();
        let pass = progress(&steps, &[], &apps, 1);
        assert_eq!(pass.invalid.as_deref(), want);
    }
}

fn observed(name: &str, env: &str, rev: &str, synced: bool, healthy: bool) -> Observed {
    Observed {
        name: name.into(),
        labels: labels(&[("env", env)]),
        revision: rev.into(),
        digest: format!("d-{rev}"),
        synced,
        healthy,
        ..Default::default()
    }
}

fn status_of<'a>(pass: &'a Pass, app: &str) -> &'a AppProgress {
    pass.statuses
        .iter()
        .find(|s| s.application == app)
        .unwrap_or_else(|| panic!("no status for {app}"))
}

/// Marks the syncs the pass asked for as sent and started.
fn sent(pass: &Pass) -> Vec<AppProgress> {
    let mut out = pass.statuses.clone();
    for s in &mut out {
        if pass.to_sync.contains(&s.application) {
            s.sync_commands.insert("c".into(), "id".into());
        }
    }
    out
}

#[test]
fn a_new_revision_rolls_out_step_by_step() {
    let steps = env_steps([None, None, Some(MaxUpdate::Int(1))]);
    // Everything Healthy at r1.
    let at_r1 = vec![
        observed("dev", "dev", "r1", true, true),
        observed("stg", "staging", "r1", true, true),
        observed("prod-a", "prod", "r1", true, true),
        observed("prod-b", "prod", "r1", true, true),
    ];
    let p = progress(&steps, &[], &at_r1, 1);
    assert!(p.statuses.iter().all(|s| s.status == Progress::Healthy));
    assert!(p.to_sync.is_empty());
    assert_eq!(p.progressing, "ApplicationSet Rollout has completed");
    assert_eq!(status_of(&p, "prod-a").step, "3");

    // r2 arrives: nobody is synced to it.
    let mut apps: Vec<Observed> = at_r1
        .iter()
        .map(|a| observed(&a.name, &a.labels["env"], "r2", false, true))
        .collect();
    let p = progress(&steps, &p.statuses, &apps, 2);
    assert_eq!(p.to_sync, vec!["dev"]);
    assert_eq!(status_of(&p, "dev").status, Progress::Pending);
    assert_eq!(status_of(&p, "stg").status, Progress::Waiting);
    assert_eq!(status_of(&p, "stg").message, REVISION_CHANGED);
    assert_eq!(status_of(&p, "stg").target_revisions, vec!["r2"]);
    assert_eq!(
        p.progressing,
        "ApplicationSet is performing rollout of step 1"
    );

    // The sync starts: Progressing; staging still waits.
    let mut prev = sent(&p);
    apps[0].sync_started = true;
    let p = progress(&steps, &prev, &apps, 3);
    assert_eq!(status_of(&p, "dev").status, Progress::Progressing);
    assert!(p.to_sync.is_empty());
    // Synced but not yet Healthy: still Progressing, staging still waits.
    apps[0].synced = true;
    apps[0].healthy = false;
    let p = progress(&steps, &p.statuses, &apps, 4);
    assert_eq!(status_of(&p, "dev").status, Progress::Progressing);
    assert_eq!(status_of(&p, "stg").status, Progress::Waiting);
    // Healthy: step 2 opens.
    apps[0].healthy = true;
    let p = progress(&steps, &p.statuses, &apps, 5);
    assert_eq!(status_of(&p, "dev").status, Progress::Healthy);
    assert_eq!(p.to_sync, vec!["stg"]);
    assert_eq!(status_of(&p, "prod-a").status, Progress::Waiting);

    // Staging done: step 3 opens, one at a time (maxUpdate 1).
    prev = sent(&p);
    apps[1].sync_started = true;
    apps[1].synced = true;
    let p = progress(&steps, &prev, &apps, 6);
    assert_eq!(status_of(&p, "stg").status, Progress::Progressing);
    let p = progress(&steps, &p.statuses, &apps, 7);
    assert_eq!(status_of(&p, "stg").status, Progress::Healthy);
    assert_eq!(p.to_sync, vec!["prod-a"]);
    assert_eq!(status_of(&p, "prod-b").status, Progress::Waiting);
    assert_eq!(
        p.progressing,
        "ApplicationSet is performing rollout of step 3"
    );
    // prod-a still Progressing: prod-b keeps waiting.
    prev = sent(&p);
    apps[2].sync_started = true;
    let p = progress(&steps, &prev, &apps, 8);
    assert_eq!(status_of(&p, "prod-a").status, Progress::Progressing);
    assert!(p.to_sync.is_empty());
    assert_eq!(status_of(&p, "prod-b").status, Progress::Waiting);
    apps[2].synced = true;
    let p = progress(&steps, &p.statuses, &apps, 9);
    assert_eq!(status_of(&p, "prod-a").status, Progress::Healthy);
    assert_eq!(p.to_sync, vec!["prod-b"]);
    prev = sent(&p);
    apps[3].sync_started = true;
    apps[3].synced = true;
    let p = progress(&steps, &prev, &apps, 10);
    let p = progress(&steps, &p.statuses, &apps, 11);
    assert!(p.statuses.iter().all(|s| s.status == Progress::Healthy));
    assert_eq!(p.progressing, "ApplicationSet Rollout has completed");
}

#[test]
fn max_update_zero_holds_its_step_and_the_ones_after() {
    let steps = env_steps([None, Some(MaxUpdate::Int(0)), None]);
    let apps = vec![
        observed("dev", "dev", "r2", true, true),
        observed("stg", "staging", "r2", false, true),
        observed("prod", "prod", "r2", false, true),
    ];
    let p = progress(&steps, &[], &apps, 1);
    assert!(p.to_sync.is_empty(), "{:?}", p.to_sync);
    assert_eq!(status_of(&p, "stg").status, Progress::Waiting);
    assert_eq!(status_of(&p, "prod").status, Progress::Waiting);
    // A manual sync of the held application lets the rollout go on.
    let mut apps = apps;
    apps[1].synced = true;
    let p = progress(&steps, &p.statuses, &apps, 2);
    assert_eq!(status_of(&p, "stg").status, Progress::Healthy);
    assert_eq!(p.to_sync, vec!["prod"]);
}

#[test]
fn percentage_limits_concurrency_within_a_step() {
    let steps = vec![step(
        vec![expr("env", "In", &["prod"])],
        Some(MaxUpdate::Str("50%".into())),
    )];
    let apps: Vec<Observed> = (0..5)
        .map(|i| observed(&format!("p{i}"), "prod", "r2", false, true))
        .collect();
    let p = progress(&steps, &[], &apps, 1);
    // 50 % of 5 rounds down to 2.
    assert_eq!(p.to_sync, vec!["p0", "p1"]);
}

#[test]
fn applications_outside_every_step_are_never_synced() {
    let steps = env_steps([None, None, None]);
    let apps = vec![
        observed("dev", "dev", "r2", false, true),
        observed("other", "sandbox", "r2", false, true),
    ];
    let mut prev = Vec::new();
    let mut apps = apps;
    for t in 0..4 {
        let p = progress(&steps, &prev, &apps, t);
        assert!(!p.to_sync.contains(&"other".to_owned()));
        prev = sent(&p);
        apps[0].sync_started = true;
        apps[0].synced = true;
    }
    let other = prev.iter().find(|s| s.application == "other").unwrap();
    assert_eq!(other.status, Progress::Waiting);
    assert_eq!(other.step, "-1");
}

#[test]
fn pending_without_a_started_sync_stays_pending_unless_the_app_errs() {
    let steps = env_steps([None, None, None]);
    let mut apps = vec![observed("dev", "dev", "r2", false, true)];
    let p = progress(&steps, &[], &apps, 1);
    assert_eq!(status_of(&p, "dev").status, Progress::Pending);
    // Sent, not started yet (the cluster is away): still Pending, asked again.
    let p = progress(&steps, &sent(&p), &apps, 2);
    assert_eq!(status_of(&p, "dev").status, Progress::Pending);
    assert_eq!(p.to_sync, vec!["dev"]);
    apps[0].error = true;
    let p = progress(&steps, &p.statuses, &apps, 3);
    assert_eq!(status_of(&p, "dev").status, Progress::Progressing);
}

#[test]
fn a_spec_change_without_a_new_revision_restarts_the_app() {
    let steps = env_steps([None, None, None]);
    let apps = vec![observed("dev", "dev", "r1", true, true)];
    let p = progress(&steps, &[], &apps, 1);
    assert_eq!(status_of(&p, "dev").status, Progress::Healthy);
    let mut changed = apps.clone();
    changed[0].digest = "other".into();
    changed[0].synced = false;
    let p = progress(&steps, &p.statuses, &changed, 2);
    let s = status_of(&p, "dev");
    assert_eq!(s.status, Progress::Pending);
    assert_eq!(s.last_transition_ms, 2);
    // The Waiting message is replaced by Pending's in the same pass; the
    // cause is what moved it out of Healthy.
    assert!(s.message.contains("Pending"), "{}", s.message);
}

#[test]
fn reverse_deletion_goes_last_step_first_and_unselected_last() {
    let steps = env_steps([None, None, None]);
    let apps = [
        ("dev", labels(&[("env", "dev")])),
        ("p2", labels(&[("env", "prod")])),
        ("p1", labels(&[("env", "prod")])),
        ("stg", labels(&[("env", "staging")])),
        ("other", labels(&[("env", "sandbox")])),
    ];
    let groups = crate::rollout::reverse_deletion_groups(&steps, apps.iter().map(|(n, l)| (*n, l)));
    assert_eq!(
        groups,
        vec![
            vec!["p1".to_owned(), "p2".to_owned()],
            vec!["stg".to_owned()],
            vec!["dev".to_owned()],
            vec!["other".to_owned()],
        ]
    );
}
