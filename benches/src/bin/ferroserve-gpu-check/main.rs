//! `ferroserve-gpu-check MODELS REPORT`: the checks of the CUDA tests (`engine/tests/torch_cuda.rs`) and the GPU
//! figures, as one program that needs no Rust toolchain, for the GPU bundle (`make gpu-bundle`, README "The GPU
//! bundle"). It loads `MODELS/signnet.pt` through the TorchScript plugin (found as the server finds it) on the
//! device `TORCH_DEVICE` names (`cuda`, `cuda:N`, `cpu`; default: what the machine has, CUDA first) and appends
//! to the markdown file `REPORT`:
//!
//! - checks, which make the exit status 1 when one fails: CUDA detected first (asked for CUDA); signnet's
//!   reference probabilities at batch 1 and 8 (within 2e-3, TF32's margin); two workers on two distinct pool
//!   streams, neither the test thread's default one, two workers at least 1.2x one (CUDA);
//! - the compass's figures, reported as met or missed: ferroserve's engine against direct forward calls at each
//!   batch of `FERROSERVE_CHECK_BATCHES` (default 1,8,32,128; met at 90 %), and two workers against one on
//!   signnet at batch 1 and 32 (met at 1.5x; CUDA only).
//!
//! `FERROSERVE_CHECK_SECONDS` is the time of each measurement (default 2).

mod measure;
mod reference;

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use ferroserve_engine::{
    backend::torch::{current_cuda_stream, TorchFactory},
    device::{self, Availability, DeviceRequest},
    BackendFactory, Device,
};
use reference::{Reference, TOLERANCE};

/// The compass: the engine keeps at least this share of direct forward calls' throughput.
const ENGINE_SHARE: f64 = 0.9;
/// The compass: two streams give at least this much of one stream's throughput, on a small model.
const STREAMS_SPEEDUP: f64 = 1.5;
/// The CUDA test's own bar for two workers overlapping (`engine/tests/torch_cuda.rs`).
const OVERLAP_SPEEDUP: f64 = 1.2;

/// What the check runs with.
struct Settings {
    models: PathBuf,
    report: PathBuf,
    request: DeviceRequest,
    batches: Vec<usize>,
    time: Duration,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let mut args = std::env::args_os().skip(1);
        let (Some(models), Some(report), None) = (args.next(), args.next(), args.next()) else {
            return Err("usage: ferroserve-gpu-check MODELS_DIR REPORT_FILE".into());
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let request = var("TORCH_DEVICE")
            .map_or(Ok(DeviceRequest::Auto), |v| v.parse().map_err(|e| format!("TORCH_DEVICE={v}: {e}")))?;
        let batches = var("FERROSERVE_CHECK_BATCHES").unwrap_or_else(|| "1,8,32,128".into());
        let batches = batches
            .split(',')
            .map(|b| b.trim().parse().ok().filter(|&b| b > 0))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("FERROSERVE_CHECK_BATCHES={batches}: a list of batch sizes, such as 1,8,32"))?;
        let seconds = var("FERROSERVE_CHECK_SECONDS").unwrap_or_else(|| "2".into());
        let time = seconds
            .parse()
            .ok()
            .and_then(|s: f64| Duration::try_from_secs_f64(s).ok())
            .filter(|t| !t.is_zero())
            .ok_or_else(|| format!("FERROSERVE_CHECK_SECONDS={seconds}: a number of seconds above 0"))?;
        Ok(Self { models: models.into(), report: report.into(), request, batches, time })
    }
}

/// The report being written, and whether every check passed.
#[derive(Default)]
struct Report {
    text: String,
    failed: bool,
}

impl Report {
    fn check(&mut self, name: &str, outcome: Result<String, String>) {
        let (mark, detail) = match outcome {
            Ok(detail) => ("PASS", detail),
            Err(detail) => {
                self.failed = true;
                ("FAIL", detail)
            }
        };
        let _ = writeln!(self.text, "| {name} | {mark} | {detail} |");
    }

    fn line(&mut self, line: impl std::fmt::Display) {
        let _ = writeln!(self.text, "{line}");
    }
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("ferroserve-gpu-check: {message}");
            return ExitCode::from(2);
        }
    };
    let report = run(&settings);
    print!("{}", report.text);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&settings.report)
        .and_then(|mut file| file.write_all(report.text.as_bytes()));
    if let Err(e) = written {
        eprintln!("ferroserve-gpu-check: cannot write {}: {e}", settings.report.display());
        return ExitCode::from(2);
    }
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every check and figure, in order; a check that cannot start (no device, no model) ends the run there.
fn run(settings: &Settings) -> Report {
    let mut report = Report::default();
    report.line("## Checks (ferroserve-gpu-check)\n\n| check | result | detail |\n|---|---|---|");
    let device = device::select(settings.request, Availability::detect()).map_err(|e| e.to_string());
    if matches!(settings.request, DeviceRequest::Cuda(_) | DeviceRequest::Gpu) {
        report.check("CUDA detected first", cuda_first());
    }
    let loaded = device.and_then(|device| load(&settings.models, device));
    let (factory, input) = match loaded {
        Ok(loaded) => loaded,
        Err(message) => {
            report.check("signnet.pt loads", Err(message));
            return report;
        }
    };
    report.check("signnet.pt loads", Ok(format!("on {}", factory.device())));
    report.check("reference probabilities, batch 1 and 8", matches_reference(&factory, &input));
    if let Device::Cuda(_) = factory.device() {
        report.check("two workers on two streams, overlapping", two_streams(&factory, &input, settings.time));
    }
    throughput(&mut report, &factory, &input, settings);
    if let Device::Cuda(_) = factory.device() {
        streams_speedup(&mut report, &factory, &input, settings.time);
    }
    report
}

fn cuda_first() -> Result<String, String> {
    let available = Availability::detect();
    match device::select(DeviceRequest::Auto, available) {
        Ok(Device::Cuda(0)) => Ok(format!("{} CUDA device(s); auto selects cuda:0", available.cuda_devices)),
        other => Err(format!("{available:?}: auto selects {other:?}, not cuda:0")),
    }
}

fn load(models: &Path, device: Device) -> Result<(TorchFactory, Reference), String> {
    let input = Reference::read(models)?;
    let factory = TorchFactory::load(&models.join("signnet.pt"), device).map_err(|e| e.to_string())?;
    Ok((factory, input))
}

fn matches_reference(factory: &TorchFactory, input: &Reference) -> Result<String, String> {
    let mut backend = factory.create(0).map_err(|e| e.to_string())?;
    let mut worst: f32 = 0.0;
    for batch in [1, 8] {
        let output = backend.infer(batch, &input.batch(batch)).map_err(|e| format!("batch {batch}: {e}"))?;
        let difference = input.max_difference(batch, &output).map_err(|e| format!("batch {batch}: {e}"))?;
        if difference.is_nan() || difference > TOLERANCE {
            return Err(format!("batch {batch}: off by {difference:.2e} (tolerance {TOLERANCE:.0e})"));
        }
        worst = worst.max(difference);
    }
    Ok(format!("largest difference {worst:.2e} (tolerance {TOLERANCE:.0e})"))
}

/// As the CUDA test: signnet at batch 32, one worker then two, on the GPU.
fn two_streams(factory: &TorchFactory, input: &Reference, time: Duration) -> Result<String, String> {
    let Device::Cuda(index) = factory.device() else {
        return Err("not on CUDA".into());
    };
    let default_stream = current_cuda_stream(index).map_err(|e| e.to_string())?;
    let alone = measure::workers(factory, input, 1, 32, time)?;
    let together = measure::workers(factory, input, 2, 32, time)?;
    let speedup = together.rate / alone.rate;
    let detail = format!(
        "streams {:?} (default {default_stream}); {:.0} samples/s with one worker, {:.0} with two ({speedup:.2}x)",
        together.streams, alone.rate, together.rate
    );
    if together.streams.len() != 2 || together.streams[0] == together.streams[1] {
        return Err(format!("the two workers share a stream: {detail}"));
    }
    if together.streams.contains(&default_stream) {
        return Err(format!("a worker computes on the default stream: {detail}"));
    }
    if speedup < OVERLAP_SPEEDUP {
        return Err(format!("the workers do not overlap (below {OVERLAP_SPEEDUP}x): {detail}"));
    }
    Ok(detail)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The engine against direct forward calls, batch by batch; a failure to measure is a failed check.
fn throughput(report: &mut Report, factory: &TorchFactory, input: &Reference, settings: &Settings) {
    let clients = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).clamp(1, 4));
    report.line(format!(
        "\n## Throughput on {}: ferroserve's engine against direct forward calls\n\nDirect: one thread calling \
         the plugin's forward on a stacked batch. Engine: a Model of one worker, batches of that size, fed \
         one-sample requests by {clients} client thread(s). {:.1} s each. Compass: the engine at least {:.0} % of \
         direct.\n\n| batch | direct (samples/s) | engine (samples/s) | engine / direct | compass |\n|---|---|---|---|---|",
        factory.device(),
        settings.time.as_secs_f64(),
        ENGINE_SHARE * 100.0
    ));
    for &batch in &settings.batches {
        let measured = measure::raw(factory, input, batch, settings.time)
            .and_then(|raw| measure::engine(factory, input, batch, clients, settings.time).map(|engine| (raw, engine)));
        match measured {
            Ok((raw, engine)) => {
                let share = engine / raw;
                report.line(format!(
                    "| {batch} | {raw:.0} | {engine:.0} | {:.1} % | {} |",
                    share * 100.0,
                    met(share >= ENGINE_SHARE)
                ));
            }
            Err(message) => report.check(&format!("throughput at batch {batch}"), Err(message)),
        }
    }
}

/// One worker against two on the GPU, on signnet (a small model) at batch 1 and 32.
fn streams_speedup(report: &mut Report, factory: &TorchFactory, input: &Reference, time: Duration) {
    report.line(format!(
        "\n## One stream against two on {} (signnet)\n\nCompass: two workers (two streams) at least {STREAMS_SPEEDUP}x \
         one.\n\n| batch | one worker (samples/s) | two workers (samples/s) | speedup | compass |\n|---|---|---|---|---|",
        factory.device()
    ));
    for batch in [1, 32] {
        let measured = measure::workers(factory, input, 1, batch, time)
            .and_then(|one| measure::workers(factory, input, 2, batch, time).map(|two| (one.rate, two.rate)));
        match measured {
            Ok((one, two)) => {
                let speedup = two / one;
                report.line(format!(
                    "| {batch} | {one:.0} | {two:.0} | {speedup:.2}x | {} |",
                    met(speedup >= STREAMS_SPEEDUP)
                ));
            }
            Err(message) => report.check(&format!("two streams at batch {batch}"), Err(message)),
        }
    }
}
