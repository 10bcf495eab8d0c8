//! `ferroserve`: reads `config.properties`, loads the models and serves TorchServe's inference API.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use ferroserve::{app, auth::Keys, config::LoadModels, metrics::ServerMetrics, Api, AppState, Config};

/// A dynamic-batching model inference server that speaks TorchServe's API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TorchServe's config.properties to read (its keys and defaults; every key is described in
    /// config/config.example.properties). With `enable_envvars_config=true`, `TS_<KEY>` environment variables
    /// override the file and these flags.
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
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = load_config(&cli)?;
    let metrics = Arc::new(ServerMetrics::new(&config).context("cannot set up the metrics")?);
    let swept = ferroserve_engine::archive::sweep_stale(&std::env::temp_dir());
    if swept > 0 {
        tracing::info!(folders = swept, "removed the unpacked archives of servers no longer running");
    }
    let (registry, failed) = app::load_all(&config, &metrics.engine).context("cannot load the models")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads)
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    runtime.block_on(async move {
        // Bind first: a server that cannot listen must not overwrite the key file of one that does.
        let listeners = bind_all(&config).await?;
        let keys = token_keys(&config)?;
        let state = Arc::new(AppState::new(registry, config, metrics).with_keys(keys));
        for (name, error) in failed {
            state.set_failure(&name, Some(error.to_string()));
        }
        // Said once everything is in place: a client that reads these lines can use the key file.
        for (api, listener) in &listeners {
            tracing::info!("{} API on http://{}", api.name(), listener.local_addr()?);
        }
        serve_all(state, listeners).await
    })
}

/// The token keys, written to `key_file`, unless token authorisation is disabled.
fn token_keys(config: &Config) -> anyhow::Result<Option<Keys>> {
    if config.disable_token_authorization {
        tracing::warn!("token authorisation is disabled: anyone who reaches the management API controls the models");
        return Ok(None);
    }
    let keys = Keys::generate(config.inference_token_authorization, config.token_expiration)
        .context("cannot generate the token keys")?;
    keys.write(&config.key_file).with_context(|| format!("cannot write {} (key_file)", config.key_file.display()))?;
    tracing::info!("token authorisation is on; the keys are in {}", config.key_file.display());
    Ok(Some(keys))
}

/// Binds the three listeners.
async fn bind_all(config: &Config) -> anyhow::Result<Vec<(Api, tokio::net::TcpListener)>> {
    let mut listeners = Vec::new();
    for (api, addr, key) in [
        (Api::Inference, config.inference_address, "inference_address"),
        (Api::Management, config.management_address, "management_address"),
        (Api::Metrics, config.metrics_address, "metrics_address"),
    ] {
        let listener =
            listen(addr, config.max_connections).with_context(|| format!("cannot listen on {addr} ({key})"))?;
        listeners.push((api, listener));
    }
    Ok(listeners)
}

/// A listener whose accept queue holds up to `backlog` connections (the kernel caps it at somaxconn), so that a
/// burst of new connections waits to be accepted (and answered, 503 past `max_connections`) instead of being
/// dropped by the kernel.
fn listen(addr: std::net::SocketAddr, backlog: usize) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::try_from(backlog).unwrap_or(u32::MAX))
}

/// Serves the listeners until a shutdown signal, then shuts down in order.
async fn serve_all(state: Arc<AppState>, listeners: Vec<(Api, tokio::net::TcpListener)>) -> anyhow::Result<()> {
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = tokio::task::JoinSet::new();
    for (api, listener) in listeners {
        let mut stopped = stop.subscribe();
        servers.spawn(ferroserve::serve(listener, Arc::clone(&state), api, async move {
            let _ = stopped.recv().await;
        }));
    }
    shutdown_signal().await;
    // Readiness off, listeners closed, open connections finish their requests, the queues drain, the workers
    // are joined; a second signal, or the grace period running out, ends the process at once.
    state.stop_ready();
    let _ = stop.send(());
    let grace = state.config.shutdown_grace_period;
    let registry = Arc::clone(&state.registry);
    let drain = async move {
        while let Some(done) = servers.join_next().await {
            done??;
        }
        tracing::info!("connections closed; draining the model queues");
        tokio::task::spawn_blocking(move || registry.shutdown()).await?;
        anyhow::Ok(())
    };
    tokio::select! {
        done = drain => {
            tracing::info!("shut down cleanly");
            done
        }
        () = shutdown_signal() => {
            tracing::warn!("second signal: exiting at once");
            std::process::exit(130)
        }
        () = tokio::time::sleep(grace) => {
            tracing::error!("the shutdown took longer than shutdown_grace_period ({grace:?}); exiting");
            std::process::exit(1)
        }
    }
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
    config.apply_env(std::env::vars())?;
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
