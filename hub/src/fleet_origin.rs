//! Where a cluster's desired-state generation came from: when it was
//! computed (for `flotilla_stream_send_lag_seconds`) and the trace context
//! of the Git pass or API call that computed it (sent to the agent).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Origin of one generation.
#[derive(Clone, Debug)]
pub struct Origin {
    pub generation: u64,
    pub computed_at: Instant,
    pub trace_context: HashMap<String, String>,
    lag_taken: bool,
}

impl Origin {
    /// A generation computed now.
    pub fn new(generation: u64, trace_context: HashMap<String, String>) -> Self {
        Self {
            generation,
            computed_at: Instant::now(),
            trace_context,
            lag_taken: false,
        }
    }

    /// Time since computation, once per generation.
    pub fn take_lag(&mut self, generation: u64) -> Option<Duration> {
        if self.generation != generation || self.lag_taken {
            return None;
        }
        self.lag_taken = true;
        Some(self.computed_at.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_taken_once_per_generation() {
        let mut o = Origin::new(3, HashMap::new());
        assert!(o.take_lag(2).is_none());
        assert!(o.take_lag(3).is_some());
        assert!(o.take_lag(3).is_none());
    }
}
