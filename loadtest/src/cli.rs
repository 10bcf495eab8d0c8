//! The command line: `ferroserve-loadtest [run flags]` runs one load, `ferroserve-loadtest tune ...` searches
//! the batch settings. Flags shared by both (where to send, what to send) live in [`TargetArgs`].

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    client::Protocol,
    slo::Slo,
    units::{parse_duration, parse_shape},
};

/// Load generator for ferroserve, TorchServe and KServe v2 servers: throughput, latency SLOs and batch
/// tuning.
#[derive(Debug, Parser)]
#[command(name = "ferroserve-loadtest", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// `tune`, or nothing to run one load with the flags below.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of a single run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs one load and reports it (the default).
    Run(RunArgs),
    /// For each batch setting, finds the highest rate that meets the SLO, and picks the best setting.
    Tune(TuneArgs),
}

impl Cli {
    /// Worker threads the runtime should have.
    pub fn threads(&self) -> usize {
        match &self.command {
            Some(Command::Tune(t)) => t.target.threads,
            Some(Command::Run(r)) => r.target.threads,
            None => self.run.target.threads,
        }
    }
}

/// Where requests go and what they carry.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Inference address of the server (`http://` or `https://`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// CA certificates (PEM) that `https://` servers are checked against, instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Model name.
    #[arg(long, default_value = "signnet")]
    pub model: String,
    /// Model version (default: the server's default version).
    #[arg(long)]
    pub model_version: Option<String>,
    /// Speak KServe v2 (`/v2/models/{m}/infer`) instead of TorchServe (`/predictions/{m}`); without --body,
    /// requests are generated from the model's metadata.
    #[arg(long)]
    pub kserve_v2: bool,
    /// Send KServe v2's `ModelInfer` over gRPC with raw tensors (Triton's gRPC protocol) to --target, the
    /// server's gRPC inference address (`host:port`); requests are generated from the model's gRPC metadata.
    #[arg(long, conflicts_with_all = ["kserve_v2", "body", "landmarks", "ca_cert"])]
    pub grpc: bool,
    /// HTTP/2 connections the gRPC calls share (each multiplexes its calls).
    #[arg(long, default_value_t = 1, requires = "grpc", value_parser = clap::value_parser!(u16).range(1..))]
    pub grpc_connections: u16,
    /// A body file, or a folder of body files sent round-robin.
    #[arg(long, conflicts_with = "landmarks")]
    pub body: Option<PathBuf>,
    /// Generate random landmark bodies FRAMESxPOINTS (the sign model's format); the default for TorchServe.
    #[arg(long, value_parser = parse_shape, value_name = "FRAMESxPOINTS")]
    pub landmarks: Option<(usize, usize)>,
    /// How many distinct bodies to generate.
    #[arg(long, default_value_t = 16)]
    pub bodies: usize,
    /// Seed of the generated bodies.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Give up on a request after this long (counted as `timeout`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Worker threads of the generator (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Open loop: most requests in flight before the sender waits (the wait shows as schedule lag).
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// TorchServe's key_file.json: its keys are sent as `Authorization: Bearer` (inference key to the
    /// inference API, management key to the management API).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The inference key (overrides --key-file).
    #[arg(long, value_name = "KEY")]
    pub inference_key: Option<String>,
    /// The server's process id, to report its CPU time next to the generator's.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

impl TargetArgs {
    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        if self.kserve_v2 {
            Protocol::KserveV2
        } else {
            Protocol::Torchserve
        }
    }
}

/// One run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where and what.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Closed loop with N connections (the default, with 8).
    #[arg(long, short, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop at R requests per second, latency counted from each request's scheduled send.
    #[arg(long, short)]
    pub rate: Option<f64>,
    /// Recorded time (default 10s unless --requests is given).
    #[arg(long, short, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Recorded requests.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Load sent first and not recorded.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Objective such as p99=25ms, p99.9=100ms, max=1s or errors=0.1%; repeat or separate with commas.
    /// Exit status 2 when one is missed.
    #[arg(long, value_delimiter = ',')]
    pub slo: Vec<Slo>,
    /// The server's Prometheus endpoint, scraped before and after (e.g. http://127.0.0.1:8082/metrics).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Print the full latency percentile spectrum.
    #[arg(long)]
    pub percentiles: bool,
    /// Write the whole report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one histogram per --interval).
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,
    /// Length of the intervals of the log and of the report.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// The batch-setting search.
#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    /// Where and what.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Management API of the server, where batch settings are changed.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub management_url: String,
    /// The management key (overrides --key-file).
    #[arg(long, value_name = "KEY")]
    pub management_key: Option<String>,
    /// The objective every setting must meet, e.g. p99=25ms (several allowed).
    #[arg(long, value_delimiter = ',', required = true)]
    pub slo: Vec<Slo>,
    /// Batch sizes to try.
    #[arg(long, default_value = "1,2,4,8,16,32", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_sizes: Vec<u32>,
    /// Batch delays to try.
    #[arg(long, default_value = "1ms,5ms", value_delimiter = ',', value_parser = parse_duration)]
    pub delays: Vec<Duration>,
    /// First rate tried, requests per second; doubled while it holds.
    #[arg(long, default_value_t = 50.0)]
    pub start_rate: f64,
    /// Lowest rate tried before a setting is declared unable to meet the SLO.
    #[arg(long, default_value_t = 5.0)]
    pub min_rate: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// The search stops when the bracket [passing, failing] is this narrow, relative.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// Shortest stability window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub window: Duration,
    /// Windows are stretched to hold at least this many requests.
    #[arg(long, default_value_t = 200)]
    pub window_requests: u64,
    /// Windows a trial may take to become stable.
    #[arg(long, default_value_t = 8)]
    pub max_windows: usize,
    /// Load at the trial's rate before its first window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub trial_warmup: Duration,
    /// Pause between trials, for the server to drain.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// Runs a missed rate this many more times before it counts as missed (guards against stray stalls).
    #[arg(long, default_value_t = 1)]
    pub confirm_misses: usize,
    /// Errors a sustainable rate may have, percent.
    #[arg(long, default_value_t = 0.1)]
    pub max_error_percent: f64,
    /// Leave the winning setting on the server (default: restore the setting found before tuning).
    #[arg(long)]
    pub keep_winner: bool,
    /// Write the winning batchSize / maxBatchDelay into this config.properties.
    #[arg(long, value_name = "FILE")]
    pub write_config: Option<PathBuf>,
    /// Draw latency percentiles against throughput per setting (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Write every trial as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Instead of searching, print the table of a search saved with --json (and redraw --plot, rewrite
    /// --write-config from it).
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tune_flags_parse() {
        let cli = Cli::try_parse_from([
            "ferroserve-loadtest",
            "tune",
            "--model",
            "signnet",
            "--slo",
            "p99=25ms",
            "--batch-sizes",
            "1,2,4",
            "--delays",
            "1ms,0.5ms",
        ])
        .expect("parses");
        let Some(Command::Tune(t)) = cli.command else { panic!("tune") };
        assert_eq!(t.batch_sizes, vec![1, 2, 4]);
        assert_eq!(t.delays, vec![Duration::from_millis(1), Duration::from_micros(500)]);
        assert_eq!(t.slo.len(), 1);
    }

    #[test]
    fn grpc_flags_parse_and_exclude_the_http_bodies() {
        let cli = Cli::try_parse_from([
            "ferroserve-loadtest",
            "--grpc",
            "--target",
            "127.0.0.1:7070",
            "--grpc-connections",
            "4",
        ])
        .expect("parses");
        assert!(cli.run.target.grpc);
        assert_eq!(cli.run.target.grpc_connections, 4);
        assert!(Cli::try_parse_from(["ferroserve-loadtest", "--grpc", "--kserve-v2"]).is_err());
        assert!(Cli::try_parse_from(["ferroserve-loadtest", "--grpc-connections", "2"]).is_err(), "needs --grpc");
    }

    #[test]
    fn run_is_the_default() {
        let cli =
            Cli::try_parse_from(["ferroserve-loadtest", "--rate", "100", "--slo", "p99=25ms,p50=5ms"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.run.rate, Some(100.0));
        assert_eq!(cli.run.slo.len(), 2);
        assert!(Cli::try_parse_from(["ferroserve-loadtest", "--rate", "1", "--concurrency", "2"]).is_err());
    }
}
