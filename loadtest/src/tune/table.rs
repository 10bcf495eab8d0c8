//! The tuner's result table: one row per batch setting with its highest sustainable rate and the latency at
//! that rate, and the winner.

use std::fmt::Write as _;

use super::TuneReport;
use crate::units::trim_float;

/// The table and the winner line.
pub fn render(report: &TuneReport) -> String {
    let mut out = format!(
        "{:>6} {:>9} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
        "batch", "delay", "max req/s", "throughput", "p50", "p90", "p99", "p99.9", "mean batch"
    );
    for (i, s) in report.settings.iter().enumerate() {
        let mark = if report.winner == Some(i) { " <- best" } else { "" };
        let delay = format!("{}ms", trim_float(s.max_batch_delay_ms, 3));
        match &s.best {
            Some(t) => {
                let batch = t.server.and_then(|h| h.mean_batch_size).map_or("-".into(), |b| format!("{b:.2}"));
                let _ = writeln!(
                    out,
                    "{:>6} {:>9} {:>12} {:>12.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10}{mark}",
                    s.batch_size,
                    delay,
                    trim_float(t.rate, 1),
                    t.throughput_rps,
                    t.latency.p50_ms,
                    t.latency.p90_ms,
                    t.latency.p99_ms,
                    t.latency.p99_9_ms,
                    batch
                );
            }
            None => {
                let _ =
                    writeln!(out, "{:>6} {:>9} {:>12}  (misses the SLO at every rate tried)", s.batch_size, delay, "-");
            }
        }
    }
    let _ = writeln!(out, "latencies in ms at the highest sustainable rate, from each request's scheduled send");
    let cpu = &report.cpu;
    let _ = write!(out, "cpu over the search: generator {:.1}s ({:.2} cores)", cpu.generator_s, cpu.generator_cores());
    if let (Some(server), Some(cores), Some(ratio)) = (cpu.server_s, cpu.server_cores(), cpu.ratio()) {
        let _ = write!(out, ", server {server:.1}s ({cores:.2} cores): generator/server {:.1}%", ratio * 100.0);
    }
    out.push('\n');
    match report.winner.and_then(|i| report.settings.get(i)) {
        Some(w) => {
            let _ = writeln!(
                out,
                "winner: batchSize={} maxBatchDelay={} ({} req/s under {})",
                w.batch_size,
                trim_float(w.max_batch_delay_ms, 3),
                trim_float(w.best_rate.unwrap_or(0.0), 1),
                report.slo.join(", ")
            );
        }
        None => {
            let _ = writeln!(out, "no setting meets {}", report.slo.join(", "));
        }
    }
    out
}
