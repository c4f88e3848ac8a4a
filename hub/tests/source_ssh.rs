//! Private repositories over ssh against a real sshd: a key and a known
//! host fetch and render; a wrong key, an unknown or changed host key and a
//! closed port are clear errors that delete nothing; insecure-ignore-host-key
//! fetches anyway; the key never shows in logs, the API or the CLI.
//!
//! Needs `sshd`, `ssh` and `ssh-keygen` (Debian: openssh-server, which CI
//! installs); without them the test fails and says so.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, start};
use flotilla_proto as pb;

mod support;
use support::{Api, api, flotilla, git, ok, write};

/// Where Debian puts sshd (often not on a user's PATH).
const SSHD_PATHS: [&str; 2] = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"];

fn find_sshd() -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v sshd"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let found = on_path.or_else(|| SSHD_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()));
    let Some(sshd) = found else {
        panic!(
            "sshd not found (looked on PATH and in {SSHD_PATHS:?}): install openssh-server \
             (apt-get install openssh-server; .ci/run installs it)"
        );
    };
    for tool in ["ssh", "ssh-keygen"] {
        let present = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(present, "{tool} not found: install openssh-client");
    }
    sshd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "flotilla-test", "-f"])
        .arg(path));
}

/// `type base64` of a public key file.
fn public_key(path: &Path) -> String {
    let text = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// An sshd of our own on 127.0.0.1, as the current user, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, authorized_key: &Path) -> Self {
        let sshd = find_sshd();
        if run(Command::new("id").arg("-u")) == "0" {
            // sshd running as root insists on its privilege separation
            // directory, which only the system service creates.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let host_key = dir.join("host_key");
        keygen(&host_key);
        std::fs::copy(
            authorized_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
                 AuthorizedKeysFile {auth}\nStrictModes no\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n",
                host = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                auth = dir.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new(&sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut sshd = Self { child, port, log };
        sshd.wait_ready();
        sshd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until the server sends its `SSH-2.0` banner.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sshd exited ({status}): {}", self.log());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut banner = [0u8; 7];
                if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "sshd not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn repo(api: &mut Api, url: &str) -> pb::Repository {
    api.list_repositories(pb::ListRepositoriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .repositories
        .into_iter()
        .find(|r| r.url == url)
        .unwrap()
}

/// Polls `url`'s repository record until `done` holds (30 s at most).
async fn wait_repo(
    api: &mut Api,
    sshd: &Sshd,
    url: &str,
    what: &str,
    done: impl Fn(&pb::Repository) -> bool,
) -> pb::Repository {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = repo(api, url).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {r:?}\nsshd log:\n{}",
            sshd.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn app(api: &mut Api, name: &str) -> pb::Application {
    api.get_application(pb::GetApplicationRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn set_key(api: &mut Api, url: &str, key: &str, insecure: bool) -> pb::Repository {
    api.set_repository_credentials(pb::SetRepositoryCredentialsRequest {
        url: url.into(),
        ssh_private_key: key.into(),
        insecure_ignore_host_key: insecure,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

async fn add_repo(api: &mut Api, url: &str) {
    api.add_repository(pb::AddRepositoryRequest {
        url: url.into(),
        revision: "main".into(),
        apps_path: String::new(),
        poll_interval_secs: 1,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_repositories_over_ssh() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (client_key, wrong_key) = (keys.join("client"), keys.join("wrong"));
    keygen(&client_key);
    keygen(&wrong_key);
    let sshd_dir = tmp.path().join("sshd");
    std::fs::create_dir_all(&sshd_dir).unwrap();
    let sshd = Sshd::start(&sshd_dir, &client_key);
    let port = sshd.port;
    let user = run(Command::new("id").arg("-un"));

    // The configuration repository, served bare over ssh.
    let bare = tmp.path().join("srv/config.git");
    let url = format!("ssh://{user}@127.0.0.1:{port}{}", bare.display());
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    write(
        &work,
        "apps/web.yaml",
        &format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: web\nspec:\n  source:\n    repoURL: {url}\n    targetRevision: main\n    path: web\n  destination:\n    name: c1\n    namespace: default\n"
        ),
    );
    write(
        &work,
        "web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
    );
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "init"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &work.display().to_string(),
            &bare.display().to_string(),
        ],
    );

    // The hub knows 127.0.0.1's host key, and no other.
    let known_hosts = tmp.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{port} {}\n",
            public_key(&sshd_dir.join("host_key"))
        ),
    )
    .unwrap();
    let data = tmp.path().join("hub");
    let mut config = HubConfig::new(&data, "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    config.ssh_known_hosts = Some(known_hosts.clone());
    let hub = start(config).await.unwrap();
    let mut api = api(&hub).await;
    api.add_cluster(pb::AddClusterRequest {
        name: "c1".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Good key, known host: added with the CLI, fetched, and the
    // application it declares renders at that commit.
    let out = ok(&flotilla(
        &hub,
        &[
            "repo",
            "add",
            &url,
            "--apps-path",
            "apps",
            "--revision",
            "main",
            "--poll-interval-secs",
            "1",
            "--ssh-private-key-path",
            &client_key.display().to_string(),
            "-o",
            "json",
        ],
    ));
    let added: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["hasCredentials"], true, "{out}");
    assert_eq!(added["insecureIgnoreHostKey"], false, "{out}");
    let r = wait_repo(&mut api, &sshd, &url, "good key fetches", |r| {
        r.last_commit == head
    })
    .await;
    assert!(r.last_error.is_empty(), "{}", r.last_error);
    let deadline = Instant::now() + Duration::from_secs(30);
    let web = loop {
        let found = api
            .get_application(pb::GetApplicationRequest { name: "web".into() })
            .await;
        if let Ok(a) = found {
            let a = a.into_inner();
            if a.revision == head {
                break a;
            }
        }
        assert!(Instant::now() < deadline, "web never rendered at {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(web.error.is_empty(), "{}", web.error);

    // An ApplicationSet git generator reads the same private repository
    // with the same stored key.
    api.create_application_set(pb::CreateApplicationSetRequest {
        manifest: format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: dirs\nspec:\n  generators:\n  - git:\n      repoURL: {url}\n      revision: main\n      directories:\n      - path: web\n  template:\n    metadata:\n      name: 'dir-{{{{path.basename}}}}'\n    spec:\n      source:\n        repoURL: {url}\n        targetRevision: main\n        path: '{{{{path}}}}'\n      destination:\n        name: c1\n        namespace: default\n"
        ),
        upsert: false,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let set = api
            .get_application_set(pb::GetApplicationSetRequest {
                name: "dirs".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if set.applications == ["dir-web"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the git generator did not read the ssh repository: {:?}",
            set.conditions
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Wrong key: a clear error on the repository and its application;
    // nothing is deleted, the application keeps its commit.
    let wrong_text = std::fs::read_to_string(&wrong_key).unwrap();
    set_key(&mut api, &url, &wrong_text, false).await;
    let r = wait_repo(&mut api, &sshd, &url, "wrong key is refused", |r| {
        r.last_error.contains("Permission denied (publickey)")
    })
    .await;
    let redacted = format!("ssh://***@127.0.0.1:{port}{}", bare.display());
    assert!(r.last_error.contains(&redacted), "{}", r.last_error);
    assert!(!r.last_error.contains('\n'), "{}", r.last_error);
    assert_eq!(r.last_commit, head);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = app(&mut api, "web").await;
        if a.error.contains("Permission denied (publickey)") {
            assert_eq!(a.revision, head, "the application kept its commit");
            break;
        }
        assert!(Instant::now() < deadline, "no error on the app: {a:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The right key again: the error clears.
    let client_text = std::fs::read_to_string(&client_key).unwrap();
    set_key(&mut api, &url, &client_text, false).await;
    wait_repo(&mut api, &sshd, &url, "error clears", |r| {
        r.last_error.is_empty()
    })
    .await;

    // The same server under a name the known hosts do not list.
    let unknown = format!("ssh://{user}@localhost:{port}{}", bare.display());
    add_repo(&mut api, &unknown).await;
    set_key(&mut api, &unknown, &client_text, false).await;
    let r = wait_repo(&mut api, &sshd, &unknown, "unknown host key", |r| {
        r.last_error.contains("Host key verification failed")
    })
    .await;
    assert!(
        r.last_error.contains(&format!("[localhost]:{port}")),
        "{}",
        r.last_error
    );
    assert!(r.last_commit.is_empty());
    // A different key for that name: the host key "changed".
    let mut kh = std::fs::OpenOptions::new()
        .append(true)
        .open(&known_hosts)
        .unwrap();
    writeln!(kh, "[localhost]:{port} {}", public_key(&wrong_key)).unwrap();
    drop(kh);
    wait_repo(&mut api, &sshd, &unknown, "changed host key", |r| {
        r.last_error.contains("does not match")
    })
    .await;
    // insecure-ignore-host-key: fetched all the same.
    let r = set_key(&mut api, &unknown, &client_text, true).await;
    assert!(r.has_credentials && r.insecure_ignore_host_key);
    let r = wait_repo(&mut api, &sshd, &unknown, "insecure fetch", |r| {
        r.last_commit == head
    })
    .await;
    assert!(r.last_error.is_empty(), "{}", r.last_error);

    // Nothing listens: the cause is named.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("ssh://{user}@127.0.0.1:{closed_port}/srv/none.git");
    add_repo(&mut api, &unreachable).await;
    set_key(&mut api, &unreachable, &client_text, true).await;
    let r = wait_repo(&mut api, &sshd, &unreachable, "unreachable host", |r| {
        !r.last_error.is_empty()
    })
    .await;
    assert!(
        r.last_error.contains("Connection refused"),
        "{}",
        r.last_error
    );

    // Validation: a key for an https URL, a password for an ssh URL.
    let refused = api
        .set_repository_credentials(pb::SetRepositoryCredentialsRequest {
            url: url.clone(),
            password: "not-for-ssh".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // The key never leaves the hub: not in repo list, not in the logs,
    // not in the mirror, and no key file stays behind.
    let listed = ok(&flotilla(&hub, &["repo", "list", "-o", "json"]));
    let table = ok(&flotilla(&hub, &["repo", "list"]));
    hub.shutdown().await.unwrap();
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("repository credentials updated"),
        "logs were not captured"
    );
    let mut mirror_config = String::new();
    for entry in std::fs::read_dir(data.join("git")).unwrap() {
        let config = entry.unwrap().path().join("config");
        mirror_config.push_str(&std::fs::read_to_string(config).unwrap_or_default());
    }
    assert!(!mirror_config.contains("sshCommand"), "{mirror_config}");
    // A fetch still running on a blocking thread when the hub stopped
    // removes its directory when it ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leftovers: Vec<_> = std::fs::read_dir(data.join("ssh"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        if leftovers.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "key files left behind: {leftovers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (what, key) in [("client key", &client_text), ("wrong key", &wrong_text)] {
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(body.len() >= 64, "{what} is too short to search for");
        for (place, text) in [
            ("repo list -o json", &listed),
            ("repo list", &table),
            ("the logs", &logs),
        ] {
            for line in key.lines().filter(|l| !l.starts_with("-----")) {
                assert!(
                    !text.contains(line),
                    "part of the {what} appears in {place}"
                );
            }
        }
    }
    drop(sshd);
}

/// An ssh server that accepts the session and then says nothing (here:
/// the key is forced to run `sleep` instead of git-upload-pack) cannot
/// hold a fetch past its deadline: ssh is ended, the fetch returns
/// "timed out after", and the thread that ran it is free again.
#[test]
fn a_stalled_ssh_server_is_cut_at_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("client");
    keygen(&key);
    let sshd_dir = tmp.path().join("sshd");
    std::fs::create_dir_all(&sshd_dir).unwrap();
    let sshd = Sshd::start(&sshd_dir, &key);
    std::fs::write(
        sshd_dir.join("authorized_keys"),
        format!("command=\"sleep 600\",no-pty {}\n", public_key(&key)),
    )
    .unwrap();
    let user = run(Command::new("id").arg("-un"));
    let url = format!("ssh://{user}@127.0.0.1:{}/srv/never.git", sshd.port);
    let cache = flotilla_hub::source::GitCache::new(tmp.path().join("cache"));
    cache.set_ssh(flotilla_hub::source::SshSettings {
        known_hosts: None,
        scratch_dir: tmp.path().join("scratch"),
    });
    let ssh_key = flotilla_hub::source::SshKey {
        private_key: std::fs::read_to_string(&key).unwrap(),
        insecure_ignore_host_key: true,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let u = url.clone();
    std::thread::spawn(move || {
        let limits = flotilla_hub::source::FetchLimits::starting_now(Duration::from_secs(3));
        let r = cache.fetch_bounded(
            &u,
            "main",
            flotilla_hub::source::FetchAuth::SshKey(&ssh_key),
            &limits,
        );
        let _ = tx.send(r);
    });
    let result = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the fetch did not return; sshd log:\n{}", sshd.log()));
    let err = result.expect_err("a stalled server cannot serve the fetch");
    let text = err.to_string();
    assert!(
        matches!(err, flotilla_hub::source::SourceError::TimedOut { .. })
            && text.contains("timed out after 3s")
            && text.contains("127.0.0.1"),
        "{text}"
    );
}
