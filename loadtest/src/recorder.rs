//! Where results go while the load runs: HdrHistograms (microseconds, 3 significant figures) of corrected
//! latency, service time and schedule lag, counters by outcome, the server's timing headers, and the
//! per-interval histograms behind the progress bar, the interval log and the tuner's stability windows.
//!
//! Latency is measured from the instant a request was *due* (open loop: its slot in the schedule), so a
//! stall that delays sending still shows; service time is measured from the instant it was actually sent.
//! Successful answers and timeouts are recorded in the latency histograms (a timeout is a lower bound on
//! its latency); other errors are counted by key but are not latencies.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::client::Outcome;

/// The largest latency the histograms hold: one hour, in microseconds.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// An empty histogram of microseconds, 1 µs to 1 h, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("constant bounds: 1 us to 1 h at 3 significant figures")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was due to be sent (the schedule's slot; the send instant in a closed loop).
    pub due: Instant,
    /// When it was handed to the client.
    pub sent: Instant,
    /// When the answer was complete (or given up).
    pub done: Instant,
    /// How it ended.
    pub outcome: Outcome,
    /// Request body bytes.
    pub bytes_sent: u64,
}

/// One closed interval of the run.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Start, from the beginning of recording.
    pub start: Duration,
    /// Length.
    pub length: Duration,
    /// Corrected latencies of the requests that finished in it.
    pub latency: Histogram<u64>,
    /// Requests that finished in it.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
}

impl Interval {
    /// Requests finished per second.
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.length.as_secs_f64().max(1e-9)
    }
}

/// Sums of the server's timing headers over the answers that carried them.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimingSums {
    /// Σ queue time, ms, and how many answers had it.
    pub queue_ms: (f64, u64),
    /// Σ inference time, ms, and how many answers had it.
    pub inference_ms: (f64, u64),
    /// Σ batch size, and how many answers had it.
    pub batch_size: (f64, u64),
}

/// Everything a run recorded, taken out of the recorder at the end.
#[derive(Debug, Clone)]
pub struct Recording {
    /// From the start of recording to the last recorded answer (or the end, if later).
    pub elapsed: Duration,
    /// Corrected latency (from the due instant).
    pub latency: Histogram<u64>,
    /// Service time (from the send instant) of successful requests.
    pub service: Histogram<u64>,
    /// How late each open-loop request left against its schedule.
    pub lag: Histogram<u64>,
    /// Open loop: requests due before the end that were never sent (the sender was held back).
    pub unsent: u64,
    /// Requests finished.
    pub requests: u64,
    /// Of which 2xx.
    pub successes: u64,
    /// Failures by key (`503`, `timeout`, `connect`, `io`).
    pub errors: BTreeMap<String, u64>,
    /// Request bytes sent.
    pub bytes_sent: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
    /// The server's timing headers.
    pub timing: TimingSums,
    /// Closed intervals, in order.
    pub intervals: Vec<Interval>,
}

impl Recording {
    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Live counters for the progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Requests finished so far.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// p99 of the last closed interval, if any.
    pub recent_p99: Option<Duration>,
}

#[derive(Debug)]
struct State {
    recording: Recording,
    window: Interval,
    last_done: Instant,
}

/// Thread-safe sink of samples. Cheap: one uncontended lock per request on the default single-thread runtime.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    state: Mutex<State>,
}

impl Recorder {
    /// A recorder whose time zero (end of warm-up) is `start`.
    pub fn new(start: Instant) -> Self {
        let empty = Interval {
            start: Duration::ZERO,
            length: Duration::ZERO,
            latency: new_histogram(),
            requests: 0,
            errors: 0,
        };
        let recording = Recording {
            elapsed: Duration::ZERO,
            latency: new_histogram(),
            service: new_histogram(),
            lag: new_histogram(),
            unsent: 0,
            requests: 0,
            successes: 0,
            errors: BTreeMap::new(),
            bytes_sent: 0,
            bytes_received: 0,
            timing: TimingSums::default(),
            intervals: Vec::new(),
        };
        Self { start, state: Mutex::new(State { recording, window: empty, last_done: start }) }
    }

    /// The instant recording started.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still valid numbers.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records one finished request.
    pub fn record(&self, sample: &Sample) {
        let latency = micros(sample.done.saturating_duration_since(sample.due));
        let service = micros(sample.done.saturating_duration_since(sample.sent));
        let mut state = self.lock();
        let state = &mut *state;
        state.last_done = state.last_done.max(sample.done);
        let rec = &mut state.recording;
        rec.requests += 1;
        rec.bytes_sent += sample.bytes_sent;
        state.window.requests += 1;
        match sample.outcome.error_key() {
            None => rec.successes += 1,
            Some(key) => {
                *rec.errors.entry(key).or_insert(0) += 1;
                state.window.errors += 1;
            }
        }
        if sample.outcome.is_success() || sample.outcome == Outcome::Timeout {
            rec.latency.saturating_record(latency);
            state.window.latency.saturating_record(latency);
        }
        if let Outcome::Response { bytes, timing, .. } = sample.outcome {
            rec.bytes_received += bytes;
            if sample.outcome.is_success() {
                rec.service.saturating_record(service);
                let sums = &mut rec.timing;
                for (sum, value) in [
                    (&mut sums.queue_ms, timing.queue_ms),
                    (&mut sums.inference_ms, timing.inference_ms),
                    (&mut sums.batch_size, timing.batch_size),
                ] {
                    if let Some(v) = value {
                        sum.0 += v;
                        sum.1 += 1;
                    }
                }
            }
        }
    }

    /// Records how late an open-loop request left against its schedule.
    pub fn record_lag(&self, lag: Duration) {
        self.lock().recording.lag.saturating_record(micros(lag));
    }

    /// Records how many due requests the open loop never sent.
    pub fn set_unsent(&self, unsent: u64) {
        self.lock().recording.unsent = unsent;
    }

    /// Closes the current interval at `now` and returns it (also kept for the interval log).
    pub fn rotate(&self, now: Instant) -> Interval {
        let mut state = self.lock();
        let end = now.saturating_duration_since(self.start);
        let mut next =
            Interval { start: end, length: Duration::ZERO, latency: new_histogram(), requests: 0, errors: 0 };
        std::mem::swap(&mut state.window, &mut next);
        next.length = end.saturating_sub(next.start);
        state.recording.intervals.push(next.clone());
        next
    }

    /// Counters for the progress bar.
    pub fn progress(&self) -> Progress {
        let state = self.lock();
        let recent = state.recording.intervals.last().filter(|i| !i.latency.is_empty());
        Progress {
            requests: state.recording.requests,
            errors: state.recording.error_count(),
            recent_p99: recent.map(|i| Duration::from_micros(i.latency.value_at_quantile(0.99))),
        }
    }

    /// Takes everything out at `end`, closing the last interval if it holds anything.
    pub fn finish(&self, end: Instant) -> Recording {
        let (open_window, last_done) = {
            let state = self.lock();
            (state.window.requests > 0, state.last_done)
        };
        if open_window {
            self.rotate(end.max(last_done));
        }
        let mut state = self.lock();
        let last = state.last_done.max(end);
        state.recording.elapsed = last.saturating_duration_since(self.start);
        state.recording.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ServerTiming;

    fn ok(batch: f64) -> Outcome {
        Outcome::Response {
            status: 200,
            bytes: 10,
            timing: ServerTiming { queue_ms: Some(1.0), inference_ms: Some(2.0), batch_size: Some(batch) },
        }
    }

    #[test]
    fn corrected_latency_counts_from_the_due_instant() {
        let t0 = Instant::now();
        let recorder = Recorder::new(t0);
        let due = t0;
        let sent = t0 + Duration::from_millis(300);
        let done = sent + Duration::from_millis(2);
        recorder.record(&Sample { due, sent, done, outcome: ok(4.0), bytes_sent: 5 });
        recorder.record(&Sample {
            due,
            sent,
            done,
            outcome: Outcome::Response { status: 503, bytes: 3, timing: ServerTiming::default() },
            bytes_sent: 5,
        });
        let rec = recorder.finish(done);
        assert_eq!(rec.requests, 2);
        assert_eq!(rec.successes, 1);
        assert_eq!(rec.errors.get("503"), Some(&1));
        assert_eq!(rec.latency.len(), 1, "errors are not latencies");
        assert!(rec.latency.max() >= 301_000);
        assert!(rec.service.max() < 3_000);
        assert_eq!((rec.bytes_sent, rec.bytes_received), (10, 13));
        assert_eq!(rec.timing.batch_size, (4.0, 1));
        assert_eq!(rec.intervals.len(), 1);
    }

    #[test]
    fn intervals_split_the_run() {
        let t0 = Instant::now();
        let recorder = Recorder::new(t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        recorder.record(&Sample { due: at(0), sent: at(0), done: at(5), outcome: ok(1.0), bytes_sent: 1 });
        let first = recorder.rotate(at(100));
        assert_eq!((first.requests, first.length), (1, Duration::from_millis(100)));
        assert!((first.throughput() - 10.0).abs() < 1e-9);
        recorder.record(&Sample {
            due: at(100),
            sent: at(100),
            done: at(150),
            outcome: Outcome::Timeout,
            bytes_sent: 1,
        });
        assert_eq!(recorder.progress().requests, 2);
        let rec = recorder.finish(at(200));
        assert_eq!(rec.intervals.len(), 2);
        assert_eq!(rec.intervals[1].errors, 1);
        assert_eq!(rec.elapsed, Duration::from_millis(200));
    }
}
