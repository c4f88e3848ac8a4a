//! What one pass of the Git loop does, counted (never timed): a pass renders
//! only the applications whose inputs changed, and the bundles of one pass
//! reach each cluster as one new generation. Real Git repositories built
//! with the git CLI; the hub's store, fleet and Git loop in process.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_hub::fleet::Fleet;
use flotilla_hub::gitsync::GitSync;
use flotilla_hub::store::{AppRecord, ClusterRecord, Store};

mod support;
use support::{git, write};

const APPS: usize = 20;

fn configmap(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: \"{value}\"\n")
}

fn application(name: &str, url: &str, path: &str, namespace: &str) -> AppRecord {
    let yaml = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {url}\n    path: {path}\n  destination:\n    name: c1\n    namespace: {namespace}\n"
    );
    AppRecord {
        app: flotilla_hub::model::parse_applications(&yaml, "test")
            .expect("valid application")
            .remove(0)
            .into(),
        origin: "api".into(),
        revision: String::new(),
        error: String::new(),
    }
}

/// Writes every application's directory with `value` and commits.
fn commit_all(repo: &Path, value: &str) {
    for i in 0..APPS {
        write(
            repo,
            &format!("p{i}/cm.yaml"),
            &configmap(&format!("cm-{i}"), value),
        );
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", value]);
}

fn generation(store: &Store) -> u64 {
    store.cluster("c1").expect("read").expect("c1").generation
}

/// A repository with one directory per application (committed once), a
/// store with cluster `c1` and [`APPS`] applications targeting it, and the
/// Git loop over them (not running).
struct Setup {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    repo: std::path::PathBuf,
    url: String,
    store: Store,
    fleet: Arc<Fleet>,
    sync: Arc<GitSync>,
}

fn setup() -> Setup {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = root.path().join("config");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    commit_all(&repo, "one");
    let url = format!("file://{}", repo.display());
    let data = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&data.path().join("db")).expect("store");
    let fleet = Fleet::load(store.clone()).expect("fleet");
    fleet
        .put_cluster(ClusterRecord {
            name: "c1".into(),
            ..Default::default()
        })
        .expect("cluster");
    for i in 0..APPS {
        store
            .put_app(&application(
                &format!("app-{i}"),
                &url,
                &format!("p{i}"),
                "apps",
            ))
            .expect("put app");
    }
    // Sources are due only when told (a refresh, a forced pass).
    let sync: Arc<GitSync> = GitSync::new(
        store.clone(),
        fleet.clone(),
        data.path().join("git"),
        Duration::from_secs(3600),
    );
    Setup {
        _dirs: (root, data),
        repo,
        url,
        store,
        fleet,
        sync,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_renders_what_changed_and_publishes_once_per_cluster() {
    let Setup {
        _dirs,
        repo,
        url,
        store,
        fleet,
        sync,
    } = setup();
    sync.poll(true).await;
    assert!(
        (0..APPS).all(|i| fleet.bundle(&format!("app-{i}")).is_some()),
        "every application rendered by the first pass"
    );

    // Nothing changed: a pass renders nothing and publishes nothing.
    let (renders, g) = (sync.app_renders(), generation(&store));
    sync.poll(false).await;
    assert_eq!(
        sync.app_renders(),
        renders,
        "a pass with nothing new renders nothing"
    );
    assert_eq!(generation(&store), g);

    // A commit that changes every application: each is rendered once, and
    // the cluster gets one new generation for all of them.
    commit_all(&repo, "two");
    sync.refresh_urls(std::slice::from_ref(&url));
    let definitions = store.app_changes();
    sync.poll(false).await;
    assert_eq!(
        sync.app_renders(),
        renders + APPS as u64,
        "each application rendered once at the new commit"
    );
    let head = git(&repo, &["rev-parse", "HEAD"]);
    for i in 0..APPS {
        let b = fleet.bundle(&format!("app-{i}")).expect("bundle");
        assert_eq!(b.revision, head, "app-{i} at the new commit");
        assert!(
            b.manifests.iter().any(|m| m.contains("two")),
            "app-{i} has the new content"
        );
    }
    assert_eq!(
        generation(&store),
        g + 1,
        "{APPS} applications changed by one commit: one new generation of their cluster"
    );
    // The records say which commit each was rendered from, and writing
    // that is not a change of any application's definition: what plans
    // from the definitions (ApplicationSets) has nothing to do again.
    for i in 0..APPS {
        let rec = store.app(&format!("app-{i}")).expect("read").expect("app");
        assert_eq!(rec.revision, head, "app-{i}'s record names the new commit");
    }
    assert_eq!(
        store.app_changes(),
        definitions,
        "a commit that only moves revisions changes no application definition"
    );

    // A commit that changes one application's objects: only it is
    // rendered; every other application moves to the new commit without a
    // render of its own (one render per path decides that the objects are
    // the same), keeps its bundle, and its record, the fleet and the next
    // generation name the new commit.
    let renders = sync.app_renders();
    let moved = flotilla_hub::metrics::metrics().revisions_moved_total();
    let g = generation(&store);
    let before: Vec<_> = (0..APPS)
        .map(|i| fleet.bundle(&format!("app-{i}")).expect("bundle"))
        .collect();
    write(&repo, "p0/cm.yaml", &configmap("cm-0", "three"));
    write(&repo, "unread/notes.txt", "nobody reads this");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "three"]);
    let three = git(&repo, &["rev-parse", "HEAD"]);
    sync.refresh_urls(std::slice::from_ref(&url));
    sync.poll(false).await;
    assert_eq!(
        sync.app_renders(),
        renders + 1,
        "only the application whose objects changed is rendered"
    );
    assert!(
        flotilla_hub::metrics::metrics().revisions_moved_total() >= moved + APPS as u64 - 1,
        "the others are counted as moved"
    );
    assert!(
        fleet
            .bundle("app-0")
            .expect("bundle")
            .manifests
            .iter()
            .any(|m| m.contains("three")),
        "app-0 has the new content"
    );
    for (i, old) in before.iter().enumerate() {
        let name = format!("app-{i}");
        let rec = store.app(&name).expect("read").expect("app");
        assert_eq!(rec.revision, three, "{name}'s record names the new commit");
        assert_eq!(fleet.desired_revision(&name), three, "{name} in the fleet");
        if i > 0 {
            assert!(
                Arc::ptr_eq(&fleet.bundle(&name).expect("bundle"), old),
                "{name} keeps its bundle"
            );
        }
    }
    assert_eq!(generation(&store), g + 1, "one new generation, for app-0");
    let index = store.cluster("c1").expect("read").expect("c1");
    assert_eq!(
        index.desired_revisions.get("app-7").map(String::as_str),
        Some(three.as_str()),
        "the new generation carries the moved revisions"
    );
    // Nothing changed since: the moved applications are settled.
    let renders = sync.app_renders();
    sync.poll(false).await;
    assert_eq!(sync.app_renders(), renders, "a quiet pass renders nothing");

    // `flotilla refresh` of everything (not hard), at a commit that
    // changes no application's objects: every source is fetched, and every
    // application moves to the new commit without a render.
    write(&repo, "unread/more.txt", "still nobody");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "four"]);
    let four = git(&repo, &["rev-parse", "HEAD"]);
    sync.refresh_all();
    sync.poll(false).await;
    assert_eq!(
        sync.app_renders(),
        renders,
        "a refresh renders nothing whose objects did not change"
    );
    for i in 0..APPS {
        let name = format!("app-{i}");
        assert_eq!(
            fleet.desired_revision(&name),
            four,
            "{name} fetched and moved by the refresh"
        );
    }

    // One application edited: only it is rendered again.
    let renders = sync.app_renders();
    store
        .put_app(&application("app-3", &url, "p3", "elsewhere"))
        .expect("edit app-3");
    sync.poll(false).await;
    assert_eq!(
        sync.app_renders(),
        renders + 1,
        "only the edited application rendered"
    );
    let b = fleet.bundle("app-3").expect("bundle");
    assert!(
        b.namespace == "elsewhere",
        "app-3 rendered for its new namespace"
    );

    // Removed and declared again with the same spec: its bundle went with
    // it, so it is rendered again, not taken as settled.
    assert!(fleet.remove_app("app-5").expect("remove"));
    store
        .put_app(&application("app-5", &url, "p5", "apps"))
        .expect("declare app-5 again");
    let renders = sync.app_renders();
    sync.poll(false).await;
    assert_eq!(
        sync.app_renders(),
        renders + 1,
        "the redeclared application rendered"
    );
    assert!(fleet.bundle("app-5").is_some(), "app-5 has a bundle again");

    // A forced pass renders everything, whatever changed.
    let renders = sync.app_renders();
    sync.poll(true).await;
    assert_eq!(sync.app_renders(), renders + APPS as u64);
}

/// The Git loop's own passes (not `poll`): a refresh makes the source's
/// fetch run in the background, and the pass its news starts moves every
/// application whose objects did not change without rendering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_moves_unchanged_applications_after_a_refresh() {
    let Setup {
        _dirs,
        repo,
        url,
        store,
        fleet,
        sync,
    } = setup();
    let running = tokio::spawn(sync.clone().run());
    let at = |commit: &str| {
        (0..APPS).all(|i| {
            store
                .app(&format!("app-{i}"))
                .ok()
                .flatten()
                .is_some_and(|r| r.revision == commit)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let one = git(&repo, &["rev-parse", "HEAD"]);
    while !at(&one) {
        assert!(std::time::Instant::now() < deadline, "first render");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The loop joins its render tasks as they end: what it holds is the
    // publisher and at most the last task to end, not one finished task
    // (and its memory) per application rendered.
    while sync.tasks_held() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} tasks still held after the first renders",
            sync.tasks_held()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The loop's first renders may still be concluding: one pass that
    // waits for every render it asks for leaves them settled.
    sync.poll(false).await;
    let renders = sync.app_renders();
    write(&repo, "p1/cm.yaml", &configmap("cm-1", "two"));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "two"]);
    let two = git(&repo, &["rev-parse", "HEAD"]);
    sync.refresh_urls(std::slice::from_ref(&url));
    let published = || {
        fleet
            .bundle("app-1")
            .is_some_and(|b| b.manifests.iter().any(|m| m.contains("two")))
    };
    while !(at(&two) && published()) {
        assert!(
            std::time::Instant::now() < deadline,
            "every application at the new commit, app-1's new objects published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sync.app_renders(),
        renders + 1,
        "only app-1, whose objects changed, is rendered"
    );
    running.abort();
}
