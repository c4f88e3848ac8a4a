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
