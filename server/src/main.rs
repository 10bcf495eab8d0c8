//! `ferroserve`: reads `config.properties`, loads the models and serves TorchServe's inference API.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use ferroserve::{app, config::LoadModels, AppState, Config};

/// A dynamic-batching model inference server that speaks TorchServe's API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TorchServe's config.properties to read (its keys and defaults; see config/README.md).
    #[arg(long = "ts-config", value_name = "FILE")]
    ts_config: Option<PathBuf>,
    /// Folder the models are loaded from (overrides `model_store`).
    #[arg(long, value_name = "DIR")]
    model_store: Option<PathBuf>,
    /// Models to load at start-up: `all`, NAME, FILE or NAME=FILE, comma-separated or repeated (overrides
    /// `load_models`).
    #[arg(long, value_name = "MODELS", value_delimiter = ',')]
    models: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = load_config(&cli)?;
    let registry = app::load_all(&config).context("cannot load the models")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads)
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    let state = Arc::new(AppState {
        registry: Arc::clone(&registry),
        max_request_size: config.max_request_size,
    });
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.inference_address)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (inference_address)",
                    config.inference_address
                )
            })?;
        tracing::info!("inference API on http://{}", listener.local_addr()?);
        ferroserve::run(listener, state, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    tracing::info!("draining the model queues");
    registry.shutdown();
    Ok(())
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.ts_config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(store) = &cli.model_store {
        config.model_store.clone_from(store);
    }
    if !cli.models.is_empty() {
        let joined = cli.models.join(",");
        config.apply(vec![("load_models".into(), joined, None)])?;
    }
    if config.load_models == LoadModels::None {
        tracing::warn!("no model to load: set load_models or pass --models");
    }
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
