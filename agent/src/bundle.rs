//! An application's desired state as the agent keeps it, free of wire types.

use serde::{Deserialize, Serialize};

/// Argo CD-compatible sync policy of one application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Apply automatically when the desired state changes.
    pub automated: bool,
    /// Delete tracked objects that are no longer desired.
    pub prune: bool,
    /// Re-apply when the live state drifts.
    pub self_heal: bool,
    /// Allow pruning every object when the desired set is empty.
    pub allow_empty: bool,
    /// `syncOptions`, e.g. `CreateNamespace=true`.
    pub sync_options: Vec<String>,
    /// `retry.limit`; 0 means no limit on automated retries.
    pub retry_limit: i64,
    /// `retry.backoff`, with Argo CD's defaults when absent.
    #[serde(default)]
    pub retry_backoff: RetryBackoff,
}

/// `syncPolicy.retry.backoff`: the delay before retry `n` (counting from 1)
/// is `duration * factor^(n-1)`, capped at `max_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryBackoff {
    /// First delay.
    pub duration: std::time::Duration,
    /// Growth factor.
    pub factor: u32,
    /// Cap.
    pub max_duration: std::time::Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            duration: std::time::Duration::from_secs(5),
            factor: 2,
            max_duration: std::time::Duration::from_secs(180),
        }
    }
}

impl RetryBackoff {
    /// The delay before retry number `attempt` (1-based), without jitter.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> std::time::Duration {
        let mut d = self.duration;
        for _ in 1..attempt {
            d = d.saturating_mul(self.factor.max(1));
            if d >= self.max_duration {
                break;
            }
        }
        d.min(self.max_duration)
    }

    fn from_proto(r: &flotilla_proto::RetryPolicy) -> Self {
        let default = Self::default();
        Self {
            duration: parse_duration(&r.backoff_duration).unwrap_or(default.duration),
            factor: u32::try_from(r.backoff_factor)
                .ok()
                .filter(|f| *f > 0)
                .unwrap_or(default.factor),
            max_duration: parse_duration(&r.backoff_max_duration).unwrap_or(default.max_duration),
        }
    }
}

/// Parses Go-style durations as Argo CD writes them: `5s`, `3m`, `1h`,
/// `500ms`, `1m30s`, or a bare number of seconds.
#[must_use]
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return None,
        };
        total += std::time::Duration::try_from_secs_f64(seconds).ok()?;
        rest = next;
    }
    Some(total)
}

impl Policy {
    /// Whether a `Name=true` sync option is set.
    #[must_use]
    pub fn option(&self, name: &str) -> bool {
        self.sync_options.iter().any(|o| {
            o.split_once('=')
                .is_some_and(|(k, v)| k.trim() == name && v.trim().eq_ignore_ascii_case("true"))
        })
    }
}

/// One application's rendered desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Application name.
    pub name: String,
    /// Content digest (manifests, policy, namespace).
    pub digest: String,
    /// Git commit the manifests were rendered from.
    pub revision: String,
    /// Source repository.
    pub repo_url: String,
    /// Path in the repository.
    pub path: String,
    /// Default namespace for namespaced objects without one.
    pub namespace: String,
    /// Sync policy.
    pub policy: Policy,
    /// One JSON object per manifest.
    pub manifests: Vec<String>,
    /// Set when rendering failed; nothing is changed for the application.
    pub render_error: String,
    /// `ignoreDifferences` entries as JSON objects.
    pub ignore_differences: Vec<String>,
    /// tenancy: the application's project rules; `None` from an older hub
    /// (nothing is checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_rules: Option<crate::project::ProjectRules>,
}

impl From<flotilla_proto::AppBundle> for Bundle {
    fn from(b: flotilla_proto::AppBundle) -> Self {
        let policy = b.policy.unwrap_or_default();
        Self {
            name: b.name,
            digest: b.digest,
            revision: b.revision,
            repo_url: b.repo_url,
            path: b.path,
            namespace: b.namespace,
            policy: Policy {
                automated: policy.automated,
                prune: policy.prune,
                self_heal: policy.self_heal,
                allow_empty: policy.allow_empty,
                sync_options: policy.sync_options,
                retry_limit: policy.retry.as_ref().map_or(0, |r| r.limit),
                retry_backoff: policy
                    .retry
                    .as_ref()
                    .map_or_else(RetryBackoff::default, RetryBackoff::from_proto),
            },
            manifests: b.manifests,
            render_error: b.render_error,
            ignore_differences: b.ignore_differences,
            project_rules: b.project_rules.map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        use std::time::Duration;
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("3m"), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5x"), None);
    }

    #[test]
    fn retry_backoff_grows_by_factor_up_to_max() {
        use std::time::Duration;
        let b = RetryBackoff::from_proto(&flotilla_proto::RetryPolicy {
            limit: 3,
            backoff_duration: "2s".into(),
            backoff_factor: 3,
            backoff_max_duration: "20s".into(),
        });
        let delays: Vec<Duration> = (1..=4).map(|n| b.delay(n)).collect();
        assert_eq!(
            delays,
            vec![
                Duration::from_secs(2),
                Duration::from_secs(6),
                Duration::from_secs(18),
                Duration::from_secs(20)
            ]
        );
        assert_eq!(RetryBackoff::default().delay(1), Duration::from_secs(5));
    }

    #[test]
    fn sync_options_parse() {
        let p = Policy {
            sync_options: vec!["CreateNamespace=true".into(), "PruneLast = TRUE".into()],
            ..Policy::default()
        };
        assert!(p.option("CreateNamespace"));
        assert!(p.option("PruneLast"));
        assert!(!p.option("ApplyOutOfSyncOnly"));
    }
}
