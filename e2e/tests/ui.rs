//! The web UI in a real browser (headless Chromium over WebDriver) against
//! a real hub with agents on the Kubernetes API simulator, kubectl
//! checking the clusters: log in, the overview grid, an application page
//! where drift made with kubectl appears without a reload, sync to Synced,
//! rollback, a held ApplicationSet deletion confirmed; a read-only login
//! sees no mutating controls, and forged POSTs (no or wrong CSRF token,
//! another origin, a read-only session, no session) are refused.
//!
//! Each test saves PNG screenshots under `target/ui-screenshots/`.
//! Chromium and chromedriver must be installed: without them the tests
//! fail, saying so.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_e2e::webdriver::{Browser, screenshot_dir};
use flotilla_proto::{
    CreateApplicationRequest, CreateApplicationSetRequest, CreateTokenRequest,
    GetApplicationRequest, GetApplicationSetRequest,
};

const CONVERGE: Duration = Duration::from_secs(120);
const PAGE: Duration = Duration::from_secs(30);

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

/// A manual Application of the fleet's repository on sim-1.
fn application(fleet: &Fleet, name: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  source:
    repoURL: {url}
    targetRevision: HEAD
    path: {name}
  destination:
    name: sim-1
    namespace: {name}
  syncPolicy:
    syncOptions:
    - CreateNamespace=true
",
        url = fleet.repo.url()
    )
}

/// A list-generator ApplicationSet making `pair-<n>` for each of `names`.
fn pair_set(fleet: &Fleet, names: &[&str]) -> String {
    let elements: String = names.iter().map(|n| format!("      - n: {n}\n")).collect();
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: pair
spec:
  generators:
  - list:
      elements:
{elements}  template:
    metadata:
      name: 'pair-{{{{n}}}}'
    spec:
      project: default
      source:
        repoURL: {url}
        targetRevision: HEAD
        path: web
      destination:
        name: sim-1
        namespace: 'pair-{{{{n}}}}'
",
        url = fleet.repo.url()
    )
}

/// `https://ADDR` of the hub's UI, from its log.
fn ui_base(fleet: &Fleet) -> anyhow::Result<String> {
    fleet
        .hub
        .lines()
        .iter()
        .rev()
        .find_map(|l| {
            l.split("flotilla-hub ui listening on ")
                .nth(1)
                .map(|u| u.trim().trim_end_matches('/').to_owned())
        })
        .ok_or_else(|| anyhow::anyhow!("the hub did not say where the UI listens"))
}

fn admin_token(fleet: &Fleet) -> anyhow::Result<String> {
    Ok(
        std::fs::read_to_string(fleet.hub_data().join("admin.token"))?
            .trim()
            .to_owned(),
    )
}

async fn read_only_token(fleet: &Fleet) -> anyhow::Result<String> {
    let mut api = fleet.api().await?;
    Ok(api
        .create_token(CreateTokenRequest {
            name: "viewer".into(),
            read_only: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .token)
}

async fn start_fleet(clusters: usize, extra: &[&str]) -> anyhow::Result<(Fleet, String)> {
    let mut args = vec!["--ui-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let fleet = Fleet::start_with_hub_args(
        FleetOptions {
            clusters,
            ..Default::default()
        },
        &args,
    )
    .await?;
    let base = ui_base(&fleet)?;
    Ok((fleet, base))
}

/// Commits `name/cm.yaml` with `value`, creates the manual application
/// and waits until the hub has rendered it at that commit.
async fn manual_app(fleet: &Fleet, name: &str, value: &str) -> anyhow::Result<String> {
    let commit =
        fleet
            .repo
            .commit_file(&format!("{name}/cm.yaml"), &configmap(name, value), value)?;
    let mut api = fleet.api().await?;
    api.create_application(CreateApplicationRequest {
        manifest: application(fleet, name),
        upsert: false,
    })
    .await?;
    wait_rendered(fleet, name, &commit).await?;
    Ok(commit)
}

async fn wait_rendered(fleet: &Fleet, name: &str, commit: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{name} rendered at {commit}"),
        CONVERGE,
        || async {
            let a = fleet.app(name).await.map_err(|e| e.to_string())?;
            if a.revision == commit {
                Ok(())
            } else {
                Err(format!("revision {:?} error {:?}", a.revision, a.error))
            }
        },
    )
    .await
}

fn cm_value(fleet: &Fleet, ns: &str) -> anyhow::Result<Option<String>> {
    Ok(fleet
        .kubectl_get("sim-1", "configmap", ns, ns)?
        .and_then(|c| c["data"]["value"].as_str().map(str::to_owned)))
}

async fn wait_value(fleet: &Fleet, ns: &str, want: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{ns} value {want:?} (kubectl)"),
        CONVERGE,
        || async {
            match cm_value(fleet, ns).map_err(|e| e.to_string())? {
                Some(v) if v == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

async fn login(b: &Browser, base: &str, token: &str) -> anyhow::Result<()> {
    b.goto(&format!("{base}/login")).await?;
    let field = b.wait_for("#token", PAGE).await?;
    b.type_text(&field, token).await?;
    b.click(&b.find("#login-button").await?).await?;
    b.wait_for("#who", PAGE).await?;
    Ok(())
}

/// Waits (without navigating) until the application page shows `sync` on
/// sim-1.
async fn wait_badge(b: &Browser, sync: &str) -> anyhow::Result<()> {
    let css = format!("section[data-cluster=\"sim-1\"] .badge[data-sync=\"{sync}\"]");
    eventually(
        &format!("the page showing {sync} on sim-1"),
        CONVERGE,
        || async {
            match b.find_all(&css).await {
                Ok(v) if !v.is_empty() => Ok(()),
                Ok(_) => {
                    let shown = match b.find("section[data-cluster=\"sim-1\"] .badge").await {
                        Ok(e) => b.text(&e).await.unwrap_or_default(),
                        Err(e) => e.to_string(),
                    };
                    Err(format!("shown: {shown}"))
                }
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

async fn shot(b: &Browser, name: &str) -> anyhow::Result<()> {
    b.screenshot(&screenshot_dir().join(name)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_sees_drift_live_syncs_rolls_back_and_confirms_a_held_deletion()
-> anyhow::Result<()> {
    // A zero deletion budget holds any deletion of an ApplicationSet's
    // applications until confirmed.
    let (fleet, base) = start_fleet(2, &["--appset-deletion-budget", "0"]).await?;
    let c1 = manual_app(&fleet, "web", "one").await?;
    fleet.wait_connected(CONVERGE).await?;
    let b = Browser::start(fleet.root.path()).await?;

    // Not logged in: the login page.
    b.goto(&format!("{base}/")).await?;
    b.wait_for("#token", PAGE).await?;
    login(&b, &base, &admin_token(&fleet)?).await?;

    // The grid: clusters × applications, with counts.
    let grid = b.wait_for("#grid", PAGE).await?;
    let text = b.text(&grid).await?;
    for want in ["web", "guestbook-sim-1", "sim-1", "sim-2"] {
        assert!(text.contains(want), "{want} missing from the grid: {text}");
    }
    eventually(
        "guestbook Synced on both clusters in the grid",
        CONVERGE,
        || async {
            let n = b
                .find_all("td[data-app^=\"guestbook-sim-\"][data-sync=\"Synced\"]")
                .await
                .map_err(|e| e.to_string())?
                .len();
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} Synced"))
            }
        },
    )
    .await?;
    let clusters = b.find("b[data-count=\"clusters\"]").await?;
    assert_eq!(b.text(&clusters).await?, "2");
    shot(&b, "overview.png").await?;

    // The application page, from the grid.
    b.click(&b.find("thead a[href=\"/apps/web\"]").await?)
        .await?;
    let name = b.wait_for("#app-name", PAGE).await?;
    assert_eq!(b.text(&name).await?, "web");
    b.wait_for("#main[data-live=\"1\"]", PAGE).await?;
    b.click(&b.find("#sync-button").await?).await?;
    wait_badge(&b, "Synced").await?;
    wait_value(&fleet, "web", "one").await?;

    // Drift made with kubectl shows up on the open page without a reload:
    // a value set in the page survives, and the script counted an update.
    b.execute("window.flotillaMarker = 42; return 1;").await?;
    let updates_before = b
        .execute("return Number(document.body.dataset.updates || '0');")
        .await?
        .as_u64()
        .unwrap_or(0);
    let out = fleet.kubectl(
        "sim-1",
        &[
            "patch",
            "configmap",
            "web",
            "-n",
            "web",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"value":"changed by hand"}}"#,
        ],
    )?;
    anyhow::ensure!(out.status.success(), "kubectl patch: {out:?}");
    wait_badge(&b, "OutOfSync").await?;
    assert_eq!(
        b.execute("return window.flotillaMarker;").await?,
        serde_json::json!(42),
        "the page was reloaded instead of updated"
    );
    let updates = b
        .execute("return Number(document.body.dataset.updates || '0');")
        .await?
        .as_u64()
        .unwrap_or(0);
    assert!(updates > updates_before, "no live update counted");
    let drift = b.find("tr[data-resource=\"ConfigMap web/web\"]").await?;
    let drift_text = b.text(&drift).await?;
    assert!(drift_text.contains("OutOfSync"), "{drift_text}");
    shot(&b, "application-drift.png").await?;

    // The diff page: the agent's live object against Git's.
    b.goto(&format!("{base}/apps/web/diff")).await?;
    let diff = b.wait_for("pre.diff", CONVERGE).await?;
    let diff_text = b.text(&diff).await?;
    assert!(diff_text.contains("changed by hand"), "{diff_text}");
    shot(&b, "application-diff.png").await?;
    b.goto(&format!("{base}/apps/web")).await?;
    b.wait_for("#main[data-live=\"1\"]", PAGE).await?;

    // Sync: back to Git's value, Synced on the page.
    b.click(&b.find("#sync-button").await?).await?;
    wait_badge(&b, "Synced").await?;
    wait_value(&fleet, "web", "one").await?;
    shot(&b, "application-synced.png").await?;

    // A second commit, synced; then roll back to the first deployment.
    let c2 = fleet
        .repo
        .commit_file("web/cm.yaml", &configmap("web", "two"), "two")?;
    wait_rendered(&fleet, "web", &c2).await?;
    b.wait_for(
        "section[data-cluster=\"sim-1\"] .badge[data-sync=\"OutOfSync\"]",
        CONVERGE,
    )
    .await?;
    b.click(&b.find("#sync-button").await?).await?;
    wait_value(&fleet, "web", "two").await?;
    wait_badge(&b, "Synced").await?;
    let first = b
        .wait_for("tr[data-history=\"1\"] .rollback-button", PAGE)
        .await?;
    b.click(&first).await?;
    wait_value(&fleet, "web", "one").await?;
    let pinned = b.wait_for("#pinned", CONVERGE).await?;
    assert!(b.text(&pinned).await?.starts_with(&c1[..8]));
    let flash = b.find("#flash").await?;
    assert!(
        b.text(&flash)
            .await?
            .contains("rollback of web to history 1")
    );
    shot(&b, "application-rollback.png").await?;

    // A held deletion, confirmed from the ApplicationSet page.
    let mut api = fleet.api().await?;
    api.create_application_set(CreateApplicationSetRequest {
        manifest: pair_set(&fleet, &["a", "b"]),
        upsert: false,
    })
    .await?;
    eventually("pair-b generated", CONVERGE, || async {
        let mut api = fleet.api().await.map_err(|e| e.to_string())?;
        let s = api
            .get_application_set(GetApplicationSetRequest {
                name: "pair".into(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if s.applications.len() == 2 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    api.create_application_set(CreateApplicationSetRequest {
        manifest: pair_set(&fleet, &["a"]),
        upsert: true,
    })
    .await?;
    b.goto(&format!("{base}/appsets/pair")).await?;
    let held = b.wait_for("#held", CONVERGE).await?;
    assert!(b.text(&held).await?.contains("pair-b"));
    shot(&b, "appset-held.png").await?;
    b.click(&b.find("input[name=\"confirm\"]").await?).await?;
    b.click(&b.find("#confirm-button").await?).await?;
    b.wait_for("#no-held", CONVERGE).await?;
    eventually("pair-b deleted", CONVERGE, || async {
        let mut api = fleet.api().await.map_err(|e| e.to_string())?;
        match api
            .get_application(GetApplicationRequest {
                name: "pair-b".into(),
            })
            .await
        {
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let generated = b.find("#generated").await?;
    let text = b.text(&generated).await?;
    assert!(
        text.contains("pair-a") && !text.contains("pair-b"),
        "{text}"
    );

    // Clusters: connection, agent version, the client certificate's
    // expiry (30 days from enrollment), how many apps; labels edited.
    b.goto(&format!("{base}/clusters")).await?;
    let rows = b.wait_for("#clusters", PAGE).await?;
    let text = b.text(&rows).await?;
    assert!(text.contains("sim-2") && text.contains("env=dev"), "{text}");
    assert!(text.contains("connected"), "{text}");
    for c in ["sim-1", "sim-2"] {
        let cert = b.find(&format!("tr[data-cluster=\"{c}\"] td.cert")).await?;
        let cert = b.text(&cert).await?;
        assert!(
            cert.contains("(in 29 d)") || cert.contains("(in 30 d)"),
            "{c}: certificate expiry {cert:?}"
        );
    }
    let apps = b.find("tr[data-cluster=\"sim-1\"] td.apps").await?;
    let apps: usize = b.text(&apps).await?.trim().parse()?;
    assert!(apps >= 3, "sim-1 runs guestbook, web and pair-a: {apps}");
    let field = b
        .find("tr[data-cluster=\"sim-2\"] input[name=\"labels\"]")
        .await?;
    b.clear(&field).await?;
    b.type_text(&field, "env=dev, tier=web").await?;
    b.click(
        &b.find("tr[data-cluster=\"sim-2\"] form.labels button")
            .await?,
    )
    .await?;
    let flash = b.wait_for("#flash", PAGE).await?;
    assert_eq!(b.text(&flash).await?, "labels of sim-2: env=dev, tier=web");
    let labels = b.find("tr[data-cluster=\"sim-2\"] td.labels").await?;
    assert!(b.text(&labels).await?.contains("tier=web"));
    let mut api = fleet.api().await?;
    let listed = api
        .list_clusters(flotilla_proto::ListClustersRequest {})
        .await?
        .into_inner()
        .clusters;
    let sim2 = listed
        .iter()
        .find(|c| c.name == "sim-2")
        .ok_or_else(|| anyhow::anyhow!("sim-2 not listed"))?;
    assert_eq!(
        sim2.labels.get("tier").map(String::as_str),
        Some("web"),
        "{sim2:?}"
    );
    assert!(sim2.cert_not_after_ms > 0, "{sim2:?}");
    shot(&b, "clusters.png").await?;

    b.goto(&format!("{base}/repos")).await?;
    let repos = b.wait_for("#repos", PAGE).await?;
    assert!(b.text(&repos).await?.contains(&fleet.repo.url()));
    shot(&b, "repositories.png").await?;
    Ok(())
}

fn http_client(fleet: &Fleet) -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read(fleet.hub_data().join("ca.crt"))?;
    Ok(reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Logs in over plain HTTPS; returns the session cookie (`name=value`).
async fn http_login(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await?;
    assert_eq!(resp.status(), 303);
    let set = resp
        .headers()
        .get("set-cookie")
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_str()?
        .to_owned();
    for part in ["HttpOnly", "Secure", "SameSite=Strict", "Max-Age="] {
        assert!(set.contains(part), "{set}");
    }
    Ok(set.split(';').next().unwrap_or_default().to_owned())
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> anyhow::Result<String> {
    let at = page
        .find("name=\"csrf\" value=\"")
        .ok_or_else(|| anyhow::anyhow!("no CSRF field in {page}"))?;
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    Ok(rest.split('"').next().unwrap_or_default().to_owned())
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut req = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_sessions_see_no_controls_and_forged_posts_are_refused() -> anyhow::Result<()> {
    let (fleet, base) = start_fleet(1, &[]).await?;
    manual_app(&fleet, "web", "one").await?;
    let viewer = read_only_token(&fleet).await?;
    let admin = admin_token(&fleet)?;

    // In the browser: a read-only login sees the page without a control
    // that changes anything.
    let b = Browser::start(fleet.root.path()).await?;
    login(&b, &base, &viewer).await?;
    b.goto(&format!("{base}/apps/web")).await?;
    b.wait_for("#app-name", PAGE).await?;
    let who = b.find("#who").await?;
    assert!(b.text(&who).await?.contains("read-only"));
    let controls = b
        .find_all(
            "form.sync, form.refresh, form.rollback, form.confirm, #sync-button, .rollback-button",
        )
        .await?;
    assert!(
        controls.is_empty(),
        "a read-only page has {} controls",
        controls.len()
    );
    shot(&b, "read-only.png").await?;
    b.goto(&format!("{base}/clusters")).await?;
    b.wait_for("#clusters", PAGE).await?;
    let forms = b.find_all("#main form").await?;
    assert!(
        forms.is_empty(),
        "a read-only clusters page has {} forms",
        forms.len()
    );
    shot(&b, "read-only-clusters.png").await?;

    // Every response is under a strict policy, and no page has inline
    // script or style.
    let http = http_client(&fleet)?;
    let resp = http.get(format!("{base}/login")).send().await?;
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let admin_cookie = http_login(&http, &base, &admin).await?;
    let page = http
        .get(format!("{base}/apps/web"))
        .header("cookie", &admin_cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(page.contains("id=\"sync-button\""), "{page}");
    assert!(
        !page.contains("<script>") && !page.contains(" style="),
        "{page}"
    );
    let csrf = csrf_of(&page)?;
    let sync = format!("{base}/apps/web/sync");
    let own_origin = base.clone();

    // Forged: no CSRF token, a wrong one, another origin, no session.
    let (code, body) = post(&http, &sync, Some(&admin_cookie), None, "prune=true").await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let (code, _) = post(
        &http,
        &sync,
        Some(&admin_cookie),
        None,
        &format!("csrf={}", "0".repeat(64)),
    )
    .await?;
    assert_eq!(code, 403);
    let (code, _) = post(
        &http,
        &sync,
        Some(&admin_cookie),
        Some("https://evil.example"),
        &format!("csrf={csrf}"),
    )
    .await?;
    assert_eq!(code, 403);
    let (code, _) = post(&http, &sync, None, None, &format!("csrf={csrf}")).await?;
    assert_eq!(code, 403);
    let mut api = fleet.api().await?;
    let history = api
        .get_application_history(flotilla_proto::GetApplicationHistoryRequest {
            name: "web".into(),
        })
        .await?
        .into_inner();
    assert!(
        history.entries.is_empty(),
        "a refused POST synced: {history:?}"
    );

    // A read-only session with its own valid CSRF token: refused too.
    let ro_cookie = http_login(&http, &base, &viewer).await?;
    let ro_page = http
        .get(format!("{base}/apps/web"))
        .header("cookie", &ro_cookie)
        .send()
        .await?
        .text()
        .await?;
    let ro_csrf = csrf_of(&ro_page)?;
    let (code, body) = post(
        &http,
        &sync,
        Some(&ro_cookie),
        Some(&own_origin),
        &format!("csrf={ro_csrf}"),
    )
    .await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    let (code, body) = post(
        &http,
        &format!("{base}/clusters/sim-1/labels"),
        Some(&ro_cookie),
        Some(&own_origin),
        &format!("csrf={ro_csrf}&labels=owned%3Dyes"),
    )
    .await?;
    assert_eq!(code, 403, "{body}");
    // A label edit without the CSRF token: refused as well.
    let (code, _) = post(
        &http,
        &format!("{base}/clusters/sim-1/labels"),
        Some(&admin_cookie),
        Some(&own_origin),
        "labels=owned%3Dyes",
    )
    .await?;
    assert_eq!(code, 403);
    let listed = api
        .list_clusters(flotilla_proto::ListClustersRequest {})
        .await?
        .into_inner()
        .clusters;
    assert!(
        listed.iter().all(|c| !c.labels.contains_key("owned")),
        "a refused label edit went through: {listed:?}"
    );

    // The same POST with the admin session's token goes through.
    let (code, body) = post(
        &http,
        &sync,
        Some(&admin_cookie),
        Some(&own_origin),
        &format!("csrf={csrf}"),
    )
    .await?;
    assert_eq!(code, 303, "{body}");
    wait_value(&fleet, "web", "one").await?;

    // Logging out ends the session.
    let (code, _) = post(
        &http,
        &format!("{base}/logout"),
        Some(&admin_cookie),
        Some(&own_origin),
        &format!("csrf={csrf}"),
    )
    .await?;
    assert_eq!(code, 303);
    let resp = http
        .get(format!("{base}/"))
        .header("cookie", &admin_cookie)
        .send()
        .await?;
    assert_eq!(resp.status(), 303);
    assert_eq!(
        resp.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/login")
    );
    // A wrong token is refused with the reason.
    let (code, body) = post(&http, &format!("{base}/login"), None, None, "token=nope").await?;
    assert_eq!(code, 401);
    assert!(body.contains("login refused: invalid token"), "{body}");
    Ok(())
}
