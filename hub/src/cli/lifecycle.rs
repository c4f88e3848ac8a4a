//! `app delete` (Argo CD's cascade, propagation policy and confirmation
//! prompt), the confirmation of destructive commands, and what makes `app
//! get` exit non-zero.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result};
use serde_json::json;

use super::{Client, Global, Output, print_out, status_err};
use flotilla_proto as pb;

/// Options of `flotilla app delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The application.
    pub name: String,
    /// Delete the application's objects in its clusters too
    /// (`--cascade=false`: leave them).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_name = "true|false")]
    pub cascade: bool,
    /// How the objects are deleted with --cascade: foreground (each object
    /// after what it owns) or background.
    #[arg(short = 'p', long, value_name = "foreground|background")]
    pub propagation_policy: Option<String>,
    /// Do not ask for confirmation. A cascading deletion asks on a
    /// terminal and is refused elsewhere (scripts) without -y.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// What a destructive command does before it acts.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Confirmation {
    /// Go ahead: nothing to confirm, or --yes.
    Proceed,
    /// Ask on the terminal.
    Ask,
    /// Refuse: it needs confirming and nobody can answer.
    Refuse,
}

/// Whether a command that `needed` confirmation asks first: not with
/// `--yes`; on a terminal it asks; elsewhere (a script, CI) it refuses
/// rather than delete unasked.
pub(super) fn confirmation(needed: bool, yes: bool, terminal: bool) -> Confirmation {
    match (needed && !yes, terminal) {
        (false, _) => Confirmation::Proceed,
        (true, true) => Confirmation::Ask,
        (true, false) => Confirmation::Refuse,
    }
}

/// Asks `question` when needed (see [`confirmation`]); whether to go on.
///
/// # Errors
/// Refused (not a terminal, no --yes; exit 2), or no answer.
pub(super) fn confirmed(needed: bool, yes: bool, question: &str, what: &str) -> Result<bool> {
    let terminal = std::io::stdin().is_terminal();
    match confirmation(needed, yes, terminal) {
        Confirmation::Proceed => Ok(true),
        Confirmation::Ask => ask(question),
        Confirmation::Refuse => Err(super::exit::usage(format!(
            "{what} needs confirmation and stdin is not a terminal: pass -y (--yes) to go ahead without asking"
        ))),
    }
}

/// The answer to the prompt: `Some(true)` for y/yes, `Some(false)` for
/// n/no, `None` to ask again.
pub(super) fn answer(line: &str) -> Option<bool> {
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Some(true),
        "n" | "no" => Some(false),
        _ => None,
    }
}

/// Asks until the answer is yes or no.
fn ask(question: &str) -> Result<bool> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    loop {
        super::exit::out!("{question} [y/n] ");
        let mut line = String::new();
        if input.read_line(&mut line).context("reading the answer")? == 0 {
            return Err(super::exit::usage(
                "no answer (end of input): pass --yes to delete without asking",
            ));
        }
        if let Some(yes) = answer(&line) {
            return Ok(yes);
        }
    }
}

/// `flotilla app delete NAME [--cascade=false] [-p background] [-y]`.
pub(super) async fn delete(g: &Global, c: &mut Client, a: DeleteArgs) -> Result<()> {
    let name = &a.name;
    // As `argocd app delete`: only a cascading deletion asks.
    let question = format!("Are you sure you want to delete '{name}' and all its resources?");
    if !confirmed(
        a.cascade,
        a.yes,
        &question,
        &format!("deleting application {name} and its objects"),
    )? {
        super::exit::outln!("The command to delete '{name}' was cancelled.");
        return Ok(());
    }
    let r = c
        .delete_application(pb::DeleteApplicationRequest {
            name: name.clone(),
            // Always explicit: unset keeps the meaning older clients had.
            cascade: Some(a.cascade),
            propagation_policy: a.propagation_policy.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    if g.output == Output::Table || g.output == Output::Wide {
        for cluster in &r.clusters {
            let connected = !r.not_connected.contains(cluster);
            eprintln!(
                "{cluster}: {}",
                cluster_line(&r.propagation_policy, connected)
            );
        }
    }
    print_out(
        g.output,
        json!({
            "deleted": name,
            "cascade": r.propagation_policy != "orphan",
            "propagationPolicy": r.propagation_policy,
            "clusters": r.clusters,
            "notConnected": r.not_connected,
        }),
        || format!("application '{name}' deleted\n"),
    );
    Ok(())
}

/// What happens on one cluster, for the progress lines.
fn cluster_line(propagation: &str, connected: bool) -> String {
    let what = if propagation == "orphan" {
        "its objects stay (no cascade)".to_owned()
    } else {
        format!("the agent deletes its objects ({propagation} propagation)")
    };
    if connected {
        what
    } else {
        format!("not connected; when it connects, {what}")
    }
}

/// The errors `app get` shows, which make it exit 1: the hub cannot fetch
/// or render the source or the definition is invalid (`error`), a cluster
/// cannot compare (sync Unknown with a reason: a render error, an invalid
/// ignoreDifferences, the cluster unreachable), or a cluster's last sync
/// operation failed. OutOfSync, a health other than Healthy (Degraded
/// included: `app wait` fails on it) and a cluster that has not reported
/// yet are states, not errors.
pub(super) fn app_errors(a: &pb::Application) -> Vec<String> {
    let mut errors = Vec::new();
    if !a.error.is_empty() {
        errors.push(a.error.lines().next().unwrap_or_default().to_owned());
    }
    for c in &a.clusters {
        let Some(s) = &c.status else {
            continue;
        };
        if s.sync == pb::SyncStatus::Unknown as i32 && !s.message.is_empty() {
            errors.push(format!(
                "{}: {}",
                c.cluster,
                s.message.lines().next().unwrap_or_default()
            ));
        }
        if let Some(op) = &s.operation
            && (op.phase == "Failed" || op.phase == "Error")
        {
            errors.push(format!(
                "{}: sync {}: {}",
                c.cluster,
                op.phase.to_ascii_lowercase(),
                op.message.lines().next().unwrap_or_default()
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_like_argocd() {
        use Confirmation::*;
        assert_eq!(confirmation(true, false, true), Ask);
        assert_eq!(confirmation(true, true, true), Proceed, "--yes");
        assert_eq!(confirmation(false, false, true), Proceed, "no cascade");
        assert_eq!(confirmation(true, false, false), Refuse, "not a terminal");
        assert_eq!(
            confirmation(true, true, false),
            Proceed,
            "--yes in a script"
        );
        assert_eq!(answer("y\n"), Some(true));
        assert_eq!(answer(" YES "), Some(true));
        assert_eq!(answer("n"), Some(false));
        assert_eq!(answer("no\n"), Some(false));
        assert_eq!(answer("maybe"), None);
        assert_eq!(answer(""), None);
    }

    fn cluster(sync: pb::SyncStatus, message: &str, phase: &str) -> pb::ClusterAppStatus {
        pb::ClusterAppStatus {
            cluster: "c1".into(),
            desired_revision: "r".into(),
            status: Some(pb::AppStatus {
                sync: sync as i32,
                health: pb::HealthStatus::Degraded as i32,
                message: message.into(),
                operation: (!phase.is_empty()).then(|| pb::OperationState {
                    phase: phase.into(),
                    message: "apply failed".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn what_counts_as_an_error() {
        use pb::SyncStatus::*;
        let app = |error: &str, clusters: Vec<pb::ClusterAppStatus>| pb::Application {
            name: "web".into(),
            error: error.into(),
            clusters,
            ..Default::default()
        };
        // States are not errors: OutOfSync, Degraded, nothing reported.
        let states = app(
            "",
            vec![
                cluster(OutOfSync, "pinned to 01234567 by rollback", "Succeeded"),
                pb::ClusterAppStatus::default(),
            ],
        );
        assert!(app_errors(&states).is_empty());
        assert_eq!(
            app_errors(&app("apps/web.yaml: invalid YAML at line 3", vec![])),
            ["apps/web.yaml: invalid YAML at line 3"]
        );
        assert_eq!(
            app_errors(&app(
                "",
                vec![cluster(Unknown, "render error: x.yaml: bad", "")]
            )),
            ["c1: render error: x.yaml: bad"]
        );
        assert_eq!(
            app_errors(&app("", vec![cluster(Synced, "", "Failed")])),
            ["c1: sync failed: apply failed"]
        );
        // Unknown without a reason: not compared yet.
        assert!(app_errors(&app("", vec![cluster(Unknown, "", "")])).is_empty());
    }
}
