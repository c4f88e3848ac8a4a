//! The hub's work per change is proportional to the change, not to the
//! fleet: counted with the store's read and decode counters, never timed.
//!
//! Each test builds the same situation in a small and a large fleet (the
//! extra clusters and applications have nothing to do with the change) and
//! asserts that the change costs the same number of store reads and
//! records decoded in both.

use std::sync::Arc;

use flotilla_hub::fleet::{self, Fleet};
use flotilla_hub::model::{self, Application};
use flotilla_hub::store::{AppRecord, ClusterRecord, Store, StoreCounters};

fn app(name: &str, cluster: &str, automated: bool) -> Application {
    let policy = if automated {
        "  syncPolicy:\n    automated: {}\n"
    } else {
        ""
    };
    let yaml = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: file:///r\n    path: p\n  destination:\n    name: {cluster}\n{policy}"
    );
    model::parse_applications(&yaml, "test")
        .expect("test application parses")
        .remove(0)
}

fn cluster(name: &str) -> ClusterRecord {
    ClusterRecord {
        name: name.to_owned(),
        ..Default::default()
    }
}

fn put_app(store: &Store, app: Application) {
    store
        .put_app(&AppRecord {
            app: app.into(),
            origin: "api".to_owned(),
            revision: String::new(),
            error: String::new(),
        })
        .expect("put app");
}

fn bundle_of(app: &Application, commit: &str, content: &str) -> flotilla_proto::AppBundle {
    fleet::build_bundle(app, commit, Ok(&[content.to_owned()]))
}

/// A fleet of `clusters` clusters, each running its own application
/// (`app-N` on `cluster-N`), all rendered once.
fn fleet_of(dir: &std::path::Path, clusters: usize) -> Arc<Fleet> {
    let store = Store::open(dir).expect("open store");
    let fleet = Fleet::load(store.clone()).expect("load fleet");
    let mut bundles = Vec::new();
    for i in 0..clusters {
        fleet
            .put_cluster(cluster(&format!("cluster-{i}")))
            .expect("put cluster");
        let a = app(&format!("app-{i}"), &format!("cluster-{i}"), true);
        put_app(&store, a.clone());
        bundles.push(bundle_of(&a, "c1", "kind: ConfigMap"));
    }
    fleet.set_bundles(bundles).expect("first render");
    fleet
}

fn delta(before: StoreCounters, after: StoreCounters) -> (u64, u64) {
    (after.reads - before.reads, after.decoded - before.decoded)
}

/// What a commit that changes `app-0` (on `cluster-0` only) costs: the
/// bundle handed to the fleet and the automated deployment recorded.
fn cost_of_one_app_commit(clusters: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet_of(dir.path(), clusters);
    let store = fleet.store().clone();
    let a = app("app-0", "cluster-0", true);
    let b = bundle_of(&a, "c2", "kind: Secret");
    let generation = |c: &str| store.cluster(c).expect("read").expect("exists").generation;
    let (g0, g1) = (generation("cluster-0"), generation("cluster-1"));
    let before = store.counters();
    flotilla_hub::history::note_automated(&store, &fleet, &a, &b).expect("history");
    fleet.set_bundles(vec![b.clone()]).expect("publish");
    let cost = delta(before, store.counters());
    // The change did reach its cluster, and only it.
    let rec = store.cluster("cluster-0").expect("read").expect("exists");
    assert_eq!(rec.desired_index.get("app-0"), Some(&b.digest));
    assert_eq!(rec.generation, g0 + 1, "cluster-0 got one new generation");
    assert_eq!(generation("cluster-1"), g1, "cluster-1 was left alone");
    cost
}

#[test]
fn a_commit_touching_one_app_costs_the_same_in_a_fleet_of_10_and_of_1000() {
    let small = cost_of_one_app_commit(10);
    let large = cost_of_one_app_commit(1000);
    assert_eq!(
        small, large,
        "(reads, records decoded) for one app's commit: 10 clusters {small:?}, 1,000 clusters {large:?}"
    );
    assert!(small.1 <= 8, "a handful of records, got {small:?}");
}

/// What registering one more cluster costs, with `existing` clusters and
/// applications already there (one application targets the new cluster).
fn cost_of_one_registration(existing: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet_of(dir.path(), existing);
    let store = fleet.store().clone();
    let a = app("waiting", "newcomer", false);
    put_app(&store, a.clone());
    fleet
        .set_bundles(vec![bundle_of(&a, "c1", "kind: ConfigMap")])
        .expect("render");
    let before = store.counters();
    fleet.put_cluster(cluster("newcomer")).expect("register");
    let cost = delta(before, store.counters());
    let rec = store.cluster("newcomer").expect("read").expect("exists");
    assert_eq!(
        rec.desired_index.keys().collect::<Vec<_>>(),
        ["waiting"],
        "the new cluster's index holds the application naming it"
    );
    cost
}

#[test]
fn registering_a_cluster_costs_the_same_with_10_and_with_1000_clusters() {
    let small = cost_of_one_registration(10);
    let large = cost_of_one_registration(1000);
    assert_eq!(
        small, large,
        "(reads, records decoded) per registration: 10 existing {small:?}, 1,000 existing {large:?}"
    );
}

/// What deleting one application costs.
fn cost_of_one_deletion(clusters: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet_of(dir.path(), clusters);
    let store = fleet.store().clone();
    let before = store.counters();
    let had = fleet
        .remove_app_with("app-0", flotilla_hub::deletion::Propagation::Foreground)
        .expect("remove")
        .expect("existed");
    let cost = delta(before, store.counters());
    assert_eq!(had, ["cluster-0"]);
    let rec = store.cluster("cluster-0").expect("read").expect("exists");
    assert!(rec.desired_index.is_empty());
    assert!(
        rec.deletions.contains_key("app-0"),
        "the cluster is told what happens to the objects"
    );
    cost
}

#[test]
fn deleting_an_application_costs_the_same_in_a_fleet_of_10_and_of_1000() {
    let small = cost_of_one_deletion(10);
    let large = cost_of_one_deletion(1000);
    assert_eq!(
        small, large,
        "10 clusters {small:?}, 1,000 clusters {large:?}"
    );
}
