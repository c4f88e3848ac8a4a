//! Rate limiting of repeated log lines: while the API server fails, the
//! same error comes back on every request (kube's client alone logs one
//! ERROR line per failed request). The first line of each kind is logged;
//! the identical ones that follow within the window are counted and
//! summed up in one line, "N more in the last 60 s", when the window ends.
//!
//! Lines are identical when their level, target and every field (message
//! included) are. The counting ([`Limiter`]) is pure and driven by the
//! caller's clock; [`RepeatLimit`] is the `tracing` layer around it, with a
//! thread that writes the summaries.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The window: a line is logged at most once per window (plus its
/// summary).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Kinds of lines remembered at once; beyond that, new kinds are logged
/// without limit until old ones expire.
const MAX_KINDS: usize = 4096;
/// Target of the summary lines (never limited themselves).
const SUMMARY_TARGET: &str = "flotilla_agent::log_limit";

/// One kind of line: its level, target and rendered fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LineKind {
    /// The level.
    pub level: Level,
    /// The target (module).
    pub target: String,
    /// Every field as `name=value`, the message first.
    pub fields: String,
}

#[derive(Debug)]
struct Seen {
    since: Instant,
    suppressed: u64,
}

/// A summary due: how many identical lines were dropped in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The line.
    pub kind: LineKind,
    /// How many more there were.
    pub suppressed: u64,
}

/// Counts repeated lines per window.
#[derive(Debug)]
pub struct Limiter {
    window: Duration,
    seen: HashMap<LineKind, Seen>,
    due: Vec<Summary>,
}

impl Limiter {
    /// A limiter with `window`.
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
            due: Vec::new(),
        }
    }

    /// Whether a line of `kind` seen at `now` is logged; a repeat within
    /// the window is counted instead.
    pub fn admit(&mut self, kind: &LineKind, now: Instant) -> bool {
        match self.seen.get_mut(kind) {
            Some(s) if now.saturating_duration_since(s.since) < self.window => {
                s.suppressed = s.suppressed.saturating_add(1);
                false
            }
            Some(s) => {
                if s.suppressed > 0 {
                    self.due.push(Summary {
                        kind: kind.clone(),
                        suppressed: s.suppressed,
                    });
                }
                s.since = now;
                s.suppressed = 0;
                true
            }
            None => {
                if self.seen.len() < MAX_KINDS {
                    self.seen.insert(
                        kind.clone(),
                        Seen {
                            since: now,
                            suppressed: 0,
                        },
                    );
                }
                true
            }
        }
    }

    /// The summaries due at `now` (windows that ended with repeats);
    /// kinds whose window ended are forgotten, so their next line is
    /// logged at once.
    pub fn take_due(&mut self, now: Instant) -> Vec<Summary> {
        let window = self.window;
        let mut due = std::mem::take(&mut self.due);
        self.seen.retain(|kind, s| {
            if now.saturating_duration_since(s.since) < window {
                return true;
            }
            if s.suppressed > 0 {
                due.push(Summary {
                    kind: kind.clone(),
                    suppressed: s.suppressed,
                });
            }
            false
        });
        due
    }
}

/// Renders an event's fields as `message k=v k=v`.
#[derive(Default)]
struct Render(String);

impl Visit for Render {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
}

/// The layer: drops repeated lines and writes their summaries from a
/// thread of its own (an event cannot be emitted from inside another).
#[derive(Debug, Clone)]
pub struct RepeatLimit {
    limiter: Arc<Mutex<Limiter>>,
}

impl RepeatLimit {
    /// A layer limiting to one line per kind per `window`; starts the
    /// thread that writes summaries (it ends with the layer).
    #[must_use]
    pub fn new(window: Duration) -> Self {
        let limiter = Arc::new(Mutex::new(Limiter::new(window)));
        let weak = Arc::downgrade(&limiter);
        let tick = (window / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let spawned = std::thread::Builder::new()
            .name("log-summaries".to_owned())
            .spawn(move || summaries(&weak, tick, window));
        if let Err(e) = spawned {
            eprintln!("repeated log lines will not be summed up: {e}");
        }
        Self { limiter }
    }
}

fn summaries(limiter: &Weak<Mutex<Limiter>>, tick: Duration, window: Duration) {
    loop {
        std::thread::sleep(tick);
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        let due = limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_due(Instant::now());
        drop(limiter);
        for s in due {
            emit(&s, window);
        }
    }
}

fn emit(s: &Summary, window: Duration) {
    let n = s.suppressed;
    let secs = window.as_secs();
    let line = &s.kind.fields;
    let target = &s.kind.target;
    match s.kind.level {
        Level::ERROR => {
            tracing::error!(target: SUMMARY_TARGET, %target, line = %line, "{n} more in the last {secs} s");
        }
        Level::WARN => {
            tracing::warn!(target: SUMMARY_TARGET, %target, line = %line, "{n} more in the last {secs} s");
        }
        Level::INFO => {
            tracing::info!(target: SUMMARY_TARGET, %target, line = %line, "{n} more in the last {secs} s");
        }
        Level::DEBUG => {
            tracing::debug!(target: SUMMARY_TARGET, %target, line = %line, "{n} more in the last {secs} s");
        }
        Level::TRACE => {
            tracing::trace!(target: SUMMARY_TARGET, %target, line = %line, "{n} more in the last {secs} s");
        }
    }
}

impl<S: Subscriber> Layer<S> for RepeatLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if meta.target() == SUMMARY_TARGET {
            return true;
        }
        let mut render = Render::default();
        event.record(&mut render);
        let kind = LineKind {
            level: *meta.level(),
            target: meta.target().to_owned(),
            fields: render.0,
        };
        self.limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(&kind, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(fields: &str) -> LineKind {
        LineKind {
            level: Level::ERROR,
            target: "kube_client::client::builder".into(),
            fields: fields.into(),
        }
    }

    #[test]
    fn the_first_line_passes_repeats_are_summed_up_once_per_window() {
        let mut l = Limiter::new(WINDOW);
        let t0 = Instant::now();
        let failed = kind("failed with status 500 Internal Server Error");
        assert!(l.admit(&failed, t0));
        // 170 a second for a minute: none of them.
        for i in 1..=170 * 59u64 {
            assert!(!l.admit(&failed, t0 + Duration::from_millis(i * 5)));
        }
        // Another line is not held back by the first.
        assert!(l.admit(&kind("other"), t0 + Duration::from_secs(1)));
        assert!(l.take_due(t0 + Duration::from_secs(59)).is_empty());
        let due = l.take_due(t0 + WINDOW);
        assert_eq!(
            due,
            vec![Summary {
                kind: failed.clone(),
                suppressed: 170 * 59
            }]
        );
        // The window ended: the next one is logged again, once.
        assert!(l.admit(&failed, t0 + WINDOW + Duration::from_secs(1)));
        assert!(!l.admit(&failed, t0 + WINDOW + Duration::from_secs(2)));
    }

    #[test]
    fn a_repeat_after_the_window_brings_its_summary() {
        let mut l = Limiter::new(WINDOW);
        let t0 = Instant::now();
        let k = kind("x");
        assert!(l.admit(&k, t0));
        assert!(!l.admit(&k, t0 + Duration::from_secs(1)));
        // The summary thread has not run yet when the window ends.
        assert!(l.admit(&k, t0 + WINDOW + Duration::from_secs(1)));
        let due = l.take_due(t0 + WINDOW + Duration::from_secs(2));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].suppressed, 1);
    }

    #[test]
    fn the_layer_drops_identical_events_only() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tracing_subscriber::layer::SubscriberExt;

        struct Count(Arc<AtomicUsize>);
        impl<S: Subscriber> Layer<S> for Count {
            fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(RepeatLimit::new(WINDOW))
            .with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                tracing::error!(error = "500", "failed");
            }
            tracing::error!(error = "503", "failed");
            tracing::warn!(error = "500", "failed");
        });
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }
}
