//! Secret values never leave the cluster (issue 13.4), end to end: a Secret
//! from Git is rotated in the cluster with kubectl (a value never in Git,
//! also written into kubectl's last-applied annotation). Through the hub,
//! with a read-only token, `flotilla app get -o json` and `app diff` show
//! that `/data/password` changed, masked as Argo CD masks it, and no value;
//! the hub's stored records never hold the rotated value; and the agent's
//! log (at trace) while it self-heals the Secret holds no value either.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_agent::redact::{MASK, base64_encode};
use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions, ProcessOptions};
use flotilla_proto::hub_api_client::HubApiClient;
use flotilla_proto::{DiffApplicationRequest, SyncStatus};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Request, Status};

const CONVERGE: Duration = Duration::from_secs(90);
const GIT_PASSWORD: &str = "git-password-0c41d7";
const TOKEN: &str = "api-token-93be20";
const ROTATED: &str = "rotated-in-cluster-5e8a61";
const ROTATED_AGAIN: &str = "rotated-again-b7f2c4";

fn secret_manifest() -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: db
type: Opaque
data:
  password: {}
  token: {}
",
        base64_encode(GIT_PASSWORD.as_bytes()),
        base64_encode(TOKEN.as_bytes())
    )
}

fn application(fleet: &Fleet, self_heal: bool) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: vault
spec:
  project: default
  source:
    repoURL: {}
    targetRevision: HEAD
    path: vault
  destination:
    name: sim-1
    namespace: vault
  syncPolicy:
    automated:
      prune: true
      selfHeal: {self_heal}
    syncOptions:
    - CreateNamespace=true
",
        fleet.repo.url()
    )
}

/// Every form of the values `secrets` in text: plain and base64.
fn forms(secrets: &[&str]) -> Vec<String> {
    secrets
        .iter()
        .flat_map(|v| [(*v).to_owned(), base64_encode(v.as_bytes())])
        .collect()
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for form in forms(secrets) {
        assert!(!text.contains(&form), "{what} holds {form:?}:\n{text}");
    }
}

/// `authorization: Bearer` with the read-only token.
#[derive(Clone)]
struct ViewerToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for ViewerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A HubApi client with a read-only token.
async fn viewer_api(
    fleet: &Fleet,
    token: &str,
) -> anyhow::Result<HubApiClient<InterceptedService<Channel, ViewerToken>>> {
    let ca = std::fs::read_to_string(fleet.hub_data().join("ca.crt"))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(fleet.hub_url())?
        .tls_config(tls)?
        .connect()
        .await?;
    let bearer = format!("Bearer {token}").parse()?;
    Ok(HubApiClient::with_interceptor(channel, ViewerToken(bearer)))
}

/// The `flotilla` CLI with a read-only token.
fn viewer(
    fleet: &Fleet,
    token_file: &Path,
    args: &[&str],
) -> anyhow::Result<(Option<i32>, String)> {
    let data = fleet.hub_data();
    let out = std::process::Command::new(flotilla_e2e::bin("flotilla")?)
        .args(args)
        .env("FLOTILLA_HUB", fleet.hub_url())
        .env("FLOTILLA_CA_FILE", data.join("ca.crt"))
        .env("FLOTILLA_TOKEN_FILE", token_file)
        .env(
            "FLOTILLA_CONFIG",
            fleet.root.path().join("viewer-config.json"),
        )
        .output()?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn kubectl_ok(fleet: &Fleet, args: &[&str]) -> anyhow::Result<()> {
    let out = fleet.kubectl("sim-1", args)?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Rotates the password in the cluster as an operator would, outside Git.
fn rotate(fleet: &Fleet, value: &str) -> anyhow::Result<()> {
    let patch = format!(
        r#"{{"data":{{"password":"{}"}}}}"#,
        base64_encode(value.as_bytes())
    );
    kubectl_ok(
        fleet,
        &[
            "patch", "secret", "db", "-n", "vault", "--type", "merge", "-p", &patch,
        ],
    )?;
    let applied = format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"db","namespace":"vault"}},"stringData":{{"password":"{value}"}}}}"#
    );
    kubectl_ok(
        fleet,
        &[
            "annotate",
            "secret",
            "db",
            "-n",
            "vault",
            "--overwrite",
            &format!("kubectl.kubernetes.io/last-applied-configuration={applied}"),
        ],
    )
}

fn live_password(fleet: &Fleet) -> anyhow::Result<String> {
    let secret = fleet
        .kubectl_get("sim-1", "secret", "vault", "db")?
        .ok_or_else(|| anyhow::anyhow!("secret vault/db is gone"))?;
    Ok(secret["data"]["password"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_values_reach_no_reader_and_no_log() -> anyhow::Result<()> {
    let fleet = Fleet::start_with(
        FleetOptions {
            clusters: 1,
            ..Default::default()
        },
        ProcessOptions {
            env: vec![("RUST_LOG".into(), "info,flotilla_agent=trace".into())],
            ..Default::default()
        },
    )
    .await?;
    fleet
        .repo
        .commit_file("vault/secret.yaml", &secret_manifest(), "vault secret")?;
    let rev =
        fleet
            .repo
            .commit_file("apps/vault.yaml", &application(&fleet, false), "vault app")?;
    fleet.wait_synced("vault", "sim-1", &rev, CONVERGE).await?;

    let out = fleet.cli(&[
        "token".into(),
        "create".into(),
        "viewer".into(),
        "--read-only".into(),
        "-o".into(),
        "json".into(),
    ])?;
    anyhow::ensure!(out.status.success(), "token create: {out:?}");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let token = created["token"].as_str().unwrap_or_default().to_owned();
    let token_file = fleet.root.path().join("viewer.token");
    std::fs::write(&token_file, &token)?;

    // Rotated in the cluster: reported as drift on the key, masked.
    rotate(&fleet, ROTATED)?;
    let drift = eventually("vault OutOfSync on /data/password", CONVERGE, || async {
        let s = fleet
            .status("vault", "sim-1")
            .await
            .map_err(|e| e.to_string())?;
        let drift: Vec<String> = s.resources.iter().flat_map(|r| r.drift.clone()).collect();
        if s.sync == SyncStatus::OutOfSync as i32
            && drift.iter().any(|d| d.contains("/data/password"))
        {
            Ok(drift)
        } else {
            Err(format!(
                "sync {} drift {drift:?} message {:?}",
                s.sync, s.message
            ))
        }
    })
    .await?;
    assert_eq!(
        drift,
        [format!(r#"/data/password: "{MASK}" -> "{MASK}++++""#)],
        "one masked drift line"
    );
    let all = [GIT_PASSWORD, TOKEN, ROTATED];

    let (code, get) = viewer(&fleet, &token_file, &["app", "get", "vault", "-o", "json"])?;
    assert_eq!(code, Some(0), "app get as viewer: {get}");
    assert!(
        get.contains("/data/password") && get.contains(MASK),
        "{get}"
    );
    assert_no_secret("app get -o json", &get, &all);

    let diff = eventually("app diff shows the masked password", CONVERGE, || async {
        let (code, text) =
            viewer(&fleet, &token_file, &["app", "diff", "vault"]).map_err(|e| e.to_string())?;
        if code == Some(1) && text.contains("password") {
            Ok(text)
        } else {
            Err(format!("exit {code:?}: {text}"))
        }
    })
    .await?;
    assert!(diff.contains(MASK), "{diff}");
    assert_no_secret("app diff", &diff, &all);
    let (code, diff_json) = viewer(&fleet, &token_file, &["app", "diff", "vault", "-o", "json"])?;
    assert_eq!(code, Some(1), "{diff_json}");
    assert_no_secret("app diff -o json", &diff_json, &all);
    // The API's diff itself (the CLI shows only the fields Git sets): the
    // whole live object, its last-applied annotation masked too.
    let raw = viewer_api(&fleet, &token)
        .await?
        .diff_application(DiffApplicationRequest {
            name: "vault".into(),
            cluster: String::new(),
        })
        .await?
        .into_inner();
    let raw = format!("{raw:?}");
    assert!(raw.contains("last-applied-configuration"), "{raw}");
    assert!(raw.contains(MASK), "{raw}");
    assert_no_secret("the DiffApplication response", &raw, &all);

    // The hub's records: the stored status is on disk (its drift line is
    // found), the rotated value is nowhere. (The Git value is legitimately
    // in the hub's render cache: the hub renders Git.)
    let data = fleet.hub_data();
    eventually(
        "the status with the drift line is stored",
        CONVERGE,
        || async {
            let found = files(&data)
                .map_err(|e| e.to_string())?
                .iter()
                .any(|(_, bytes)| contains(bytes, "/data/password"));
            if found {
                Ok(())
            } else {
                Err("not yet on disk".to_owned())
            }
        },
    )
    .await?;
    for (path, bytes) in files(&data)? {
        for form in forms(&[ROTATED]) {
            assert!(
                !contains(&bytes, &form),
                "{} holds {form:?}",
                path.display()
            );
        }
    }

    // Self-heal: on, then a second rotation is reverted by the agent.
    let rev = fleet.repo.commit_file(
        "apps/vault.yaml",
        &application(&fleet, true),
        "vault: selfHeal",
    )?;
    fleet.wait_synced("vault", "sim-1", &rev, CONVERGE).await?;
    rotate(&fleet, ROTATED_AGAIN)?;
    let git = base64_encode(GIT_PASSWORD.as_bytes());
    eventually("the agent heals the secret", CONVERGE, || async {
        let live = live_password(&fleet).map_err(|e| e.to_string())?;
        let healed = live == git
            && fleet.agents["sim-1"]
                .has_line(|l| l.contains("self-healing drift") && l.contains("/data/password"));
        if healed {
            Ok(())
        } else {
            Err(format!("live password {live}"))
        }
    })
    .await?;
    let log = fleet.agents["sim-1"].lines().join("\n");
    let heal = log
        .lines()
        .find(|l| l.contains("self-healing drift"))
        .unwrap_or_default();
    assert!(heal.contains(MASK), "{heal}");
    assert!(
        log.contains("desired state received"),
        "no agent log captured"
    );
    assert_no_secret(
        "the agent's log",
        &log,
        &[GIT_PASSWORD, TOKEN, ROTATED, ROTATED_AGAIN],
    );
    Ok(())
}
