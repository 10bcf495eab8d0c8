//! The live progress line (elapsed, current rate, recent p99, errors) on stderr, drawn only when stderr is
//! a terminal, plus the interval ticker that closes one histogram interval per `--interval`.

use std::{sync::Arc, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{task::JoinHandle, time::Instant};

use crate::{recorder::Recorder, units::format_duration};

/// A progress line being drawn; [`LiveProgress::finish`] clears it.
#[derive(Debug)]
pub struct LiveProgress {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl LiveProgress {
    /// Stops drawing and clears the line.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// Draws progress until finished; `total` is the recorded duration when known (for the bar's length).
pub fn spawn_progress(recorder: Arc<Recorder>, total: Option<Duration>, quiet: bool) -> LiveProgress {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr_with_hz(4) };
    let bar = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t.as_millis() as u64), target),
        None => ProgressBar::with_draw_target(None, target),
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}") {
        bar.set_style(style);
    }
    let drawn = bar.clone();
    let task = tokio::spawn(async move {
        let bar = drawn;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last = (Instant::now(), 0u64);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if bar.is_hidden() {
                continue;
            }
            let p = recorder.progress();
            let rate = (p.requests - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
            last = (now, p.requests);
            let p99 = p.recent_p99.map_or_else(|| "-".to_string(), format_duration);
            bar.set_position(now.saturating_duration_since(recorder.start()).as_millis() as u64);
            bar.set_message(format!("{rate:.0} req/s  p99 {p99}  errors {}  ({} done)", p.errors, p.requests));
        }
    });
    LiveProgress { bar, task }
}

/// Closes one interval of the recorder every `every`, from the start of recording, until aborted.
pub fn spawn_intervals(recorder: Arc<Recorder>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut next = recorder.start() + every;
        loop {
            tokio::time::sleep_until(next).await;
            recorder.rotate(next);
            next += every;
        }
    })
}
