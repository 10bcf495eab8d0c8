//! `ferroserve`: reads `config.properties`, loads the models and serves TorchServe's inference API.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use ferroserve::{
    auth, config::LoadModels, drift_profile, load, logging, metrics::ServerMetrics, obs_config::ObsConfig,
    observe::Observer, Api, AppState, Config, ServeError,
};

/// A dynamic-batching model inference server that speaks TorchServe's API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TorchServe's config.properties to read (its keys and defaults; every key is described in
    /// config/config.example.properties). With `enable_envvars_config=true`, `TS_<KEY>` environment variables
    /// override the file and these flags.
    /// The file may also be named by `TS_CONFIG_FILE`, as TorchServe reads it.
    #[arg(long = "ts-config", value_name = "FILE", env = "TS_CONFIG_FILE", global = true)]
    ts_config: Option<PathBuf>,
    /// Folder the models are loaded from (overrides `model_store`).
    #[arg(long, value_name = "DIR")]
    model_store: Option<PathBuf>,
    /// Models to load at start-up: `all`, NAME, FILE or NAME=FILE, comma-separated or repeated (overrides
    /// `load_models`).
    #[arg(long, value_name = "MODELS", value_delimiter = ',')]
    models: Vec<String>,
    /// Instead of serving, do this and exit.
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `ferroserve` can do besides serving.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Prints the Prometheus recording and alerting rules (multiwindow, multi-burn-rate) of the objectives that
    /// the `slo` entries of `models` state, for `promtool check rules` and a Prometheus `rule_files` entry.
    SloRules {
        /// The config.properties whose objectives to render.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Prints the runtime each model of `load_models` would run on (`NAME VERSION RUNTIME[,RUNTIME]`, one line
    /// each: `onnx`, `torchscript` or `python`) and exits, loading nothing: `make run` asks it what to install
    /// and build before serving. A model that cannot be planned is named on stderr, and the exit status is 1.
    Runtimes,
    /// Asks a running server's `GET /ping` and exits 0 when it answers 200, else 1 saying why: the `HEALTHCHECK`
    /// of the container images, which have no shell or curl.
    Healthcheck {
        /// The URL to ask; default: `/ping` of the inference address of `--ts-config` (`TS_CONFIG_FILE`), a
        /// wildcard address asked on loopback.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, value_name = "DURATION", default_value = "5s")]
        timeout: humantime::Duration,
        /// For an https:// URL: the CAs (PEM) to trust; default: exactly the configuration's certificate_file.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
    },
    /// Makes a model's drift reference profile from a file of example requests (one `{"landmarks": ...}` body
    /// per line), run through the model as the server runs them; the server reads it from
    /// `<model store>/<model>.drift.json`, or from the model's `driftProfile`.
    DriftProfile {
        /// The model, as `load_models` names it (its version and settings from `--ts-config`).
        #[arg(long, value_name = "NAME")]
        model: String,
        /// The file or folder in the model store to load it from (default: the model's name).
        #[arg(long, value_name = "FILE")]
        file: Option<String>,
        /// The requests, one JSON body per line.
        #[arg(value_name = "REQUESTS")]
        requests: PathBuf,
        /// Where to write the profile.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.command.is_some() {
        logging::init(&ObsConfig::default())?;
        return command(&cli);
    }
    // The log's format and level come from the configuration: what reading it says goes to a plain log first.
    let startup = tracing_subscriber::fmt()
        .with_env_filter(logging::filter(&ObsConfig::default()))
        .with_writer(std::io::stderr)
        .finish();
    let config = tracing::subscriber::with_default(startup, || load_config(&cli))?;
    logging::init(&config.obs)?;
    serve(config)
}

/// Runs the subcommand of `cli`.
fn command(cli: &Cli) -> anyhow::Result<()> {
    if let Some(Command::SloRules { config }) = &cli.command {
        let config = Config::from_file(config)?;
        print!("{}", ferroserve::slo::rules(&config));
        return Ok(());
    }
    if let Some(Command::Runtimes) = &cli.command {
        return runtimes(&load_config(cli)?);
    }
    if let Some(Command::Healthcheck { url, timeout, ca_cert }) = &cli.command {
        return healthcheck(cli, url.as_deref(), (*timeout).into(), ca_cert.as_deref());
    }
    if let Some(Command::DriftProfile { model, file, requests, output }) = &cli.command {
        let job = drift_profile::ProfileJob { model: model.clone(), entry: file.clone(), requests: requests.clone() };
        let profile = drift_profile::build(&load_config(cli)?, &job).map_err(anyhow::Error::msg)?;
        profile.write(output)?;
        eprintln!("{} requests; profile written to {}", profile.samples, output.display());
    }
    Ok(())
}

/// Loads the models of `config` and serves them until a signal.
fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(ServerMetrics::new(&config).context("cannot set up the metrics")?);
    let swept = ferroserve_engine::archive::sweep_stale(&std::env::temp_dir());
    if swept > 0 {
        tracing::info!(folders = swept, "removed the unpacked archives of servers no longer running");
    }
    let (registry, failed) = load::load_all(&config, &metrics.engine).context("cannot load the models")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads)
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    runtime.block_on(async move {
        // Bind first: a server that cannot listen must not overwrite the key file of one that does.
        let listeners = ferroserve::bind(&config).await?;
        let keys = auth::keys_for(&config)?;
        let observer = Observer::start(&config.obs, &metrics.registry)?;
        let state = Arc::new(AppState::new(registry, config, metrics).with_keys(keys).with_observer(observer));
        for (name, error) in failed {
            state.set_failure(&name, Some(error.to_string()));
        }
        // Listened for before the lines below: a SIGTERM sent as soon as they are read (a test, a supervisor that
        // stops what it has just started) is a graceful shutdown, not the default action's death.
        let signalled = first_signal();
        // Said once everything is in place: a client that reads these lines can use the key file.
        for api in Api::ALL {
            let scheme = if state.config.tls.https[api.index()] { "https" } else { "http" };
            tracing::info!("{} API on {scheme}://{}", api.name(), listeners.local_addr(api)?);
        }
        let grpc_tls = if state.config.tls.grpc { " (TLS)" } else { "" };
        for api in Api::GRPC {
            if let Some(addr) = listeners.grpc_addr(api)? {
                tracing::info!("{} API over gRPC on {addr}{grpc_tls}", api.name());
            }
        }
        if let Some(tls) = listeners.tls().cloned() {
            tokio::spawn(tls.clone().reload_on_change(std::time::Duration::from_secs(5)));
            tokio::spawn(reload_on_sighup(tls));
        }
        let served = ferroserve::run(listeners, Arc::clone(&state), signalled).await;
        let observer = Arc::clone(&state.observer);
        tokio::task::spawn_blocking(move || observer.shutdown()).await?;
        match served {
            Ok(()) => {
                tracing::info!("shut down cleanly");
                Ok(())
            }
            Err(error @ ServeError::GraceExceeded(_)) => {
                // Workers may still be running: leave without waiting for them.
                tracing::error!("{error}; exiting");
                std::process::exit(1)
            }
            Err(error) => Err(error.into()),
        }
    })
}

/// Prints the runtimes of the start-up models, and names those that cannot be planned.
fn runtimes(config: &Config) -> anyhow::Result<()> {
    let mut failed = 0;
    for load::StartupRuntimes { name, version, runtimes } in load::startup_runtimes(config)? {
        match runtimes {
            Ok(runtimes) => println!("{name} {version} {}", runtimes.join(",")),
            Err(error) => {
                eprintln!("{error}");
                failed += 1;
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of the start-up models cannot be loaded");
    Ok(())
}

/// Checks a running server's health, printing the answer (exit 0) or why it is not healthy (exit 1).
fn healthcheck(
    cli: &Cli,
    url: Option<&str>,
    timeout: std::time::Duration,
    ca_cert: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use ferroserve::healthcheck::{check, ping_url, Trust};
    let mut config = match &cli.ts_config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env(std::env::vars())?;
    let url = url.map_or_else(|| ping_url(&config), str::to_string);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(check(&url, &Trust::from(&config, ca_cert), timeout)) {
        Ok(body) => {
            println!("healthy: {url} answered 200 {body}");
            Ok(())
        }
        Err(error) => {
            eprintln!("unhealthy: {error}");
            std::process::exit(1)
        }
    }
}

/// Reads the TLS key and certificate again at each SIGHUP, for the next handshakes; open connections keep
/// theirs, and a pair that fails the start-up checks is logged and not used.
async fn reload_on_sighup(tls: ferroserve::tls::Tls) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the certificate will not be reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS key and certificate reloaded"),
                Err(error) => tracing::error!("SIGHUP: {error}; the current certificate stays"),
            }
        }
    }
    #[cfg(not(unix))]
    drop(tls);
}

/// Completes at the first SIGTERM or Ctrl-C; a second one ends the process at once. Both are listened for from
/// the moment this is called (inside the runtime), not from the first poll.
fn first_signal() -> impl std::future::Future<Output = ()> {
    let mut signals = ShutdownSignals::listen();
    let (first, received) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        signals.next().await;
        let _ = first.send(());
        signals.next().await;
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130)
    });
    async move {
        let _ = received.await;
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

/// SIGTERM and SIGINT (Ctrl-C), registered when made: a signal that comes before [`ShutdownSignals::next`] is
/// first awaited is kept for it.
struct ShutdownSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Registers the handlers (inside the runtime). One that cannot be registered is warned about and never
    /// completes.
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let register = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|error| tracing::warn!(%error, "cannot listen for {name}")).ok()
            };
            Self {
                term: register(SignalKind::terminate(), "SIGTERM"),
                interrupt: register(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Completes at the next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => drop(signal.recv().await),
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => {},
                () = recv(&mut self.interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}
