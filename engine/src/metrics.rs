//! Prometheus metrics the engine records as requests are queued and batches form and run: admissions, queue
//! latency per request, the time requests wait for a worker, execution latency and size per batch, inference vs execution counts, failed batches,
//! worker restarts, drops and rejections by cause, queue depth, and what the adaptive batcher estimates (the
//! fitted batch cost per device, the arrival rate). Labels: `model_name`, `model_version` and `device` (the
//! device's kind, `cuda`; the cost gauges name the device itself, `cuda:1`, as each device has its own fit). They are the engine's only record of these events: [`StatsSnapshot`] reads them back. The text
//! exposition is the server's job.

use prometheus::{
    exponential_buckets, Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::cost::Cost;

const LABELS: &[&str] = &["model_name", "model_version", "device"];

/// Default latency buckets in seconds: 50 µs to 10 s, with the usual SLO thresholds (5, 10, 25, 50, 100 and
/// 250 ms) among them.
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The engine's metric families, registered once in a Prometheus registry.
#[derive(Clone)]
pub struct EngineMetrics {
    accepted: IntCounterVec,
    queue_latency: HistogramVec,
    queue_wait: CounterVec,
    inference_latency: HistogramVec,
    batch_size: HistogramVec,
    inference_count: IntCounterVec,
    execution_count: IntCounterVec,
    failed_batches: IntCounterVec,
    worker_restarts: IntCounterVec,
    dropped: IntCounterVec,
    rejected: IntCounterVec,
    queue_depth: IntGaugeVec,
    estimates: EstimateFamilies,
}

/// The gauge families of the adaptive batcher's estimates.
#[derive(Clone)]
struct EstimateFamilies {
    fixed: GaugeVec,
    per_request: GaugeVec,
    spread: GaugeVec,
    samples: IntGaugeVec,
    arrival_rate: GaugeVec,
}

impl EstimateFamilies {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), LABELS)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let samples = IntGaugeVec::new(
            Opts::new(
                "ferroserve_batch_cost_samples",
                "Batches the fitted batch cost is made of (the last 256 at most)",
            ),
            LABELS,
        )?;
        registry.register(Box::new(samples.clone()))?;
        Ok(Self {
            fixed: gauge(
                "ferroserve_batch_cost_fixed_seconds",
                "Fitted cost of a batch whatever its size (a in a + b·n), per device",
            )?,
            per_request: gauge(
                "ferroserve_batch_cost_per_request_seconds",
                "Fitted cost each request adds to a batch (b in a + b·n), per device",
            )?,
            spread: gauge(
                "ferroserve_batch_cost_spread_seconds",
                "Residual standard deviation of the fitted batch cost, per device",
            )?,
            samples,
            arrival_rate: gauge(
                "ferroserve_arrival_rate_per_second",
                "Requests arriving per second lately (decayed over about half a second), as the batcher estimates it",
            )?,
        })
    }
}

/// One model's estimate gauges: the arrival rate, and the cost fit of each device it runs on.
#[derive(Clone)]
pub struct EstimateGauges {
    families: EstimateFamilies,
    name: String,
    version: String,
    /// Requests arriving per second.
    pub arrival_rate: Gauge,
}

impl EstimateGauges {
    /// Sets the cost gauges of `device` (its full name, `cuda:1`).
    pub fn set_cost(&self, device: &str, cost: &Cost) {
        let labels = [self.name.as_str(), self.version.as_str(), device];
        let f = &self.families;
        f.fixed.with_label_values(&labels).set(cost.fixed);
        f.per_request.with_label_values(&labels).set(cost.per_request);
        f.spread.with_label_values(&labels).set(cost.spread);
        f.samples.with_label_values(&labels).set(i64::try_from(cost.samples).unwrap_or(i64::MAX));
    }

    /// Removes the cost series of `devices` (full names), and the arrival rate's under `kind`, for an unloaded
    /// model.
    pub fn forget(&self, devices: &[String], kind: &str) {
        let f = &self.families;
        // A series never set is not there to remove: that is no error here.
        for device in devices {
            let labels = [self.name.as_str(), self.version.as_str(), device.as_str()];
            let _ = f.fixed.remove_label_values(&labels);
            let _ = f.per_request.remove_label_values(&labels);
            let _ = f.spread.remove_label_values(&labels);
            let _ = f.samples.remove_label_values(&labels);
        }
        let _ = f.arrival_rate.remove_label_values(&[self.name.as_str(), self.version.as_str(), kind]);
    }
}

/// One model's metrics, with labels resolved once so that recording is a few atomic adds.
#[derive(Clone)]
pub struct ModelMetrics {
    /// Requests accepted into the queue.
    pub accepted: IntCounter,
    /// Arrival to dispatch, per request (seconds).
    pub queue_latency: Histogram,
    /// Seconds requests spent in the queue before a worker took them: its rate is the mean number of requests
    /// waiting for a worker (Little's law), without the batching delay (a request a worker gathers into its batch
    /// has left the queue).
    pub queue_wait: Counter,
    /// Backend execution, per batch (seconds).
    pub inference_latency: Histogram,
    /// Requests per batch.
    pub batch_size: Histogram,
    /// Requests run.
    pub inference_count: IntCounter,
    /// Batches run, failed ones included.
    pub execution_count: IntCounter,
    /// Batches the backend failed (or panicked) on.
    pub failed_batches: IntCounter,
    /// Worker threads restarted after a panic outside the backend call.
    pub worker_restarts: IntCounter,
    /// Requests skipped because the client had gone.
    pub dropped_client_gone: IntCounter,
    /// Requests dropped because their deadline passed in the queue.
    pub dropped_expired: IntCounter,
    /// Requests refused because the queue was full.
    pub rejected_queue_full: IntCounter,
    /// Requests shed by the adaptive batcher: even full batches would answer them past the objective.
    pub rejected_slo: IntCounter,
    /// Requests shed by the adaptive batcher: they would be answered past their own deadline.
    pub rejected_deadline: IntCounter,
    /// Requests waiting in the queue (set when metrics are read).
    pub queue_depth: IntGauge,
    /// What the adaptive batcher estimates (set when metrics are read).
    pub estimates: EstimateGauges,
}

impl EngineMetrics {
    /// Registers the engine's families in `registry`, with `latency_buckets` (seconds) for the latency
    /// histograms. (TorchServe's names are the server's: they label by the version the URL named.)
    ///
    /// # Errors
    /// When a family of the same name is registered already, or the buckets are not increasing.
    pub fn new(registry: &Registry, latency_buckets: &[f64]) -> prometheus::Result<Self> {
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<HistogramVec> {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), LABELS)?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let with_reason = [LABELS, &["reason"]].concat();
        let queue_depth =
            IntGaugeVec::new(Opts::new("ferroserve_queue_depth", "Requests waiting in the queue"), LABELS)?;
        registry.register(Box::new(queue_depth.clone()))?;
        Ok(Self {
            accepted: counter("ferroserve_requests_accepted_total", "Requests accepted into the queue", LABELS)?,
            queue_latency: histogram(
                "ferroserve_queue_latency_seconds",
                "Time from a request's arrival to the dispatch of its batch",
                latency_buckets.to_vec(),
            )?,
            queue_wait: {
                let c = CounterVec::new(
                    Opts::new(
                        "ferroserve_queue_wait_seconds_total",
                        "Seconds requests waited in the queue before a worker took them (its rate: requests waiting)",
                    ),
                    LABELS,
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            inference_latency: histogram(
                "ferroserve_inference_latency_seconds",
                "Time the backend took to run one batch",
                latency_buckets.to_vec(),
            )?,
            batch_size: histogram(
                "ferroserve_batch_size",
                "Requests per batch run",
                exponential_buckets(1.0, 2.0, 10)?,
            )?,
            inference_count: counter("ferroserve_inference_count_total", "Requests run by the backend", LABELS)?,
            execution_count: counter("ferroserve_execution_count_total", "Batches run by the backend", LABELS)?,
            failed_batches: counter(
                "ferroserve_batches_failed_total",
                "Batches the backend failed or panicked on",
                LABELS,
            )?,
            worker_restarts: counter(
                "ferroserve_worker_restarts_total",
                "Workers restarted: threads after a panic outside the backend call, Python worker processes that died or hung",
                LABELS,
            )?,
            dropped: counter(
                "ferroserve_requests_dropped_total",
                "Queued requests dropped before they ran, by reason (client_gone, expired)",
                &with_reason,
            )?,
            rejected: counter(
                "ferroserve_requests_rejected_total",
                "Requests refused at admission, by reason (queue_full; slo and deadline: shed by the adaptive batcher)",
                &with_reason,
            )?,
            queue_depth,
            estimates: EstimateFamilies::new(registry)?,
        })
    }

    /// Metrics registered in a private registry with the default buckets: for models started without a server.
    #[must_use]
    pub fn detached() -> Self {
        match Self::new(&Registry::new(), DEFAULT_LATENCY_BUCKETS) {
            Ok(metrics) => metrics,
            Err(e) => unreachable!("a fresh registry accepts the engine's families: {e}"),
        }
    }

    /// The label children of one model on one device.
    #[must_use]
    pub fn for_model(&self, name: &str, version: &str, device: &str) -> ModelMetrics {
        let labels = [name, version, device];
        let reason = |vec: &IntCounterVec, why: &str| vec.with_label_values(&[name, version, device, why]);
        ModelMetrics {
            accepted: self.accepted.with_label_values(&labels),
            queue_latency: self.queue_latency.with_label_values(&labels),
            queue_wait: self.queue_wait.with_label_values(&labels),
            inference_latency: self.inference_latency.with_label_values(&labels),
            batch_size: self.batch_size.with_label_values(&labels),
            inference_count: self.inference_count.with_label_values(&labels),
            execution_count: self.execution_count.with_label_values(&labels),
            failed_batches: self.failed_batches.with_label_values(&labels),
            worker_restarts: self.worker_restarts.with_label_values(&labels),
            dropped_client_gone: reason(&self.dropped, "client_gone"),
            dropped_expired: reason(&self.dropped, "expired"),
            rejected_queue_full: reason(&self.rejected, "queue_full"),
            rejected_slo: reason(&self.rejected, "slo"),
            rejected_deadline: reason(&self.rejected, "deadline"),
            queue_depth: self.queue_depth.with_label_values(&labels),
            estimates: EstimateGauges {
                families: self.estimates.clone(),
                name: name.to_string(),
                version: version.to_string(),
                arrival_rate: self.estimates.arrival_rate.with_label_values(&labels),
            },
        }
    }

    /// A rejection of another cause (e.g. `too_many_requests`), counted by the server.
    #[must_use]
    pub fn rejected(&self, name: &str, version: &str, device: &str, reason: &str) -> IntCounter {
        self.rejected.with_label_values(&[name, version, device, reason])
    }
}

impl ModelMetrics {
    /// Reads the counters behind [`StatsSnapshot`]. They are the label children of the model's name, version and
    /// device, so they hold the events of every model recorded under those labels in the same registry since
    /// it was made.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            accepted: self.accepted.get(),
            rejected_queue_full: self.rejected_queue_full.get(),
            shed_slo: self.rejected_slo.get(),
            shed_deadline: self.rejected_deadline.get(),
            caller_gone: self.dropped_client_gone.get(),
            expired: self.dropped_expired.get(),
            batches: self.execution_count.get(),
            batched: self.inference_count.get(),
            failed_batches: self.failed_batches.get(),
            restarts: self.worker_restarts.get(),
        }
    }
}

/// A model's counters at one instant, read from its metrics (see [`crate::Model::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests accepted into the queue (`ferroserve_requests_accepted_total`).
    pub accepted: u64,
    /// Requests refused because the queue was full (`ferroserve_requests_rejected_total{reason="queue_full"}`).
    pub rejected_queue_full: u64,
    /// Requests shed because even full batches would answer them past the objective
    /// (`ferroserve_requests_rejected_total{reason="slo"}`).
    pub shed_slo: u64,
    /// Requests shed because they would be answered past their own deadline
    /// (`ferroserve_requests_rejected_total{reason="deadline"}`).
    pub shed_deadline: u64,
    /// Requests skipped because their caller had gone before dispatch
    /// (`ferroserve_requests_dropped_total{reason="client_gone"}`).
    pub caller_gone: u64,
    /// Requests skipped because their deadline passed in the queue
    /// (`ferroserve_requests_dropped_total{reason="expired"}`).
    pub expired: u64,
    /// Batches run, failed ones included (`ferroserve_execution_count_total`).
    pub batches: u64,
    /// Requests run, summed over batches; `batched / batches` is the mean batch size
    /// (`ferroserve_inference_count_total`).
    pub batched: u64,
    /// Batches the backend failed (or panicked) on (`ferroserve_batches_failed_total`).
    pub failed_batches: u64,
    /// Worker threads restarted after a panic outside the backend call (`ferroserve_worker_restarts_total`).
    pub restarts: u64,
}

impl StatsSnapshot {
    /// What was counted since `earlier`, a snapshot of the same counters.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            accepted: self.accepted.saturating_sub(earlier.accepted),
            rejected_queue_full: self.rejected_queue_full.saturating_sub(earlier.rejected_queue_full),
            shed_slo: self.shed_slo.saturating_sub(earlier.shed_slo),
            shed_deadline: self.shed_deadline.saturating_sub(earlier.shed_deadline),
            caller_gone: self.caller_gone.saturating_sub(earlier.caller_gone),
            expired: self.expired.saturating_sub(earlier.expired),
            batches: self.batches.saturating_sub(earlier.batches),
            batched: self.batched.saturating_sub(earlier.batched),
            failed_batches: self.failed_batches.saturating_sub(earlier.failed_batches),
            restarts: self.restarts.saturating_sub(earlier.restarts),
        }
    }
}
