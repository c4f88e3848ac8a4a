//! `--allowed-fetch-hosts`: an application naming a repository on a host
//! outside the list is refused before any connection is made (a listener
//! standing in for an internal service sees none), with an error on the
//! application naming the host and the rules; an allowed repository is
//! fetched as before.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto as pb;

mod support;
use support::{hub_with_c1, web_repo};

fn app_yaml(name: &str, url: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {url}\n    path: web\n  destination:\n    name: c1\n    namespace: default\n"
    )
}

/// A listener standing in for an internal service an app author wants
/// the hub to call: its `http://ADDR` and how many connections it saw.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", internal.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((_c, _)) = internal.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (base, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_list_are_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let local_url = web_repo(dir.path());

    let (internal, connections) = counting_listener().await;
    let internal_url = format!("{internal}/org/app.git");

    let (hub, mut admin) = hub_with_c1(dir.path(), |config| {
        config.poll_interval = Duration::from_secs(1);
        config.allowed_fetch_hosts = vec!["git.allowed.example".into(), "file://".into()];
    })
    .await;
    for (name, url) in [("local", local_url), ("internal", internal_url.clone())] {
        admin
            .create_application(pb::CreateApplicationRequest {
                manifest: app_yaml(name, &url),
                upsert: false,
            })
            .await
            .unwrap();
    }
    let get = |name: &'static str| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_application(pb::GetApplicationRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (local, internal) = (get("local").await, get("internal").await);
        if !local.revision.is_empty() && !internal.error.is_empty() {
            assert!(local.error.is_empty(), "{local:?}");
            assert!(
                internal.error.contains("host \"127.0.0.1\" is not allowed by --allowed-fetch-hosts (git.allowed.example, file://)"),
                "{}",
                internal.error
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "local: {local:?}\ninternal: {internal:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the refused host was contacted"
    );
    hub.shutdown().await.unwrap();
}

fn chart_app_yaml(name: &str, repo: &str, chart: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {repo}\n    chart: {chart}\n    targetRevision: 1.0.0\n  destination:\n    name: c1\n    namespace: default\n"
    )
}

/// An `index.yaml` entry for `chart` 1.0.0 whose archive is at `url`.
fn index_yaml(entries: &[(&str, &str, &[u8])]) -> String {
    use sha2::Digest as _;
    let mut text = String::from("apiVersion: v1\nentries:\n");
    for (chart, url, archive) in entries {
        text.push_str(&format!(
            "  {chart}:\n  - apiVersion: v2\n    name: {chart}\n    version: 1.0.0\n    digest: {}\n    urls:\n    - {url}\n",
            hex::encode(sha2::Sha256::digest(archive))
        ));
    }
    text
}

/// Helm repositories get the same bound as Git: an index on a refused
/// host, an allowed repository's redirect to a refused host, and an
/// allowed index whose archive URL points at a refused host are all
/// refused before any connection to it, each with an error naming the
/// host and the rules, while a chart from the allowed repository renders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_repositories_and_their_redirects_are_bounded_too() {
    use axum::http::{StatusCode, Uri, header};
    use axum::response::IntoResponse;

    let dir = tempfile::tempdir().unwrap();
    let (internal_base, connections) = counting_listener().await;

    // The allowed repository: `web` is served here, `stray`'s archive is
    // on the internal host, and `/moved/` redirects to the internal host.
    let web = support::helm::chart_tgz("web", "1.0.0");
    let stray = support::helm::chart_tgz("stray", "1.0.0");
    let index = index_yaml(&[
        ("web", "web-1.0.0.tgz", &web),
        ("stray", &format!("{internal_base}/stray-1.0.0.tgz"), &stray),
    ]);
    let allowed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowed_addr = allowed.local_addr().unwrap();
    let to_internal = internal_base.clone();
    let serve = move |uri: Uri| {
        let (index, web, to_internal) = (index.clone(), web.clone(), to_internal.clone());
        async move {
            match uri.path() {
                "/index.yaml" => (StatusCode::OK, index.into_bytes()).into_response(),
                "/web-1.0.0.tgz" => (StatusCode::OK, web).into_response(),
                p if p.starts_with("/moved/") => (
                    StatusCode::FOUND,
                    [(header::LOCATION, format!("{to_internal}/index.yaml"))],
                )
                    .into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    };
    tokio::spawn(async move {
        axum::serve(allowed, axum::Router::new().fallback(serve))
            .await
            .unwrap();
    });
    let allowed_base = format!("http://{allowed_addr}");
    let allowed_rule = format!("127.0.0.1:{}", allowed_addr.port());

    let tools = tempfile::tempdir().unwrap();
    let (hub, mut admin) = hub_with_c1(dir.path(), |config| {
        config.poll_interval = Duration::from_secs(1);
        config.allowed_fetch_hosts = vec![allowed_rule.clone()];
        config.render_tools = flotilla_hub::render::RenderTools {
            helm: Some(vec![
                support::helm::fake_helm(tools.path()).display().to_string(),
            ]),
            ..Default::default()
        };
    })
    .await;
    let apps = [
        ("good", allowed_base.clone(), "web"),
        ("direct", internal_base.clone(), "web"),
        ("redirected", format!("{allowed_base}/moved"), "web"),
        ("stray", allowed_base.clone(), "stray"),
    ];
    for (name, repo, chart) in &apps {
        admin
            .create_application(pb::CreateApplicationRequest {
                manifest: chart_app_yaml(name, repo, chart),
                upsert: false,
            })
            .await
            .unwrap();
    }
    let refused = format!(
        "host \"127.0.0.1\" is not allowed by --allowed-fetch-hosts ({allowed_rule}); refused before any request"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut got = Vec::new();
        for (name, _, _) in &apps {
            got.push(
                admin
                    .get_application(pb::GetApplicationRequest {
                        name: (*name).into(),
                    })
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        let [good, direct, redirected, stray] = &got[..] else {
            unreachable!()
        };
        if !good.revision.is_empty()
            && !direct.error.is_empty()
            && !redirected.error.is_empty()
            && !stray.error.is_empty()
        {
            assert!(good.error.is_empty(), "{good:?}");
            for refused_app in [direct, redirected, stray] {
                assert!(
                    refused_app.error.contains(&refused),
                    "{}: {}",
                    refused_app.name,
                    refused_app.error
                );
            }
            assert!(
                redirected.error.contains("redirect to"),
                "{}",
                redirected.error
            );
            break;
        }
        assert!(Instant::now() < deadline, "{got:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `repo add --type helm` checks the index under the same rules.
    let e = admin
        .check_repository(pb::CheckRepositoryRequest {
            url: internal_base.clone(),
            r#type: "helm".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&refused), "{}", e.message());
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the refused host was contacted"
    );
    hub.shutdown().await.unwrap();
}
