//! The sync-window reconciler, wired by the server: it reads what
//! [`crate::project::window`] decides (a pure module over the store) and
//! acts through the Git loop and the rollout reconciler. Kept out of
//! `project` so that `project` depends on nothing above the store, and the
//! rollout reconciler can ask it whether a window blocks a cluster.

use std::collections::BTreeMap;

/// The window reconciler: sleeps until the next instant a window opens or
/// closes (or a project changes), then renders again every application
/// whose verdict changed (an automated one goes out, or is held) and wakes
/// the RollingSync set that owns one (its held step syncs). Keeps the
/// blocked-applications gauge. No timer runs while no project has
/// windows.
pub async fn run(ctx: crate::api::HubContext) {
    use crate::project::window::{now, survey};
    use crate::store::ChangeKind;
    let mut closing = ctx.closing.clone();
    // Woken by a project's change (its windows may have changed).
    let mut changes = ctx.store.changes();
    let mut seen = *changes.borrow_and_update();
    let mut blocked: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let now = now();
        let (next_blocked, next) = match survey(&ctx.store, now) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "sync windows: reading the store failed; trying again in 5s");
                let t = now.checked_add(jiff::SignedDuration::from_secs(5)).ok();
                (blocked.clone(), t)
            }
        };
        let woken: Vec<(&String, &String)> = next_blocked
            .iter()
            .filter(|(name, _)| !blocked.contains_key(*name))
            .chain(
                blocked
                    .iter()
                    .filter(|(name, _)| !next_blocked.contains_key(*name)),
            )
            .collect();
        for (name, origin) in woken {
            let now_blocked = next_blocked.contains_key(name);
            tracing::info!(app = %name, blocked = now_blocked, "sync window verdict changed");
            ctx.git.render_soon(name);
            if let Some(set) = origin.strip_prefix("appset:") {
                ctx.appsets.rollouts().mark(set);
            }
        }
        crate::metrics::metrics().apps_blocked_by_window(next_blocked.len());
        blocked = next_blocked;
        // A little past the change, so that the verdict read then is the
        // new one.
        let wait = next.map_or(std::time::Duration::from_secs(3600), |t| {
            let ms = t.as_millisecond() - now.as_millisecond() + 20;
            std::time::Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0))
                .min(std::time::Duration::from_secs(3600))
        });
        let before = seen;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            r = async {
                changes
                    .wait_for(|c| c.differs_in(&before, &[ChangeKind::Projects]))
                    .await
                    .map(|c| *c)
            } => match r {
                Ok(c) => seen = c,
                Err(_) => return,
            },
            r = closing.changed() => if r.is_err() || *closing.borrow() { return },
        }
    }
}
