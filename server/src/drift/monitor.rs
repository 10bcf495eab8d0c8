//! The monitor's thread: reads the rows the request path handed over, builds a model's reference from its first
//! requests when it has no profile file, fills windows, compares them with the reference when they close (by
//! size at once, by age at the next tick) and publishes the verdicts. It ends when the server's [`super::Drift`]
//! is dropped.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, TryRecvError};
use prometheus::IntCounter;

use super::{
    metrics::DriftMetrics,
    profile::Profile,
    window::{Settings, Window},
    LastWindow, Observation, Row, Tap,
};
use crate::drift_config::DriftConfig;

/// How often windows are checked for their age, and unregistered models forgotten.
const TICK: Duration = Duration::from_secs(1);

/// How often the thread drains the rows handed over: at `drift_queue_size` rows (8,192 by default) a queue
/// drained every 20 ms takes 400,000 requests a second before it drops any.
const POLL: Duration = Duration::from_millis(20);

/// Starts the thread over `rows`.
pub(super) fn spawn(rows: Receiver<Row>, config: &DriftConfig, metrics: DriftMetrics) -> std::io::Result<()> {
    let settings = Settings {
        size: config.window_size,
        max_age: config.window_age,
        min_size: config.min_window_size,
        ..Settings::default()
    };
    let reference_size = config.reference_size;
    std::thread::Builder::new().name("ferroserve-drift".into()).spawn(move || {
        Monitor { settings, reference_size, metrics, models: HashMap::new() }.run(&rows);
    })?;
    Ok(())
}

struct Monitor {
    settings: Settings,
    reference_size: usize,
    metrics: DriftMetrics,
    /// By the address of the model's tap (held here, so never reused while it is a key).
    models: HashMap<usize, ModelState>,
}

/// What the monitor keeps of one model version.
struct ModelState {
    tap: Arc<Tap>,
    reference: Reference,
    window: Window,
    /// Per class index predicted so far, its `ferroserve_predictions_total` counter.
    classes: Vec<Option<IntCounter>>,
}

enum Reference {
    Ready(Profile),
    /// The first requests, until there are `reference_size` of them.
    Collecting(Vec<Observation>),
}

impl Monitor {
    /// Drains the channel every [`POLL`] rather than waiting on it: a receiver blocked in `recv` makes every
    /// send wake it (a futex call on the request path and a context switch per request), which cost more than
    /// the statistics themselves; a sleeping poller costs the senders nothing.
    fn run(&mut self, rows: &Receiver<Row>) {
        let mut last_tick = Instant::now();
        loop {
            std::thread::sleep(POLL);
            let now = Instant::now();
            loop {
                match rows.try_recv() {
                    Ok(row) => self.add(row, now),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
        }
    }

    fn add(&mut self, row: Row, now: Instant) {
        let key = Arc::as_ptr(&row.tap) as usize;
        let state =
            self.models.entry(key).or_insert_with(|| ModelState::new(row.tap, &self.metrics, self.reference_size));
        if !state.tap.alive.load(Ordering::Acquire) {
            return;
        }
        state.count(row.observation.class, &self.metrics);
        match &mut state.reference {
            Reference::Collecting(rows) => {
                rows.push(row.observation);
                if rows.len() >= self.reference_size {
                    state.complete_reference(&self.metrics);
                }
            }
            Reference::Ready(profile) => {
                state.window.push(&row.observation, now);
                if state.window.is_due(&self.settings, now) {
                    let report = state.window.close(profile, &self.settings);
                    self.metrics.publish(&state.tap, &report);
                    let mut status = state.tap.status.lock();
                    (status.window_samples, status.last_window) = (0, Some(LastWindow::now(report)));
                }
            }
        }
    }

    /// Closes the windows old enough, forgets unregistered models and refreshes each model's status.
    fn tick(&mut self, now: Instant) {
        let metrics = &self.metrics;
        self.models.retain(|_, state| {
            let alive = state.tap.alive.load(Ordering::Acquire);
            if !alive {
                metrics.forget(&state.tap, state.predicted());
            }
            alive
        });
        for state in self.models.values_mut() {
            let Reference::Ready(profile) = &state.reference else {
                let Reference::Collecting(rows) = &state.reference else { continue };
                state.tap.status.lock().reference_samples = rows.len() as u64;
                continue;
            };
            let closed = state.window.is_due(&self.settings, now).then(|| state.window.close(profile, &self.settings));
            if let Some(report) = &closed {
                metrics.publish(&state.tap, report);
            }
            let mut status = state.tap.status.lock();
            status.window_samples = state.window.len();
            if let Some(report) = closed {
                status.last_window = Some(LastWindow::now(report));
            }
        }
    }
}

impl ModelState {
    /// Counts one prediction of `class`.
    fn count(&mut self, class: usize, metrics: &DriftMetrics) {
        if self.classes.len() <= class {
            self.classes.resize(class + 1, None);
        }
        self.classes[class].get_or_insert_with(|| metrics.predicted(&self.tap, class)).inc();
    }

    /// The class indices predicted so far.
    fn predicted(&self) -> impl Iterator<Item = usize> + '_ {
        self.classes.iter().enumerate().filter(|(_, c)| c.is_some()).map(|(i, _)| i)
    }

    /// The state of a model's first row: its profile read from file, else an empty reference to collect.
    fn new(tap: Arc<Tap>, metrics: &DriftMetrics, reference_size: usize) -> Self {
        let mut state =
            Self { tap, reference: Reference::Collecting(Vec::new()), window: Window::default(), classes: Vec::new() };
        let file = &state.tap.profile;
        let loaded = match Profile::read(&file.path) {
            Ok(profile) => state.check(profile).map(Some),
            Err(super::profile::ProfileError::Io { source, .. })
                if !file.named && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        };
        let mut status = state.tap.status.lock();
        match loaded {
            Ok(Some(profile)) => {
                tracing::info!(model = %state.tap.name, version = %state.tap.version, file = %file.path.display(), "drift reference loaded");
                status.reference = format!("file {}", file.path.display());
                (status.reference_samples, status.reference_size) = (profile.samples, profile.samples);
                metrics.reference(&state.tap, profile.samples);
                drop(status);
                state.reference = Reference::Ready(profile);
                return state;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(model = %state.tap.name, version = %state.tap.version, %error, "drift profile not used; taking the first requests as the reference");
                status.error = Some(error);
            }
        }
        status.reference = "first requests".into();
        status.reference_size = reference_size as u64;
        drop(status);
        metrics.reference(&state.tap, 0);
        state
    }

    /// That a profile was made for the features this model gives.
    fn check(&self, profile: Profile) -> Result<Profile, String> {
        let want = self.tap.names.iter().map(String::as_str).chain([super::features::CONFIDENCE]);
        if profile.names().eq(want) {
            Ok(profile)
        } else {
            let names: Vec<&str> = profile.names().collect();
            Err(format!(
                "the profile has the features {names:?}, the model gives {:?} and the confidence",
                self.tap.names
            ))
        }
    }

    /// Turns the collected first requests into the reference.
    fn complete_reference(&mut self, metrics: &DriftMetrics) {
        let Reference::Collecting(rows) = &mut self.reference else { return };
        let rows = std::mem::take(rows);
        let source = format!("first {} requests", rows.len());
        match Profile::build((&self.tap.name, &self.tap.version), source, &self.tap.names, &rows) {
            Ok(profile) => {
                tracing::info!(model = %self.tap.name, version = %self.tap.version, samples = rows.len(), "drift reference taken from the first requests");
                metrics.reference(&self.tap, profile.samples);
                let mut status = self.tap.status.lock();
                (status.reference_samples, status.reference_size) = (profile.samples, profile.samples);
                drop(status);
                self.reference = Reference::Ready(profile);
            }
            Err(error) => tracing::error!(model = %self.tap.name, %error, "cannot build the drift reference"),
        }
    }
}
