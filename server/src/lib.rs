//! The front end of ferroserve: TorchServe's `config.properties`, its inference, management and metrics APIs
//! and KServe v2, over hyper 1, on three HTTP listeners as TorchServe has, and their gRPC services (TorchServe's
//! inference and management, KServe v2's `GRPCInferenceService`) on two more. It knows nothing of tensors beyond parsing
//! requests into model inputs and printing outputs; the queue, batching and models live in `ferroserve-engine`.
//!
//! The whole server is [`run`] over the listeners [`bind`] opened; `main` adds the command line, the models of
//! [`load::load_all`] and the signals. Modules point one way:
//! `run → serve (accept) → router (auth, admission, protocol) → api::* → {infer, reply, error, state} → engine`,
//! and for gRPC `serve → grpc (auth, admission, deadline, status) → api::* → ... → proto` (the generated types),
//! with `load` (start-up and registration) and `config` below them, and the canary rollouts (`rollouts`, judged by
//! the pure `rollout`) between `state` and `metrics`.

pub mod access_log;
pub mod api;
pub mod auth;
pub mod batching_config;
pub mod canary_metrics;
pub mod config;
pub mod cors;
pub mod drift;
pub mod drift_config;
pub mod drift_profile;
pub mod error;
pub mod exchange;
mod grpc;
pub mod healthcheck;
pub mod infer;
mod json;
pub mod landmarks;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod model_responses;
pub mod obs_config;
pub mod observe;
pub mod passthrough;
pub mod proto;
pub mod reply;
pub mod rollout;
pub mod rollout_config;
pub mod rollouts;
mod router;
mod serve;
pub mod slo;
pub mod slo_config;
pub mod state;
pub mod tls;
pub mod tls_config;
pub mod traces;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;

pub use config::{Api, Config};
pub use state::AppState;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The key of `config.properties` that sets it.
        key: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// TLS is asked for and its key or certificate cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A task of the server failed (it panicked).
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Connections and queues were still busy when `shutdown_grace_period` ran out.
    #[error("the shutdown took longer than shutdown_grace_period ({0:?})")]
    GraceExceeded(Duration),
}

/// The listeners of the three APIs and of the gRPC services, bound.
#[derive(Debug)]
pub struct Listeners {
    listeners: [TcpListener; Api::ALL.len()],
    /// Those of the gRPC services of [`Api::GRPC`], in its order.
    grpc: [TcpListener; Api::GRPC.len()],
    /// The key and certificate of the listeners that serve TLS.
    tls: Option<tls::Tls>,
}

impl Listeners {
    /// Where `api` listens (with the port the system chose for port 0).
    ///
    /// # Errors
    /// When the socket's address cannot be read.
    pub fn local_addr(&self, api: Api) -> std::io::Result<SocketAddr> {
        self.listeners[api.index()].local_addr()
    }

    /// Where the gRPC services of `api` listen (`None` for the metrics API, which has none).
    ///
    /// # Errors
    /// When the socket's address cannot be read.
    pub fn grpc_addr(&self, api: Api) -> std::io::Result<Option<SocketAddr>> {
        let index = Api::GRPC.iter().position(|a| *a == api);
        index.map(|i| self.grpc[i].local_addr()).transpose()
    }

    /// The TLS key and certificate, when a listener serves TLS (to [`tls::Tls::reload`] them).
    #[must_use]
    pub fn tls(&self) -> Option<&tls::Tls> {
        self.tls.as_ref()
    }
}

/// Binds the three APIs' addresses and those of the gRPC services. Each accept queue holds up to `max_connections` connections (the kernel caps
/// it at `somaxconn`), so that a burst of new connections waits to be accepted (and answered, 503 past
/// `max_connections`) instead of being dropped by the kernel.
///
/// # Errors
/// [`ServeError::Tls`] when a listener serves TLS and its key or certificate cannot be used (read first, before
/// any socket is opened), [`ServeError::Bind`] naming the address and its key.
pub async fn bind(config: &Config) -> Result<Listeners, ServeError> {
    let tls = tls::Tls::from_config(&config.tls)?;
    let backlog = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let open = |api: Api| {
        let addr = config.address(api);
        listen(addr, backlog).map_err(|source| ServeError::Bind { addr, key: api.address_key(), source })
    };
    let open_grpc = |api: Api| {
        let addr = config.grpc_address(api).unwrap_or(config.grpc_inference_address);
        listen(addr, backlog).map_err(|source| ServeError::Bind { addr, key: api.grpc_port_key(), source })
    };
    Ok(Listeners {
        listeners: [open(Api::Inference)?, open(Api::Management)?, open(Api::Metrics)?],
        grpc: [open_grpc(Api::Inference)?, open_grpc(Api::Management)?],
        tls,
    })
}

fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves the three APIs and the gRPC services over `state` until `shutdown` completes, then shuts down in order: readiness off,
/// listeners closed, open connections finish their requests, the model queues drain and the workers are joined,
/// all within `shutdown_grace_period`.
///
/// # Errors
/// [`ServeError::GraceExceeded`] when the shutdown takes longer (the caller should then exit: workers may still
/// run), [`ServeError::Task`] when a task of the server panicked.
pub async fn run(
    listeners: Listeners,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = tokio::task::JoinSet::new();
    let tls = listeners.tls;
    let tls_for = |on: bool| tls.clone().filter(|_| on);
    let http = Api::ALL
        .into_iter()
        .zip(listeners.listeners)
        .map(|(api, l)| (api, serve::Transport::Http, l, tls_for(state.config.tls.https[api.index()])));
    let grpc = Api::GRPC
        .into_iter()
        .zip(listeners.grpc)
        .map(|(api, l)| (api, serve::Transport::Grpc, l, tls_for(state.config.tls.grpc)));
    for (api, transport, listener, tls) in http.chain(grpc) {
        let mut stopped = stop.subscribe();
        servers.spawn(serve::serve(listener, Arc::clone(&state), api, transport, tls, async move {
            let _ = stopped.recv().await;
        }));
    }
    let analysis =
        tokio::spawn(Arc::clone(&state.rollouts).drive(Arc::clone(&state.registry), Arc::clone(&state.metrics)));
    shutdown.await;
    analysis.abort();
    state.stop_ready();
    let _ = stop.send(());
    let grace = state.config.shutdown_grace_period;
    let registry = Arc::clone(&state.registry);
    let drain = async move {
        while let Some(done) = servers.join_next().await {
            done?;
        }
        tracing::info!("connections closed; draining the model queues");
        tokio::task::spawn_blocking(move || registry.shutdown()).await?;
        Ok(())
    };
    tokio::time::timeout(grace, drain).await.map_err(|_| ServeError::GraceExceeded(grace))?
}
