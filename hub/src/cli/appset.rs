//! `flotilla appset …` and the cluster inventory commands
//! (`flotilla cluster label|annotate|apply`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::appset::{ClusterInfo, LocalCheckout, parse_application_sets};
use crate::cli::{
    Client, Global, Output, ago, cluster_json, labels_str, print_out, read_input, status_err, table,
};
use flotilla_proto as pb;

#[derive(Debug, Subcommand)]
pub enum AppsetCommand {
    /// Create an ApplicationSet from an Argo CD ApplicationSet manifest.
    Create {
        /// YAML or JSON file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Replace it if it exists.
        #[arg(long)]
        upsert: bool,
    },
    /// List ApplicationSets.
    List,
    /// Show one ApplicationSet: generated applications and conditions.
    Get {
        /// The ApplicationSet.
        name: String,
    },
    /// Delete an ApplicationSet and the applications it generated.
    Delete {
        /// The ApplicationSet.
        name: String,
    },
    /// Confirm the deletions held by the deletion budget (once).
    Confirm {
        /// The ApplicationSet.
        name: String,
    },
    /// Render an ApplicationSet offline (no hub), like `argocd appset
    /// generate`: prints the generated Applications.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// ApplicationSet file (YAML stream; `-` for stdin).
    pub file: PathBuf,
    /// Cluster inventory: a YAML stream of `Cluster` resources and/or Argo
    /// CD cluster Secrets.
    #[arg(long)]
    pub clusters: Option<PathBuf>,
    /// Local checkout used for every `git` generator.
    #[arg(long)]
    pub repo_root: Option<PathBuf>,
}

/// Renders the generated Applications of every set in `set_text`: the
/// output text (YAML stream or JSON list) and the per-application errors.
///
/// # Errors
/// Invalid input or a set-level error (generator failure, duplicate
/// names), with the message.
pub fn generate_text(
    set_text: &str,
    origin: &str,
    clusters: &[ClusterInfo],
    repo_root: Option<&Path>,
    json_out: bool,
) -> Result<(String, Vec<String>)> {
    let sets = parse_application_sets(set_text, origin)?;
    if sets.is_empty() {
        bail!("{origin}: no ApplicationSet found");
    }
    let checkout = repo_root.map(LocalCheckout::new);
    let git = checkout.as_ref().map(|c| c as &dyn crate::appset::GitFiles);
    let mut apps = Vec::new();
    let mut errors = Vec::new();
    for set in &sets {
        let g = set.generate(clusters, git)?;
        for e in g.errors {
            // The model's own context repeats what this line already says.
            let own = format!("ApplicationSet {}: ", set.name);
            let message = e.message.strip_prefix(&own).unwrap_or(&e.message);
            let app = format!("Application {:?}: ", e.application);
            let message = message.strip_prefix(&app).unwrap_or(message);
            errors.push(format!(
                "ApplicationSet {:?}: application {:?}: {message}",
                set.name, e.application
            ));
        }
        apps.extend(g.applications);
    }
    let text = if json_out {
        let mut s = serde_json::to_string_pretty(&apps)?;
        s.push('\n');
        s
    } else {
        let mut s = String::new();
        for a in &apps {
            s.push_str("---\n");
            s.push_str(&serde_saphyr::to_string(a).context("YAML output")?);
        }
        s
    };
    Ok((text, errors))
}

/// `flotilla appset generate`: the Applications on stdout; each error once
/// on stderr.
///
/// # Errors
/// Unreadable input, a set-level error, or any application that could not
/// be rendered (exit status 1 after the others are printed), so a script
/// never mistakes a broken template for a smaller set.
pub fn generate(args: &GenerateArgs, output: Output) -> Result<()> {
    let text = read_input(&args.file)?;
    let clusters = match &args.clusters {
        Some(f) => {
            let t = read_input(f)?;
            let origin = f.display().to_string();
            crate::inventory::parse_clusters(&t, &origin)
                .map_err(anyhow::Error::msg)?
                .iter()
                .map(|c| c.info())
                .collect()
        }
        None => Vec::new(),
    };
    let (out, errors) = generate_text(
        &text,
        &args.file.display().to_string(),
        &clusters,
        args.repo_root.as_deref(),
        output == Output::Json,
    )?;
    crate::cli::exit::write_stdout(&out);
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    // Already printed: the exit status alone carries the failure.
    Err(crate::cli::ExitStatus(1).into())
}

fn appset_json(s: &pb::ApplicationSet) -> Value {
    json!({
        "name": s.name,
        "origin": s.origin,
        "applications": s.applications,
        "conditions": s.conditions.iter().map(|c| json!({
            "type": c.r#type,
            "message": c.message,
            "application": c.application,
        })).collect::<Vec<_>>(),
        "pendingDeletions": s.pending_deletions,
        "applicationsSync": s.applications_sync,
        "preserveResourcesOnDeletion": s.preserve_resources_on_deletion,
        "lastResultMs": s.last_result_ms,
        "lastGoodMs": s.last_good_ms,
        "evaluations": s.evaluations,
        "lastEvaluatedMs": s.last_evaluated_ms,
        "applicationStatus": s.application_status.iter().map(|a| json!({
            "application": a.application,
            "status": a.status,
            "step": a.step,
            "message": a.message,
            "lastTransitionMs": a.last_transition_ms,
            "targetRevisions": a.target_revisions,
        })).collect::<Vec<_>>(),
    })
}

fn status_word(s: &pb::ApplicationSet) -> String {
    let bad: Vec<&str> = s
        .conditions
        .iter()
        .filter(|c| {
            c.r#type != crate::appset::lifecycle::UP_TO_DATE
                && c.r#type != crate::rollout::rolling_sync::ROLLOUT_PROGRESSING
        })
        .map(|c| c.r#type.as_str())
        .collect();
    if bad.is_empty() {
        "OK".into()
    } else {
        let mut b = bad.clone();
        b.dedup();
        b.join(",")
    }
}

/// When the set was last evaluated: the in-memory time, else (after a
/// hub restart, before its first pass) the stored time of the last result.
fn last_evaluated(now: i64, s: &pb::ApplicationSet) -> String {
    ago(now, s.last_evaluated_ms.max(s.last_result_ms))
}

fn describe(s: &pb::ApplicationSet) -> String {
    let now = crate::clock::now_ms();
    let mut out = format!(
        "Name:             {}\nOrigin:           {}\nApplicationsSync: {}\nPreserve:         {}\nLast evaluated:   {}\nEvaluations:      {}\nLast good:        {}\n",
        s.name,
        s.origin,
        s.applications_sync,
        s.preserve_resources_on_deletion,
        last_evaluated(now, s),
        s.evaluations,
        if s.last_good_ms > 0 {
            ago(now, s.last_good_ms)
        } else {
            "never".into()
        },
    );
    if !s.pending_deletions.is_empty() {
        out.push_str(&format!(
            "Held deletions:   {} (flotilla appset confirm {})\n",
            s.pending_deletions.join(", "),
            s.name
        ));
    }
    out.push('\n');
    out.push_str(&table(
        &["APPLICATION"],
        s.applications.iter().map(|a| vec![a.clone()]).collect(),
    ));
    if !s.application_status.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["APPLICATION", "STEP", "STATUS", "REVISION", "MESSAGE"],
            s.application_status
                .iter()
                .map(|a| {
                    vec![
                        a.application.clone(),
                        a.step.clone(),
                        a.status.clone(),
                        a.target_revisions
                            .iter()
                            .map(|r| r.chars().take(10).collect::<String>())
                            .collect::<Vec<_>>()
                            .join(","),
                        a.message.clone(),
                    ]
                })
                .collect(),
        ));
    }
    out.push('\n');
    out.push_str(&table(
        &["CONDITION", "APPLICATION", "MESSAGE"],
        s.conditions
            .iter()
            .map(|c| {
                vec![
                    c.r#type.clone(),
                    if c.application.is_empty() {
                        "-".into()
                    } else {
                        c.application.clone()
                    },
                    c.message.replace('\n', " "),
                ]
            })
            .collect(),
    ));
    out
}

/// `flotilla appset …` against the hub.
///
/// # Errors
/// The call failed.
pub async fn run(g: &Global, c: &mut Client, cmd: AppsetCommand) -> Result<()> {
    match cmd {
        AppsetCommand::Create { file, upsert } => {
            let manifest = read_input(&file)?;
            let s = c
                .create_application_set(pb::CreateApplicationSetRequest { manifest, upsert })
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(g.output, appset_json(&s), || {
                format!(
                    "application set {} stored: {} application(s), status {}\n",
                    s.name,
                    s.applications.len(),
                    status_word(&s)
                )
            });
        }
        AppsetCommand::List => {
            let sets = c
                .list_application_sets(pb::ListApplicationSetsRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .application_sets;
            print_out(
                g.output,
                Value::Array(sets.iter().map(appset_json).collect()),
                || {
                    let wide = g.output == Output::Wide;
                    let mut head = vec!["NAME", "APPLICATIONS", "SYNC POLICY", "STATUS", "ORIGIN"];
                    if wide {
                        head.extend(["EVALUATIONS", "LAST EVALUATED"]);
                    }
                    let now = crate::clock::now_ms();
                    table(
                        &head,
                        sets.iter()
                            .map(|s| {
                                let mut row = vec![
                                    s.name.clone(),
                                    s.applications.len().to_string(),
                                    s.applications_sync.clone(),
                                    status_word(s),
                                    s.origin.clone(),
                                ];
                                if wide {
                                    row.push(s.evaluations.to_string());
                                    row.push(last_evaluated(now, s));
                                }
                                row
                            })
                            .collect(),
                    )
                },
            );
        }
        AppsetCommand::Get { name } => {
            let s = c
                .get_application_set(pb::GetApplicationSetRequest { name })
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(g.output, appset_json(&s), || describe(&s));
        }
        AppsetCommand::Delete { name } => {
            c.delete_application_set(pb::DeleteApplicationSetRequest { name: name.clone() })
                .await
                .map_err(status_err)?;
            print_out(g.output, json!({"deleted": name}), || {
                format!("application set {name} deleted\n")
            });
        }
        AppsetCommand::Confirm { name } => {
            let s = c
                .confirm_application_set(pb::ConfirmApplicationSetRequest { name })
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(g.output, appset_json(&s), || {
                format!("held deletions of {} confirmed\n", s.name)
            });
        }
        AppsetCommand::Generate(args) => generate(&args, g.output)?,
    }
    Ok(())
}

/// `flotilla cluster label|annotate NAME k=v k2-`.
///
/// # Errors
/// Invalid arguments or the call failed.
pub async fn label(
    g: &Global,
    c: &mut Client,
    name: &str,
    edits: &[String],
    annotations: bool,
) -> Result<()> {
    let (set, remove) = crate::inventory::parse_edits(edits).map_err(anyhow::Error::msg)?;
    let mut req = pb::UpdateClusterRequest {
        name: name.to_owned(),
        ..Default::default()
    };
    if annotations {
        req.set_annotations = set.into_iter().collect();
        req.remove_annotations = remove;
    } else {
        req.set_labels = set.into_iter().collect();
        req.remove_labels = remove;
    }
    let cl = c
        .update_cluster(req)
        .await
        .map_err(status_err)?
        .into_inner();
    print_out(g.output, cluster_json(&cl), || {
        if annotations {
            format!(
                "cluster {} annotations: {}\n",
                cl.name,
                labels_str(&cl.annotations)
            )
        } else {
            format!("cluster {} labels: {}\n", cl.name, labels_str(&cl.labels))
        }
    });
    Ok(())
}

/// `flotilla cluster apply -f FILE`.
///
/// # Errors
/// Unreadable input or the call failed.
pub async fn apply_clusters(g: &Global, c: &mut Client, file: &Path) -> Result<()> {
    let manifest = read_input(file)?;
    let clusters = c
        .apply_clusters(pb::ApplyClustersRequest { manifest })
        .await
        .map_err(status_err)?
        .into_inner()
        .clusters;
    print_out(
        g.output,
        Value::Array(clusters.iter().map(cluster_json).collect()),
        || {
            clusters
                .iter()
                .map(|c| format!("cluster {} applied ({})\n", c.name, labels_str(&c.labels)))
                .collect()
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_shows_apps_conditions_and_held_deletions() {
        let s = pb::ApplicationSet {
            name: "web".into(),
            origin: "api".into(),
            applications: vec!["web-c1".into(), "web-c2".into()],
            conditions: vec![pb::ApplicationSetCondition {
                r#type: "DeletionHeld".into(),
                message: "holding 2 of 3".into(),
                application: String::new(),
            }],
            pending_deletions: vec!["web-c3".into(), "web-c4".into()],
            applications_sync: "sync".into(),
            ..Default::default()
        };
        let text = describe(&s);
        assert!(text.contains("web-c2"), "{text}");
        assert!(text.contains("DeletionHeld"), "{text}");
        assert!(
            text.contains("web-c3, web-c4 (flotilla appset confirm web)"),
            "{text}"
        );
        assert_eq!(status_word(&s), "DeletionHeld");
        let ok = pb::ApplicationSet {
            conditions: vec![pb::ApplicationSetCondition {
                r#type: "ResourcesUpToDate".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(status_word(&ok), "OK");
        let v = appset_json(&s);
        assert_eq!(v["pendingDeletions"][1], "web-c4");
        assert_eq!(v["conditions"][0]["type"], "DeletionHeld");
    }

    #[test]
    fn generate_text_renders_yaml_and_json() {
        let set = "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: s\nspec:\n  generators:\n  - list:\n      elements:\n      - n: a\n  template:\n    metadata:\n      name: '{{n}}'\n    spec:\n      source: {repoURL: 'file:///r', path: p}\n      destination: {name: c1}\n";
        let (yaml, errors) = generate_text(set, "t", &[], None, false).unwrap();
        assert!(errors.is_empty());
        assert!(
            yaml.starts_with("---\napiVersion: argoproj.io/v1alpha1\n"),
            "{yaml}"
        );
        let (json, _) = generate_text(set, "t", &[], None, true).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["metadata"]["name"], "a");
        let err = generate_text("kind: Nothing\n", "t", &[], None, false).unwrap_err();
        assert!(err.to_string().contains("no ApplicationSet"), "{err}");
    }
}
