//! tenancy: `flotilla rbac …` (Argo CD's policy.csv), `flotilla audit`,
//! and project tokens (`flotilla proj role …`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cli::{Client, Global, print_out, read_input, status_err, table};
use crate::rbac::{Enforcer, Principal, RbacConfig};
use flotilla_proto as pb;

#[derive(Debug, Subcommand)]
pub enum RbacCommand {
    /// Check a policy file (Argo CD policy.csv syntax) without a hub; an
    /// error names the line.
    Validate {
        /// The policy file (`-` for stdin).
        file: PathBuf,
        /// policy.default to check as well.
        #[arg(long)]
        default_role: Option<String>,
    },
    /// Whether SUBJECT may do ACTION on RESOURCE OBJECT (prints yes or no;
    /// exits 1 on no), by the hub's policy or, with --policy-file, by a
    /// local file without asking the hub.
    Can {
        /// A token name, `proj:PROJECT:ROLE`, or any subject.
        subject: String,
        /// get, create, update, delete, sync, override, action/...
        action: String,
        /// applications, applicationsets, clusters, repositories,
        /// projects, accounts, logs, audit, rbac.
        resource: String,
        /// The object: `PROJECT/APP` for applications, a name otherwise.
        #[arg(default_value = "*")]
        object: String,
        /// Groups the subject has (repeat), as a token's roles or an
        /// identity provider's groups claim.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Check this policy file instead of the hub's.
        #[arg(long)]
        policy_file: Option<PathBuf>,
        /// policy.default with --policy-file.
        #[arg(long)]
        default_role: Option<String>,
    },
    /// Show the hub's policy.csv and policy.default.
    Get,
    /// Replace the hub's policy (takes effect on the next call).
    Set {
        /// The policy file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// policy.default: the role every caller has on top of its own.
        #[arg(long, default_value = "")]
        default_role: String,
    },
}

/// `flotilla audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries newer than this (e.g. 30m, 2h).
    #[arg(long, value_parser = super::parse_duration)]
    pub since: Option<Duration>,
    /// Only this subject's entries (a token name, `proj:P:R`).
    #[arg(long)]
    pub subject: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProjRoleCommand {
    /// Create a token carrying one role of a project (its policies, and
    /// nothing outside the project); the secret is printed once.
    CreateToken {
        /// The project.
        project: String,
        /// The role (spec.roles[].name).
        role: String,
        /// The token's id within the role.
        #[arg(long, default_value = "token")]
        id: String,
        /// Refuse the token after this long (e.g. 24h); default: never.
        #[arg(long, value_parser = super::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Revoke a project role's token.
    DeleteToken {
        /// The project.
        project: String,
        /// The role.
        role: String,
        /// The token's id.
        id: String,
    },
}

/// Runs the `rbac` commands that need no hub; `None` when `cmd` needs one.
///
/// # Errors
/// The file cannot be read or the policy is invalid; a `can` answer of no.
pub fn run_local(g: &Global, cmd: &RbacCommand) -> Option<Result<()>> {
    match cmd {
        RbacCommand::Validate { file, default_role } => Some((|| {
            let config = RbacConfig {
                policy_csv: read_input(file)?,
                default_role: default_role.clone().unwrap_or_default(),
            };
            Enforcer::new(&config, &[])?;
            let lines = config
                .policy_csv
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
                .count();
            print_out(g.output, json!({"valid": true, "lines": lines}), || {
                format!("{}: {lines} policy line(s), valid\n", file.display())
            });
            Ok(())
        })()),
        RbacCommand::Can {
            subject,
            action,
            resource,
            object,
            groups,
            policy_file: Some(file),
            default_role,
        } => Some((|| {
            let config = RbacConfig {
                policy_csv: read_input(file)?,
                default_role: default_role.clone().unwrap_or_default(),
            };
            let e = Enforcer::new(&config, &[])?;
            let who = Principal {
                subject: subject.clone(),
                groups: groups.clone(),
            };
            answer(g, e.allows(&who, resource, action, object))
        })()),
        _ => None,
    }
}

fn answer(g: &Global, allowed: bool) -> Result<()> {
    print_out(g.output, json!({"allowed": allowed}), || {
        if allowed { "yes\n" } else { "no\n" }.to_owned()
    });
    if allowed {
        Ok(())
    } else {
        Err(super::exit::ExitStatus(1).into())
    }
}

pub async fn run(g: &Global, c: &mut Client, cmd: RbacCommand) -> Result<()> {
    match cmd {
        RbacCommand::Validate { .. } => unreachable_local(),
        RbacCommand::Can {
            subject,
            action,
            resource,
            object,
            groups,
            policy_file: _,
            default_role,
        } => {
            let policy = match default_role {
                Some(d) => {
                    let mut p = c
                        .get_rbac_policy(pb::GetRbacPolicyRequest {})
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    p.default_role = d;
                    Some(p)
                }
                None => None,
            };
            let allowed = c
                .check_rbac(pb::CheckRbacRequest {
                    subject,
                    groups,
                    action,
                    resource,
                    object,
                    policy,
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .allowed;
            answer(g, allowed)
        }
        RbacCommand::Get => {
            let p = c
                .get_rbac_policy(pb::GetRbacPolicyRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(
                g.output,
                json!({"policyCsv": p.policy_csv, "defaultRole": p.default_role}),
                || {
                    format!(
                        "# policy.default: {}\n{}",
                        if p.default_role.is_empty() {
                            "(none)"
                        } else {
                            &p.default_role
                        },
                        p.policy_csv
                    )
                },
            );
            Ok(())
        }
        RbacCommand::Set { file, default_role } => {
            let policy_csv = read_input(&file)?;
            let p = c
                .set_rbac_policy(pb::RbacPolicy {
                    policy_csv,
                    default_role,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let lines = p.policy_csv.lines().count();
            print_out(
                g.output,
                json!({"policyCsv": p.policy_csv, "defaultRole": p.default_role}),
                || format!("policy stored ({lines} line(s))\n"),
            );
            Ok(())
        }
    }
}

fn unreachable_local() -> Result<()> {
    bail!("rbac validate runs without a hub")
}

pub async fn audit(g: &Global, c: &mut Client, args: AuditArgs) -> Result<()> {
    let since_ms = args.since.map_or(0, |d| {
        crate::clock::now_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    });
    let entries = c
        .list_audit(pb::ListAuditRequest {
            since_ms,
            subject: args.subject.unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .entries;
    print_out(
        g.output,
        Value::Array(
            entries
                .iter()
                .map(|e| {
                    json!({
                        "time": super::get::rfc3339_json(e.time_ms),
                        "timeMs": e.time_ms,
                        "subject": e.subject,
                        "peer": e.peer,
                        "resource": e.resource,
                        "action": e.action,
                        "object": e.object,
                        "result": e.result,
                        "message": e.message,
                    })
                })
                .collect(),
        ),
        || {
            let rows = entries
                .iter()
                .map(|e| {
                    vec![
                        super::get::rfc3339(e.time_ms),
                        e.subject.clone(),
                        if e.peer.is_empty() { "-" } else { &e.peer }.to_owned(),
                        e.resource.clone(),
                        e.action.clone(),
                        e.object.clone(),
                        e.result.clone(),
                        e.message.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    "TIME", "SUBJECT", "FROM", "RESOURCE", "ACTION", "OBJECT", "RESULT", "MESSAGE",
                ],
                rows,
            )
        },
    );
    Ok(())
}

pub async fn proj_role(g: &Global, c: &mut Client, cmd: ProjRoleCommand) -> Result<()> {
    match cmd {
        ProjRoleCommand::CreateToken {
            project,
            role,
            id,
            expires_in,
        } => {
            let resp = c
                .create_token(pb::CreateTokenRequest {
                    name: id,
                    project,
                    role,
                    expires_in_secs: expires_in
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)),
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let info = resp.info.unwrap_or_default();
            print_out(
                g.output,
                json!({"name": info.name, "subject": info.subject, "token": resp.token}),
                || {
                    format!(
                        "token {} created for {} (shown only once):\n{}\n",
                        info.name, info.subject, resp.token
                    )
                },
            );
        }
        ProjRoleCommand::DeleteToken { project, role, id } => {
            let name = crate::api::access::project_token_name(&project, &role, &id);
            c.revoke_token(pb::RevokeTokenRequest { name: name.clone() })
                .await
                .map_err(status_err)?;
            print_out(g.output, json!({"revoked": name}), || {
                format!("token {name} revoked\n")
            });
        }
    }
    Ok(())
}
