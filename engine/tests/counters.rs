//! The counters behind `Model::stats` are the model's Prometheus metrics, one record of each event: what `stats`
//! reports is what the registry exposes, and a model loaded again under the same labels counts from zero while
//! the exposed counters go on.

mod support;

use std::{sync::Arc, time::Duration};

use ferroserve_engine::{
    backend::FakeStep,
    metrics::{EngineMetrics, DEFAULT_LATENCY_BUCKETS},
    BackendFactory, Model, ModelOptions,
};
use prometheus::{Registry, TextEncoder};
use support::{answer, assert_own_rows, echo, options, policy, submit_all, FOREVER};

/// Batches of exactly this many requests (the delay never ends).
const BATCH: u16 = 4;

fn model_options() -> ModelOptions {
    ModelOptions { name: "counted".into(), ..options(1, policy(usize::from(BATCH), FOREVER)) }
}

fn start_in(factory: &Arc<dyn BackendFactory>, metrics: &EngineMetrics) -> Model {
    Model::start_with(Arc::clone(factory), model_options(), metrics).expect("the fake backend always loads")
}

/// The value of the series `name` of the model `counted` in the registry's text exposition.
fn exposed(registry: &Registry, name: &str) -> Option<f64> {
    let text = TextEncoder::new().encode_to_string(&registry.gather()).expect("text exposition");
    let series = text.lines().find(|l| l.starts_with(&format!("{name}{{")) && l.contains("model_name=\"counted\""))?;
    series.rsplit(' ').next()?.parse().ok()
}

#[test]
fn stats_read_the_counters_the_registry_exposes() {
    let registry = Registry::new();
    let metrics = EngineMetrics::new(&registry, DEFAULT_LATENCY_BUCKETS).expect("fresh registry");
    let fake = echo();
    fake.script.push(FakeStep::Fail("out of memory".into()));
    let model = start_in(&(Arc::new(fake) as Arc<dyn BackendFactory>), &metrics);
    for (_, rx) in submit_all(&model, 0..BATCH) {
        assert!(answer(rx).is_err(), "the scripted failure reaches every request of the batch");
    }
    assert_own_rows(submit_all(&model, BATCH..2 * BATCH));

    let stats = model.stats();
    assert_eq!((stats.accepted, stats.batches, stats.batched, stats.failed_batches), (8, 2, 8, 1));
    assert_eq!(exposed(&registry, "ferroserve_requests_accepted_total"), Some(8.0));
    assert_eq!(exposed(&registry, "ferroserve_execution_count_total"), Some(2.0));
    assert_eq!(exposed(&registry, "ferroserve_inference_count_total"), Some(8.0));
    assert_eq!(exposed(&registry, "ferroserve_batches_failed_total"), Some(1.0));
    assert_eq!(exposed(&registry, "ferroserve_worker_restarts_total"), Some(0.0));
}

#[test]
fn a_model_loaded_again_under_the_same_labels_counts_from_zero() {
    let registry = Registry::new();
    let metrics = EngineMetrics::new(&registry, DEFAULT_LATENCY_BUCKETS).expect("fresh registry");
    let factory: Arc<dyn BackendFactory> = Arc::new(echo());
    let first = start_in(&factory, &metrics);
    assert_own_rows(submit_all(&first, 0..BATCH));
    first.shutdown();

    let again = start_in(&factory, &metrics);
    assert_eq!(again.stats(), Default::default(), "nothing counted yet by this model");
    again.set_policy(policy(1, Duration::ZERO));
    assert_own_rows(submit_all(&again, 0..1));
    assert_eq!((again.stats().accepted, again.stats().batches), (1, 1));
    assert_eq!(exposed(&registry, "ferroserve_requests_accepted_total"), Some(f64::from(BATCH + 1)));
}

#[test]
fn the_time_requests_wait_for_a_worker_is_counted() {
    let registry = Registry::new();
    let metrics = EngineMetrics::new(&registry, DEFAULT_LATENCY_BUCKETS).expect("fresh registry");
    let fake = echo();
    fake.gate.close();
    let options = ModelOptions { name: "counted".into(), ..options(1, policy(1, Duration::ZERO)) };
    let model = Model::start_with(Arc::new(fake.clone()), options, &metrics).expect("the fake backend always loads");
    let mut pending = submit_all(&model, 0..1);
    fake.gate.wait_arrived(1);
    // The one worker is held in its batch: the next request waits in the queue until the gate opens.
    let queued = std::time::Instant::now();
    pending.extend(submit_all(&model, 1..2));
    std::thread::sleep(Duration::from_millis(2));
    let held = queued.elapsed();
    fake.gate.open();
    assert_own_rows(pending);
    let waited = exposed(&registry, "ferroserve_queue_wait_seconds_total").expect("exposed");
    assert!(waited >= held.as_secs_f64(), "counted {waited} s, the second request waited at least {held:?}");
}
