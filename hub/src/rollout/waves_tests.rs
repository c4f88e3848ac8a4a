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
    assert!(p.events.iter().any(|e| e.contains("user:ops")));
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
