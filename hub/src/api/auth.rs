//! Who is calling the user API and what they may do: the bearer token
//! gives a [`Caller`] (subject, groups, address); [`authorize`] asks the
//! RBAC policy ([`crate::rbac`]) for each call, and [`audit`] records every
//! change and every refused one.

use tonic::{Request, Status};

use super::HubContext;
use crate::rbac::{Enforcer, Principal};
use crate::store::audit::AuditEntry;
use crate::store::{Store, TokenRecord};

/// Who is calling the user API (from the bearer token), as a request
/// extension.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The token's name (`proj:P:R:ID` for a project token).
    pub token_name: String,
    /// The caller may do nothing but read (no allow rule with any other
    /// action); the web UI hides its forms then. Enforcement never looks at
    /// this: every call asks the policy.
    pub read_only: bool,
    /// The RBAC subject: an account token's name, or `proj:P:R`.
    pub subject: String,
    /// The RBAC groups (roles) of the caller.
    pub groups: Vec<String>,
    /// The caller's address, `ip:port`, when known.
    pub peer: String,
}

impl Caller {
    /// A caller with `role:admin` (for tools and tests that act as the
    /// operator).
    pub fn admin(name: &str) -> Self {
        Self {
            token_name: name.to_owned(),
            subject: name.to_owned(),
            groups: vec![crate::rbac::ROLE_ADMIN.to_owned()],
            ..Self::default()
        }
    }

    /// The names RBAC checks: subject and groups.
    pub fn principal(&self) -> Principal {
        Principal {
            subject: self.subject.clone(),
            groups: self.groups.clone(),
        }
    }
}

/// The caller a stored token stands for; `peer` is its address.
///
/// # Errors
/// `Unauthenticated` for an expired token, and for a project token whose
/// project or role is gone (deleting the role revokes its tokens, as in
/// Argo CD).
pub fn caller_of(store: &Store, rec: &TokenRecord, peer: String) -> Result<Caller, Status> {
    if rec.expires_ms > 0 && crate::clock::now_ms() >= rec.expires_ms {
        return Err(Status::unauthenticated(format!(
            "token {:?} expired",
            rec.name
        )));
    }
    if !rec.project.is_empty() {
        let live = store
            .project(&rec.project)?
            .is_some_and(|p| p.project.spec.roles.iter().any(|r| r.name == rec.role));
        if !live {
            return Err(Status::unauthenticated(format!(
                "token {:?}: project {:?} has no role {:?} any more",
                rec.name, rec.project, rec.role
            )));
        }
    }
    let mut caller = Caller {
        token_name: rec.name.clone(),
        read_only: false,
        subject: rec.subject(),
        groups: rec.effective_groups(),
        peer,
    };
    caller.read_only = enforcer(store).is_ok_and(|e| !e.may_write(&caller.principal()));
    Ok(caller)
}

/// Turns a verified SSO login into a hub session token: named
/// `sso:SUBJECT:ID`, its subject the user's, its groups the identity
/// provider's, expiring with the ID token. Expired SSO tokens are removed
/// on the way, so logins do not grow the store.
///
/// # Errors
/// The store failed.
pub fn sso_session_token(
    store: &Store,
    identity: &crate::sso::Identity,
) -> Result<(String, TokenRecord), Status> {
    let now = crate::clock::now_ms();
    for (_, rec) in store.tokens()? {
        if !rec.sso_subject.is_empty() && rec.expires_ms > 0 && rec.expires_ms <= now {
            store.remove_tokens_named(&rec.name)?;
        }
    }
    let id: [u8; 4] = rand::random();
    let rec = TokenRecord {
        name: format!("sso:{}:{}", identity.subject, hex::encode(id)),
        sso_subject: identity.subject.clone(),
        groups: identity.groups.clone(),
        expires_ms: identity.expires_ms,
        ..TokenRecord::default()
    };
    Ok(super::create_token_with(store, rec)?)
}

/// The policy as configured now: the operator's settings and every
/// project's roles. Built for each call, so a change takes effect at once.
///
/// # Errors
/// The store failed, or the stored policy no longer parses (a project role
/// from Git the API would have refused).
pub fn enforcer(store: &Store) -> Result<Enforcer, Status> {
    let config = store.rbac_config()?;
    let projects = store.projects()?;
    // A project whose roles do not load (stored before RBAC checked them)
    // loses its roles, not everyone their access.
    let projects: Vec<crate::rbac::ProjectRoles<'_>> = projects
        .iter()
        .map(|p| p.project.rbac_roles())
        .filter(|p| {
            (0..p.roles.len()).all(|i| match crate::rbac::project_role_policy(*p, i) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(project = %p.project, error = %e, "project roles ignored");
                    false
                }
            })
        })
        .collect();
    Enforcer::new(&config, &projects).map_err(|e| {
        tracing::error!(error = %e, "the RBAC policy does not load; refusing calls");
        Status::internal(format!("the RBAC policy does not load: {e}"))
    })
}

/// The caller of `req`.
///
/// # Errors
/// `Unauthenticated` when the interceptor put no caller on the request.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller identity"))
}

/// The refusal for `caller`.
pub fn denied(caller: &Caller, resource: &str, action: &str, object: &str) -> Status {
    Status::permission_denied(format!(
        "permission denied: {resource}, {action}, {object} (subject {:?})",
        caller.subject
    ))
}

/// Checks that the caller of `req` may do `action` on `resource` `object`.
/// A refusal of anything but `get` is recorded in the audit log as `op`.
///
/// # Errors
/// `PermissionDenied` naming the resource, action, object and subject;
/// `Unauthenticated` without a caller.
pub fn authorize<T>(
    ctx: &HubContext,
    req: &Request<T>,
    resource: &str,
    action: &str,
    object: &str,
    op: &str,
) -> Result<Caller, Status> {
    let caller = caller(req)?;
    let e = enforcer(&ctx.store)?;
    if e.allows(&caller.principal(), resource, action, object) {
        return Ok(caller);
    }
    let status = denied(&caller, resource, action, object);
    if action != "get" {
        record(
            ctx,
            &caller,
            resource,
            op,
            object,
            "denied",
            status.message(),
        );
    }
    tracing::info!(subject = %caller.subject, resource, action, object, "API call refused by RBAC");
    Err(status)
}

/// A caller's view for filtering lists: one policy for the whole call.
pub struct View {
    decider: crate::rbac::Decider,
}

impl View {
    /// The view of the caller of `req`.
    ///
    /// # Errors
    /// As [`caller`] and [`enforcer`].
    pub fn of<T>(ctx: &HubContext, req: &Request<T>) -> Result<Self, Status> {
        Self::of_caller(&ctx.store, &caller(req)?)
    }

    /// The view of `caller`.
    ///
    /// # Errors
    /// As [`enforcer`].
    pub fn of_caller(store: &Store, caller: &Caller) -> Result<Self, Status> {
        Ok(Self {
            decider: enforcer(store)?.compile(&caller.principal()),
        })
    }

    /// Whether the caller may `get` `resource` `object`.
    pub fn can_get(&self, resource: &str, object: &str) -> bool {
        self.decider.allows(resource, "get", object)
    }

    /// Whether the caller may `action` `resource` `object`.
    pub fn can(&self, resource: &str, action: &str, object: &str) -> bool {
        self.decider.allows(resource, action, object)
    }
}

/// The RBAC object of an application: `PROJECT/NAME`.
pub fn app_object(app: &crate::model::Application) -> String {
    let project = if app.spec.project.is_empty() {
        "default"
    } else {
        app.spec.project.as_str()
    };
    format!("{project}/{}", app.metadata.name)
}

/// The RBAC object of the stored application `name`.
///
/// # Errors
/// `NotFound` when there is no such application.
pub fn stored_app_object(store: &Store, name: &str) -> Result<String, Status> {
    store
        .app(name)?
        .map(|r| app_object(&r.app))
        .ok_or_else(|| Status::not_found(format!("application {name:?} not found")))
}

/// The RBAC object of an ApplicationSet document: `PROJECT/NAME`, the
/// project of its template (Argo CD's rule; `default` when unset). A name
/// or project that is not a string becomes `*`, which only a policy
/// allowing every name (or project) matches, so such a caller alone gets
/// as far as the parse error.
pub fn appset_object(doc: &serde_json::Value) -> String {
    let name = doc["metadata"]["name"].as_str().unwrap_or("*");
    let project = match &doc["spec"]["template"]["spec"]["project"] {
        serde_json::Value::String(p) if !p.is_empty() => p.as_str(),
        serde_json::Value::Null => "default",
        _ => "*",
    };
    format!("{project}/{name}")
}

/// The RBAC object of a repository: its URL without credentials.
pub fn repo_object(url: &str) -> String {
    let url = url.trim();
    crate::source::split_credentials(url).map_or_else(|_| url.to_owned(), |(bare, _)| bare)
}

/// Records one change (or refused change) in the audit log. A failure to
/// record is logged, never turned into the call's failure.
pub fn record(
    ctx: &HubContext,
    caller: &Caller,
    resource: &str,
    op: &str,
    object: &str,
    result: &str,
    message: &str,
) {
    let entry = AuditEntry {
        time_ms: crate::clock::now_ms(),
        subject: caller.subject.clone(),
        peer: caller.peer.clone(),
        resource: resource.to_owned(),
        action: op.to_owned(),
        object: object.to_owned(),
        result: result.to_owned(),
        message: message.to_owned(),
    };
    tracing::info!(subject = %entry.subject, peer = %entry.peer, resource, action = op, object, result, "audit");
    if let Err(e) = ctx.store.record_audit(&entry) {
        tracing::error!(error = %e, "could not record an audit entry");
    }
}

/// Records the outcome of a change: `ok`, or `error` with the message.
pub fn audit<R>(
    ctx: &HubContext,
    caller: &Caller,
    resource: &str,
    op: &str,
    object: &str,
    outcome: &Result<R, Status>,
) {
    match outcome {
        Ok(_) => record(ctx, caller, resource, op, object, "ok", ""),
        Err(s) => record(ctx, caller, resource, op, object, "error", s.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_as_argo_cd_names_them() {
        let doc = |v: serde_json::Value| appset_object(&v);
        let cases = [
            (
                serde_json::json!({"metadata": {"name": "s"}, "spec": {"template": {"spec": {"project": "team-a"}}}}),
                "team-a/s",
            ),
            // No project in the template: Argo CD's default.
            (
                serde_json::json!({"metadata": {"name": "s"}, "spec": {"template": {"spec": {}}}}),
                "default/s",
            ),
            // Not a string (or not parsed): only a caller allowed every
            // project passes on to the parse error.
            (
                serde_json::json!({"metadata": {"name": "s"}, "spec": {"template": {"spec": {"project": 3}}}}),
                "*/s",
            ),
            (serde_json::Value::Null, "default/*"),
        ];
        for (v, want) in cases {
            assert_eq!(doc(v.clone()), want, "{v}");
        }
        assert_eq!(
            repo_object(" https://user:s3cret@git.example/team-a/apps.git "),
            "https://git.example/team-a/apps.git"
        );
    }

    #[test]
    fn tokens_from_before_rbac_keep_their_meaning() {
        let old_admin = TokenRecord {
            name: "admin".into(),
            ..TokenRecord::default()
        };
        assert_eq!(old_admin.subject(), "admin");
        assert_eq!(old_admin.effective_groups(), [crate::rbac::ROLE_ADMIN]);
        let old_ro = TokenRecord {
            name: "ci".into(),
            read_only: true,
            ..TokenRecord::default()
        };
        assert_eq!(old_ro.effective_groups(), [crate::rbac::ROLE_READONLY]);
        let project = TokenRecord {
            name: "proj:team-a:ci:x".into(),
            project: "team-a".into(),
            role: "ci".into(),
            ..TokenRecord::default()
        };
        assert_eq!(project.subject(), "proj:team-a:ci");
        assert!(project.effective_groups().is_empty());
    }
}
