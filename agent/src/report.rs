//! Status reports to the hub: what the agent observed per application and
//! per object, coalesced so a busy cluster does not flood the stream.

use std::time::Duration;

use flotilla_proto::{AppStatus, StatusReport};

/// At most one report per this interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A report is sent at least this often, changed or not.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// The latest observation of every application.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Generation of the desired state the observation is about.
    pub generation: u64,
    /// One status per desired application, by name.
    pub apps: Vec<AppStatus>,
}

impl Report {
    /// Whether two reports say the same thing, ignoring observation times.
    #[must_use]
    pub fn same_as(&self, other: &Self) -> bool {
        self.generation == other.generation
            && self.apps.len() == other.apps.len()
            && self.apps.iter().zip(&other.apps).all(|(a, b)| {
                AppStatus {
                    observed_ms: 0,
                    ..a.clone()
                } == AppStatus {
                    observed_ms: 0,
                    ..b.clone()
                }
            })
    }

    /// The wire form.
    #[must_use]
    pub fn to_proto(&self) -> StatusReport {
        StatusReport {
            generation: self.generation,
            apps: self.apps.clone(),
        }
    }
}

/// Unix milliseconds now.
#[must_use]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_time_alone_is_no_change() {
        let a = Report {
            generation: 1,
            apps: vec![AppStatus {
                name: "a".into(),
                observed_ms: 1,
                ..AppStatus::default()
            }],
        };
        let mut b = a.clone();
        b.apps[0].observed_ms = 2;
        assert!(a.same_as(&b));
        b.apps[0].sync = 2;
        assert!(!a.same_as(&b));
    }
}
