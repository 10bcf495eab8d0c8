//! The management API (TorchServe's, on `management_address`): list, describe, register, scale, re-batch,
//! set the default version and unregister models, live.
//!
//! ferroserve's extensions: `PUT /models/{m}[/{v}]?batch_size=N&max_batch_delay=MS` changes batch size and delay
//! of a loaded model for its next batch, without reloading it (`max_batch_delay=auto&slo_p99_ms=MS` batches for a
//! latency objective instead, as does `POST /models?...&max_batch_delay=auto&slo_p99_ms=MS`; describe then shows
//! `"maxBatchDelay": "auto"`, `sloP99Ms`, and for every model the fitted batch cost); `PUT /models/{m}/{v}/canary?percent=P` makes
//! version `v` the model's canary (with an automatic analysis when asked for, see [`crate::rollouts`]),
//! `DELETE /models/{m}/{v}/canary` ends it and `PUT /models/{m}/{v}/promote` makes it the default version.

use std::{collections::HashMap, path::Component, sync::Arc, time::Duration};

use ferroserve_engine::{BatchPolicy, Model};
use hyper::{body::Incoming, Method, Request, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::{
    batching_config::{slo_ms, MaxBatchDelay},
    error::ApiError,
    infer::find_model,
    load::{self, LoadPlan, Origin, Overrides},
    reply::{json_value, query, status, Reply},
    rollout_config::{canary_weight, AnalysisConfig},
    rollouts::Status,
    state::AppState,
};

/// TorchServe's default page size of `GET /models`.
const DEFAULT_LIMIT: usize = 100;

/// Answers one management-API request.
///
/// # Errors
/// [`ApiError`] for an unknown path or method, a disabled model API, and whatever the call refuses.
pub async fn handle(req: Request<Incoming>, state: &Arc<AppState>) -> Result<Reply, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match dispatch(state, req.method(), &segments, &query(&req)).await {
        Err(e) if e.kind == NO_SUCH_CALL => Err(ApiError::not_found(&path)),
        answer => answer,
    }
}

/// The exception name of a call that is no management call (answered 404 naming the path over HTTP).
const NO_SUCH_CALL: &str = "NoSuchManagementCall";

/// Runs the management call of `method` on the path `segments` with the query parameters `params`: what the
/// HTTP API and TorchServe's gRPC management service (which names its calls the same way) share.
///
/// # Errors
/// [`ApiError`] for an unknown call or method, a disabled model API, and whatever the call refuses.
pub async fn dispatch(
    state: &Arc<AppState>,
    method: &Method,
    segments: &[&str],
    params: &HashMap<String, String>,
) -> Result<Reply, ApiError> {
    // Ending a canary unregisters nothing.
    let registering = matches!(method, &Method::POST | &Method::DELETE) && segments.last() != Some(&"canary");
    if registering && !state.config.enable_model_api {
        let message = "The model API is disabled: set enable_model_api=true to register or unregister models";
        return Err(ApiError { message: message.into(), ..ApiError::method_not_allowed() });
    }
    match (method, segments) {
        (&Method::GET, ["models"]) => list(state, params),
        (&Method::POST, ["models"]) => register(state, params).await,
        (&Method::GET, ["models", name]) => describe(state, name, Some(None)),
        (&Method::GET, ["models", name, "all"]) => describe(state, name, None),
        (&Method::GET, ["models", name, version]) => describe(state, name, Some(Some(version))),
        (&Method::PUT, ["models", name]) => update(state, name, None, params).await,
        (&Method::PUT, ["models", name, version]) => update(state, name, Some(version), params).await,
        (&Method::PUT, ["models", name, version, "set-default"]) => set_default(state, name, version),
        (&Method::PUT, ["models", name, version, "canary"]) => set_canary(state, name, version, params),
        (&Method::DELETE, ["models", name, version, "canary"]) => clear_canary(state, name, version),
        (&Method::PUT, ["models", name, version, "promote"]) => promote(state, name, version),
        (&Method::DELETE, ["models", name]) => unregister(state, name, None).await,
        (&Method::DELETE, ["models", name, version]) => unregister(state, name, Some(version)).await,
        (_, ["models", ..]) => Err(ApiError::method_not_allowed()),
        (method, [page @ ("" | "api-description")]) => super::description::management(method, page),
        _ => Err(ApiError { kind: NO_SUCH_CALL, ..ApiError::not_found(&segments.join("/")) }),
    }
}

/// A query parameter parsed as `T`, or a 400 naming it.
fn param<T: std::str::FromStr>(params: &HashMap<String, String>, key: &str) -> Result<Option<T>, ApiError> {
    params
        .get(key)
        .map(|v| v.parse::<T>().map_err(|_| ApiError::bad_request(format!("Invalid value for parameter {key}: {v}"))))
        .transpose()
}

fn positive(params: &HashMap<String, String>, key: &str) -> Result<Option<usize>, ApiError> {
    match param::<usize>(params, key)? {
        Some(0) => Err(ApiError::bad_request(format!("Parameter {key} must be at least 1"))),
        other => Ok(other),
    }
}

fn flag(params: &HashMap<String, String>, key: &str) -> Result<bool, ApiError> {
    Ok(param::<bool>(params, key)?.unwrap_or(false))
}

/// `GET /models?limit=&next_page_token=`: model names with their default version's URL, a page at a time.
fn list(state: &AppState, params: &HashMap<String, String>) -> Result<Reply, ApiError> {
    let limit = positive(params, "limit")?.unwrap_or(DEFAULT_LIMIT);
    let start = param::<usize>(params, "next_page_token")?.unwrap_or(0);
    let models = state.registry.defaults();
    let page: Vec<_> = models
        .iter()
        .skip(start)
        .take(limit)
        .map(|m| json!({ "modelName": m.name(), "modelUrl": m.source().0 }))
        .collect();
    let mut body = json!({ "models": page });
    if start + limit < models.len() {
        body["nextPageToken"] = json!((start + limit).to_string());
    }
    Ok(json_value(StatusCode::OK, &body))
}

/// TorchServe's description of one model version.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Description {
    model_name: String,
    model_version: String,
    model_url: String,
    runtime: &'static str,
    min_workers: usize,
    max_workers: usize,
    batch_size: usize,
    /// Milliseconds: an integer when whole, as TorchServe sends it (fractions are ferroserve's extension); or
    /// `"auto"` when the model batches for `slo_p99_ms`.
    max_batch_delay: serde_json::Value,
    /// ferroserve's extension: the objective an `auto` model batches for, in milliseconds.
    #[serde(rename = "sloP99Ms", skip_serializing_if = "Option::is_none")]
    slo_p99_ms: Option<serde_json::Number>,
    /// ferroserve's extension: the batch cost fitted on each device (once enough batches ran), and the arrival
    /// rate: what the `auto` batcher knows.
    batch_cost: Vec<BatchCost>,
    arrivals_per_second: f64,
    loaded_at_startup: bool,
    response_timeout: u64,
    job_queue_size: usize,
    device: String,
    workers: Vec<Worker>,
    job_queue_status: QueueStatus,
    /// ferroserve's extension: the model's canary rollout (the last one, once ended), on each of its versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<Status>,
    /// ferroserve's extension: the drift monitor's reference and last window's verdict, once the model has had
    /// a request with drift detection on.
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<crate::drift::Status>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Worker {
    id: String,
    status: &'static str,
    device: String,
    gpu: bool,
    pid: u32,
}

/// The fitted cost `a + b·n` of a batch of `n` on one device, in milliseconds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchCost {
    device: String,
    fixed_ms: f64,
    per_request_ms: f64,
    spread_ms: f64,
    samples: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueStatus {
    remaining_capacity: usize,
    pending_requests: usize,
}

fn description(state: &AppState, model: &Model) -> Description {
    let (wanted, _) = model.workers();
    let policy = model.policy();
    let options = model.options();
    let capacity = options.queue_size.max(1);
    let pending = model.queue_len();
    let (url, loaded_at_startup) = model.source();
    let (costs, arrivals_per_second) = model.estimates();
    let target = model.slo_target();
    Description {
        model_name: model.name().to_string(),
        model_version: model.version().to_string(),
        model_url: url.to_string(),
        runtime: model.runtime(),
        min_workers: wanted,
        max_workers: model.max_workers(),
        batch_size: policy.max_batch_size,
        max_batch_delay: target.map_or_else(|| milliseconds(policy.max_delay).into(), |_| "auto".into()),
        slo_p99_ms: target.map(milliseconds),
        batch_cost: costs
            .into_iter()
            .map(|(device, c)| BatchCost {
                device: device.to_string(),
                fixed_ms: c.fixed * 1e3,
                per_request_ms: c.per_request * 1e3,
                spread_ms: c.spread * 1e3,
                samples: c.samples,
            })
            .collect(),
        arrivals_per_second,
        loaded_at_startup,
        response_timeout: options.response_timeout.as_secs(),
        job_queue_size: capacity,
        device: model.device().to_string(),
        workers: model
            .worker_ids()
            .into_iter()
            .map(|i| Worker {
                id: format!("{}", 9000 + i),
                status: "READY",
                device: model.worker_device(i).to_string(),
                gpu: model.worker_device(i).kind() != "cpu",
                pid: model.worker_process(i).unwrap_or_else(std::process::id),
            })
            .collect(),
        job_queue_status: QueueStatus {
            remaining_capacity: capacity.saturating_sub(pending),
            pending_requests: pending,
        },
        canary: None,
        drift: state.drift.status(model.name(), model.version()),
    }
}

/// `delay` in milliseconds: an integer when it is a whole number of them.
fn milliseconds(delay: std::time::Duration) -> serde_json::Number {
    match u64::try_from(delay.as_micros()) {
        Ok(us) if us % 1000 == 0 => (us / 1000).into(),
        _ => serde_json::Number::from_f64(delay.as_secs_f64() * 1000.0).unwrap_or_else(|| u64::MAX.into()),
    }
}

/// `GET /models/{m}` (default version), `/models/{m}/{v}` (`Some(Some(v))`) or `/models/{m}/all` (`None`).
fn describe(state: &AppState, name: &str, which: Option<Option<&str>>) -> Result<Reply, ApiError> {
    let models = match which {
        Some(version) => vec![find_model(state, name, version)?],
        None => {
            let (all, _) = state
                .registry
                .versions(name)
                .ok_or_else(|| ApiError::model_not_found(format!("Model not found: {name}")))?;
            all
        }
    };
    let canary = state.rollouts.status(&state.registry, name);
    let body: Vec<Description> =
        models.iter().map(|m| Description { canary: canary.clone(), ..description(state, m) }).collect();
    Ok(json_value(StatusCode::OK, &body))
}

/// A model URL must name a file or folder inside the model store.
fn check_url(url: &str) -> Result<(), ApiError> {
    let path = std::path::Path::new(url);
    let escapes = path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if url.is_empty() || url.contains("://") || escapes {
        return Err(ApiError::bad_request(format!(
            "Invalid model url {url:?}: give a file or folder name inside the model store"
        )));
    }
    Ok(())
}

/// `allowed_urls`: when set, the URL must match one of the patterns whole.
fn check_allowed(patterns: &[String], url: &str) -> Result<(), ApiError> {
    if patterns.is_empty() {
        return Ok(());
    }
    let set = regex::RegexSet::new(patterns.iter().map(|p| format!("^(?:{p})$")))
        .map_err(|e| ApiError::internal(format!("allowed_urls: {e}")))?;
    if set.is_match(url) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("Given URL {url} does not match any allowed URL(s)")))
    }
}

/// `POST /models?url=&model_name=&batch_size=&max_batch_delay=&slo_p99_ms=&initial_workers=&response_timeout=
/// &synchronous=`
async fn register(state: &Arc<AppState>, params: &HashMap<String, String>) -> Result<Reply, ApiError> {
    let url = params.get("url").ok_or_else(|| ApiError::bad_request("Parameter url is required."))?.clone();
    check_url(&url)?;
    check_allowed(&state.config.allowed_urls, &url)?;
    // The manifest is read, and a .mar unpacked, off the async threads.
    let (config, given, entry) = (state.config.clone(), params.get("model_name").cloned(), url.clone());
    let (name, version) = blocking(move || load::identity(&config, given.as_deref(), &entry)).await?;
    if state.registry.get(&name, Some(&version)).is_some() {
        return Err(ApiError::conflict(format!("Model version {version} is already registered for model {name}")));
    }
    // The parameters are checked before the store is read, and win over the model's settings (as in TorchServe).
    let overrides = overrides(params)?;
    let synchronous = flag(params, "synchronous")?;
    // Before answering: a URL that is not in the store, or a broken archive, fails here even when loading goes
    // on in the background.
    let (config, identity) = (state.config.clone(), (name.clone(), version.clone()));
    let plan =
        blocking(move || LoadPlan::new(&config, (&identity.0, &identity.1), &url, Origin::Registration, &overrides))
            .await??;
    let workers = plan.options.workers;
    let (config, metrics, registry) = (state.config.clone(), state.metrics.engine.clone(), Arc::clone(&state.registry));
    let task = tokio::task::spawn_blocking(move || {
        let model = plan.load(&config, &metrics)?;
        registry.register(model).map(drop).map_err(|m| load::LoadError::Duplicate(m.name().to_string()))
    });
    if !synchronous {
        let (state, loading) = (Arc::clone(state), name.clone());
        tokio::spawn(async move {
            let outcome = match task.await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(error) => Some(error.to_string()),
            };
            if let Some(error) = &outcome {
                tracing::error!(model = %loading, %error, "background registration failed");
            }
            state.set_failure(&loading, outcome);
        });
        let message = format!("Model \"{name}\" Version: {version} registration accepted, starting {workers} workers");
        return Ok(status(StatusCode::ACCEPTED, &message));
    }
    task.await.map_err(|e| ApiError::internal(e.to_string()))??;
    state.set_failure(&name, None);
    let message = format!("Model \"{name}\" Version: {version} registered with {workers} initial workers");
    Ok(status(StatusCode::OK, &message))
}

/// The registration call's settings over the model's own.
fn overrides(params: &HashMap<String, String>) -> Result<Overrides, ApiError> {
    let seconds = |s: usize| std::time::Duration::from_secs(s as u64);
    Ok(Overrides {
        workers: param::<usize>(params, "initial_workers")?,
        batch_size: positive(params, "batch_size")?,
        max_batch_delay: max_batch_delay(params)?,
        slo_p99: slo_p99(params)?,
        response_timeout: positive(params, "response_timeout")?.map(seconds),
    })
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal(e.to_string()))
}

/// `max_batch_delay` (ms, fractions allowed, or `auto`), when given.
fn max_batch_delay(params: &HashMap<String, String>) -> Result<Option<MaxBatchDelay>, ApiError> {
    params
        .get("max_batch_delay")
        .map(|v| MaxBatchDelay::parse(v).map_err(|e| ApiError::bad_request(format!("Parameter max_batch_delay: {e}"))))
        .transpose()
}

/// `slo_p99_ms`, the objective of `max_batch_delay=auto`, when given.
fn slo_p99(params: &HashMap<String, String>) -> Result<Option<std::time::Duration>, ApiError> {
    param::<f64>(params, "slo_p99_ms")?
        .map(|ms| slo_ms(ms).map_err(|e| ApiError::bad_request(format!("Parameter slo_p99_ms: {e}"))))
        .transpose()
}

/// `batch_size` and a fixed `max_batch_delay` (ms) over `current`.
fn batch_policy(params: &HashMap<String, String>, current: BatchPolicy) -> Result<BatchPolicy, ApiError> {
    Ok(BatchPolicy {
        max_batch_size: positive(params, "batch_size")?.unwrap_or(current.max_batch_size),
        max_delay: max_batch_delay(params)?.and_then(MaxBatchDelay::fixed).unwrap_or(current.max_delay),
    })
}

/// The objective `model` batches for once `max_batch_delay` and `slo_p99_ms` apply: a fixed delay ends it,
/// `auto` needs one (given, in force already, or configured), and `slo_p99_ms` alone changes it only while
/// the model batches for one.
fn slo_target(state: &AppState, model: &Model, params: &HashMap<String, String>) -> Result<Option<Duration>, ApiError> {
    let (delay, slo) = (max_batch_delay(params)?, slo_p99(params)?);
    match delay {
        Some(MaxBatchDelay::Ms(_)) => Ok(None),
        Some(MaxBatchDelay::Auto) => {
            let configured = state.config.model_config(model.name(), model.version());
            let objective = configured.and_then(|m| m.slo_target(Some(MaxBatchDelay::Auto), None).ok().flatten());
            slo.or(model.slo_target()).or(objective).map(Some).ok_or_else(|| {
                ApiError::bad_request("Parameter max_batch_delay=auto needs an objective: give slo_p99_ms")
            })
        }
        None if slo.is_some() && model.slo_target().is_none() => Err(ApiError::bad_request(
            "Parameter slo_p99_ms applies to max_batch_delay=auto: give both to batch for an objective",
        )),
        None => Ok(slo.or(model.slo_target())),
    }
}

/// `PUT /models/{m}[/{v}]?min_worker=&max_worker=&synchronous=` scales workers; ferroserve's `batch_size` and
/// `max_batch_delay` change batching.
async fn update(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<Reply, ApiError> {
    let model = find_model(state, name, version)?;
    let known = ["min_worker", "max_worker", "batch_size", "max_batch_delay", "slo_p99_ms"];
    if !known.iter().any(|k| params.contains_key(*k)) {
        return Err(ApiError::bad_request(format!("Give at least one of the parameters {}", known.join(", "))));
    }
    // Zero workers keep the model loaded and refusing requests (503) until it is scaled up, as in TorchServe.
    let min = param::<usize>(params, "min_worker")?;
    let max = param::<usize>(params, "max_worker")?;
    if let (Some(min), Some(max)) = (min, max) {
        if max < min {
            return Err(ApiError::bad_request(format!("max_worker {max} is below min_worker {min}")));
        }
    }
    let policy = batch_policy(params, model.policy())?;
    let target = slo_target(state, &model, params)?;
    // Every parameter is checked before anything changes: a 400 leaves the model as it was.
    let synchronous = flag(params, "synchronous")?;
    model.set_policy(policy);
    model.set_slo_target(target);
    if let Some(max) = max {
        model.set_max_workers(max);
    }
    let Some(workers) = min else {
        let delay = match target {
            Some(slo) => format!("auto for a p99 of {} ms", slo.as_secs_f64() * 1000.0),
            None => format!("{} ms", policy.max_delay.as_secs_f64() * 1000.0),
        };
        let message = format!(
            "Model \"{name}\" Version: {} batchSize {} maxBatchDelay {delay}",
            model.version(),
            policy.max_batch_size
        );
        return Ok(status(StatusCode::OK, &message));
    };
    let (scaling, limit) = (Arc::clone(&model), model.options().response_timeout);
    // A synchronous call answers once the surplus workers have stopped (after their batch), as TorchServe does.
    let task = tokio::task::spawn_blocking(move || {
        scaling.scale(workers).map(|()| !synchronous || scaling.wait_for_workers(limit))
    });
    if !synchronous {
        tokio::spawn(async move {
            if let Ok(Err(error)) = task.await {
                tracing::error!(%error, "scaling failed");
            }
        });
        return Ok(status(StatusCode::ACCEPTED, "Processing worker updates..."));
    }
    let settled = task
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot start workers: {e}")))?;
    if !settled {
        return Err(ApiError::internal(format!(
            "Workers of model {name} are still finishing their batches after {} s; they stop after them",
            limit.as_secs()
        )));
    }
    Ok(status(StatusCode::OK, &format!("Workers scaled to {workers} for model: {name}")))
}

/// `PUT /models/{m}/{v}/set-default`; on the canary, it promotes it.
fn set_default(state: &AppState, name: &str, version: &str) -> Result<Reply, ApiError> {
    find_model(state, name, Some(version))?;
    if state.registry.canary(name).is_some_and(|c| c.version == version) {
        state.rollouts.promote(state.scope(), name, version)?;
    } else if !state.registry.set_default(name, version) {
        return Err(ApiError::version_not_found(name, version));
    }
    let message = format!("Default version successfully updated for model \"{name}\" to \"{version}\"");
    Ok(status(StatusCode::OK, &message))
}

/// The analysis parameters of `PUT /models/{m}/{v}/canary`, with the keys of `canaryAnalysis` in snake case.
const ANALYSIS_PARAMS: [&str; 8] = [
    "interval",
    "threshold",
    "step_weight",
    "max_weight",
    "max_error_percent",
    "max_p99_ms",
    "p99_factor",
    "min_requests",
];

/// `PUT /models/{m}/{v}/canary?percent=P[&analysis=true|false][&interval=1m&threshold=N&step_weight=P&
/// max_weight=P&max_error_percent=P&max_p99_ms=MS&p99_factor=X&min_requests=N]`: version `v` takes `P` % of
/// the requests that name no version. The analysis runs when `analysis=true`, when an analysis parameter is
/// given, or when the version's `canaryAnalysis` in `config.properties` states one (the parameters win over
/// it); `analysis=false` turns it off.
fn set_canary(
    state: &AppState,
    name: &str,
    version: &str,
    params: &HashMap<String, String>,
) -> Result<Reply, ApiError> {
    find_model(state, name, Some(version))?;
    let percent =
        param::<f64>(params, "percent")?.ok_or_else(|| ApiError::bad_request("Parameter percent is required."))?;
    let weight = canary_weight(percent).map_err(|e| ApiError::bad_request(format!("Parameter percent: {e}")))?;
    let given = AnalysisConfig {
        interval: params.get("interval").cloned(),
        threshold: param(params, "threshold")?,
        step_weight: param(params, "step_weight")?,
        max_weight: param(params, "max_weight")?,
        max_error_percent: param(params, "max_error_percent")?,
        max_p99_ms: param(params, "max_p99_ms")?,
        p99_factor: param(params, "p99_factor")?,
        min_requests: param(params, "min_requests")?,
    };
    let configured = state.config.model_config(name, version).and_then(|m| m.canary_analysis.clone());
    let wanted = param::<bool>(params, "analysis")?
        .unwrap_or(configured.is_some() || ANALYSIS_PARAMS.iter().any(|k| params.contains_key(*k)));
    let analysis = if wanted {
        let resolved = given.over(configured.unwrap_or_default()).resolve();
        Some(resolved.map_err(|e| ApiError::bad_request(e.replace("canaryAnalysis.", "Parameter ")))?)
    } else {
        None
    };
    state.rollouts.start(state.scope(), name, version, weight, analysis)?;
    let how = if wanted { "under analysis" } else { "without analysis" };
    let message = format!(
        "Model \"{name}\" Version: {version} is the canary, with {} % of the requests, {how}",
        weight.percent()
    );
    Ok(status(StatusCode::OK, &message))
}

/// `DELETE /models/{m}/{v}/canary`: the canary `v` gets no more requests; it stays loaded.
fn clear_canary(state: &AppState, name: &str, version: &str) -> Result<Reply, ApiError> {
    find_model(state, name, Some(version))?;
    if state.registry.canary(name).is_none_or(|c| c.version != version) {
        return Err(ApiError::bad_request(format!("Version {version} is not the canary of model {name}")));
    }
    state.rollouts.clear(state.scope(), name);
    Ok(status(StatusCode::OK, &format!("Canary of model \"{name}\" Version: {version} cleared")))
}

/// `PUT /models/{m}/{v}/promote`: the canary `v` becomes the default version.
fn promote(state: &AppState, name: &str, version: &str) -> Result<Reply, ApiError> {
    find_model(state, name, Some(version))?;
    state.rollouts.promote(state.scope(), name, version)?;
    Ok(status(StatusCode::OK, &format!("Model \"{name}\" Version: {version} promoted to the default version")))
}

/// `DELETE /models/{m}[/{v}]`: no new request reaches the model; it answers what it accepted, then stops.
async fn unregister(state: &AppState, name: &str, version: Option<&str>) -> Result<Reply, ApiError> {
    find_model(state, name, version)?;
    let model = state
        .registry
        .remove(name, version)
        .ok_or_else(|| ApiError::model_not_found(format!("Model not found: {name}")))?;
    let version = model.version().to_string();
    state.rollouts.unregistered(state.scope(), name, &version);
    model.close();
    let stopping = Arc::clone(&model);
    tokio::task::spawn_blocking(move || stopping.shutdown()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    // Once the requests it accepted are answered, so that their counts do not bring the series back.
    state.metrics.forget(&model);
    state.drift.forget(model.name(), &version);
    Ok(status(StatusCode::OK, &format!("Model \"{name}\" Version: {version} unregistered")))
}
