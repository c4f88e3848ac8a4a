//! tenancy: `flotilla proj …`, Argo CD AppProjects.
//!
//! The edit commands (`add-source`, `add-destination`, …) read the project,
//! change its definition and write it back whole, as `argocd proj` does.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Client, Global, print_out, read_input, status_err, table};
use flotilla_proto as pb;

#[derive(Debug, Subcommand)]
pub enum ProjCommand {
    /// Project roles: tokens carrying a role's policies.
    #[command(subcommand)]
    Role(super::rbac::ProjRoleCommand),
    /// Sync windows (deploy windows): list, add, delete, manual sync.
    #[command(subcommand)]
    Windows(WindowsCommand),
    /// Create a project from an Argo CD AppProject manifest.
    Create {
        /// YAML or JSON file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Replace it if it exists.
        #[arg(long)]
        upsert: bool,
    },
    /// List projects (the implicit `default` included).
    List,
    /// Show one project: its definition and the applications naming it.
    Get {
        /// The project.
        name: String,
    },
    /// Delete a project no application names.
    Delete {
        /// The project.
        name: String,
    },
    /// Permit a source repository (a glob; `!` to deny).
    AddSource {
        /// The project.
        project: String,
        /// Repository URL pattern.
        url: String,
    },
    /// Remove a source repository entry.
    RemoveSource {
        /// The project.
        project: String,
        /// Repository URL pattern, as written.
        url: String,
    },
    /// Permit a destination: a cluster (server URL, or with `--name` the
    /// cluster name) and a namespace (globs; `!` to deny).
    AddDestination {
        /// The project.
        project: String,
        /// Cluster server URL (or name with `--name`).
        server: String,
        /// Namespace pattern.
        namespace: String,
        /// SERVER is a cluster name.
        #[arg(long)]
        name: bool,
    },
    /// Remove a destination entry.
    RemoveDestination {
        /// The project.
        project: String,
        /// Cluster server URL (or name with `--name`), as written.
        server: String,
        /// Namespace pattern, as written.
        namespace: String,
        /// SERVER is a cluster name.
        #[arg(long)]
        name: bool,
    },
    /// Add a cluster-scoped group/kind to the whitelist.
    AllowClusterResource {
        /// The project.
        project: String,
        /// API group (`''` for the core group).
        group: String,
        /// Kind.
        kind: String,
    },
    /// Remove a cluster-scoped group/kind from the whitelist.
    DenyClusterResource {
        /// The project.
        project: String,
        /// API group.
        group: String,
        /// Kind.
        kind: String,
    },
}

/// `flotilla proj windows …`, as `argocd proj windows …`.
#[derive(Debug, Subcommand)]
pub enum WindowsCommand {
    /// List a project's sync windows, with whether each is open now.
    List {
        /// The project.
        project: String,
    },
    /// Add a sync window.
    Add {
        /// The project.
        project: String,
        /// `allow` or `deny`.
        #[arg(long)]
        kind: String,
        /// When it opens: a 5-field cron schedule (`0 22 * * *`).
        #[arg(long)]
        schedule: String,
        /// How long it stays open (`1h`, `30m`, `1h30m`).
        #[arg(long)]
        duration: String,
        /// Application name globs, comma-separated.
        #[arg(long, value_delimiter = ',')]
        applications: Vec<String>,
        /// Destination namespace globs, comma-separated.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Cluster name or server globs, comma-separated.
        #[arg(long, value_delimiter = ',')]
        clusters: Vec<String>,
        /// Let manual syncs through while the window blocks.
        #[arg(long)]
        manual_sync: bool,
        /// IANA time zone the schedule is read in (default UTC).
        #[arg(long, default_value = "")]
        time_zone: String,
        /// Match only when every list that is set matches.
        #[arg(long)]
        use_and_operator: bool,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete the window with index ID (as `windows list` shows it).
    Delete {
        /// The project.
        project: String,
        /// The window's index.
        id: usize,
    },
    /// Let manual syncs through window ID.
    EnableManualSync {
        /// The project.
        project: String,
        /// The window's index.
        id: usize,
    },
    /// Stop letting manual syncs through window ID.
    DisableManualSync {
        /// The project.
        project: String,
        /// The window's index.
        id: usize,
    },
}

fn window_json(w: &pb::SyncWindowState) -> Value {
    json!({
        "id": w.index,
        "kind": w.kind,
        "schedule": w.schedule,
        "duration": w.duration,
        "timeZone": w.time_zone,
        "applications": w.applications,
        "namespaces": w.namespaces,
        "clusters": w.clusters,
        "manualSync": w.manual_sync,
        "andOperator": w.and_operator,
        "description": w.description,
        "active": w.active,
        "untilMs": w.until_ms,
        "nextMs": w.next_ms,
    })
}

fn windows_table(windows: &[pb::SyncWindowState]) -> String {
    let time = |ms: i64| {
        if ms == 0 {
            "-".to_owned()
        } else {
            super::ops::time_of(ms)
        }
    };
    let or_dash = |l: &[String]| {
        if l.is_empty() {
            "-".to_owned()
        } else {
            l.join(",")
        }
    };
    table(
        &[
            "ID",
            "STATUS",
            "KIND",
            "SCHEDULE",
            "DURATION",
            "TIMEZONE",
            "APPLICATIONS",
            "NAMESPACES",
            "CLUSTERS",
            "MANUALSYNC",
            "ANDOPERATOR",
            "UNTIL",
            "NEXT",
        ],
        windows
            .iter()
            .map(|w| {
                vec![
                    w.index.to_string(),
                    if w.active { "Active" } else { "Inactive" }.to_owned(),
                    w.kind.clone(),
                    w.schedule.clone(),
                    w.duration.clone(),
                    if w.time_zone.is_empty() {
                        "UTC".to_owned()
                    } else {
                        w.time_zone.clone()
                    },
                    or_dash(&w.applications),
                    or_dash(&w.namespaces),
                    or_dash(&w.clusters),
                    if w.manual_sync { "Enabled" } else { "Disabled" }.to_owned(),
                    w.and_operator.to_string(),
                    if w.active {
                        time(w.until_ms)
                    } else {
                        "-".to_owned()
                    },
                    time(w.next_ms),
                ]
            })
            .collect(),
    )
}

/// The window at `id` of the definition being edited.
fn window_at(doc: &mut Value, id: usize) -> Result<&mut Value> {
    let list = list_of(doc, "syncWindows")?;
    let n = list.len();
    list.get_mut(id)
        .with_context(|| format!("there is no sync window {id} (the project has {n})"))
}

async fn set_manual_sync(
    g: &Global,
    c: &mut Client,
    project: &str,
    id: usize,
    on: bool,
) -> Result<()> {
    edit(g, c, project, |doc| {
        let w = window_at(doc, id)?
            .as_object_mut()
            .with_context(|| format!("sync window {id} is not an object"))?;
        if on {
            w.insert("manualSync".into(), json!(true));
        } else {
            w.remove("manualSync");
        }
        Ok(())
    })
    .await
}

async fn windows(g: &Global, c: &mut Client, cmd: WindowsCommand) -> Result<()> {
    match cmd {
        WindowsCommand::List { project } => {
            let p = c
                .get_project(pb::GetProjectRequest { name: project })
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(
                g.output,
                Value::Array(p.sync_windows.iter().map(window_json).collect()),
                || windows_table(&p.sync_windows),
            );
        }
        WindowsCommand::Add {
            project,
            kind,
            schedule,
            duration,
            applications,
            namespaces,
            clusters,
            manual_sync,
            time_zone,
            use_and_operator,
            description,
        } => {
            let mut w = serde_json::Map::new();
            w.insert("kind".into(), json!(kind));
            w.insert("schedule".into(), json!(schedule));
            w.insert("duration".into(), json!(duration));
            for (k, l) in [
                ("applications", applications),
                ("namespaces", namespaces),
                ("clusters", clusters),
            ] {
                if !l.is_empty() {
                    w.insert(k.into(), json!(l));
                }
            }
            if manual_sync {
                w.insert("manualSync".into(), json!(true));
            }
            if !time_zone.is_empty() {
                w.insert("timeZone".into(), json!(time_zone));
            }
            if use_and_operator {
                w.insert("andOperator".into(), json!(true));
            }
            if !description.is_empty() {
                w.insert("description".into(), json!(description));
            }
            edit(g, c, &project, |doc| {
                list_of(doc, "syncWindows")?.push(Value::Object(w));
                Ok(())
            })
            .await?;
        }
        WindowsCommand::Delete { project, id } => {
            edit(g, c, &project, |doc| {
                window_at(doc, id)?;
                list_of(doc, "syncWindows")?.remove(id);
                Ok(())
            })
            .await?;
        }
        WindowsCommand::EnableManualSync { project, id } => {
            set_manual_sync(g, c, &project, id, true).await?;
        }
        WindowsCommand::DisableManualSync { project, id } => {
            set_manual_sync(g, c, &project, id, false).await?;
        }
    }
    Ok(())
}

fn project_json(p: &pb::Project) -> Value {
    json!({
        "name": p.name,
        "origin": p.origin,
        "sourceRepos": p.source_repos,
        "destinations": p.destinations.iter().map(|d| json!({
            "server": d.server, "name": d.name, "namespace": d.namespace,
        })).collect::<Vec<_>>(),
        "applications": p.applications,
        "syncWindows": p.sync_windows.iter().map(window_json).collect::<Vec<_>>(),
        "manifest": p.manifest,
    })
}

fn destinations_str(p: &pb::Project) -> String {
    p.destinations
        .iter()
        .map(|d| {
            let cluster = if d.name.is_empty() {
                &d.server
            } else {
                &d.name
            };
            format!("{cluster}/{}", d.namespace)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The project's definition as a JSON document, to edit.
async fn definition(c: &mut Client, name: &str) -> Result<Value> {
    let p = c
        .get_project(pb::GetProjectRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let mut docs = crate::yaml::parse_documents(&p.manifest)
        .map_err(|e| anyhow::anyhow!("project {name:?}: unreadable definition: {}", e.message))?;
    if docs.len() != 1 {
        bail!("project {name:?}: unreadable definition");
    }
    Ok(docs.remove(0))
}

/// The list at `spec.<field>`, created when missing.
fn list_of<'a>(doc: &'a mut Value, field: &str) -> Result<&'a mut Vec<Value>> {
    let spec = doc
        .as_object_mut()
        .context("the definition is not an object")?
        .entry("spec")
        .or_insert_with(|| json!({}));
    let list = spec
        .as_object_mut()
        .context("spec is not an object")?
        .entry(field)
        .or_insert_with(|| json!([]));
    list.as_array_mut()
        .with_context(|| format!("spec.{field} is not a list"))
}

fn destination(server: &str, namespace: &str, by_name: bool) -> Value {
    if by_name {
        json!({"name": server, "namespace": namespace})
    } else {
        json!({"server": server, "namespace": namespace})
    }
}

async fn edit(
    g: &Global,
    c: &mut Client,
    project: &str,
    change: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<()> {
    let mut doc = definition(c, project).await?;
    change(&mut doc)?;
    let manifest = serde_json::to_string(&doc)?;
    let p = c
        .create_project(pb::CreateProjectRequest {
            manifest,
            upsert: true,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    print_out(g.output, project_json(&p), || {
        format!("project {} updated\n", p.name)
    });
    Ok(())
}

fn add_unique(list: &mut Vec<Value>, item: Value, what: &str) -> Result<()> {
    if list.contains(&item) {
        bail!("{what} is already there");
    }
    list.push(item);
    Ok(())
}

fn remove(list: &mut Vec<Value>, item: &Value, what: &str) -> Result<()> {
    let before = list.len();
    list.retain(|v| v != item);
    if list.len() == before {
        bail!("{what} is not there");
    }
    Ok(())
}

/// Runs one `flotilla proj` command.
///
/// # Errors
/// The hub refused it, or the input is unreadable.
pub async fn run(g: &Global, c: &mut Client, cmd: ProjCommand) -> Result<()> {
    match cmd {
        ProjCommand::Role(cmd) => super::rbac::proj_role(g, c, cmd).await?,
        ProjCommand::Windows(cmd) => windows(g, c, cmd).await?,
        ProjCommand::Create { file, upsert } => {
            let manifest = read_input(&file)?;
            let p = c
                .create_project(pb::CreateProjectRequest { manifest, upsert })
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(g.output, project_json(&p), || {
                format!("project {} stored\n", p.name)
            });
        }
        ProjCommand::List => {
            let projects = c
                .list_projects(pb::ListProjectsRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .projects;
            print_out(
                g.output,
                Value::Array(projects.iter().map(project_json).collect()),
                || {
                    table(
                        &["NAME", "SOURCES", "DESTINATIONS", "APPLICATIONS", "ORIGIN"],
                        projects
                            .iter()
                            .map(|p| {
                                vec![
                                    p.name.clone(),
                                    p.source_repos.join(","),
                                    destinations_str(p),
                                    p.applications.len().to_string(),
                                    p.origin.clone(),
                                ]
                            })
                            .collect(),
                    )
                },
            );
        }
        ProjCommand::Get { name } => {
            let p = c
                .get_project(pb::GetProjectRequest { name })
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(g.output, project_json(&p), || {
                format!(
                    "Name:          {}\nOrigin:        {}\nSources:       {}\nDestinations:  {}\nApplications:  {}\n\n{}",
                    p.name,
                    p.origin,
                    p.source_repos.join(", "),
                    destinations_str(&p),
                    p.applications.join(", "),
                    p.manifest
                )
            });
        }
        ProjCommand::Delete { name } => {
            c.delete_project(pb::DeleteProjectRequest { name: name.clone() })
                .await
                .map_err(status_err)?;
            print_out(g.output, json!({"deleted": name}), || {
                format!("project {name} deleted\n")
            });
        }
        ProjCommand::AddSource { project, url } => {
            edit(g, c, &project, |doc| {
                add_unique(
                    list_of(doc, "sourceRepos")?,
                    json!(url),
                    &format!("source {url}"),
                )
            })
            .await?;
        }
        ProjCommand::RemoveSource { project, url } => {
            edit(g, c, &project, |doc| {
                remove(
                    list_of(doc, "sourceRepos")?,
                    &json!(url),
                    &format!("source {url}"),
                )
            })
            .await?;
        }
        ProjCommand::AddDestination {
            project,
            server,
            namespace,
            name,
        } => {
            edit(g, c, &project, |doc| {
                add_unique(
                    list_of(doc, "destinations")?,
                    destination(&server, &namespace, name),
                    &format!("destination {server} {namespace}"),
                )
            })
            .await?;
        }
        ProjCommand::RemoveDestination {
            project,
            server,
            namespace,
            name,
        } => {
            edit(g, c, &project, |doc| {
                remove(
                    list_of(doc, "destinations")?,
                    &destination(&server, &namespace, name),
                    &format!("destination {server} {namespace}"),
                )
            })
            .await?;
        }
        ProjCommand::AllowClusterResource {
            project,
            group,
            kind,
        } => {
            edit(g, c, &project, |doc| {
                add_unique(
                    list_of(doc, "clusterResourceWhitelist")?,
                    json!({"group": group, "kind": kind}),
                    &format!("cluster resource {group}:{kind}"),
                )
            })
            .await?;
        }
        ProjCommand::DenyClusterResource {
            project,
            group,
            kind,
        } => {
            edit(g, c, &project, |doc| {
                remove(
                    list_of(doc, "clusterResourceWhitelist")?,
                    &json!({"group": group, "kind": kind}),
                    &format!("cluster resource {group}:{kind}"),
                )
            })
            .await?;
        }
    }
    Ok(())
}
