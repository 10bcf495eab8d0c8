//! `ferroserve-loadtest`: parses the command line, builds the runtime (one thread unless `--threads`), runs
//! the command and maps its outcome to the exit status: 0 done, 1 error, 2 an SLO missed (or, for `tune`,
//! no setting meets it).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferroserve_loadtest::cli::{Cli, Command};

/// Exit status when an objective is missed.
const SLO_MISSED: u8 = 2;

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    let cli = Cli::parse();
    let threads = cli.threads().max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .context("cannot start the runtime")?;
    let met = runtime.block_on(async {
        match &cli.command {
            Some(Command::Tune(args)) => {
                ferroserve_loadtest::tune::tune(args).await.map(|report| report.winner.is_some())
            }
            Some(Command::Run(args)) => ferroserve_loadtest::run::run(args).await.map(|r| r.slo_met),
            None => ferroserve_loadtest::run::run(&cli.run).await.map(|r| r.slo_met),
        }
    })?;
    Ok(if met { ExitCode::SUCCESS } else { ExitCode::from(SLO_MISSED) })
}
