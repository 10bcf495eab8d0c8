//! The transport of one API: the accept loop over hyper 1 (HTTP/1.1 and HTTP/2) with TCP_NODELAY, a
//! header-read timeout, the `max_connections` limit, back-off on accept errors, and graceful shutdown. Every
//! request it reads goes to the router, or, on a gRPC listener, to the API's gRPC services (HTTP/2 only, with the
//! limits of [`grpc::http2`]). HTTP and gRPC connections to one API share its `max_connections`. On a TLS
//! listener each connection's handshake ([`Tls::handshake`]) runs on the connection's own task, so that a slow
//! client does not hold up the accept loop.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use hyper::{
    body::{Body, Incoming},
    service::{service_fn, Service},
    Request, Response,
};
use hyper_util::server::graceful::Watcher;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::OwnedSemaphorePermit,
};

use crate::{
    config::Api,
    error::{ApiError, Protocol},
    exchange::ClientAddr,
    grpc, observe, router,
    state::AppState,
    tls::Tls,
};

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// TorchServe's HTTP API (and KServe v2's over HTTP on the inference API).
    Http,
    /// The API's gRPC services.
    Grpc,
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a connection's read buffer grows to (hyper's default is about 400 KiB). hyper doubles the buffer while
/// reads fill it, so a 38 KiB landmark body left each keep-alive connection holding about 130 KiB; capped, a body
/// arrives in chunks of at most this size (hyper's smallest). It also bounds the request head: larger heads are
/// answered 431, as TorchServe's Netty refuses headers over 8 KiB.
const READ_BUFFER: usize = 8 * 1024;

/// How long a refused connection may keep sending before it is closed.
const LINGER: Duration = Duration::from_secs(2);

/// Serves `api` over `transport` on `listener` (over TLS when `tls` is given) until `shutdown` completes, then
/// lets open connections finish their requests (for `shutdown_grace_period` at most).
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    api: Api,
    transport: Transport,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) {
    match transport {
        Transport::Http => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(READ_BUFFER);
            let routed = Arc::clone(&state);
            let service = service_fn(move |req| {
                let state = Arc::clone(&routed);
                async move { Ok::<_, Infallible>(router::route(req, &state, api).await) }
            });
            accept(listener, state, (api, transport), tls, &builder, service, shutdown).await;
        }
        Transport::Grpc => {
            let builder = grpc::http2();
            let service = observe::Grpc::new(grpc::routes(&state, api), Arc::clone(&state.observer));
            accept(listener, state, (api, transport), tls, &builder, service, shutdown).await;
        }
    }
}

/// The accept loop: each connection `builder` serves with `service`, after its TLS handshake when `tls` is given;
/// one past `max_connections` is refused in the terms of the listener's transport.
async fn accept<S, B>(
    listener: TcpListener,
    state: Arc<AppState>,
    (api, transport): (Api, Transport),
    tls: Option<Tls>,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut backoff = Backoff::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff.reset();
                conn
            }
            Err(error) => {
                let pause = backoff.failed(api, &error);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let Ok(permit) = Arc::clone(&state.connections[api.index()]).try_acquire_owned() else {
            state.metrics.refuse(api, "too_many_connections");
            match transport {
                Transport::Http => tokio::spawn(refuse_connection(stream)),
                Transport::Grpc => tokio::spawn(grpc::refuse(stream, tls.clone(), peer)),
            };
            continue;
        };
        // Small responses must not wait for Nagle's algorithm (about 40 ms otherwise).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let service = WithPeer { inner: service.clone(), peer: ClientAddr(peer) };
        let (watcher, builder, tls) = (graceful.watcher(), builder.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, &builder, service, watcher, permit, peer).await,
                Some(tls) => {
                    if let Some(stream) = tls.handshake(stream, peer).await {
                        serve_connection(stream, &builder, service, watcher, permit, peer).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let grace = state.config.shutdown_grace_period;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(api = api.name(), "some connections were still open after {grace:?}");
    }
}

/// A connection's service: `inner`, with the client's address in each request's extensions.
#[derive(Debug, Clone)]
struct WithPeer<S> {
    inner: S,
    peer: ClientAddr,
}

impl<S: Service<Request<Incoming>>> Service<Request<Incoming>> for WithPeer<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.peer);
        self.inner.call(req)
    }
}

/// Serves one connection to its end (or the graceful shutdown's), holding its `max_connections` permit.
async fn serve_connection<I, S, B>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
    peer: std::net::SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned());
    if let Err(error) = conn.await {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
    drop(permit);
}

/// Answers a connection over `max_connections` with a 503 and closes it, without parsing its request. What the
/// client still sends is read and dropped for a moment (a lingering close), so that closing with unread data
/// does not reset the connection before the client has read the 503.
async fn refuse_connection(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = ApiError::unavailable("too many open connections, retry later").body(Protocol::TorchServe);
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&body).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let _ =
        tokio::time::timeout(LINGER, async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} }).await;
}

/// The pause after a failed accept. Accept fails when the process runs out of file descriptors (EMFILE) or the
/// kernel of memory: retrying at once would spin and flood the log, so the pause doubles from 10 ms up to 1 s
/// while the failures last, and one warning is logged per run of failures.
#[derive(Debug, Default)]
struct Backoff {
    /// Accept errors in a row.
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// Records a failed accept and returns how long to wait before the next one.
    fn failed(&mut self, api: Api, error: &std::io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(api = api.name(), %error, "accept failed; retrying with back-off while it fails");
        } else {
            tracing::debug!(api = api.name(), %error, failures = self.failures + 1, "accept failed again");
        }
        self.failures = self.failures.saturating_add(1);
        self.pause()
    }

    /// The pause after the failures so far.
    fn pause(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        Self::FIRST.saturating_mul(1 << doublings).min(Self::MAX)
    }

    /// A connection was accepted: the next failure starts a new run.
    fn reset(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting again after failed accepts");
        }
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_up_to_a_second_and_start_again_after_a_success() {
        let mut backoff = Backoff::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<u128> = (0..10).map(|_| backoff.failed(Api::Inference, &emfile).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.failed(Api::Inference, &emfile), Duration::from_millis(10));
    }
}
