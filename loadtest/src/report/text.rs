//! The report as a person reads it on the terminal.

use std::fmt::Write as _;

use super::{Report, Summary};
use crate::units::trim_float;

fn ms(value: f64) -> String {
    if value >= 1000.0 {
        format!("{}s", trim_float(value / 1e3, 2))
    } else if value >= 10.0 {
        format!("{}ms", trim_float(value, 1))
    } else {
        format!("{}ms", trim_float(value, 3))
    }
}

fn summary_line(s: &Summary) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
        ms(s.p50_ms),
        ms(s.p90_ms),
        ms(s.p99_ms),
        ms(s.p99_9_ms),
        ms(s.max_ms),
        ms(s.mean_ms)
    )
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The report as text: load, latency, errors, the server's side, CPU and SLO verdicts.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let s = &r.settings;
    let load = match (s.rate, s.concurrency) {
        (Some(rate), _) => format!("open loop at {} req/s", trim_float(rate, 2)),
        (None, Some(c)) => format!("closed loop, {c} connections"),
        _ => "load".to_string(),
    };
    let _ = writeln!(out, "{load} against {} (warm-up {}s)", s.url, trim_float(s.warmup_s, 2));
    let error_count: u64 = r.errors.values().sum();
    let _ = writeln!(
        out,
        "  requests   {} in {:.2}s: {:.1} req/s, {:.1} ok/s, {} errors ({:.2}%)",
        r.requests,
        r.elapsed_s,
        r.throughput_rps,
        r.success_rps,
        error_count,
        r.error_rate * 100.0
    );
    let corrected = if s.rate.is_some() { "from each request's scheduled send" } else { "from the send" };
    if r.latency.count == 0 {
        let _ = writeln!(out, "  latency    none recorded: no request succeeded");
    } else {
        let _ = writeln!(out, "  latency    {}  [{corrected}]", summary_line(&r.latency));
    }
    if s.rate.is_some() {
        let _ = writeln!(out, "  service    {}  [from the actual send]", summary_line(&r.service_time));
    }
    if let Some(lag) = &r.schedule_lag {
        let _ = write!(
            out,
            "  schedule   the sender fell behind by p99 {}, max {} (mean {})",
            ms(lag.p99_ms),
            ms(lag.max_ms),
            ms(lag.mean_ms)
        );
        if r.unsent > 0 {
            let _ = write!(out, "; {} requests due were never sent (--max-in-flight held the sender)", r.unsent);
        }
        out.push('\n');
    }
    if !r.errors.is_empty() {
        let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(out, "  errors     {}", list.join(", "));
    }
    let _ = writeln!(out, "  transfer   {} sent, {} received", bytes(r.bytes_sent), bytes(r.bytes_received));
    render_server(&mut out, r);
    let cpu = &r.cpu;
    let mut line = format!("  cpu        generator {:.2}s ({:.2} cores)", cpu.generator_s, cpu.generator_cores());
    if let (Some(server), Some(cores), Some(ratio)) = (cpu.server_s, cpu.server_cores(), cpu.ratio()) {
        let _ = write!(line, ", server {server:.2}s ({cores:.2} cores): generator/server {:.1}%", ratio * 100.0);
    }
    let _ = writeln!(out, "{line}");
    for slo in &r.slo {
        let unit = if slo.slo.starts_with("errors") { "%" } else { "ms" };
        let _ = writeln!(
            out,
            "  SLO        {}: measured {}{unit}: {}",
            slo.slo,
            trim_float(slo.observed, 3),
            if slo.met { "met" } else { "MISSED" }
        );
    }
    out
}

/// Where the client's mean latency went: queue and model time from the answers' headers (exact per
/// request) or else the server's metrics, the server's own total from its metrics, the rest outside it.
fn render_server(out: &mut String, r: &Report) {
    let metrics = r.server_metrics.as_ref();
    let headers = r.server_headers.as_ref();
    let pick = |h: Option<f64>, m: Option<f64>| match (h, m) {
        (Some(v), _) => Some((v, "headers")),
        (None, Some(v)) => Some((v, "metrics")),
        (None, None) => None,
    };
    let queue = pick(headers.and_then(|h| h.mean_queue_ms), metrics.and_then(|m| m.mean_queue_ms));
    let inference = pick(headers.and_then(|h| h.mean_inference_ms), metrics.and_then(|m| m.mean_inference_ms));
    let batch = pick(headers.and_then(|h| h.mean_batch_size), metrics.and_then(|m| m.mean_batch_size));
    let client = r.service_time.mean_ms;
    if let (Some((q, q_from)), Some((i, i_from))) = (queue, inference) {
        let mut line =
            format!("  where      mean {} = queue {} [{q_from}] + model {} [{i_from}]", ms(client), ms(q), ms(i));
        match metrics.and_then(|m| m.mean_server_ms) {
            Some(server) => {
                let _ = write!(
                    line,
                    " + rest of the server {} + network and client {} [metrics]",
                    ms((server - q - i).max(0.0)),
                    ms((client - server).max(0.0))
                );
            }
            None => {
                let _ = write!(line, " + parsing, HTTP and network {}", ms((client - q - i).max(0.0)));
            }
        }
        let _ = writeln!(out, "{line}");
    }
    if let Some((b, from)) = batch {
        let _ = writeln!(out, "  batches    mean batch size {b:.2} [{from}]");
    }
    if let Some(m) = metrics {
        for (name, map) in [("rejected", &m.rejected), ("dropped", &m.dropped)] {
            if !map.is_empty() {
                let list: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(out, "  {name:<10} {}  [metrics]", list.join(", "));
            }
        }
    }
}

/// The full percentile spectrum as a table (`--percentiles`), in HdrHistogram's layout.
pub fn render_spectrum(r: &Report) -> String {
    let mut out = String::from("       Value(ms)   Percentile   TotalCount   1/(1-Percentile)\n");
    for p in &r.spectrum {
        let inverse = if p.percentile < 100.0 { 1.0 / (1.0 - p.percentile / 100.0) } else { f64::INFINITY };
        let _ = writeln!(
            out,
            "{:>16.3} {:>12.6} {:>12} {:>18.2}",
            p.latency_ms,
            p.percentile / 100.0,
            p.total_count,
            inverse
        );
    }
    out
}
