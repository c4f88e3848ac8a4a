//! What the store publishes about its writes: one counter per kind of
//! record, bumped after each write of that kind, on a `watch` channel.
//! Readers that show records (the web UI's live pages) wait on it instead
//! of polling, and compare only the counters of the kinds they show.

use tokio::sync::watch;

/// A kind of record whose writes are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Cluster records (labels, link state, generations), and a link
    /// opening or closing.
    Clusters,
    /// Application records, their bundles and their operation history.
    Apps,
    /// Statuses the agents reported.
    Statuses,
    /// ApplicationSet records (generated applications, conditions, held
    /// deletions).
    AppSets,
    /// Repository records (last fetch, errors).
    Repos,
    /// AppProject records (rules, roles, sync windows).
    Projects,
}

/// Write counters per kind since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub clusters: u64,
    pub apps: u64,
    pub statuses: u64,
    pub appsets: u64,
    pub repos: u64,
    pub projects: u64,
}

impl Changes {
    /// The counter of `kind`.
    pub fn of(&self, kind: ChangeKind) -> u64 {
        match kind {
            ChangeKind::Clusters => self.clusters,
            ChangeKind::Apps => self.apps,
            ChangeKind::Statuses => self.statuses,
            ChangeKind::AppSets => self.appsets,
            ChangeKind::Repos => self.repos,
            ChangeKind::Projects => self.projects,
        }
    }

    fn bump(&mut self, kind: ChangeKind) {
        let c = match kind {
            ChangeKind::Clusters => &mut self.clusters,
            ChangeKind::Apps => &mut self.apps,
            ChangeKind::Statuses => &mut self.statuses,
            ChangeKind::AppSets => &mut self.appsets,
            ChangeKind::Repos => &mut self.repos,
            ChangeKind::Projects => &mut self.projects,
        };
        *c = c.wrapping_add(1);
    }

    /// Whether any of `kinds` changed between `self` and `later`.
    pub fn differs_in(&self, later: &Changes, kinds: &[ChangeKind]) -> bool {
        kinds.iter().any(|k| self.of(*k) != later.of(*k))
    }
}

/// The sending side, held by the store.
#[derive(Debug)]
pub(super) struct ChangeSignal(watch::Sender<Changes>);

impl Default for ChangeSignal {
    fn default() -> Self {
        Self(watch::channel(Changes::default()).0)
    }
}

impl ChangeSignal {
    pub(super) fn bump(&self, kind: ChangeKind) {
        // Wakes the receivers even when there are none to keep: a
        // receiver subscribed later starts from the current counters.
        self.0.send_modify(|c| c.bump(kind));
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Changes> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_written_kind_moves() {
        let signal = ChangeSignal::default();
        let mut rx = signal.subscribe();
        let before = *rx.borrow_and_update();
        signal.bump(ChangeKind::Repos);
        assert!(rx.has_changed().unwrap_or(false));
        let after = *rx.borrow_and_update();
        assert!(before.differs_in(&after, &[ChangeKind::Repos]));
        assert!(!before.differs_in(
            &after,
            &[
                ChangeKind::Clusters,
                ChangeKind::Apps,
                ChangeKind::Statuses,
                ChangeKind::AppSets
            ]
        ));
    }
}
