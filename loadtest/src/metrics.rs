//! The server's side of the story, from its Prometheus metrics scraped before and after the run: mean
//! queue time, mean inference time, mean batch size, rejections and drops for the model under test. Every
//! series is optional (TorchServe has no `ferroserve_*` ones); what is missing is left out of the report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One sample line of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Series {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A parsed scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    series: Vec<Series>,
}

impl Scrape {
    /// Parses Prometheus text format; lines that cannot be read are skipped.
    pub fn parse(text: &str) -> Self {
        Self { series: text.lines().filter_map(parse_line).collect() }
    }

    /// The sum of a metric over the series of `model` (series without a `model_name` label count too), or
    /// `None` when no such series exists.
    fn sum(&self, name: &str, model: &str) -> Option<f64> {
        self.series
            .iter()
            .filter(|s| s.name == name && s.label("model_name").is_none_or(|m| m == model))
            .fold(None, |sum, s| Some(sum.unwrap_or(0.0) + s.value))
    }

    /// Sums of `name` for `model` by the value of `label`.
    fn by_label(&self, name: &str, model: &str, label: &str) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for s in self.series.iter().filter(|s| s.name == name && s.label("model_name").is_none_or(|m| m == model)) {
            let key = s.label(label).unwrap_or("").to_string();
            *sums.entry(key).or_insert(0.0) += s.value;
        }
        sums
    }
}

fn parse_line(line: &str) -> Option<Series> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], parse_labels(&line[open + 1..close])?, &line[close + 1..])
        }
        None => {
            let split = line.find(char::is_whitespace)?;
            (&line[..split], Vec::new(), &line[split..])
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Series { name: name.trim().to_string(), labels, value })
}

fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Some(labels)
}

/// What the server measured during the run (after minus before).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSide {
    /// Requests the server counted (`ts_inference_requests_total`, else `ferroserve_inference_count_total`).
    pub requests: Option<f64>,
    /// Mean time a request spent in the server, ms (`ts_inference_latency_microseconds`, TorchServe's
    /// end-to-end time, else the `ferroserve_request_latency_seconds` histogram).
    pub mean_server_ms: Option<f64>,
    /// Mean time in the queue, ms (`ts_queue_latency_microseconds`, else `ferroserve_queue_latency_seconds`).
    pub mean_queue_ms: Option<f64>,
    /// Mean time the model took per batch, ms (`ferroserve_inference_latency_seconds`).
    pub mean_inference_ms: Option<f64>,
    /// Mean requests per batch.
    pub mean_batch_size: Option<f64>,
    /// Rejections by reason (`ferroserve_requests_rejected_total`).
    pub rejected: BTreeMap<String, f64>,
    /// Requests dropped before running, by reason (`ferroserve_requests_dropped_total`).
    pub dropped: BTreeMap<String, f64>,
}

fn delta(before: &Scrape, after: &Scrape, name: &str, model: &str) -> Option<f64> {
    Some(after.sum(name, model)? - before.sum(name, model).unwrap_or(0.0))
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// The mean of a histogram over the run from its `_sum` and `_count`, times `scale`.
fn histogram_mean(before: &Scrape, after: &Scrape, name: &str, model: &str, scale: f64) -> Option<f64> {
    let sum = delta(before, after, &format!("{name}_sum"), model)?;
    ratio(Some(sum * scale), delta(before, after, &format!("{name}_count"), model))
}

fn label_deltas(before: &Scrape, after: &Scrape, name: &str, model: &str, label: &str) -> BTreeMap<String, f64> {
    let old = before.by_label(name, model, label);
    after
        .by_label(name, model, label)
        .into_iter()
        .map(|(k, v)| {
            let d = v - old.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

impl ServerSide {
    /// The server's view of the run for `model`: TorchServe's cumulative counters first, ferroserve's
    /// histograms as the fallback (and the only source of the model's own time).
    pub fn between(before: &Scrape, after: &Scrape, model: &str) -> Self {
        let ts_requests = delta(before, after, "ts_inference_requests_total", model);
        let runs = delta(before, after, "ferroserve_inference_count_total", model);
        let micros_mean = |name| ratio(delta(before, after, name, model), ts_requests).map(|us| us / 1e3);
        Self {
            requests: ts_requests.or(runs),
            mean_server_ms: micros_mean("ts_inference_latency_microseconds")
                .or_else(|| histogram_mean(before, after, "ferroserve_request_latency_seconds", model, 1e3)),
            mean_queue_ms: micros_mean("ts_queue_latency_microseconds")
                .or_else(|| histogram_mean(before, after, "ferroserve_queue_latency_seconds", model, 1e3)),
            mean_inference_ms: histogram_mean(before, after, "ferroserve_inference_latency_seconds", model, 1e3),
            mean_batch_size: ratio(runs, delta(before, after, "ferroserve_execution_count_total", model))
                .or_else(|| histogram_mean(before, after, "ferroserve_batch_size", model, 1.0)),
            rejected: label_deltas(before, after, "ferroserve_requests_rejected_total", model, "reason"),
            dropped: label_deltas(before, after, "ferroserve_requests_dropped_total", model, "reason"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
# HELP ts_inference_requests_total Total valid request count
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="signnet",model_version="1.0"} 10
ts_inference_requests_total{model_name="other",model_version="1.0"} 500
ts_queue_latency_microseconds{model_name="signnet",model_version="1.0"} 1000
ts_inference_latency_microseconds{model_name="signnet",model_version="1.0"} 5000
ferroserve_inference_count_total{model_name="signnet",model_version="1.0",device="cpu"} 10
ferroserve_execution_count_total{model_name="signnet",model_version="1.0",device="cpu"} 5
ferroserve_inference_latency_seconds_sum{model_name="signnet",model_version="1.0",device="cpu"} 0
ferroserve_inference_latency_seconds_count{model_name="signnet",model_version="1.0",device="cpu"} 5
ferroserve_requests_rejected_total{model_name="signnet",reason="queue_full"} 1
"#;

    const AFTER: &str = r#"
ts_inference_requests_total{model_name="signnet",model_version="1.0"} 110
ts_inference_requests_total{model_name="other",model_version="1.0"} 900
ts_queue_latency_microseconds{model_name="signnet",model_version="1.0"} 201000
ts_inference_latency_microseconds{model_name="signnet",model_version="1.0"} 305000 1712345678000
ferroserve_inference_count_total{model_name="signnet",model_version="1.0",device="cpu"} 110
ferroserve_execution_count_total{model_name="signnet",model_version="1.0",device="cpu"} 15
ferroserve_inference_latency_seconds_sum{model_name="signnet",model_version="1.0",device="cpu"} 0.02
ferroserve_inference_latency_seconds_count{model_name="signnet",model_version="1.0",device="cpu"} 15
ferroserve_requests_rejected_total{model_name="signnet",reason="queue_full"} 4
ferroserve_requests_rejected_total{model_name="signnet",reason="too_many_in_flight"} 2
ferroserve_requests_dropped_total{model_name="signnet",reason="expired"} 0
"#;

    #[test]
    fn server_side_means_come_from_counter_deltas() {
        let side = ServerSide::between(&Scrape::parse(BEFORE), &Scrape::parse(AFTER), "signnet");
        assert_eq!(side.requests, Some(100.0));
        assert_eq!(side.mean_queue_ms, Some(2.0));
        assert_eq!(side.mean_server_ms, Some(3.0));
        assert_eq!(side.mean_inference_ms, Some(2.0), "0.02 s over the 10 batches of the run");
        assert_eq!(side.mean_batch_size, Some(10.0));
        assert_eq!(side.rejected.get("queue_full"), Some(&3.0));
        assert_eq!(side.rejected.get("too_many_in_flight"), Some(&2.0));
        assert!(side.dropped.is_empty());
    }

    #[test]
    fn histograms_are_the_fallback_and_missing_series_are_tolerated() {
        let before = Scrape::parse(
            "ferroserve_queue_latency_seconds_sum{model_name=\"m\"} 1\n\
             ferroserve_queue_latency_seconds_count{model_name=\"m\"} 10\n\
             ferroserve_batch_size_sum{model_name=\"m\"} 0\nferroserve_batch_size_count{model_name=\"m\"} 0\n",
        );
        let after = Scrape::parse(
            "ferroserve_queue_latency_seconds_sum{model_name=\"m\"} 1.5\n\
             ferroserve_queue_latency_seconds_count{model_name=\"m\"} 20\n\
             ferroserve_batch_size_sum{model_name=\"m\"} 40\nferroserve_batch_size_count{model_name=\"m\"} 10\n",
        );
        let side = ServerSide::between(&before, &after, "m");
        assert_eq!(side.mean_queue_ms, Some(50.0));
        assert_eq!(side.mean_batch_size, Some(4.0));
        assert_eq!(side.mean_inference_ms, None);
        assert_eq!(side.requests, None);
        assert_eq!(ServerSide::between(&Scrape::default(), &Scrape::default(), "m"), ServerSide::default());
    }

    #[test]
    fn labels_with_escapes_and_commas() {
        let s = parse_line(r#"x{a="1,2",b="q\"uote"} 3"#).expect("line");
        assert_eq!(s.label("a"), Some("1,2"));
        assert_eq!(s.label("b"), Some("q\"uote"));
        assert_eq!(s.value, 3.0);
        assert_eq!(parse_line("plain 4.5").map(|s| s.value), Some(4.5));
        assert_eq!(parse_line("# comment"), None);
    }
}
