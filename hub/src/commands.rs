//! Commands from the hub to connected agents (sync now, diff), delivered
//! on each cluster's open `Connect` stream.
//!
//! A command is only delivered to streams open when it is sent; nothing is
//! queued for a disconnected cluster (the caller reports those).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use flotilla_proto as pb;

/// Per-cluster command channels.
#[derive(Debug, Default)]
pub struct CommandBus {
    channels: Mutex<HashMap<String, broadcast::Sender<pb::Command>>>,
    /// Diff requests in flight.
    pub diffs: PendingDiffs,
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

/// A fresh command id.
pub fn command_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// Diff requests waiting for their `DiffResult`, by command id.
#[derive(Debug, Default)]
pub struct PendingDiffs {
    waiting: Mutex<HashMap<String, (String, tokio::sync::oneshot::Sender<pb::DiffResult>)>>,
}

impl PendingDiffs {
    /// Registers command `id` sent to `cluster`; the receiver gets the
    /// result.
    pub fn expect(
        &self,
        id: &str,
        cluster: &str,
    ) -> tokio::sync::oneshot::Receiver<pb::DiffResult> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), (cluster.to_owned(), tx));
        rx
    }

    /// Hands a result from `cluster` to its waiter; results for unknown
    /// ids, or from another cluster than the one asked, are dropped.
    pub fn deliver(&self, cluster: &str, result: pb::DiffResult) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let matches = waiting
            .get(&result.command_id)
            .is_some_and(|(c, _)| c == cluster);
        if !matches {
            tracing::debug!(cluster, id = %result.command_id, "unexpected diff result dropped");
            return;
        }
        if let Some((_, tx)) = waiting.remove(&result.command_id) {
            let _ = tx.send(result);
        }
    }

    /// Forgets a request (timed out).
    pub fn forget(&self, id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}
