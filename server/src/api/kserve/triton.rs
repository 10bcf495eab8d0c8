//! Triton's `ModelConfig` and `ModelStatistics` calls over gRPC, from what the server knows of its models.
//!
//! The configuration: the name, platform and backend of the model's runtime, `max_batch_size` and the dynamic
//! batcher's delay from its batch policy, its one FP32 input and output without the batch dimension (-1 for a
//! size the model leaves open), and its workers as one instance group.
//!
//! The statistics, per model and version, from the metrics the server records: `inference_count` (samples run)
//! and `execution_count` (batches) since the model started; `success` and `fail` (requests answered 2xx or not,
//! and their time end to end), `queue` (per sample, arrival to the dispatch of its batch) and `compute_infer`
//! (per batch, the backend's run: its count is the batches, as ferroserve times batches, not samples) over the
//! series of the model's name, version and device. Nothing is timed apart for input and output preparation, and
//! there is no response cache: those durations are 0, and `batch_stats` is empty.

use std::time::Duration;

use ferroserve_engine::Model;
use prometheus::Histogram;

use super::ModelMetadata;
use crate::{error::ApiError, infer::find_model, proto::inference as pb, state::AppState};

/// The configuration of model `name` (at `version`, when not empty).
///
/// # Errors
/// 404 for an unknown model or version.
pub fn model_config(state: &AppState, name: &str, version: &str) -> Result<pb::ModelConfigResponse, ApiError> {
    let model = find_model(state, name, Some(version).filter(|v| !v.is_empty()))?;
    Ok(pb::ModelConfigResponse { config: Some(config(&model)) })
}

/// `model`'s configuration, as Triton describes a model.
fn config(model: &Model) -> pb::ModelConfig {
    let metadata = ModelMetadata::of(model);
    // The metadata's shapes start with the batch; a batching model's configuration leaves it out.
    let dims = |shape: &[i64]| shape.get(1..).unwrap_or_default().to_vec();
    let policy = model.policy();
    let kind = match model.device().kind() {
        "cpu" => pb::model_instance_group::Kind::Cpu,
        _ => pb::model_instance_group::Kind::Gpu,
    };
    pb::ModelConfig {
        name: metadata.name.to_string(),
        platform: metadata.platform.to_string(),
        backend: backend(model.runtime()).to_string(),
        max_batch_size: i32::try_from(policy.max_batch_size).unwrap_or(i32::MAX),
        input: metadata
            .inputs
            .iter()
            .map(|t| pb::ModelInput {
                name: t.name.to_string(),
                data_type: pb::DataType::TypeFp32.into(),
                dims: dims(&t.shape),
            })
            .collect(),
        output: metadata
            .outputs
            .iter()
            .map(|t| pb::ModelOutput {
                name: t.name.to_string(),
                data_type: pb::DataType::TypeFp32.into(),
                dims: dims(&t.shape),
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: model.name().to_string(),
            count: i32::try_from(model.workers().0).unwrap_or(i32::MAX),
            gpus: Vec::new(),
            kind: kind.into(),
        }],
        scheduling_choice: Some(pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
            preferred_batch_size: Vec::new(),
            max_queue_delay_microseconds: u64::try_from(policy.max_delay.as_micros()).unwrap_or(u64::MAX),
        })),
    }
}

/// Triton's backend name for a runtime.
fn backend(runtime: &'static str) -> &'static str {
    match runtime {
        "onnx" => "onnxruntime",
        "torchscript" => "pytorch",
        other => other,
    }
}

/// The statistics of model `name` (every model when empty) at `version` (every version when empty).
///
/// # Errors
/// 404 for an unknown model or version.
pub fn model_statistics(state: &AppState, name: &str, version: &str) -> Result<pb::ModelStatisticsResponse, ApiError> {
    let models = match (name, version) {
        ("", _) => state.registry.all(),
        (name, "") => match state.registry.versions(name) {
            Some((versions, _)) => versions,
            None => vec![find_model(state, name, None)?],
        },
        (name, version) => vec![find_model(state, name, Some(version))?],
    };
    Ok(pb::ModelStatisticsResponse { model_stats: models.iter().map(|m| statistics(state, m)).collect() })
}

/// One model's statistics.
fn statistics(state: &AppState, model: &Model) -> pb::ModelStatistics {
    let counts = model.stats();
    let outcomes = state.metrics.outcomes(model);
    let metrics = model.metrics();
    pb::ModelStatistics {
        name: model.name().to_string(),
        version: model.version().to_string(),
        last_inference: outcomes.last_ms,
        inference_count: counts.batched,
        execution_count: counts.batches,
        inference_stats: Some(pb::InferStatistics {
            success: duration(
                outcomes.requests.saturating_sub(outcomes.failed),
                outcomes.seconds - outcomes.failed_seconds,
            ),
            fail: duration(outcomes.failed, outcomes.failed_seconds),
            queue: of_histogram(&metrics.queue_latency),
            compute_infer: of_histogram(&metrics.inference_latency),
            compute_input: duration(0, 0.0),
            compute_output: duration(0, 0.0),
            cache_hit: duration(0, 0.0),
            cache_miss: duration(0, 0.0),
        }),
        batch_stats: Vec::new(),
    }
}

/// The count and total duration of a histogram in seconds.
fn of_histogram(histogram: &Histogram) -> Option<pb::StatisticDuration> {
    duration(histogram.get_sample_count(), histogram.get_sample_sum())
}

/// `count` events that took `seconds` in all, in nanoseconds (a negative rounding error reads as 0).
fn duration(count: u64, seconds: f64) -> Option<pb::StatisticDuration> {
    let ns = Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or_default().as_nanos();
    Some(pb::StatisticDuration { count, ns: u64::try_from(ns).unwrap_or(u64::MAX) })
}
