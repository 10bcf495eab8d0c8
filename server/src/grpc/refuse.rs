//! A connection to a gRPC listener past `max_connections`, refused in gRPC's terms: the HTTP/2 handshake (after
//! the TLS one on a TLS listener) completes, every call on it is answered `UNAVAILABLE` ("too many open
//! connections, retry later"), and after the first answer, or [`LINGER`] without one, the server closes it with
//! a GOAWAY. An HTTP/1.1 503 written on the socket would reach a gRPC client as a protocol error, not as the
//! retryable status it is.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, server::conn::http2, service::service_fn, Request};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::Notify,
};

use crate::tls::Tls;

/// How long a refused connection may stay open before its first call, and then to close.
const LINGER: Duration = Duration::from_secs(2);

/// The calls a refused connection may have open at once.
const STREAMS: u32 = 16;

/// Refuses `stream` from `peer`, over TLS when `tls` is given (see the module's documentation).
pub(crate) async fn refuse(stream: TcpStream, tls: Option<Tls>, peer: SocketAddr) {
    match tls {
        None => refuse_http2(stream, peer).await,
        Some(tls) => {
            if let Some(stream) = tls.handshake(stream, peer).await {
                refuse_http2(stream, peer).await;
            }
        }
    }
}

/// Answers every call on `io` `UNAVAILABLE`, then closes it gracefully.
async fn refuse_http2<I>(io: I, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answered = Arc::new(Notify::new());
    let service = {
        let answered = Arc::clone(&answered);
        service_fn(move |_: Request<Incoming>| {
            answered.notify_one();
            let status = tonic::Status::unavailable("too many open connections, retry later");
            std::future::ready(Ok::<_, Infallible>(status.into_http::<tonic::body::Body>()))
        })
    };
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_concurrent_streams(STREAMS);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        () = answered.notified() => None,
        () = tokio::time::sleep(LINGER) => None,
    };
    let ended = match ended {
        Some(ended) => Some(ended),
        None => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(LINGER, conn).await.ok()
        }
    };
    if let Some(Err(error)) = ended {
        tracing::debug!(%error, %peer, "a refused gRPC connection ended with an error");
    }
}
