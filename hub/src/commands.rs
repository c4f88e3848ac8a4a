//! Commands from the hub to connected agents (sync now, diff), delivered
//! on each cluster's open `Connect` stream, and the answers they wait for.
//!
//! A command is only delivered to streams open when it is sent; nothing is
//! queued for a disconnected cluster (the caller reports those).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{broadcast, oneshot};

use flotilla_proto as pb;

/// Per-cluster command channels.
#[derive(Debug, Default)]
pub struct CommandBus {
    channels: Mutex<HashMap<String, broadcast::Sender<pb::Command>>>,
    /// Diff requests in flight.
    pub diffs: PendingDiffs,
    /// Dry-run syncs in flight.
    pub syncs: PendingSyncs,
    /// operate: clusters being removed, with whether their agent deletes
    /// what it manages (`cluster remove --cascade`); read by their open
    /// streams when the removal closes them.
    removals: Mutex<HashMap<String, bool>>,
}

impl CommandBus {
    /// Receives the commands for `cluster` (one receiver per open stream).
    pub fn subscribe(&self, cluster: &str) -> broadcast::Receiver<pb::Command> {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_owned())
            .or_insert_with(|| broadcast::channel(64).0)
            .subscribe()
    }

    /// Sends `command` to the open streams of `cluster`; false when none.
    pub fn send(&self, cluster: &str, command: pb::Command) -> bool {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .is_some_and(|tx| tx.send(command).is_ok())
    }
}

impl CommandBus {
    /// Notes that `cluster` is being removed, before its streams are
    /// closed, so they tell their agent how (see [`CommandBus::removal`]).
    pub fn note_removal(&self, cluster: &str, cascade: bool) {
        self.removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.to_owned(), cascade);
    }

    /// Whether the removal of `cluster` cascades (false when none was
    /// noted).
    pub fn removal(&self, cluster: &str) -> bool {
        self.removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .copied()
            .unwrap_or(false)
    }
}

/// A fresh command id.
pub fn command_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// An agent's answer to a command, matched to its request by command id.
pub trait Reply {
    /// The id of the command this answers.
    fn command_id(&self) -> &str;
}

impl Reply for pb::DiffResult {
    fn command_id(&self) -> &str {
        &self.command_id
    }
}

impl Reply for pb::SyncResult {
    fn command_id(&self) -> &str {
        &self.command_id
    }
}

/// Requests waiting for an agent's answer, by command id, each bound to the
/// cluster it was sent to.
#[derive(Debug)]
pub struct Pending<T> {
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<T>)>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

/// Diff requests waiting for their `DiffResult`.
pub type PendingDiffs = Pending<pb::DiffResult>;
/// Dry-run syncs waiting for their `SyncResult`.
pub type PendingSyncs = Pending<pb::SyncResult>;

impl<T: Reply> Pending<T> {
    /// Registers command `id` sent to `cluster`; the receiver gets the
    /// result.
    pub fn expect(&self, id: &str, cluster: &str) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), (cluster.to_owned(), tx));
        rx
    }

    /// Hands a result from `cluster` to its waiter; results for unknown
    /// ids, or from another cluster than the one asked, are dropped (an
    /// agent can only answer what was asked of its own cluster). True when
    /// delivered.
    pub fn deliver(&self, cluster: &str, result: T) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let id = result.command_id();
        let matches = waiting.get(id).is_some_and(|(c, _)| c == cluster);
        if !matches {
            tracing::debug!(cluster, id, "unexpected command result dropped");
            return false;
        }
        match waiting.remove(id) {
            Some((_, tx)) => tx.send(result).is_ok(),
            None => false,
        }
    }

    /// Forgets a request (timed out, or never sent).
    pub fn forget(&self, id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Waits up to `timeout` for the answer to `id`; forgets the request
    /// when none comes.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the request registered until
    /// [`Pending::forget`].
    pub async fn wait(
        &self,
        id: &str,
        rx: oneshot::Receiver<T>,
        timeout: std::time::Duration,
    ) -> Option<T> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => Some(result),
            _ => {
                self.forget(id);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> pb::SyncResult {
        pb::SyncResult {
            command_id: id.to_owned(),
            app: "web".to_owned(),
            dry_run: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn results_reach_only_the_request_of_their_cluster() {
        let pending = PendingSyncs::default();
        let mut rx = pending.expect("c1", "east");
        // Another cluster answering east's command is dropped, and east's
        // request still waits.
        assert!(!pending.deliver("west", result("c1")));
        assert!(rx.try_recv().is_err());
        // An id nobody asked for is dropped.
        assert!(!pending.deliver("east", result("nope")));
        assert!(pending.deliver("east", result("c1")));
        assert_eq!(rx.await.expect("delivered").command_id, "c1");
        // Answered once: a replay is dropped.
        assert!(!pending.deliver("east", result("c1")));
    }

    #[tokio::test]
    async fn an_unanswered_request_times_out_and_is_forgotten() {
        let pending = PendingSyncs::default();
        let rx = pending.expect("c2", "east");
        let got = pending
            .wait("c2", rx, std::time::Duration::from_millis(10))
            .await;
        assert!(got.is_none());
        // A late answer finds nobody waiting.
        assert!(!pending.deliver("east", result("c2")));
    }

    #[tokio::test]
    async fn diffs_share_the_matching() {
        let pending = PendingDiffs::default();
        let rx = pending.expect("d1", "east");
        let diff = pb::DiffResult {
            command_id: "d1".to_owned(),
            ..Default::default()
        };
        assert!(!pending.deliver("west", diff.clone()));
        assert!(pending.deliver("east", diff));
        assert!(rx.await.is_ok());
    }
}
