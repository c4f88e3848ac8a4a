//! Secret values never leave the agent: a Secret changed in the cluster
//! (a value rotated there, never in Git, also written into kubectl's
//! last-applied annotation) is reported as drift on its key with masks,
//! the diff the hub can ask for carries masks, and the self-heal log line
//! names the key only.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::cluster::Cluster;
use flotilla_agent::redact::{LAST_APPLIED, MASK, base64_encode};
use flotilla_proto::{AppStatus, SyncStatus};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use prost::Message as _;
use serde_json::json;

mod support;
use support::{Harness, harness, set_bundle, status};

const DEADLINE: Duration = Duration::from_secs(30);
/// In Git (the desired state).
const GIT_PASSWORD: &str = "git-password-4f1c9e";
/// Set in the cluster only.
const ROTATED_PASSWORD: &str = "rotated-in-cluster-7b2d11";
const TOKEN: &str = "api-token-a81f0c";

fn vault(self_heal: bool) -> Bundle {
    Bundle {
        name: "vault".into(),
        digest: "v1".into(),
        revision: "rev-v1".into(),
        namespace: "vault".into(),
        policy: Policy {
            automated: true,
            self_heal,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: vec![
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db"}, "type": "Opaque",
                "stringData": {"password": GIT_PASSWORD},
                "data": {"token": base64_encode(TOKEN.as_bytes())}})
            .to_string(),
        ],
        ..Bundle::default()
    }
}

/// Every form a value could take in a report, a diff or a log.
fn forms() -> Vec<String> {
    [GIT_PASSWORD, ROTATED_PASSWORD, TOKEN]
        .iter()
        .flat_map(|v| [(*v).to_owned(), base64_encode(v.as_bytes())])
        .collect()
}

fn assert_no_secret(what: &str, text: &str) {
    for form in forms() {
        assert!(!text.contains(&form), "{what} holds {form:?}:\n{text}");
    }
}

async fn converge(h: &mut Harness, what: &str, done: impl Fn(&AppStatus) -> bool) -> AppStatus {
    let until = Instant::now() + DEADLINE;
    loop {
        h.engine.pass().await;
        if let Some(s) = status(h, "vault")
            && done(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < until,
            "vault never became {what}: {:#?}",
            status(h, "vault")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn secrets(h: &Harness) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Secret".into(),
        plural: "secrets".into(),
    };
    Api::namespaced_with(h.client.clone(), "vault", &ar)
}

/// Rotates the password in the cluster the way `kubectl apply` would
/// leave it: the value in `data` and in the last-applied annotation.
/// `stringData` is removed too: an API server folds it into `data` and
/// never stores it, but the simulator keeps it as written.
async fn rotate_in_cluster(h: &Harness) {
    let applied = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "vault"},
        "stringData": {"password": ROTATED_PASSWORD}});
    secrets(h)
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {LAST_APPLIED: applied.to_string()}},
                "stringData": null,
                "data": {"password": base64_encode(ROTATED_PASSWORD.as_bytes())}})),
        )
        .await
        .expect("rotate the secret");
    let live = secrets(h).get("db").await.expect("secret");
    assert_eq!(
        live.data["data"]["password"],
        json!(base64_encode(ROTATED_PASSWORD.as_bytes())),
        "the rotation did not land"
    );
}

fn synced(s: &AppStatus) -> bool {
    s.sync == SyncStatus::Synced as i32
}

#[tokio::test]
async fn drift_status_and_diff_of_a_secret_carry_no_value() {
    let mut h = harness().await;
    set_bundle(&h.cache, vault(false));
    converge(&mut h, "Synced", synced).await;
    rotate_in_cluster(&h).await;

    let s = converge(&mut h, "OutOfSync", |s| {
        s.sync == SyncStatus::OutOfSync as i32
    })
    .await;
    let res = &s.resources[0];
    assert_eq!(
        res.drift,
        vec![format!(r#"/data/password: "{MASK}" -> "{MASK}++++""#)],
        "{s:#?}"
    );
    assert!(s.message.contains("/data/password"), "{}", s.message);
    // The whole report, as sent to the hub (protobuf) and as debugged.
    let report = h.reports.borrow().clone().expect("report");
    assert_no_secret("the report", &format!("{report:?}"));
    let wire = report.to_proto().encode_to_vec();
    for form in forms() {
        assert!(
            !wire.windows(form.len()).any(|w| w == form.as_bytes()),
            "the report's wire form holds {form:?}"
        );
    }

    // The hub's diff request: the Secret differs, both sides masked.
    let bundle = h.cache.snapshot().apps["vault"].bundle.clone();
    let diffs = flotilla_agent::engine::diff_app(&Cluster::new(h.client.clone()), &bundle)
        .await
        .expect("diff");
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    let diff = &diffs[0];
    assert_no_secret("the diff", &format!("{diff:?}"));
    let live: serde_json::Value = serde_json::from_str(&diff.live).expect("live json");
    let desired: serde_json::Value = serde_json::from_str(&diff.desired).expect("desired json");
    assert_eq!(desired["data"], json!({"password": MASK, "token": MASK}));
    assert_eq!(
        live["data"],
        json!({"password": format!("{MASK}++++"), "token": MASK})
    );
    // The annotation still shows the rotation, masked as the live value.
    let annotation: serde_json::Value = serde_json::from_str(
        live["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .expect("last-applied kept"),
    )
    .expect("annotation json");
    assert_eq!(annotation["data"]["password"], json!(format!("{MASK}++++")));
}

/// A `MakeWriter` into a shared buffer, to read the agent's log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn self_healing_a_secret_logs_the_key_never_the_value() {
    let logs = Captured::default();
    // Every level of the agent's own log (the simulator in this process
    // logs what it is sent; it is the cluster, not the agent).
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_env_filter(tracing_subscriber::EnvFilter::new("flotilla_agent=trace"))
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded: the engine logs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut h = harness().await;
    set_bundle(&h.cache, vault(true));
    converge(&mut h, "Synced", synced).await;
    rotate_in_cluster(&h).await;
    let log = || String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    let until = Instant::now() + DEADLINE;
    loop {
        h.engine.pass().await;
        if log().contains("self-healing drift") && status(&h, "vault").is_some_and(|s| synced(&s)) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the secret was never healed:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = log();
    let heal = text
        .lines()
        .find(|l| l.contains("self-healing drift"))
        .unwrap_or_else(|| panic!("no self-heal line in:\n{text}"));
    assert!(heal.contains("/data/password"), "{heal}");
    assert!(heal.contains(MASK), "{heal}");
    assert_no_secret("the agent's log", &text);
}
