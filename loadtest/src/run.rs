//! The `run` command: one load, reported on the terminal, in `--json` and `--hdr-log`, judged against the
//! `--slo` objectives. Also the setup both commands share: the target, its bodies and metrics scrapes.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use hyper::{header::HeaderValue, Method};

use crate::{
    body::BodySet,
    cli::{RunArgs, TargetArgs},
    client::{fetch, http_client, http_client_trusting, join_url, HttpClient, Protocol, Target},
    cpu::CpuMeter,
    error::Error,
    grpc::Channels,
    keys::Keys,
    load::{Load, LoadSpec, Mode, Stop},
    metrics::{Scrape, ServerSide},
    progress::{spawn_intervals, spawn_progress},
    recorder::Recording,
    report::{render, render_spectrum, write_hdr_log, Report, RunSettings},
};

/// Closed-loop connections when neither --concurrency nor --rate is given.
const DEFAULT_CONCURRENCY: usize = 8;
/// Recorded time when neither --duration nor --requests is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Prepares the bodies and the inference URI.
///
/// # Errors
/// A bad URL, unreadable bodies, or (KServe v2 without --body, or gRPC) metadata that cannot be fetched or used.
pub async fn build_target(args: &TargetArgs, client: &HttpClient) -> Result<Target, Error> {
    let key = Keys::resolve(args.key_file.as_deref(), None, args.inference_key.as_deref())?.inference;
    let version = args.model_version.as_deref();
    if args.grpc {
        let channels = Channels::connect(&args.target, usize::from(args.grpc_connections)).await?;
        let authorization = key.as_deref().and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok());
        let bodies = channels.requests(&args.model, version, authorization.as_ref(), args.bodies, args.seed).await?;
        let uri = channels.uri("ModelInfer")?;
        return Ok(Target::grpc(channels, uri, bodies, args.timeout).with_key(key.as_deref()));
    }
    let protocol = args.protocol();
    let uri = join_url(&args.target, &protocol.infer_path(&args.model, version))?;
    let bodies = match (&args.body, protocol, args.landmarks) {
        (Some(path), _, _) => BodySet::from_path(path)?,
        (None, Protocol::KserveV2, None) => {
            let path = match version {
                Some(v) => format!("/v2/models/{}/versions/{v}", args.model),
                None => format!("/v2/models/{}", args.model),
            };
            let metadata = fetch(client, Method::GET, &join_url(&args.target, &path)?, key.as_deref()).await?;
            BodySet::kserve_v2(&metadata, args.bodies, args.seed)?
        }
        (None, _, shape) => {
            let (frames, points) = shape.unwrap_or((30, 21));
            BodySet::landmarks(frames, points, args.bodies, args.seed)
        }
    };
    Ok(Target::new(client.clone(), uri, bodies, args.timeout).with_key(key.as_deref()))
}

/// Scrapes the metrics endpoint; failures are logged and give `None`, so that a run never fails on them.
pub async fn scrape(client: &HttpClient, url: Option<&str>) -> Option<Scrape> {
    let uri = match join_url(url?, "") {
        Ok(uri) => uri,
        Err(e) => {
            tracing::warn!("--metrics-url: {e}");
            return None;
        }
    };
    match fetch(client, Method::GET, &uri, None).await {
        Ok(body) => Some(Scrape::parse(&String::from_utf8_lossy(&body))),
        Err(e) => {
            tracing::warn!("metrics: {e}");
            None
        }
    }
}

/// CPU counters and a metrics scrape, at `at` (or now).
async fn baseline(
    client: HttpClient,
    url: Option<String>,
    pid: Option<u32>,
    at: Option<tokio::time::Instant>,
) -> (CpuMeter, Option<Scrape>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
    (CpuMeter::start(pid), scrape(&client, url.as_deref()).await)
}

fn load_spec(args: &RunArgs) -> Result<LoadSpec, Error> {
    let mode = match (args.rate, args.concurrency) {
        (Some(rate), _) if !(rate.is_finite() && rate > 0.0) => {
            return Err(Error::Usage(format!("--rate must be positive, got {rate}")))
        }
        (Some(rate), _) => Mode::Open { rate, max_in_flight: args.target.max_in_flight },
        (None, c) => Mode::Closed { concurrency: c.unwrap_or(DEFAULT_CONCURRENCY).max(1) },
    };
    let duration = match (args.duration, args.requests) {
        (None, None) => Some(DEFAULT_DURATION),
        (d, _) => d,
    };
    Ok(LoadSpec { mode, warmup: args.warmup, duration, requests: args.requests })
}

fn settings(args: &RunArgs, spec: &LoadSpec, target: &Target, bodies: usize) -> RunSettings {
    let (concurrency, rate, mode) = match spec.mode {
        Mode::Closed { concurrency } => (Some(concurrency), None, "closed"),
        Mode::Open { rate, .. } => (None, Some(rate), "open"),
    };
    RunSettings {
        url: target.uri().to_string(),
        mode: mode.into(),
        concurrency,
        rate,
        warmup_s: spec.warmup.as_secs_f64(),
        duration_s: spec.duration.map(|d| d.as_secs_f64()),
        requests: spec.requests,
        seed: args.target.seed,
        bodies,
        threads: args.target.threads,
    }
}

/// Stops the load on Ctrl-C; requests in flight still finish and are reported.
fn stop_on_ctrl_c(stop: Stop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.set();
        }
    })
}

/// The client of a run: trusting `--ca-cert` when given, else the system's roots.
///
/// # Errors
/// [`Error::Http`] when `--ca-cert` cannot be used.
pub fn client_for(args: &TargetArgs) -> Result<HttpClient, Error> {
    Ok(match &args.ca_cert {
        Some(path) => http_client_trusting(path)?,
        None => http_client(),
    })
}

/// Runs one load and writes its reports. Returns the report; its `slo_met` decides the exit status.
///
/// # Errors
/// Setup failures (see [`build_target`]), bad flags, or report files that cannot be written.
pub async fn run(args: &RunArgs) -> Result<Report, Error> {
    let client = client_for(&args.target)?;
    let target = build_target(&args.target, &client).await?;
    let spec = load_spec(args)?;
    let settings = settings(args, &spec, &target, target.body_count());
    let stop = Stop::default();
    let ctrl_c = stop_on_ctrl_c(stop.clone());
    // CPU and the server's counters are read when recording starts, so that neither counts the warm-up; with
    // no warm-up, before the first request.
    let (url, pid) = (args.metrics_url.clone(), args.target.server_pid);
    let early = match spec.warmup.is_zero() {
        true => Some(baseline(client.clone(), url.clone(), pid, None).await),
        false => None,
    };
    let load = Load::new(Arc::new(target), spec, stop);
    let recorder = load.recorder();
    let later = early.is_none().then(|| tokio::spawn(baseline(client.clone(), url, pid, Some(recorder.start()))));
    let wall_start = SystemTime::now() + spec.warmup;
    let progress = spawn_progress(recorder.clone(), spec.duration, args.target.quiet);
    let ticker = spawn_intervals(recorder, args.interval.max(Duration::from_millis(10)));
    let recording = load.run().await;
    ticker.abort();
    progress.finish();
    ctrl_c.abort();
    let (cpu, before) = match (early, later) {
        (Some(early), _) => early,
        (None, Some(task)) => task.await.map_err(|e| Error::Usage(format!("the baseline task failed: {e}")))?,
        // Not reached: `later` is taken whenever `early` is not.
        (None, None) => (CpuMeter::start(pid), None),
    };
    let usage = cpu.stop();
    let after = scrape(&client, args.metrics_url.as_deref()).await;
    let mut report = Report::new(settings, &recording, usage, &args.slo);
    if let (Some(before), Some(after)) = (&before, &after) {
        report.server_metrics = Some(ServerSide::between(before, after, &args.target.model));
    }
    write_reports(args, &report, &recording, wall_start)?;
    Ok(report)
}

/// Prints the report and writes `--json` and `--hdr-log`.
fn write_reports(args: &RunArgs, report: &Report, recording: &Recording, start: SystemTime) -> Result<(), Error> {
    print!("{}", render(report));
    if args.percentiles {
        print!("{}", render_spectrum(report));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?).map_err(Error::file(path))?;
    }
    if let Some(path) = &args.hdr_log {
        write_hdr_log(path, &recording.intervals, start).map_err(Error::file(path))?;
    }
    Ok(())
}
