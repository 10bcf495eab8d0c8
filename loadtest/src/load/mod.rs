//! The load itself: a closed loop (`--concurrency N` senders, each sending its next request when the previous
//! answer arrives) or an open loop (`--rate R` requests per second on a fixed schedule, latency counted from
//! each request's slot), with a warm-up that is not recorded and a stop after a duration, a request count
//! or a [`Stop`] signal.

mod closed;
mod open;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    client::Target,
    recorder::{Recorder, Recording, Sample},
};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `concurrency` senders in a loop, each waiting for its answer.
    Closed {
        /// Senders (and so connections).
        concurrency: usize,
    },
    /// Request i is due at start + i / rate, whatever the answers do.
    Open {
        /// Requests per second.
        rate: f64,
        /// A safety cap on requests in flight; when reached the sender waits, which shows as schedule lag
        /// and in the corrected latency, never as a lost request.
        max_in_flight: usize,
    },
}

/// What to send and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSpec {
    /// Pacing.
    pub mode: Mode,
    /// Load sent first and not recorded.
    pub warmup: Duration,
    /// Recorded time after the warm-up; `None` with `requests` set means "until that many".
    pub duration: Option<Duration>,
    /// Recorded requests after the warm-up.
    pub requests: Option<u64>,
}

/// A flag that ends a load early (Ctrl-C, or the tuner once a trial is decided). Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks the load to stop sending; requests in flight still finish.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A load ready to run. Take [`Load::recorder`] first to watch it (progress bar, intervals).
#[derive(Debug)]
pub struct Load {
    target: Arc<Target>,
    spec: LoadSpec,
    stop: Stop,
    start: Instant,
    recorder: Arc<Recorder>,
}

/// The bounds a sender checks before each request.
#[derive(Debug, Clone)]
struct Plan {
    start: Instant,
    record_from: Instant,
    end: Option<Instant>,
    requests: Option<u64>,
    stop: Stop,
}

impl Load {
    /// Prepares a load that starts now; recording starts after `spec.warmup`.
    pub fn new(target: Arc<Target>, spec: LoadSpec, stop: Stop) -> Self {
        let start = Instant::now();
        let recorder = Arc::new(Recorder::new(start + spec.warmup));
        Self { target, spec, stop, start, recorder }
    }

    /// The recorder the load writes to.
    pub fn recorder(&self) -> Arc<Recorder> {
        Arc::clone(&self.recorder)
    }

    /// Sends the load, waits for the requests in flight (up to the request timeout) and returns what was
    /// recorded.
    pub async fn run(self) -> Recording {
        let record_from = self.start + self.spec.warmup;
        let plan = Plan {
            start: self.start,
            record_from,
            end: self.spec.duration.map(|d| record_from + d),
            requests: self.spec.requests,
            stop: self.stop.clone(),
        };
        match self.spec.mode {
            Mode::Closed { concurrency } => {
                closed::run(&self.target, &self.recorder, &plan, concurrency).await;
            }
            Mode::Open { rate, max_in_flight } => {
                let unsent = open::run(&self.target, &self.recorder, &plan, rate, max_in_flight).await;
                self.recorder.set_unsent(unsent);
            }
        }
        let end = plan.end.map_or_else(Instant::now, |e| e.min(Instant::now()));
        self.recorder.finish(end)
    }
}

/// Sends one request and records it when it belongs to the recorded part of the run.
async fn one_request(target: Arc<Target>, recorder: Arc<Recorder>, due: Instant, record: bool) {
    let sent = Instant::now();
    let (outcome, bytes_sent) = target.send().await;
    if record {
        recorder.record(&Sample { due, sent, done: Instant::now(), outcome, bytes_sent });
    }
}
