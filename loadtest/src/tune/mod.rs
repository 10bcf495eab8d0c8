//! The `tune` command: for each batch setting (size x delay) it changes the live server's setting through the
//! management API, finds the highest open-loop rate that meets the SLO ([`search`], [`stability`]), and
//! reports the table, the winner, an optional plot, JSON, and the winner written into config.properties.

pub mod management;
pub mod plot;
pub mod properties;
pub mod search;
pub mod stability;
pub mod table;
pub mod trial;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::{
    management::{BatchSetting, Batching, Management},
    search::{RateSearch, SearchConfig},
    stability::StabilityConfig,
    trial::{run_trial, Trial, TrialConfig},
};
use crate::{
    cli::TuneArgs,
    client::Target,
    cpu::{CpuMeter, CpuUsage},
    error::Error,
    keys::Keys,
    run::{build_target, client_for},
    slo::Slo,
    units::{self, trim_float},
};

/// What the search found for one setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingResult {
    /// `batchSize`.
    pub batch_size: u32,
    /// `maxBatchDelay`, ms.
    pub max_batch_delay_ms: f64,
    /// The highest sustainable rate, requests per second.
    pub best_rate: Option<f64>,
    /// The trial at that rate.
    pub best: Option<Trial>,
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
}

impl SettingResult {
    /// `batch 8, 5ms`.
    pub fn label(&self) -> String {
        format!("batch {}, {}ms", self.batch_size, trim_float(self.max_batch_delay_ms, 3))
    }
}

/// The whole search; `--json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneReport {
    /// The objectives (`p99=25ms`).
    pub slo: Vec<String>,
    /// One result per setting, in the order tried.
    pub settings: Vec<SettingResult>,
    /// Index of the best setting: the highest sustainable rate, ties to the lower p99.
    pub winner: Option<usize>,
    /// CPU used over the whole search by the generator (and the server, with `--server-pid`).
    pub cpu: CpuUsage,
}

impl TuneReport {
    /// The winner as a batch setting.
    pub fn winning_setting(&self) -> Option<BatchSetting> {
        let s = self.settings.get(self.winner?)?;
        let max_batch_delay = std::time::Duration::try_from_secs_f64(s.max_batch_delay_ms / 1e3).ok()?;
        Some(BatchSetting { batch_size: s.batch_size, max_batch_delay })
    }

    /// Picks the winner among the settings.
    pub fn pick_winner(settings: &[SettingResult]) -> Option<usize> {
        let key = |s: &SettingResult| (s.best_rate.unwrap_or(0.0), -s.best.as_ref().map_or(0.0, |t| t.latency.p99_ms));
        settings
            .iter()
            .enumerate()
            .filter(|(_, s)| s.best_rate.is_some())
            .max_by(|(_, a), (_, b)| key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(i, _)| i)
    }
}

fn trial_config(args: &TuneArgs) -> TrialConfig {
    TrialConfig {
        warmup: args.trial_warmup,
        window: args.window,
        window_requests: args.window_requests,
        max_in_flight: args.target.max_in_flight,
        stability: StabilityConfig {
            needed: 3,
            agreement: 0.10,
            max_windows: args.max_windows.max(3),
            max_error_rate: args.max_error_percent / 100.0,
            give_up_ratio: 2.0,
        },
    }
}

/// One line per trial on stderr, unless quiet.
fn report_trial(args: &TuneArgs, setting: BatchSetting, trial: &Trial) {
    if args.target.quiet {
        return;
    }
    eprintln!(
        "  batch {:>3} delay {:>6}: {:>8} req/s -> {:>8.1} req/s, p99 {:>8.2}ms: {}",
        setting.batch_size,
        format!("{}ms", setting.delay_ms_text()),
        trim_float(trial.rate, 1),
        trial.throughput_rps,
        trial.latency.p99_ms,
        trial.reason.as_deref().unwrap_or("holds")
    );
}

/// Searches one setting.
async fn tune_setting(target: &Arc<Target>, args: &TuneArgs, setting: BatchSetting) -> SettingResult {
    let config = trial_config(args);
    let mut search = RateSearch::new(SearchConfig {
        start_rate: args.start_rate,
        min_rate: args.min_rate,
        max_rate: args.max_rate,
        precision: args.precision,
    });
    let mut trials: Vec<Trial> = Vec::new();
    while let Some(rate) = search.next_rate() {
        let mut trial = run_trial(Arc::clone(target), rate, &args.slo, &config).await;
        // A miss is confirmed before it narrows the search: one stray stall (another process on the machine)
        // must not cut the search short.
        for _ in 0..args.confirm_misses {
            if trial.sustainable {
                break;
            }
            report_trial(args, setting, &trial);
            trials.push(trial);
            tokio::time::sleep(args.cooldown).await;
            trial = run_trial(Arc::clone(target), rate, &args.slo, &config).await;
        }
        report_trial(args, setting, &trial);
        search.record(rate, trial.sustainable);
        trials.push(trial);
        tokio::time::sleep(args.cooldown).await;
    }
    let best_rate = search.best();
    SettingResult {
        batch_size: setting.batch_size,
        max_batch_delay_ms: units::ms(setting.max_batch_delay),
        best_rate,
        best: trials.iter().find(|t| t.sustainable && Some(t.rate) == best_rate).cloned(),
        trials,
    }
}

/// Runs the search over every setting, then restores the server's setting (or keeps the winner) and writes
/// the requested files.
///
/// # Errors
/// Setup failures, a refused management call, or files that cannot be written.
pub async fn tune(args: &TuneArgs) -> Result<TuneReport, Error> {
    if let Some(path) = &args.replay {
        return replay(args, path);
    }
    let client = client_for(&args.target)?;
    let target = Arc::new(build_target(&args.target, &client).await?);
    let keys = Keys::resolve(args.target.key_file.as_deref(), args.management_key.as_deref(), None)?;
    let management = Management::new(
        client.clone(),
        &args.management_url,
        &args.target.model,
        args.target.model_version.as_deref(),
        keys.management,
    );
    let original = match management.get().await {
        Ok(setting) => setting,
        Err(e) => {
            tracing::warn!("cannot read the current batch setting, it will not be restored: {e}");
            None
        }
    };
    let meter = CpuMeter::start(args.target.server_pid);
    let mut settings = Vec::new();
    let search = async {
        for &batch_size in &args.batch_sizes {
            for &max_batch_delay in &args.delays {
                let setting = BatchSetting { batch_size, max_batch_delay };
                management.set(Batching::Fixed(setting)).await?;
                settings.push(tune_setting(&target, args, setting).await);
            }
        }
        Ok::<_, Error>(())
    };
    let interrupted = tokio::select! {
        searched = search => { searched?; false }
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        // Leave the server as it was found, and report the settings searched so far.
        eprintln!("interrupted: restoring the server's batch setting");
    }
    let winner = TuneReport::pick_winner(&settings);
    let cpu = meter.stop();
    let report = TuneReport { slo: args.slo.iter().map(Slo::to_string).collect(), settings, winner, cpu };
    let winning = report.winning_setting();
    // A model found batching for an objective (`auto`) gets it back, objective and all.
    let restore = if args.keep_winner { winning.map(Batching::Fixed).or(original) } else { original };
    if let Some(batching) = restore {
        management.set(batching).await?;
    }
    print!("{}", table::render(&report));
    write_outputs(args, &report, winning)?;
    Ok(report)
}

/// Prints and writes the outputs of a search saved with `--json`, without touching any server.
fn replay(args: &TuneArgs, path: &std::path::Path) -> Result<TuneReport, Error> {
    let text = std::fs::read(path).map_err(Error::file(path))?;
    let report: TuneReport = serde_json::from_slice(&text)?;
    print!("{}", table::render(&report));
    write_outputs(args, &report, report.winning_setting())?;
    Ok(report)
}

fn write_outputs(args: &TuneArgs, report: &TuneReport, winning: Option<BatchSetting>) -> Result<(), Error> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?).map_err(Error::file(path))?;
    }
    if let Some(path) = &args.plot {
        let limit = args.slo.iter().find_map(|s| match s {
            Slo::Latency { limit, .. } => Some(units::ms(*limit)),
            Slo::ErrorRate(_) => None,
        });
        plot::draw(path, &report.settings, &report.slo.join(", "), limit)?;
        println!("plot: {}", path.display());
    }
    if let (Some(path), Some(setting)) = (&args.write_config, winning) {
        let text = std::fs::read_to_string(path).map_err(Error::file(path))?;
        let edited =
            properties::write_batch_setting(&text, &args.target.model, args.target.model_version.as_deref(), &setting)?;
        std::fs::write(path, edited).map_err(Error::file(path))?;
        println!(
            "{}: batchSize={} maxBatchDelay={} for {}",
            path.display(),
            setting.batch_size,
            setting.delay_ms_text(),
            args.target.model
        );
    }
    Ok(())
}
