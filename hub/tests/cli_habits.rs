//! The `flotilla` CLI as kubectl and argocd users expect it, against a
//! real `flotilla-hub` process: exit codes, closed pipes, connection
//! settings and contexts, the verbs, list filters and output formats.
//! Output is compared as text, with what changes from run to run
//! replaced by placeholders.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;

mod cli_support;
mod support;

use cli_support::{Hub, assert_text, bare, fails, normalize, ok, repo};

const WEB_APP: &str = "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: web
spec:
  project: default
  source:
    repoURL: {{URL}}
    path: web
  destination:
    name: east
    namespace: web
";

const WEB_CM: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: web
data:
  greeting: hello
";

/// A hub polling a repository whose apps path declares `web` (on cluster
/// east, registered here), with its render done.
fn hub_with_web(dir: &std::path::Path) -> (Hub, String) {
    let url = repo(dir, &[("apps/web.yaml", WEB_APP), ("web/cm.yaml", WEB_CM)]);
    let hub = Hub::start(&["--repo", &format!("{url}#apps"), "--poll-interval", "1s"]);
    hub.ok(&[
        "cluster",
        "add",
        "east",
        "--label",
        "env=prod",
        "--bootstrap-token",
    ]);
    hub.until(&["app", "get", "web", "-o", "json"], |t| {
        serde_json::from_str::<serde_json::Value>(t)
            .is_ok_and(|v| v["revision"].as_str().is_some_and(|r| r.len() == 40))
    });
    (hub, url)
}

#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let hub = Hub::start(&[]);
    for i in 0..3 {
        hub.ok(&["cluster", "add", &format!("c{i}"), "--bootstrap-token"]);
    }
    for args in [
        &["cluster", "list"][..],
        &["cluster", "list", "-o", "json"],
        &["cluster", "list", "-o", "yaml"],
        &["version"],
        &["--help"],
    ] {
        // The reader is gone before the CLI writes a byte (as `| head -0`
        // would be): every write fails with EPIPE.
        let mut child = hub
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_text(&String::from_utf8_lossy(&out.stderr), "");
    }
}

#[test]
fn exit_codes_are_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = hub_with_web(dir.path());

    // 2: usage, from clap and from the CLI's own checks.
    let (code, err) = fails(&hub.cli(&["app", "list", "--bogus"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: unexpected argument '--bogus' found"),
        "{err}"
    );
    let (code, err) = fails(&hub.cli(&["cluster", "add", "west"]));
    assert_eq!(code, 2, "{err}");
    let (code, err) = fails(
        &bare(&["app", "list"])
            .env("FLOTILLA_HUB", &hub.url)
            .output()
            .unwrap(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no API token"), "{err}");

    // 3: not found.
    let (code, err) = fails(&hub.cli(&["app", "get", "nope"]));
    assert_eq!(code, 3);
    assert_text(&err, "error: application \"nope\" not found (NotFound)\n");
    let (code, _) = fails(&hub.cli(&["app", "diff", "nope"]));
    assert_eq!(code, 3);

    // 4: unreachable (nothing listens on port 1).
    let (code, err) = fails(&hub.cli(&["--hub", "https://127.0.0.1:1", "app", "list"]));
    assert_eq!(code, 4, "{err}");
    assert_text(
        &err,
        "error: cannot connect to hub https://127.0.0.1:1: transport error: tcp connect error: Connection refused (os error 111)\n",
    );

    // 5: the token is refused.
    let (code, err) = fails(
        &hub.command(&["app", "list"])
            .env("FLOTILLA_TOKEN", "wrong")
            .output()
            .unwrap(),
    );
    assert_eq!(code, 5, "{err}");

    // 1: a refused operation.
    let (code, err) = fails(&hub.cli(&["app", "delete", "web", "-y"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("managed by repository {url}")),
        "{err}"
    );

    // app diff: 2 when it cannot be computed (east has no agent).
    let (code, err) = fails(&hub.cli(&["app", "diff", "web"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: east: "), "{err}");
}

#[test]
fn hub_addresses_need_no_scheme() {
    let hub = Hub::start(&[]);
    // HOST:PORT as kubectl's --server and argocd's --server take it.
    let out = hub.ok(&["--hub", hub.addr(), "version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["client"], env!("CARGO_PKG_VERSION"));
    let (code, err) = fails(&hub.cli(&["--hub", "ftp://x", "version"]));
    assert_eq!(code, 2, "{err}");
    assert_text(
        &err,
        "error: invalid hub address \"ftp://x\": use HOST:PORT or https://HOST:PORT\n",
    );
}

#[test]
fn contexts_for_several_hubs() {
    let a = Hub::start(&[]);
    let b = Hub::start(&[]);
    a.ok(&["cluster", "add", "on-a", "--bootstrap-token"]);
    b.ok(&["cluster", "add", "on-b", "--bootstrap-token"]);
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("flotilla/config.json");
    // Something else already lives in the file: a context of a third hub
    // and a key this version does not know.
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        r#"{"contexts": {"other": {"hub": "https://other.example:7443", "token": "keep-me"}}, "currentContext": "other", "x-editor": "vim"}"#,
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let login = |hub: &Hub, extra: &[&str]| {
        let mut args = vec!["login"];
        args.extend_from_slice(extra);
        ok(&hub
            .command(&args)
            .env("FLOTILLA_CONFIG", cfg)
            .output()
            .unwrap())
    };
    let flotilla = |args: &[&str]| bare(args).env("FLOTILLA_CONFIG", cfg).output().unwrap();
    let pairs = [(a.addr(), "<A>"), (b.addr(), "<B>"), (cfg, "<CONFIG>")];

    let text = login(&a, &["--name", "a"]);
    assert_text(
        &normalize(&text, &pairs),
        "logged in to https://<A>; context a saved in <CONFIG> and made current\n",
    );
    let text = login(&b, &[]);
    assert_text(
        &normalize(&text, &pairs),
        "logged in to https://<B>; context <B> saved in <CONFIG> and made current\n",
    );
    let list = normalize(&ok(&flotilla(&["context"])), &pairs);
    assert_text(
        &list,
        "CURRENT   NAME    HUB
*         <B>     https://<B>
          a       https://<A>
          other   https://other.example:7443
",
    );
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["*", "<B>", "https://<B>"],
            vec!["a", "https://<A>"],
            vec!["other", "https://other.example:7443"]
        ]
    );

    // Commands go to the current context's hub, or to --context's.
    assert!(ok(&flotilla(&["cluster", "list"])).contains("on-b"));
    assert!(ok(&flotilla(&["--context", "a", "cluster", "list"])).contains("on-a"));
    assert_text(&ok(&flotilla(&["context", "a"])), "switched to context a\n");
    assert_text(
        &ok(&flotilla(&["context", "a"])),
        "context a is already current\n",
    );
    assert!(ok(&flotilla(&["cluster", "list"])).contains("on-a"));
    // Another hub named with --hub does not get this context's token.
    let (code, err) = fails(&flotilla(&["--hub", b.addr(), "cluster", "list"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no API token"), "{err}");
    let (code, err) = fails(&flotilla(&["context", "nope"]));
    assert_eq!(code, 3, "{err}");

    // logout forgets one context; the others and the unknown key stay.
    assert_text(
        &ok(&flotilla(&["logout", "a"])),
        "logged out of context a; its token is forgotten\n",
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(doc["x-editor"], "vim");
    assert_eq!(doc["contexts"]["other"]["token"], "keep-me");
    assert!(doc["contexts"]["a"].is_null());
    assert!(doc["contexts"][b.addr()]["token"].is_string());
    assert!(doc.get("currentContext").is_none(), "{doc}");
    let (code, _) = fails(&flotilla(&["logout", "a"]));
    assert_eq!(code, 3);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Runs the CLI on a terminal (`script`), typing `input`; exit code and
/// everything it printed.
fn on_terminal(hub: &Hub, args: &[&str], input: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let mut command = env!("CARGO_BIN_EXE_flotilla").to_owned();
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("FLOTILLA_HUB", &hub.url)
        .env("FLOTILLA_CA_FILE", hub.ca_file())
        .env("FLOTILLA_TOKEN_FILE", hub.token_file())
        .env("FLOTILLA_CONFIG", hub.data.path().join("none.json"))
        .env_remove("FLOTILLA_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .replace('\r', ""),
    )
}

#[test]
fn destructive_commands_confirm_on_a_terminal_and_refuse_elsewhere() {
    let hub = Hub::start(&[]);
    hub.ok(&["cluster", "add", "east", "--bootstrap-token"]);
    // A script without -y: refused, the cluster stays.
    let (code, err) = fails(&hub.cli(&["cluster", "remove", "east"]));
    assert_eq!(code, 2, "{err}");
    assert_text(
        &err,
        "error: removing cluster east needs confirmation and stdin is not a terminal: pass -y (--yes) to go ahead without asking\n",
    );
    let (code, err) = fails(&hub.cli(&["app", "delete", "web"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("deleting application web and its objects needs confirmation"),
        "{err}"
    );
    assert!(hub.ok(&["cluster", "list"]).contains("east"));

    // On a terminal: asked; "n" cancels, "y" removes.
    let (code, text) = on_terminal(&hub, &["cluster", "remove", "east"], "n\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Are you sure you want to remove cluster 'east'? Its agent's certificate is revoked. [y/n] ")
            && text.contains("The command to remove cluster 'east' was cancelled."),
        "{text}"
    );
    assert!(hub.ok(&["cluster", "list"]).contains("east"));
    let (code, text) = on_terminal(&hub, &["cluster", "rm", "east"], "y\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("cluster east removed; its certificate is revoked"),
        "{text}"
    );
    assert_text(&hub.ok(&["cluster", "ls", "-o", "json"]), "[]\n");
    // -y in a script.
    hub.ok(&["cluster", "add", "west", "--bootstrap-token"]);
    // --cascade with no agent connected: nothing can be deleted, and it
    // says so.
    assert_text(
        &hub.ok(&["cluster", "rm", "west", "--cascade", "-y", "-o", "json"]),
        "{\n  \"removed\": \"west\",\n  \"cascade\": true,\n  \"agentConnected\": false\n}\n",
    );
    hub.ok(&["cluster", "add", "west", "--bootstrap-token"]);
    assert_text(
        &hub.ok(&["cluster", "rm", "west", "--cascade", "-y"]),
        "cluster west removed; its certificate is revoked; its agent is not connected: \
         nothing was deleted (delete the objects and uninstall the agent by hand)\n",
    );
    let (code, _) = fails(&hub.cli(&["cluster", "rm", "west", "-y"]));
    assert_eq!(code, 3);
}

#[test]
fn get_verbs_aliases_and_completion() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = hub_with_web(dir.path());
    hub.ok(&["cluster", "label", "east", "region=eu"]);
    hub.ok(&["cluster", "annotate", "east", "owner=team-a"]);
    let text = hub.ok(&["cluster", "get", "east"]);
    let generation = regex::Regex::new(r"\d+ desired").unwrap();
    assert_text(
        &generation.replace_all(&text, "<N> desired"),
        "Name            east
Labels          env=prod,region=eu
Annotations     owner=team-a
Server          -
Connected       no
Last seen       -
Agent version   -
Generation      <N> desired, 0 acknowledged
",
    );
    let (code, err) = fails(&hub.cli(&["cluster", "get", "nope"]));
    assert_eq!(code, 3);
    assert_text(&err, "error: cluster \"nope\" not found\n");

    let text = hub.ok(&["repo", "get", &url]);
    let commit = hub.ok(&["app", "get", "web", "-o", "json"]);
    let commit: serde_json::Value = serde_json::from_str(&commit).unwrap();
    let commit = commit["revision"].as_str().unwrap().to_owned();
    assert_text(
        &normalize(&text, &[(&url, "<URL>"), (&commit[..8], "<COMMIT>")]),
        "URL             <URL>
Type            git
Revision        HEAD
Apps path       apps
Poll interval   1s
Commit          <COMMIT>
Fetched         <TIME>
Credentials     none
Error           -
",
    );
    let json: serde_json::Value =
        serde_json::from_str(&hub.ok(&["repo", "get", &format!("{url}/"), "-o", "json"])).unwrap();
    assert_eq!(json["url"], url.as_str());
    assert!(
        json["lastFetch"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "{json}"
    );
    let (code, _) = fails(&hub.cli(&["repo", "get", "file:///nowhere"]));
    assert_eq!(code, 3);

    // repo add says "added" only for a new repository.
    let same = [
        "repo",
        "add",
        &url,
        "--apps-path",
        "apps",
        "--poll-interval-secs",
        "1",
    ];
    assert_text(
        &normalize(&hub.ok(&same), &[(&url, "<URL>")]),
        "repository <URL> unchanged\n",
    );
    let mut changed = same.to_vec();
    changed.extend(["--revision", "main"]);
    assert_text(
        &normalize(&hub.ok(&changed), &[(&url, "<URL>")]),
        "repository <URL> updated\n",
    );
    let other = tempfile::tempdir().unwrap();
    let other_url = repo(other.path(), &[("x/cm.yaml", WEB_CM)]);
    assert_text(
        &normalize(
            &hub.ok(&["repo", "add", &other_url]),
            &[(&other_url, "<OTHER>")],
        ),
        "repository <OTHER> added\n",
    );

    // Aliases as kubectl and argocd users type them.
    for args in [
        &["app", "ls"][..],
        &["cluster", "ls"],
        &["repo", "ls"],
        &["token", "ls"],
    ] {
        hub.ok(args);
    }

    // Completion scripts (offline: no hub needed).
    let bash = ok(&bare(&["completion", "bash"]).output().unwrap());
    assert!(
        bash.contains("_flotilla()") && bash.contains("complete -F _flotilla"),
        "{bash}"
    );
    let script = dir.path().join("flotilla.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let zsh = ok(&bare(&["completion", "zsh"]).output().unwrap());
    assert!(zsh.starts_with("#compdef flotilla"), "{zsh}");
    let fish = ok(&bare(&["completion", "fish"]).output().unwrap());
    assert!(fish.contains("complete -c flotilla"), "{fish}");
    let (code, _) = fails(&bare(&["completion", "tcsh"]).output().unwrap());
    assert_eq!(code, 2);
}

const DB_APP: &str = "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: db
  labels:
    team: data
    env: prod
spec:
  project: data
  source:
    repoURL: {{URL}}
    path: web
  destination:
    name: west
    namespace: db
";

/// The project `db` names: an application naming a project that does not
/// exist is refused, as in Argo CD.
const DATA_PROJECT: &str = "apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: data
spec:
  sourceRepos:
  - '*'
  destinations:
  - name: '*'
    namespace: '*'
";

#[test]
fn app_list_filters_and_wide() {
    let tools = tempfile::tempdir().unwrap();
    let tools_url = repo(tools.path(), &[("tool/cm.yaml", WEB_CM)]);
    let dir = tempfile::tempdir().unwrap();
    let web = WEB_APP.replace(
        "  name: web\n",
        "  name: web\n  labels:\n    team: web\n    env: prod\n",
    );
    let tool = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: tool\nspec:\n  source:\n    repoURL: {tools_url}\n    path: tool\n    targetRevision: main\n  destination:\n    name: east\n    namespace: tool\n"
    );
    let url = repo(
        dir.path(),
        &[
            ("apps/web.yaml", &web),
            ("apps/db.yaml", DB_APP),
            ("apps/data-project.yaml", DATA_PROJECT),
            ("apps/tool.yaml", &tool),
            ("web/cm.yaml", WEB_CM),
        ],
    );
    let hub = Hub::start(&["--repo", &format!("{url}#apps"), "--poll-interval", "1s"]);
    hub.ok(&["cluster", "add", "east", "--bootstrap-token"]);
    hub.ok(&["cluster", "add", "west", "--bootstrap-token"]);
    hub.until(&["app", "list", "-o", "json"], |t| {
        serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| {
            v.as_array().is_some_and(|a| {
                a.len() == 3
                    && a.iter()
                        .all(|x| x["revision"].as_str().is_some_and(|r| r.len() == 40))
            })
        })
    });
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["app", "list", "-o", "json"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&hub.ok(&all)).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&[]), ["db", "tool", "web"]);
    assert_eq!(names(&["-l", "env=prod"]), ["db", "web"]);
    assert_eq!(names(&["--selector", "team in (web,ops),env"]), ["web"]);
    assert_eq!(names(&["-l", "!team"]), ["tool"]);
    assert_eq!(names(&["-l", "team!=web"]), ["db", "tool"]);
    assert_eq!(names(&["--cluster", "east"]), ["tool", "web"]);
    assert_eq!(names(&["--project", "data"]), ["db"]);
    assert_eq!(names(&["--project", "default"]), ["tool", "web"]);
    assert_eq!(names(&["--repo", &tools_url]), ["tool"]);
    assert_eq!(names(&["--repo", &format!("{url}/")]), ["db", "web"]);
    // No agent: every cluster is Unknown.
    assert_eq!(names(&["--sync", "unknown"]), ["db", "tool", "web"]);
    assert!(names(&["--sync", "Synced"]).is_empty());
    assert!(names(&["--health", "Healthy", "--cluster", "east"]).is_empty());
    assert_eq!(names(&["--cluster", "west", "-l", "env=prod"]), ["db"]);
    let (code, err) = fails(&hub.cli(&["app", "list", "-l", "team in web"]));
    assert_eq!(code, 2);
    assert_text(
        &err,
        "error: invalid label selector requirement \"team in web\"\n",
    );
    let (code, _) = fails(&hub.cli(&["app", "list", "--sync", "Maybe"]));
    assert_eq!(code, 2);

    // The table, and -o wide with more columns and full revisions.
    let v: serde_json::Value =
        serde_json::from_str(&hub.ok(&["app", "get", "web", "-o", "json"])).unwrap();
    let commit = v["revision"].as_str().unwrap().to_owned();
    let v: serde_json::Value =
        serde_json::from_str(&hub.ok(&["app", "get", "tool", "-o", "json"])).unwrap();
    let tool_commit = v["revision"].as_str().unwrap().to_owned();
    let pairs = [
        (url.as_str(), "<URL>"),
        (tools_url.as_str(), "<TOOLS>"),
        (commit.as_str(), "<COMMIT>"),
        (tool_commit.as_str(), "<TOOL-COMMIT>"),
        (&commit[..8], "<SHORT>"),
        (&tool_commit[..8], "<TOOL-SHORT>"),
    ];
    assert_text(
        &normalize(&hub.ok(&["app", "ls", "-l", "env=prod"]), &pairs),
        "NAME   DESTINATION   REVISION   SYNCED   HEALTHY   ORIGIN   ERROR
db     west          <SHORT>    0/1      0/1       git:<URL>:apps/db.yaml
web    east          <SHORT>    0/1      0/1       git:<URL>:apps/web.yaml
",
    );
    assert_text(
        &normalize(&hub.ok(&["app", "list", "-o", "wide"]), &pairs),
        "NAME   PROJECT   DESTINATION   SOURCE            TARGET   REVISION        SYNCED   HEALTHY   ORIGIN   ERROR
db     data      west          <URL> web         HEAD     <COMMIT>        0/1      0/1       git:<URL>:apps/db.yaml
tool   default   east          <TOOLS> tool      main     <TOOL-COMMIT>   0/1      0/1       git:<URL>:apps/tool.yaml
web    default   east          <URL> web         HEAD     <COMMIT>        0/1      0/1       git:<URL>:apps/web.yaml
",
    );
    // Other lists: RFC 3339 times, wide columns.
    assert_text(
        &normalize(&hub.ok(&["repo", "list", "-o", "wide"]), &pairs),
        "URL     TYPE   REVISION   APPS PATH   COMMIT     FETCHED   POLL   CREDENTIALS   ERROR
<URL>   git    HEAD       apps        <COMMIT>   <TIME>    1s     no
",
    );
    hub.ok(&["cluster", "annotate", "east", "owner=team-a"]);
    // How many generations a cluster went through depends on timing.
    let generations = regex::Regex::new(r"\b0/\d+\b").unwrap();
    let clusters = hub.ok(&["cluster", "list", "-o", "wide"]);
    assert_text(
        &generations.replace_all(&clusters, "0/<N>"),
        "NAME   LABELS   CONNECTED   LAST SEEN   AGENT VERSION   GENERATION (ACKED/DESIRED)   ANNOTATIONS    SERVER
east   -        no          -           -               0/<N>                        owner=team-a   -
west   -        no          -           -               0/<N>                        -              -
",
    );
    let tokens = hub.ok(&["token", "list"]);
    assert_text(
        &normalize(&tokens, &[]),
        "NAME    ACCESS       SUBJECT   GROUPS       CREATED\nadmin   read-write   admin     role:admin   <TIME>\n",
    );
}

#[test]
fn app_get_round_trips_into_create_and_set_patch() {
    let dir = tempfile::tempdir().unwrap();
    let url = repo(
        dir.path(),
        &[("web/cm.yaml", WEB_CM), ("other/cm.yaml", WEB_CM)],
    );
    let hub = Hub::start(&[]);
    hub.ok(&["cluster", "add", "east", "--bootstrap-token"]);
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, WEB_APP.replace("{{URL}}", &url)).unwrap();
    let f = file.to_str().unwrap();
    assert_text(
        &hub.ok(&["app", "create", "-f", f]),
        "application web created\n",
    );
    assert_text(
        &hub.ok(&["app", "create", "-f", f, "--upsert"]),
        "application web unchanged\n",
    );

    // What `app get -o yaml` prints is an Application resource that
    // `app create -f` takes back as it is.
    let yaml = hub.ok(&["app", "get", "web", "-o", "yaml"]);
    let resource = yaml.split("\nname: web\n").next().unwrap();
    assert_text(
        &normalize(resource, &[(&url, "<URL>")]),
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: web
spec:
  project: default
  source:
    repoURL: <URL>
    path: web
    targetRevision: HEAD
  destination:
    name: east
    namespace: web",
    );
    let got = dir.path().join("got.yaml");
    std::fs::write(&got, &yaml).unwrap();
    let g = got.to_str().unwrap();
    assert_text(
        &hub.ok(&["app", "create", "-f", g, "--upsert"]),
        "application web unchanged\n",
    );
    assert!(yaml.contains("\n    path: web\n"), "{yaml}");
    std::fs::write(
        &got,
        yaml.replace("\n    path: web\n", "\n    path: other\n"),
    )
    .unwrap();
    assert_text(
        &hub.ok(&["app", "create", "-f", g, "--upsert"]),
        "application web updated\n",
    );
    let json = hub.ok(&["app", "get", "web", "-o", "json"]);
    std::fs::write(&got, &json).unwrap();
    assert_text(
        &hub.ok(&["app", "create", "-f", g, "--upsert"]),
        "application web unchanged\n",
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "Application");
    assert_eq!(v["spec"]["source"]["path"], "other");
    // The status summary scripts read is still there.
    assert_eq!(v["path"], "other");
    assert_eq!(v["clusters"][0]["cluster"], "east");

    // app set / app patch: "updated" only when something changed.
    assert_text(
        &hub.ok(&[
            "app",
            "set",
            "web",
            "--path",
            "web",
            "--revision",
            "main",
            "--label",
            "team=web",
        ]),
        "application web updated\n",
    );
    assert_text(
        &hub.ok(&["app", "set", "web", "--revision", "main"]),
        "application web unchanged\n",
    );
    assert_text(
        &hub.ok(&[
            "app",
            "patch",
            "web",
            "--patch",
            r#"{"spec":{"syncPolicy":{"automated":{"selfHeal":true}}}}"#,
        ]),
        "application web updated\n",
    );
    let v: serde_json::Value =
        serde_json::from_str(&hub.ok(&["app", "get", "web", "-o", "json"])).unwrap();
    assert_eq!(v["spec"]["source"]["targetRevision"], "main");
    assert_eq!(v["metadata"]["labels"]["team"], "web");
    assert_eq!(v["policy"]["automated"], true);
    assert_eq!(v["policy"]["selfHeal"], true);
    hub.ok(&[
        "app",
        "set",
        "web",
        "--sync-policy",
        "none",
        "--label",
        "team-",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&hub.ok(&["app", "get", "web", "-o", "json"])).unwrap();
    assert_eq!(v["policy"]["automated"], false);
    assert!(v["metadata"]["labels"]["team"].is_null(), "{v}");
    let (code, err) = fails(&hub.cli(&["app", "patch", "web", "--patch", "not json"]));
    assert_eq!(code, 2, "{err}");
    let (code, err) = fails(&hub.cli(&["app", "patch", "web", "--type", "json", "--patch", "[]"]));
    assert_eq!(code, 2, "{err}");
    let (code, _) = fails(&hub.cli(&["app", "set", "nope", "--revision", "x"]));
    assert_eq!(code, 3);
}

#[test]
fn app_manifests_print_the_rendered_objects() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, _) = hub_with_web(dir.path());
    let yaml = hub.ok(&["app", "manifests", "web"]);
    assert!(yaml.starts_with("---\n"), "{yaml}");
    let objects: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let objects: Vec<_> = objects.into_iter().filter(|o| !o.is_null()).collect();
    assert_eq!(objects.len(), 1, "{yaml}");
    assert_eq!(objects[0]["kind"], "ConfigMap");
    assert_eq!(objects[0]["metadata"]["name"], "web");
    assert_eq!(objects[0]["data"]["greeting"], "hello");
    let json: serde_json::Value =
        serde_json::from_str(&hub.ok(&["app", "manifests", "web", "-o", "json"])).unwrap();
    assert_eq!(json[0]["kind"], "ConfigMap");
    let (code, _) = fails(&hub.cli(&["app", "manifests", "nope"]));
    assert_eq!(code, 3);
}

/// `repo add` checks through the hub that the repository is reachable
/// (`--skip-check` registers it anyway); `repo remove` (`rm`) asks on a
/// terminal, needs -y elsewhere, and refuses while applications use the
/// repository unless --force.
#[test]
fn repo_add_checks_and_repo_remove_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, url) = hub_with_web(dir.path());

    let (code, err) = fails(&hub.cli(&["repo", "add", "file:///nowhere/config.git"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: repository file:///nowhere/config.git is not reachable: ")
            && err.contains("No such file or directory")
            && err.contains("(--skip-check registers it anyway)"),
        "{err}"
    );
    assert!(!hub.ok(&["repo", "list"]).contains("nowhere"));
    assert_text(
        &hub.ok(&["repo", "add", "file:///nowhere/config.git", "--skip-check"]),
        "repository file:///nowhere/config.git added\n",
    );
    // A reachable one passes the check.
    let other = tempfile::tempdir().unwrap();
    let other_url = repo(other.path(), &[("x/cm.yaml", WEB_CM)]);
    assert_text(
        &normalize(
            &hub.ok(&["repo", "add", &other_url]),
            &[(&other_url, "<OTHER>")],
        ),
        "repository <OTHER> added\n",
    );

    // Not on a terminal: refused without -y.
    let (code, err) = fails(&hub.cli(&["repo", "rm", "file:///nowhere/config.git"]));
    assert_eq!(code, 2, "{err}");
    let (code, text) = on_terminal(
        &hub,
        &["repo", "remove", "file:///nowhere/config.git"],
        "n\n",
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Are you sure you want to remove repository 'file:///nowhere/config.git' and its credentials? [y/n] ")
            && text.contains("The command to remove repository 'file:///nowhere/config.git' was cancelled."),
        "{text}"
    );
    assert_text(
        &hub.ok(&["repo", "rm", "file:///nowhere/config.git", "-y"]),
        "repository file:///nowhere/config.git removed\n",
    );
    let (code, err) = fails(&hub.cli(&["repo", "rm", "file:///nowhere/config.git", "-y"]));
    assert_eq!(code, 3);
    assert_text(
        &err,
        "error: repository file:///nowhere/config.git is not registered (NotFound)\n",
    );

    // In use: refused, naming the applications, unless --force.
    let (code, err) = fails(&hub.cli(&["repo", "rm", &url, "-y"]));
    assert_eq!(code, 1);
    assert_text(
        &normalize(&err, &[(&url, "<URL>")]),
        "error: repository <URL> is used by (or declared) application(s) web: delete them first, or remove it anyway with --force (FailedPrecondition)\n",
    );
    assert_text(
        &normalize(
            &hub.ok(&["repo", "rm", &url, "--force", "-y", "-o", "json"]),
            &[(&url, "<URL>")],
        ),
        "{\n  \"removed\": \"<URL>\",\n  \"applications\": [\n    \"web\"\n  ]\n}\n",
    );
    assert!(!hub.ok(&["repo", "list"]).contains(&url));
}

/// `app refresh --wait` gives up at its timeout saying what it still waits
/// for (here: a cluster with no agent); `--timeout` needs `--wait`.
#[test]
fn app_refresh_wait_times_out_naming_what_it_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, _url) = hub_with_web(dir.path());
    let (code, err) = fails(&hub.cli(&["app", "refresh", "web", "--wait", "--timeout", "5s"]));
    assert_eq!(code, 1, "{err}");
    let pattern = regex::Regex::new(
        r"^error: refreshing web: timed out after 5s waiting for east to report [0-9a-f]{8} \(reports nothing yet\)\n$",
    )
    .unwrap();
    assert!(pattern.is_match(&err), "{err}");
    let (code, _) = fails(&hub.cli(&["app", "refresh", "web", "--timeout", "5s"]));
    assert_eq!(code, 2);
}
