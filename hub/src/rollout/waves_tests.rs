use super::*;
use serde_json::json;

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";
const BAD: &str = "3333333333333333333333333333333333333333";

fn spec(v: Value) -> WavesSpec {
    WavesSpec::parse(Some(&v)).unwrap().unwrap()
}

/// canary 1, then 2, then 3 (the last at most one at a time), 1 s bake.
fn three_waves(auto_rollback: bool) -> WavesSpec {
    spec(json!({
        "autoRollback": auto_rollback,
        "progressDeadline": "1m",
        "waves": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}, "bakeTime": "1s"},
            {"name": "eu", "clusterSelector": {"matchExpressions": [{"key": "ring", "operator": "In", "values": ["eu"]}]}, "bakeTime": "1s"},
            {"name": "us", "clusterSelector": {"matchLabels": {"ring": "us"}}, "maxUnavailable": 1},
        ]
    }))
}

/// Six clusters, each with its own application, all Healthy at `OLD`.
struct World {
    targets: Vec<Target>,
    /// Syncs received, in order, with the time.
    log: Vec<(i64, String, String)>,
}

impl World {
    fn new() -> Self {
        let rings = ["canary", "eu", "eu", "us", "us", "us"];
        let targets = rings
            .iter()
            .enumerate()
            .map(|(i, ring)| Target {
                app: format!("web-c{i}"),
                cluster: format!("c{i}"),
                labels: BTreeMap::from([("ring".to_owned(), (*ring).to_owned())]),
                git: OLD.into(),
                current: OLD.into(),
                synced_at: OLD.into(),
                healthy: true,
                degraded: false,
                held_until_ms: None,
            })
            .collect();
        Self {
            targets,
            log: Vec::new(),
        }
    }

    fn commit(&mut self, rev: &str) {
        for t in &mut self.targets {
            t.git = rev.into();
        }
    }

    /// One pass; the syncs it sends are applied at once (Healthy unless
    /// the revision is `BAD`, which goes Degraded).
    fn pass(
        &mut self,
        s: &WavesSpec,
        rec: Option<&WavesRecord>,
        controls: &[(Control, String)],
        now: i64,
    ) -> Pass {
        let p = plan(s, rec, &self.targets, controls, now);
        for sync in &p.syncs {
            let t = self.targets.iter_mut().find(|t| t.app == sync.app).unwrap();
            t.current = sync.revision.clone();
            t.synced_at = sync.revision.clone();
            t.healthy = sync.revision != BAD;
            t.degraded = sync.revision == BAD;
            self.log
                .push((now, sync.cluster.clone(), sync.revision.clone()));
        }
        p
    }

    fn clusters_at(&self, rev: &str) -> Vec<&str> {
        self.log
            .iter()
            .filter(|(_, _, r)| r == rev)
            .map(|(_, c, _)| c.as_str())
            .collect()
    }
}

fn adopted(w: &mut World, s: &WavesSpec) -> WavesRecord {
    let p = w.pass(s, None, &[], 0);
    assert_eq!(p.record.phase, WavePhase::Completed);
    assert!(p.syncs.is_empty(), "adopting what runs sends nothing");
    p.record
}

#[test]
fn a_good_commit_goes_wave_by_wave_with_bake_time_and_max_unavailable() {
    let s = three_waves(false);
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    w.commit(NEW);
    let mut t = 10_000;
    let mut phases = Vec::new();
    for _ in 0..40 {
        let p = w.pass(&s, Some(&rec), &[], t);
        rec = p.record;
        phases.push((rec.wave, rec.phase));
        if rec.phase == WavePhase::Completed {
            break;
        }
        t += 250;
    }
    assert_eq!(rec.phase, WavePhase::Completed, "{phases:?}");
    assert_eq!(w.clusters_at(NEW), ["c0", "c1", "c2", "c3", "c4", "c5"]);
    let at = |c: &str| w.log.iter().find(|(_, x, _)| x == c).unwrap().0;
    // The canary alone, then eu after the canary baked 1 s, then us.
    assert!(at("c1") - at("c0") >= 1000, "{:?}", w.log);
    assert_eq!(at("c1"), at("c2"), "eu has no maxUnavailable: both at once");
    assert!(at("c3") - at("c2") >= 1000, "{:?}", w.log);
    // us: one at a time.
    assert!(at("c3") < at("c4") && at("c4") < at("c5"), "{:?}", w.log);
    assert!(
        rec.clusters
            .iter()
            .all(|c| c.state == ClusterState::Updated && c.revision == NEW)
    );
    assert_eq!(rec.wave_ms.len(), 3);
}

#[test]
fn a_bad_commit_stops_in_the_canary_and_rolls_it_back() {
    let s = three_waves(true);
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    w.commit(BAD);
    for i in 0..10 {
        rec = w.pass(&s, Some(&rec), &[], 10_000 + i * 500).record;
    }
    assert_eq!(rec.phase, WavePhase::Failed);
    assert_eq!(rec.wave, 0);
    // Only the canary saw it, and it is back at OLD.
    assert_eq!(w.clusters_at(BAD), ["c0"]);
    assert_eq!(w.clusters_at(OLD), ["c0"]);
    let c0 = &rec.clusters[0];
    assert_eq!(
        (c0.state, c0.revision.as_str()),
        (ClusterState::RolledBack, OLD)
    );
    assert!(
        rec.clusters[1..]
            .iter()
            .all(|c| c.state == ClusterState::Waiting && c.revision == OLD)
    );
}

#[test]
fn without_auto_rollback_a_failed_wave_pauses_and_stays() {
    let s = three_waves(false);
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    w.commit(BAD);
    for i in 0..5 {
        rec = w.pass(&s, Some(&rec), &[], 10_000 + i * 500).record;
    }
    assert_eq!(rec.phase, WavePhase::Failed);
    assert_eq!(w.clusters_at(BAD), ["c0"]);
    assert!(w.clusters_at(OLD).is_empty());
    // Abort puts back every cluster touched.
    let p = w.pass(
        &s,
        Some(&rec),
        &[(Control::Abort, "user:ops".into())],
        20_000,
    );
    assert_eq!(p.record.phase, WavePhase::Aborted);
    assert_eq!(w.clusters_at(OLD), ["c0"]);
    let abort = p.events.iter().find(|e| e.by == "user:ops").unwrap();
    assert!(abort.text.contains("aborted by user:ops"), "{abort:?}");
    assert_eq!(abort.apps.len(), 6, "{abort:?}");
}

#[test]
fn not_healthy_within_the_progress_deadline_fails_the_wave() {
    let s = three_waves(true);
    let mut w = World::new();
    let rec = adopted(&mut w, &s);
    w.commit(NEW);
    let p = plan(&s, Some(&rec), &w.targets, &[], 10_000);
    assert_eq!(p.syncs.len(), 1);
    // The canary never gets Healthy at NEW.
    let mut rec = p.record;
    rec = plan(&s, Some(&rec), &w.targets, &[], 10_000 + 59_000).record;
    assert_eq!(rec.phase, WavePhase::Progressing);
    let p = plan(&s, Some(&rec), &w.targets, &[], 10_000 + 61_000);
    assert_eq!(p.record.phase, WavePhase::Failed);
    assert_eq!(p.syncs.len(), 1);
    assert!(p.syncs[0].rollback && p.syncs[0].revision == OLD);
}

#[test]
fn approval_gate_pause_resume_and_promote() {
    let s = spec(json!({"waves": [
        {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}, "bakeTime": "1h"},
        {"name": "rest", "clusterSelector": {"matchExpressions": [{"key": "ring", "operator": "Exists"}]}, "requireApproval": true},
    ]}));
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    w.commit(NEW);
    rec = w.pass(&s, Some(&rec), &[], 1000).record;
    rec = w.pass(&s, Some(&rec), &[], 2000).record;
    assert_eq!(rec.phase, WavePhase::Baking);
    // Paused: nothing moves, even a promote of the bake is held.
    let by = || "user:ops".to_owned();
    assert!(check_control("web", Some(&rec), &Control::Pause).is_ok());
    rec = w
        .pass(&s, Some(&rec), &[(Control::Pause, by())], 3000)
        .record;
    assert_eq!(rec.paused_by, "user:ops");
    assert_eq!(
        check_control("web", Some(&rec), &Control::Pause).unwrap_err(),
        "rollout \"web\" is already paused (by user:ops)"
    );
    rec = w
        .pass(&s, Some(&rec), &[(Control::Promote, by())], 4000)
        .record;
    assert_eq!(w.clusters_at(NEW), ["c0"]);
    rec = w
        .pass(&s, Some(&rec), &[(Control::Resume, by())], 5000)
        .record;
    // The promote skipped the hour of bake; the next wave waits for approval.
    assert_eq!(rec.phase, WavePhase::AwaitingApproval, "{rec:?}");
    assert_eq!(rec.wave, 1);
    rec = w.pass(&s, Some(&rec), &[], 6000).record;
    assert_eq!(w.clusters_at(NEW), ["c0"]);
    rec = w
        .pass(&s, Some(&rec), &[(Control::Promote, by())], 7000)
        .record;
    assert_eq!(w.clusters_at(NEW).len(), 6);
    rec = w.pass(&s, Some(&rec), &[], 8000).record;
    assert_eq!(rec.phase, WavePhase::Completed);
    assert!(check_control("web", Some(&rec), &Control::Abort).is_err());
    assert!(
        check_control("web", None, &Control::Pause)
            .unwrap_err()
            .contains("no waves rollout")
    );
}

#[test]
fn clusters_in_no_wave_go_last() {
    let s = spec(json!({"waves": [
        {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}},
    ]}));
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    assert_eq!(s.wave_name(1), "unassigned");
    w.commit(NEW);
    rec = w.pass(&s, Some(&rec), &[], 1000).record;
    assert_eq!(w.clusters_at(NEW), ["c0"]);
    rec = w.pass(&s, Some(&rec), &[], 2000).record;
    assert_eq!(w.clusters_at(NEW).len(), 6);
    rec = w.pass(&s, Some(&rec), &[], 3000).record;
    assert_eq!(rec.phase, WavePhase::Completed);
}

#[test]
fn a_newer_commit_supersedes_a_rollout_and_starts_at_the_first_wave() {
    let s = three_waves(false);
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    w.commit(NEW);
    rec = w.pass(&s, Some(&rec), &[], 1000).record;
    // Healthy, baking: NEW is no rollback target yet.
    rec = w.pass(&s, Some(&rec), &[], 1500).record;
    assert_eq!(rec.phase, WavePhase::Baking);
    // Baked: the canary is done, eu is moving.
    rec = w.pass(&s, Some(&rec), &[], 2600).record;
    assert_eq!(rec.wave, 1);
    w.commit(BAD);
    let p = w.pass(&s, Some(&rec), &[], 3000);
    assert_eq!(p.record.target, BAD);
    assert_eq!(p.record.wave, 0);
    // c0 baked at NEW: that is its rollback target now; eu's did not.
    assert_eq!(p.record.clusters[0].last_healthy, NEW);
    assert_eq!(p.record.clusters[1].last_healthy, OLD);
}

#[test]
fn malformed_waves_name_the_field() {
    let err = |v: Value| WavesSpec::parse(Some(&v)).unwrap_err();
    let table = [
        (
            json!({"waves": []}),
            "spec.strategy.flotillaWaves.waves",
            "at least one wave",
        ),
        (
            json!({"wave": []}),
            "spec.strategy.flotillaWaves.wave",
            "unknown field",
        ),
        (
            json!({"waves": [{"clusterSelector": {}, "maxUnavailable": "150%"}]}),
            "spec.strategy.flotillaWaves.waves[0].maxUnavailable",
            "not a positive integer or a percentage",
        ),
        (
            json!({"waves": [{"clusterSelector": {}, "bakeTime": "5 minutes"}]}),
            "spec.strategy.flotillaWaves.waves[0].bakeTime",
            "not a duration",
        ),
        (
            json!({"waves": [{"name": "a", "clusterSelector": {}}, {"name": "a", "clusterSelector": {}}]}),
            "spec.strategy.flotillaWaves.waves[1].name",
            "used twice",
        ),
        (
            json!({"waves": [{"clusterSelector": {"matchLabel": {}}}]}),
            "spec.strategy.flotillaWaves.waves[0].clusterSelector.matchLabel",
            "unknown field",
        ),
        (
            json!({"waves": [{}]}),
            "spec.strategy.flotillaWaves.waves[0].clusterSelector",
            "is required",
        ),
        (
            json!({"autoRollback": "yes", "waves": [{"clusterSelector": {}}]}),
            "spec.strategy.flotillaWaves.autoRollback",
            "true or false",
        ),
        (
            json!({"waves": [{"clusterSelector": {}, "requireAproval": true}]}),
            "spec.strategy.flotillaWaves.waves[0].requireAproval",
            "unknown field",
        ),
    ];
    for (v, field, message) in table {
        let (f, m) = err(v.clone());
        assert_eq!(f, field, "{v}");
        assert!(m.contains(message), "{v}: {m}");
    }
    let s = spec(
        json!({"progressDeadline": "1m30s", "waves": [{"clusterSelector": {}, "bakeTime": 90, "maxUnavailable": "50%"}]}),
    );
    assert_eq!(s.progress_deadline_ms, Some(90_000));
    assert_eq!(s.waves[0].bake_ms, 90_000);
    assert_eq!(s.waves[0].name, "wave-1");
    assert_eq!(s.waves[0].max_unavailable.map(|m| m.of(5)), Some(2));
    assert_eq!(MaxUnavailable::Percent(10).of(5), 1);
    assert_eq!(WavesSpec::parse(None).unwrap(), None);
}

#[test]
fn healthy_for_a_moment_then_degraded_in_the_bake_is_rolled_back() {
    let s = three_waves(true);
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    w.commit(BAD);
    // The bad revision looks Healthy at first (a Deployment before its
    // progress deadline) ...
    let p = plan(&s, Some(&rec), &w.targets, &[], 1000);
    assert_eq!(p.syncs.len(), 1);
    rec = p.record;
    w.targets[0].current = BAD.into();
    w.targets[0].synced_at = BAD.into();
    rec = plan(&s, Some(&rec), &w.targets, &[], 1200).record;
    assert_eq!(rec.phase, WavePhase::Baking);
    // ... then goes Degraded within the bake: back to OLD.
    w.targets[0].healthy = false;
    w.targets[0].degraded = true;
    let p = plan(&s, Some(&rec), &w.targets, &[], 1800);
    assert_eq!(p.record.phase, WavePhase::Failed);
    assert_eq!(p.syncs.len(), 1);
    assert!(
        p.syncs[0].rollback && p.syncs[0].revision == OLD,
        "{:?}",
        p.syncs
    );
}

#[test]
fn abort_rolls_back_every_cluster_the_rollout_moved() {
    let s = three_waves(false);
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    w.commit(NEW);
    let mut t = 1000;
    while rec.target != NEW || rec.wave < 2 {
        rec = w.pass(&s, Some(&rec), &[], t).record;
        t += 600;
    }
    // canary and eu done, us moving one at a time.
    let p = w.pass(&s, Some(&rec), &[(Control::Abort, "user:ops".into())], t);
    assert_eq!(p.record.phase, WavePhase::Aborted);
    let back: Vec<&str> = p.syncs.iter().map(|s| s.cluster.as_str()).collect();
    assert_eq!(back, ["c0", "c1", "c2", "c3"], "{:?}", p.syncs);
    assert!(p.syncs.iter().all(|s| s.rollback && s.revision == OLD));
}

#[test]
fn a_deploy_window_holds_a_wave_without_failing_it_and_it_resumes_when_it_closes() {
    let s = three_waves(true);
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    // A window holds the eu clusters for five minutes, far past the
    // one-minute progress deadline.
    let closes = 10_000 + 300_000;
    for t in &mut w.targets[1..3] {
        t.held_until_ms = Some(closes);
    }
    w.commit(NEW);
    let mut t = 10_000;
    while t < closes {
        rec = w.pass(&s, Some(&rec), &[], t).record;
        t += 1000;
    }
    assert_eq!(rec.phase, WavePhase::Progressing, "{}", rec.message);
    assert_eq!(rec.wave, 1, "the canary is done; eu is held");
    assert_eq!(
        w.clusters_at(NEW),
        ["c0"],
        "nothing synced inside the window"
    );
    assert!(
        rec.message.contains("held by a deploy window")
            && rec.message.contains("web-c1 on c1, web-c2 on c2")
            && rec.message.contains("until 1970-01-01T00:05:10Z"),
        "{}",
        rec.message
    );
    assert!(
        rec.clusters[1..3]
            .iter()
            .all(|c| c.state == ClusterState::Waiting && c.held_until_ms == closes)
    );
    // The window closes: eu goes, then us, and the rollout completes.
    for t in &mut w.targets[1..3] {
        t.held_until_ms = None;
    }
    for _ in 0..40 {
        rec = w.pass(&s, Some(&rec), &[], t).record;
        t += 250;
    }
    assert_eq!(rec.phase, WavePhase::Completed, "{}", rec.message);
    assert!(!rec.message.contains("held"), "{}", rec.message);
    assert_eq!(w.clusters_at(NEW), ["c0", "c1", "c2", "c3", "c4", "c5"]);
    assert!(rec.clusters.iter().all(|c| c.held_until_ms == 0));
}

#[test]
fn time_held_by_a_window_does_not_count_towards_the_progress_deadline() {
    let s = three_waves(true);
    let mut w = World::new();
    let rec = adopted(&mut w, &s);
    w.commit(NEW);
    // The canary is sent NEW and is not Healthy at it yet.
    let p = plan(&s, Some(&rec), &w.targets, &[], 10_000);
    assert_eq!(p.syncs.len(), 1);
    let mut rec = p.record;
    // A window opens 30 s in and holds it for two minutes.
    w.targets[0].held_until_ms = Some(160_000);
    for t in (40_000..160_000).step_by(5_000) {
        rec = plan(&s, Some(&rec), &w.targets, &[], t).record;
        assert_eq!(rec.phase, WavePhase::Progressing, "at {t}: {}", rec.message);
    }
    // Let go at 160 s: the deadline runs again from there.
    w.targets[0].held_until_ms = None;
    rec = plan(&s, Some(&rec), &w.targets, &[], 160_000).record;
    rec = plan(&s, Some(&rec), &w.targets, &[], 219_000).record;
    assert_eq!(rec.phase, WavePhase::Progressing, "{}", rec.message);
    let p = plan(&s, Some(&rec), &w.targets, &[], 221_000);
    assert_eq!(p.record.phase, WavePhase::Failed, "{}", p.record.message);
    // A Degraded cluster fails its wave even while held.
    let mut w = World::new();
    let rec = adopted(&mut w, &s);
    w.commit(NEW);
    let rec = plan(&s, Some(&rec), &w.targets, &[], 10_000).record;
    w.targets[0].synced_at = NEW.into();
    w.targets[0].held_until_ms = Some(i64::MAX);
    w.targets[0].degraded = true;
    w.targets[0].healthy = false;
    let p = plan(&s, Some(&rec), &w.targets, &[], 11_000);
    assert_eq!(p.record.phase, WavePhase::Failed, "{}", p.record.message);
    // Its rollback cannot go while the window holds it (the reconciler
    // does not send a held cluster's sync): it goes when the window
    // closes, once.
    assert_eq!(p.record.clusters[0].state, ClusterState::RolledBack);
    let rec = plan(&s, Some(&p.record), &w.targets, &[], 12_000).record;
    w.targets[0].held_until_ms = None;
    let p = plan(&s, Some(&rec), &w.targets, &[], 13_000);
    let sent: Vec<_> = p
        .syncs
        .iter()
        .map(|x| (x.cluster.as_str(), x.revision.as_str(), x.rollback))
        .collect();
    assert_eq!(sent, [("c0", OLD, true)]);
    w.targets[0].synced_at = OLD.into();
    let p = plan(&s, Some(&p.record), &w.targets, &[], 14_000);
    assert!(p.syncs.is_empty(), "{:?}", p.syncs);
}

#[test]
fn every_transition_is_an_event_naming_who_and_the_applications_it_touched() {
    let s = spec(json!({
        "autoRollback": true,
        "waves": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}, "bakeTime": "1s"},
            {"name": "eu", "clusterSelector": {"matchLabels": {"ring": "eu"}}, "requireApproval": true},
            {"name": "us", "clusterSelector": {"matchLabels": {"ring": "us"}}},
        ]
    }));
    let mut w = World::new();
    let mut rec = adopted(&mut w, &s);
    w.commit(NEW);
    let mut events: Vec<Event> = Vec::new();
    let mut t = 10_000;
    let mut step =
        |w: &mut World, rec: &mut WavesRecord, controls: &[(Control, String)], t: i64| {
            let p = w.pass(&s, Some(rec), controls, t);
            *rec = p.record;
            events.extend(p.events);
        };
    step(&mut w, &mut rec, &[], t);
    t += 200;
    step(&mut w, &mut rec, &[(Control::Pause, "user:ops".into())], t);
    t += 2000;
    step(&mut w, &mut rec, &[(Control::Resume, "user:ops".into())], t);
    // The canary bakes 1 s from the pass that saw it Healthy unpaused.
    t += 1200;
    step(&mut w, &mut rec, &[], t);
    assert_eq!(rec.phase, WavePhase::AwaitingApproval, "{}", rec.message);
    step(
        &mut w,
        &mut rec,
        &[(Control::Promote, "user:lead".into())],
        t + 100,
    );
    for i in 0..10 {
        step(&mut w, &mut rec, &[], t + 200 + i * 300);
    }
    assert_eq!(rec.phase, WavePhase::Completed, "{}", rec.message);
    let find = |text: &str| {
        events
            .iter()
            .find(|e| e.text.starts_with(text))
            .unwrap_or_else(|| panic!("no {text:?} in {events:#?}"))
    };
    let started = find("rollout of 22222222 started");
    assert_eq!((started.by.as_str(), started.apps.len()), ("", 6));
    let canary = find("wave canary (1/3) started");
    assert_eq!(canary.apps, ["web-c0"]);
    assert_eq!(find("wave canary finished").apps, ["web-c0"]);
    let paused = find("rollout paused by user:ops");
    assert_eq!((paused.by.as_str(), paused.apps.len()), ("user:ops", 6));
    assert_eq!(find("rollout resumed by user:ops").by, "user:ops");
    assert_eq!(
        find("wave eu waits for approval").apps,
        ["web-c1", "web-c2"]
    );
    let promoted = find("wave eu promoted by user:lead");
    assert_eq!(
        (promoted.by.as_str(), promoted.apps.clone()),
        ("user:lead", vec!["web-c1".to_owned(), "web-c2".to_owned()])
    );
    assert_eq!(find("wave eu (2/3) started").apps, ["web-c1", "web-c2"]);
    assert_eq!(
        find("wave us finished").apps,
        ["web-c3", "web-c4", "web-c5"]
    );
    assert_eq!(find("every wave Healthy").apps.len(), 6);

    // A bad commit: the cluster's failure, then the wave's automatic pause
    // and rollback, each in the history of the canary only.
    w.commit(BAD);
    let mut events = Vec::new();
    for i in 0..4 {
        let p = w.pass(&s, Some(&rec), &[], 30_000 + i * 500);
        rec = p.record;
        events.extend(p.events);
    }
    assert_eq!(rec.phase, WavePhase::Failed);
    let failed: Vec<&Event> = events
        .iter()
        .filter(|e| e.text.contains("Degraded") || e.text.contains("autoRollback"))
        .collect();
    assert_eq!(failed.len(), 2, "{events:#?}");
    assert!(
        failed
            .iter()
            .all(|e| e.apps == ["web-c0"] && e.by.is_empty())
    );
}
