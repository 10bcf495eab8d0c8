//! The metrics the server records (the metrics API renders them, see `api::metrics`):
//! end-to-end request latency per model, responses by status class (per API, and per model for the SLO rules), and TorchServe's names for compatibility
//! (`ts_inference_requests_total`, `ts_inference_latency_microseconds`, `ts_queue_latency_microseconds`,
//! `Requests2XX`/`4XX`/`5XX`), which `ts_metric_names=false` turns off.

use std::time::Duration;

use ferroserve_engine::{metrics::EngineMetrics, Model};
use hyper::StatusCode;
use prometheus::{
    core::Metric as _, CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::{
    canary_metrics::CanaryMetrics,
    config::{Api, Config},
    drift::metrics::DriftMetrics,
    model_responses::ModelResponses,
    rollout::Window,
};

/// Every metric family, in one Prometheus registry.
pub struct ServerMetrics {
    /// The registry `/metrics` exposes.
    pub registry: Registry,
    /// The engine's families; models record into them.
    pub engine: EngineMetrics,
    /// The drift monitor's families.
    pub drift: DriftMetrics,
    request_latency: HistogramVec,
    responses: IntCounterVec,
    refused: IntCounterVec,
    model_responses: ModelResponses,
    /// The canary rollouts' families.
    pub canary: CanaryMetrics,
    ts: Option<TorchServeNames>,
    failures: Failures,
}

/// What Triton's statistics need beyond the exposed families: each model's failed requests, their time, and the
/// instant of its last request. Not registered: they are read by the statistics call, not scraped.
struct Failures {
    count: IntCounterVec,
    seconds: CounterVec,
    last_ms: IntGaugeVec,
}

impl Failures {
    fn new() -> prometheus::Result<Self> {
        let labels = &["model_name", "model_version", "device"];
        Ok(Self {
            count: IntCounterVec::new(Opts::new("failed", "Failed requests"), labels)?,
            seconds: CounterVec::new(Opts::new("failed_seconds", "Seconds of failed requests"), labels)?,
            last_ms: IntGaugeVec::new(Opts::new("last_ms", "The last request, in ms since the epoch"), labels)?,
        })
    }
}

/// A model's requests as Triton's statistics count them, read from the request-latency histogram: all answered
/// requests and their total time, the failed (not 2xx) ones among them, and when the last one came.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcomes {
    /// Requests answered, whatever their status.
    pub requests: u64,
    /// Their total time, end to end, in seconds.
    pub seconds: f64,
    /// Of them, answered with a status other than 2xx.
    pub failed: u64,
    /// The total time of the failed ones, in seconds.
    pub failed_seconds: f64,
    /// When the last request was answered, in milliseconds since the Unix epoch (0 before the first).
    pub last_ms: u64,
}

/// TorchServe's metric names, kept for dashboards built on them.
struct TorchServeNames {
    requests: IntCounterVec,
    latency_us: IntCounterVec,
    queue_latency_us: IntCounterVec,
    by_class: [IntCounter; 3],
}

impl ServerMetrics {
    /// Registers every family with the configured latency buckets.
    ///
    /// # Errors
    /// When the buckets are not increasing (the configuration checks that first).
    pub fn new(config: &Config) -> prometheus::Result<Self> {
        let registry = Registry::new();
        // With a bound at each latency objective's threshold, so that the SLO rules count exactly.
        let buckets = crate::slo::latency_buckets(config);
        let engine = EngineMetrics::new(&registry, &buckets)?;
        let request_latency = HistogramVec::new(
            HistogramOpts::new(
                "ferroserve_request_latency_seconds",
                "Time from a request's arrival at the server to its response, per model",
            )
            .buckets(buckets),
            &["model_name", "model_version", "device"],
        )?;
        registry.register(Box::new(request_latency.clone()))?;
        let responses = IntCounterVec::new(
            Opts::new("ferroserve_http_responses_total", "HTTP responses by API and status class"),
            &["api", "class"],
        )?;
        registry.register(Box::new(responses.clone()))?;
        let refused = IntCounterVec::new(
            Opts::new(
                "ferroserve_admission_refused_total",
                "Requests and connections refused before reaching a model, by API and reason",
            ),
            &["api", "reason"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        let ts = if config.ts_metric_names { Some(TorchServeNames::new(&registry)?) } else { None };
        let model_responses = ModelResponses::new(&registry)?;
        let canary = CanaryMetrics::new(&registry)?;
        let drift = DriftMetrics::new(&registry)?;
        let failures = Failures::new()?;
        Ok(Self { registry, engine, drift, request_latency, responses, refused, model_responses, canary, ts, failures })
    }

    /// Brings the gauges and series of the models in `models` up to date, before an exposition: the queue depth
    /// of each, the batcher's estimates (arrival rate, batch cost per device), and its response counts at 0 from
    /// its first scrape (the availability SLI needs them).
    pub fn refresh(&self, models: &ferroserve_engine::Registry) {
        for model in models.all() {
            model.refresh_metrics();
            self.model_responses.add_model(model.name(), model.version(), model.device().kind());
        }
    }

    /// Drops the response and estimate series of an unregistered model, so that it leaves no flat series behind.
    pub fn forget(&self, model: &Model) {
        self.model_responses.remove_model(model.name(), model.version(), model.device().kind());
        model.forget_metrics();
    }

    /// Counts a request or connection refused by `api` for `reason` (`too_many_requests`,
    /// `too_many_connections`).
    pub fn refuse(&self, api: Api, reason: &str) {
        self.refused.with_label_values(&[api.name(), reason]).inc();
    }

    /// Counts one response of `api`.
    pub fn count_response(&self, api: Api, status: StatusCode) {
        let class = match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.responses.with_label_values(&[api.name(), class]).inc();
        if let Some(ts) = &self.ts {
            let index = match status.as_u16() / 100 {
                2 => Some(0),
                4 => Some(1),
                5 => Some(2),
                _ => None,
            };
            if let Some(counter) = index.and_then(|i| ts.by_class.get(i)) {
                counter.inc();
            }
        }
    }

    /// Records one inference request to `model` that took `took` end to end (whatever its outcome).
    /// `url_version` is the version its URL named: TorchServe's names label a request that named none
    /// `model_version="default"`, as TorchServe does; ferroserve's own families carry the real version.
    /// The answer's `status` counts in `ferroserve_model_responses_total`.
    pub fn observe_request(&self, model: &Model, url_version: Option<&str>, status: StatusCode, took: Duration) {
        let (name, version, device) = (model.name(), model.version(), model.device().kind());
        let labels = [name, version, device];
        self.request_latency.with_label_values(&labels).observe(took.as_secs_f64());
        self.model_responses.count(name, version, device, status.as_u16());
        if !status.is_success() {
            self.failures.count.with_label_values(&labels).inc();
            self.failures.seconds.with_label_values(&labels).inc_by(took.as_secs_f64());
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.failures.last_ms.with_label_values(&labels).set(i64::try_from(now.as_millis()).unwrap_or(i64::MAX));
        if let Some(ts) = &self.ts {
            let labels = ts_labels(model, url_version);
            ts.requests.with_label_values(&labels).inc();
            ts.latency_us.with_label_values(&labels).inc_by(micros(took));
        }
    }

    /// Records the time an answered request to `model` waited in its queue, under TorchServe's name
    /// (ferroserve's own queue histogram is the engine's, per sample).
    pub fn observe_queue(&self, model: &Model, url_version: Option<&str>, waited: Duration) {
        if let Some(ts) = &self.ts {
            ts.queue_latency_us.with_label_values(&ts_labels(model, url_version)).inc_by(micros(waited));
        }
    }

    /// What `model` has answered since it was loaded, as the canary judge reads it: requests and latency from
    /// `ferroserve_request_latency_seconds`, 5xx from `ferroserve_model_responses_total`.
    #[must_use]
    pub fn window(&self, model: &Model) -> Window {
        let (name, version, device) = (model.name(), model.version(), model.device().kind());
        let histogram = self.request_latency.with_label_values(&[name, version, device]);
        // One read of the histogram, so that its count and buckets agree.
        let proto = histogram.metric();
        let read = proto.get_histogram();
        let buckets = read
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .filter(|(le, _)| le.is_finite())
            .collect();
        Window {
            requests: read.get_sample_count(),
            errors: self.model_responses.get(name, version, device, "5xx"),
            buckets,
        }
    }

    /// What `model`'s requests came to, for Triton's statistics (see [`Outcomes`]): the events of every model
    /// recorded under its name, version and device since the server started.
    #[must_use]
    pub fn outcomes(&self, model: &Model) -> Outcomes {
        let labels = [model.name(), model.version(), model.device().kind()];
        let histogram = self.request_latency.with_label_values(&labels);
        Outcomes {
            requests: histogram.get_sample_count(),
            seconds: histogram.get_sample_sum(),
            failed: self.failures.count.with_label_values(&labels).get(),
            failed_seconds: self.failures.seconds.with_label_values(&labels).get(),
            last_ms: u64::try_from(self.failures.last_ms.with_label_values(&labels).get()).unwrap_or_default(),
        }
    }

    /// The text exposition, restricted to the families in `names` when it is not empty.
    #[must_use]
    pub fn render(&self, names: &[&str]) -> Vec<u8> {
        let mut families = self.registry.gather();
        if !names.is_empty() {
            families.retain(|f| names.contains(&f.name()));
        }
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

impl TorchServeNames {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["model_name", "model_version"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let class = |name: &str| -> prometheus::Result<IntCounter> {
            let help = format!("Responses with a {} status (TorchServe's name)", &name[8..]);
            let c = IntCounter::with_opts(Opts::new(name, help).const_label("Level", "Host"))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            requests: counter("ts_inference_requests_total", "Inference requests received (TorchServe's name)")?,
            latency_us: counter(
                "ts_inference_latency_microseconds",
                "Cumulative end-to-end inference latency in microseconds (TorchServe's name)",
            )?,
            queue_latency_us: counter(
                "ts_queue_latency_microseconds",
                "Cumulative queue latency in microseconds (TorchServe's name)",
            )?,
            by_class: [class("Requests2XX")?, class("Requests4XX")?, class("Requests5XX")?],
        })
    }
}

/// The labels of TorchServe's per-model names: the version the URL named, or `default`.
fn ts_labels<'a>(model: &'a Model, url_version: Option<&'a str>) -> [&'a str; 2] {
    [model.name(), url_version.unwrap_or("default")]
}

/// Whole microseconds, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
