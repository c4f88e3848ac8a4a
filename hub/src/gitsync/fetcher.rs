//! The hub's fetches: at most `fetch_concurrency` at once, each with a
//! deadline, and at most one in flight per repository.
//!
//! A fetch runs on a blocking thread (gix's network client is blocking)
//! started by a detached task, so it finishes (or times out) and records
//! its result even when everyone waiting for it gave up. Callers that ask
//! for a repository whose fetch is running join that fetch rather than
//! starting another. At the deadline the callers get "timed out after …",
//! the slot is given back, and the thread is told to stop: over HTTP(S)
//! its requests end at the deadline by themselves
//! ([`crate::source::FetchLimits`]); over other transports it stops when
//! the pack stops arriving. Until that thread has ended, the repository
//! is not fetched again (a fetch asked for meanwhile fails at once, saying
//! so), so a stuck server never piles up threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, watch};

use crate::source::{FetchLimits, format_duration, redact_url};

/// (url, revision) of a fetch result.
pub(super) type Key = (String, String);

/// Work of one fetch, run on a blocking thread within `FetchLimits`.
pub(super) type Job = Box<dyn FnOnce(&FetchLimits) -> Result<String, String> + Send + 'static>;

/// The last result of fetching a key.
#[derive(Clone, Debug)]
pub(super) struct Known {
    pub commit: Result<String, String>,
    /// The pass that fetched it.
    pub pass: u64,
    pub next_due: Instant,
    /// When the fetch ended (Unix milliseconds).
    pub fetched_ms: i64,
}

#[derive(Clone, Debug)]
enum FlightState {
    Running,
    /// Given up at the deadline; the thread may still run.
    TimedOut(String),
    Done(Result<String, String>),
}

struct Flight {
    id: u64,
    url: String,
    revision: String,
    /// Set when the results of its URL are dropped while it runs (a push
    /// webhook, a refresh): it may have read the repository before the
    /// push, so its result is due again at once.
    stale: Arc<AtomicBool>,
    started: Instant,
    timeout: Duration,
    state: Arc<watch::Sender<FlightState>>,
}

/// Fetch scheduling, results and the pool; see the module documentation.
pub(super) struct Fetcher {
    known: Mutex<HashMap<Key, Known>>,
    /// Flight key (the mirror a fetch writes to) → the fetch in flight.
    flights: Mutex<HashMap<String, Flight>>,
    slots: RwLock<Arc<Semaphore>>,
    timeout: RwLock<Duration>,
    next_id: AtomicU64,
    /// Told when a fetch brought something new (a new commit, another
    /// error): worth a pass.
    done: Arc<Notify>,
    /// Told when a fetch ended without news: the loop plans its sleep
    /// again (a fetch in flight does not count when it plans).
    ended: Arc<Notify>,
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.85..1.15))
}

impl Fetcher {
    pub(super) fn new(
        concurrency: usize,
        timeout: Duration,
        done: Arc<Notify>,
        ended: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(Self {
            known: Mutex::default(),
            flights: Mutex::default(),
            slots: RwLock::new(Arc::new(Semaphore::new(concurrency.max(1)))),
            timeout: RwLock::new(timeout),
            next_id: AtomicU64::new(1),
            done,
            ended,
        })
    }

    /// Changes the pool size and the timeout of fetches started from now.
    pub(super) fn set_limits(&self, concurrency: usize, timeout: Duration) {
        *self.slots.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Semaphore::new(concurrency.max(1)));
        *self.timeout.write().unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    pub(super) fn timeout(&self) -> Duration {
        *self.timeout.read().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remembered result of `key` when it need not be fetched again:
    /// fetched in pass `pass` (a forced pass still fetches each repository
    /// once), or, unless `force`, not due yet.
    pub(super) fn remembered(
        &self,
        key: &Key,
        force: bool,
        pass: u64,
    ) -> Option<Result<String, String>> {
        self.known()
            .get(key)
            .filter(|k| k.pass == pass || (!force && Instant::now() < k.next_due))
            .map(|k| k.commit.clone())
    }

    /// The last result of `key`, however old.
    pub(super) fn last(&self, key: &Key) -> Option<Known> {
        self.known().get(key).cloned()
    }

    /// Whether `key` is due for a fetch (never fetched, or its interval
    /// passed) and none is in flight for its repository.
    pub(super) fn due(&self, key: &Key, flight: &str) -> bool {
        if self.flights().contains_key(flight) {
            return false;
        }
        self.known()
            .get(key)
            .is_none_or(|k| Instant::now() >= k.next_due)
    }

    /// Forgets the results of `key`.
    pub(super) fn forget(&self, key: &Key) {
        self.known().remove(key);
    }

    /// Forgets the results of every key of these URLs; a fetch of one of
    /// them in flight counts as due again when it ends.
    pub(super) fn forget_urls(&self, urls: &[String]) {
        for f in self.flights().values() {
            if urls.contains(&f.url) {
                f.stale.store(true, Ordering::Relaxed);
            }
        }
        self.known().retain(|(url, _), _| !urls.contains(url));
    }

    /// Forgets every remembered result: each key is due, and a fetch in
    /// flight counts as due again when it ends.
    pub(super) fn forget_all(&self) {
        for f in self.flights().values() {
            f.stale.store(true, Ordering::Relaxed);
        }
        self.known().clear();
    }

    /// How long until the next remembered result is due, ignoring
    /// repositories with a fetch in flight (their end wakes the loop).
    pub(super) fn next_due_in(&self, flight_of: impl Fn(&Key) -> String) -> Option<Duration> {
        let flights: Vec<String> = self.flights().keys().cloned().collect();
        let now = Instant::now();
        self.known()
            .iter()
            .filter(|(k, _)| !flights.contains(&flight_of(k)))
            .map(|(_, k)| k.next_due.saturating_duration_since(now))
            .min()
    }

    /// Fetches in flight (including timed-out ones whose thread still runs).
    pub(super) fn in_flight(&self) -> usize {
        self.flights().len()
    }

    /// Remembers the result of a fetch, due again after `interval`
    /// (jittered). Returns whether it differs from the previous one.
    fn remember(
        &self,
        key: Key,
        commit: Result<String, String>,
        interval: Duration,
        pass: u64,
    ) -> bool {
        let previous = self.known().insert(
            key,
            Known {
                commit: commit.clone(),
                pass,
                next_due: Instant::now() + jittered(interval),
                fetched_ms: crate::clock::now_ms(),
            },
        );
        previous.is_none_or(|p| p.commit != commit)
    }

    /// The result of `key`: remembered (see [`Fetcher::remembered`]), else
    /// fetched now through [`Fetcher::flight`].
    pub(super) async fn fetch(
        self: &Arc<Self>,
        key: Key,
        flight: String,
        interval: Duration,
        force: bool,
        pass: u64,
        job: impl FnOnce() -> Job,
    ) -> Result<String, String> {
        if let Some(r) = self.remembered(&key, force, pass) {
            return r;
        }
        self.flight(key, flight, interval, pass, false, job).await
    }

    /// Fetches `key` in the flight of its repository (`flight`): joins the
    /// one in flight, or starts one running `job()`. With `fresh`, a
    /// flight that started before this call is waited for and then a new
    /// one started, so the result is never older than the call. The
    /// result is remembered, due again after `interval`.
    pub(super) async fn flight(
        self: &Arc<Self>,
        key: Key,
        flight: String,
        interval: Duration,
        pass: u64,
        fresh: bool,
        job: impl FnOnce() -> Job,
    ) -> Result<String, String> {
        let mut job = Some(job);
        loop {
            let (mut state, ours, same_revision) = {
                let mut flights = self.flights();
                match flights.get(&flight) {
                    Some(f) => {
                        if let FlightState::TimedOut(_) = &*f.state.borrow() {
                            return Err(format!(
                                "repository {}: an earlier fetch timed out after {} and is still running ({}s so far); the repository is fetched again once it ends",
                                redact_url(&key.0),
                                format_duration(f.timeout),
                                f.started.elapsed().as_secs()
                            ));
                        }
                        (f.state.subscribe(), false, f.revision == key.1)
                    }
                    None => {
                        let Some(make) = job.take() else {
                            return Err(format!(
                                "repository {}: fetch could not be started",
                                redact_url(&key.0)
                            ));
                        };
                        let (tx, rx) = watch::channel(FlightState::Running);
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        let timeout = self.timeout();
                        let tx = Arc::new(tx);
                        let stale = Arc::new(AtomicBool::new(false));
                        flights.insert(
                            flight.clone(),
                            Flight {
                                id,
                                url: key.0.clone(),
                                stale: stale.clone(),
                                revision: key.1.clone(),
                                started: Instant::now(),
                                timeout,
                                state: tx.clone(),
                            },
                        );
                        drop(flights);
                        self.clone().launch(
                            FlightEnd {
                                fetcher: self.clone(),
                                flight: flight.clone(),
                                id,
                                key: key.clone(),
                                interval,
                                pass,
                                state: tx,
                                stale,
                                started: Instant::now(),
                                finished: false,
                            },
                            timeout,
                            make(),
                        );
                        (rx, true, true)
                    }
                }
            };
            let outcome = match state.wait_for(|s| !matches!(s, FlightState::Running)).await {
                Ok(s) => s.clone(),
                Err(_) => FlightState::Done(Err(format!(
                    "repository {}: the fetch ended without a result",
                    redact_url(&key.0)
                ))),
            };
            match outcome {
                FlightState::TimedOut(e) => return Err(e),
                FlightState::Done(r) if ours || (same_revision && !fresh) => return r,
                FlightState::Done(_) | FlightState::Running => {
                    // Another revision, or older than asked: fetch ours.
                    if !fresh && let Some(r) = self.remembered(&key, false, pass) {
                        return r;
                    }
                    if job.is_none() {
                        return Err(format!(
                            "repository {}: fetch could not be started",
                            redact_url(&key.0)
                        ));
                    }
                }
            }
        }
    }

    /// Runs `job` for the flight `end` describes: waits for a slot, starts
    /// the thread, and gives up at the timeout.
    fn launch(self: Arc<Self>, end: FlightEnd, timeout: Duration, job: Job) {
        tokio::spawn(async move {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner()).clone();
            let _slot = slots.acquire_owned().await;
            let limits = FetchLimits::starting_now(timeout);
            let interrupt = limits.interrupt.clone();
            let started = Instant::now();
            let state = end.state.clone();
            let (key, interval, pass) = (end.key.clone(), end.interval, end.pass);
            let mut end = end;
            end.started = started;
            let thread = tokio::task::spawn_blocking(move || {
                let result = job(&limits);
                end.finish(result);
            });
            if tokio::time::timeout(timeout, thread).await.is_ok() {
                return;
            }
            // The deadline passed with the thread still running.
            let flights = self.flights();
            if !matches!(*state.borrow(), FlightState::Running) {
                return;
            }
            interrupt.store(true, Ordering::Relaxed);
            let error = format!(
                "repository {}: fetch timed out after {}",
                redact_url(&key.0),
                format_duration(timeout)
            );
            tracing::warn!(repo = %redact_url(&key.0), revision = %key.1, timeout = %format_duration(timeout), "fetch timed out");
            crate::metrics::metrics().git_fetch(&key.0, started.elapsed(), false);
            let _ = self.remember(key, Err(error.clone()), interval, pass);
            state.send_replace(FlightState::TimedOut(error));
            drop(flights);
            self.done.notify_one();
        });
    }
}

/// Ends a flight when its thread finishes (or, dropped without a result,
/// when the task or thread went away).
struct FlightEnd {
    fetcher: Arc<Fetcher>,
    flight: String,
    id: u64,
    key: Key,
    interval: Duration,
    pass: u64,
    state: Arc<watch::Sender<FlightState>>,
    stale: Arc<AtomicBool>,
    started: Instant,
    finished: bool,
}

impl FlightEnd {
    fn finish(mut self, result: Result<String, String>) {
        self.end(result);
    }

    fn end(&mut self, result: Result<String, String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let fetcher = self.fetcher.clone();
        let mut flights = fetcher.flights();
        if flights.get(&self.flight).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.flight);
        }
        let url = redact_url(&self.key.0);
        if matches!(*self.state.borrow(), FlightState::Running) {
            match &result {
                Ok(commit) => {
                    tracing::debug!(repo = %url, revision = %self.key.1, commit, "fetched");
                }
                Err(e) => {
                    tracing::warn!(repo = %url, revision = %self.key.1, error = %e, "fetch failed");
                }
            }
            crate::metrics::metrics().git_fetch(
                &self.key.0,
                self.started.elapsed(),
                result.is_ok(),
            );
            let interval = if self.stale.load(Ordering::Relaxed) {
                Duration::ZERO
            } else {
                self.interval
            };
            let changed = fetcher.remember(self.key.clone(), result.clone(), interval, self.pass);
            self.state.send_replace(FlightState::Done(result));
            drop(flights);
            // Only news is worth a pass.
            if changed || interval.is_zero() {
                fetcher.done.notify_one();
            } else {
                fetcher.ended.notify_one();
            }
            return;
        } else {
            tracing::info!(repo = %url, took_secs = self.started.elapsed().as_secs(), "a fetch that timed out has ended");
            self.state.send_replace(FlightState::Done(result));
        }
        drop(flights);
        fetcher.ended.notify_one();
    }
}

impl Drop for FlightEnd {
    fn drop(&mut self) {
        if !self.finished {
            let error = format!(
                "repository {}: the fetch was cancelled",
                redact_url(&self.key.0)
            );
            self.end(Err(error));
        }
    }
}
