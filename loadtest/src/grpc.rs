//! The gRPC side: KServe v2's `ModelInfer` (Triton's gRPC protocol) with raw tensors, over a few HTTP/2
//! connections that the requests share (`--grpc-connections`, streams multiplexed on each), without tonic's
//! channel and its queue in front: each request is one gRPC frame, encoded once before the load and sent as a
//! cheap `Bytes` clone, and its answer is read to its trailers. The messages are the few fields of KServe's
//! `grpc_predict_v2.proto` the generator writes and reads (same names and field numbers).
//!
//! A call's outcome is reported as the HTTP status of the same meaning (OK 200, `INVALID_ARGUMENT` 400,
//! `NOT_FOUND` 404, `RESOURCE_EXHAUSTED` 429, `UNAVAILABLE` 503, `DEADLINE_EXCEEDED` 504, ...), so that the
//! report's error table reads alike for both transports.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Mutex,
};

use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::{client::conn::http2::SendRequest, header::HeaderValue, Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::Message;
use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use thiserror::Error;

use crate::{
    body::BodySet,
    outcome::{server_timing, Outcome},
};

/// The service's path prefix.
const SERVICE: &str = "/inference.GRPCInferenceService";

/// HTTP/2 windows of the generator's connections: a few requests' and answers' worth in flight per stream, and
/// many streams per connection, without waiting for WINDOW_UPDATEs (h2's defaults are 64 KiB for both).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// A gRPC exchange could not be set up.
#[derive(Debug, Error)]
pub enum GrpcError {
    /// The target is not `host:port` or `http://host:port`.
    #[error("--target {0}: give host:port or http://host:port for --grpc (TLS is not supported there)")]
    Target(String),
    /// The connection or its HTTP/2 handshake failed.
    #[error("gRPC connection to {addr}: {message}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        message: String,
    },
    /// A call failed or its answer was not the message expected.
    #[error("{call}: {message}")]
    Call {
        /// The method.
        call: &'static str,
        /// Why.
        message: String,
    },
    /// The model's metadata cannot be turned into a request.
    #[error("model metadata: {0}")]
    Metadata(String),
}

/// `ModelMetadataRequest`.
#[derive(Clone, PartialEq, Message)]
struct MetadataRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    version: String,
}

/// `ModelMetadataResponse`, its inputs.
#[derive(Clone, PartialEq, Message)]
struct MetadataResponse {
    #[prost(message, repeated, tag = "4")]
    inputs: Vec<Tensor>,
}

/// `TensorMetadata` and `InferInputTensor` alike: name, datatype, shape.
#[derive(Clone, PartialEq, Message)]
struct Tensor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    datatype: String,
    #[prost(int64, repeated, tag = "3")]
    shape: Vec<i64>,
}

/// `ModelInferRequest` with raw tensors.
#[derive(Clone, PartialEq, Message)]
struct InferRequest {
    #[prost(string, tag = "1")]
    model_name: String,
    #[prost(string, tag = "2")]
    model_version: String,
    #[prost(message, repeated, tag = "5")]
    inputs: Vec<Tensor>,
    #[prost(bytes = "vec", repeated, tag = "7")]
    raw_input_contents: Vec<Vec<u8>>,
}

/// HTTP/2 connections to one gRPC server, used in turn; a connection found closed is opened again.
#[derive(Debug)]
pub struct Channels {
    addr: String,
    origin: String,
    senders: Vec<Mutex<SendRequest<Full<Bytes>>>>,
    next: AtomicUsize,
}

impl Channels {
    /// Opens `count` (at least 1) connections to `target` (`host:port` or `http://host:port`).
    ///
    /// # Errors
    /// [`GrpcError::Target`] for an `https://` or malformed target, [`GrpcError::Connect`] when a connection fails.
    pub async fn connect(target: &str, count: usize) -> Result<Self, GrpcError> {
        let addr = target.strip_prefix("http://").unwrap_or(target).trim_end_matches('/');
        if addr.contains("://") || addr.contains('/') || !addr.contains(':') {
            return Err(GrpcError::Target(target.to_string()));
        }
        let mut senders = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            senders.push(Mutex::new(open(addr).await?));
        }
        Ok(Self { addr: addr.to_string(), origin: format!("http://{addr}"), senders, next: AtomicUsize::new(0) })
    }

    /// The URI of `method` on the KServe v2 service.
    ///
    /// # Errors
    /// [`GrpcError::Target`] when the address makes no URI.
    pub fn uri(&self, method: &str) -> Result<Uri, GrpcError> {
        format!("{}{SERVICE}/{method}", self.origin).parse().map_err(|_| GrpcError::Target(self.addr.clone()))
    }

    /// A connection's sender, the next in turn, opened again when it was closed.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, GrpcError> {
        let slot = &self.senders[self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len()];
        let sender = slot.lock().map_err(|_| self.broken())?.clone();
        if !sender.is_closed() {
            return Ok(sender);
        }
        let fresh = open(&self.addr).await?;
        *slot.lock().map_err(|_| self.broken())? = fresh.clone();
        Ok(fresh)
    }

    fn broken(&self) -> GrpcError {
        GrpcError::Connect { addr: self.addr.clone(), message: "a connection's lock was poisoned".into() }
    }

    /// Sends one framed gRPC message (a `ModelInfer` request of [`Channels::requests`]) to `uri` and reads the
    /// whole answer: its grpc-status as an HTTP status, its bytes and ferroserve's timing metadata.
    pub async fn send(&self, uri: &Uri, frame: Bytes, authorization: Option<&HeaderValue>) -> Outcome {
        let Ok(mut sender) = self.sender().await else {
            return Outcome::Connect;
        };
        let mut request =
            Request::post(uri.clone()).header("content-type", "application/grpc").header("te", "trailers");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization.clone());
        }
        let Ok(request) = request.body(Full::new(frame)) else {
            return Outcome::Io;
        };
        if std::future::poll_fn(|cx| sender.poll_ready(cx)).await.is_err() {
            return Outcome::Io;
        }
        let Ok(response) = sender.send_request(request).await else {
            return Outcome::Io;
        };
        let (head, mut body) = response.into_parts();
        let timing = server_timing(&head.headers);
        let mut bytes = 0u64;
        let mut code = grpc_status(&head.headers);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => bytes += data.len() as u64,
                    Err(frame) => code = code.or_else(|| frame.trailers_ref().and_then(grpc_status)),
                },
                Err(_) => return Outcome::Io,
            }
        }
        let status = match (head.status.as_u16(), code) {
            (200, Some(code)) => http_status(code),
            // No grpc-status: the answer is no gRPC answer.
            (200, None) => 502,
            (other, _) => other,
        };
        Outcome::Response { status, bytes, timing }
    }

    /// `count` seeded random `ModelInfer` requests to `model` (at `version`), one raw tensor per input of the
    /// model's metadata (read with `ModelMetadata`); a dynamic dimension (-1) becomes 1.
    ///
    /// # Errors
    /// [`GrpcError::Call`] when the metadata call fails, [`GrpcError::Metadata`] when an input's datatype cannot
    /// be generated or the model lists none.
    pub async fn requests(
        &self,
        model: &str,
        version: Option<&str>,
        authorization: Option<&HeaderValue>,
        count: usize,
        seed: u64,
    ) -> Result<BodySet, GrpcError> {
        let version = version.unwrap_or_default().to_string();
        let request = MetadataRequest { name: model.to_string(), version: version.clone() };
        let answer = self.unary("ModelMetadata", &request.encode_to_vec(), authorization).await?;
        let metadata = MetadataResponse::decode(answer)
            .map_err(|e| GrpcError::Call { call: "ModelMetadata", message: e.to_string() })?;
        if metadata.inputs.is_empty() {
            return Err(GrpcError::Metadata("the model lists no inputs".into()));
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut bodies = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            let mut request =
                InferRequest { model_name: model.to_string(), model_version: version.clone(), ..Default::default() };
            for input in &metadata.inputs {
                let shape: Vec<i64> = input.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
                request.raw_input_contents.push(random_raw(input, &shape, &mut rng)?);
                request.inputs.push(Tensor { shape, ..input.clone() });
            }
            bodies.push(frame(&request.encode_to_vec()));
        }
        Ok(BodySet::new(bodies))
    }

    /// One unary call with an encoded message; the answer's message.
    async fn unary(
        &self,
        method: &'static str,
        message: &[u8],
        authorization: Option<&HeaderValue>,
    ) -> Result<Bytes, GrpcError> {
        let failed = |message: String| GrpcError::Call { call: method, message };
        let mut sender = self.sender().await?;
        let mut request =
            Request::post(self.uri(method)?).header("content-type", "application/grpc").header("te", "trailers");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization.clone());
        }
        let request = request.body(Full::new(frame(message))).map_err(|e| failed(e.to_string()))?;
        std::future::poll_fn(|cx| sender.poll_ready(cx)).await.map_err(|e| failed(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| failed(e.to_string()))?;
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await.map_err(|e| failed(e.to_string()))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let code = grpc_status(&headers).or_else(|| grpc_status(&trailers));
        if code != Some(0) {
            let message = trailers.get("grpc-message").or_else(|| headers.get("grpc-message"));
            let message = message.and_then(|v| v.to_str().ok()).unwrap_or_default();
            return Err(failed(format!("grpc-status {} {message}", code.map_or("none".into(), |c| c.to_string()))));
        }
        let body = collected.to_bytes();
        body.get(5..).map(Bytes::copy_from_slice).ok_or_else(|| failed("the answer holds no message".into()))
    }
}

/// Opens one HTTP/2 connection to `addr`, with TCP_NODELAY and the windows above.
async fn open(addr: &str) -> Result<SendRequest<Full<Bytes>>, GrpcError> {
    let failed = |message: String| GrpcError::Connect { addr: addr.to_string(), message };
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| failed(e.to_string()))?;
    stream.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a gRPC connection ended");
        }
    });
    Ok(sender)
}

/// `message` as one uncompressed gRPC frame: a zero byte, the length (big-endian u32), the message.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(message);
    framed.freeze()
}

/// Random little-endian values of `input`'s datatype for `shape`.
fn random_raw(input: &Tensor, shape: &[i64], rng: &mut Xoshiro256PlusPlus) -> Result<Vec<u8>, GrpcError> {
    let elements = usize::try_from(shape.iter().product::<i64>().max(0)).unwrap_or_default();
    let mut raw = Vec::new();
    for _ in 0..elements {
        match input.datatype.as_str() {
            "FP32" => raw.extend_from_slice(&rng.random::<f32>().to_le_bytes()),
            "FP64" => raw.extend_from_slice(&rng.random::<f64>().to_le_bytes()),
            "INT32" => raw.extend_from_slice(&rng.random_range(0..10i32).to_le_bytes()),
            "INT64" => raw.extend_from_slice(&rng.random_range(0..10i64).to_le_bytes()),
            "BOOL" => raw.push(u8::from(rng.random::<bool>())),
            other => {
                return Err(GrpcError::Metadata(format!(
                    "input `{}` has datatype {other}, which --grpc cannot generate (FP32, FP64, INT32, INT64, BOOL)",
                    input.name
                )))
            }
        }
    }
    Ok(raw)
}

/// The `grpc-status` of a header map.
fn grpc_status(headers: &hyper::HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The HTTP status of the same meaning as gRPC code `code`.
fn http_status(code: u16) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 11 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 412,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_and_codes_mapped() {
        let framed = frame(&[1, 2, 3]);
        assert_eq!(framed.as_ref(), [0, 0, 0, 0, 3, 1, 2, 3]);
        assert_eq!((http_status(0), http_status(14), http_status(8), http_status(4)), (200, 503, 429, 504));
        let input = Tensor { name: "x".into(), datatype: "FP32".into(), shape: vec![-1, 3] };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        assert_eq!(random_raw(&input, &[2, 3], &mut rng).expect("FP32").len(), 24);
        let bytes = Tensor { datatype: "BYTES".into(), ..input };
        assert!(random_raw(&bytes, &[1], &mut rng).is_err());
    }

    #[test]
    fn targets_are_host_and_port() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        for bad in ["https://127.0.0.1:1", "localhost", "http://127.0.0.1:1/x"] {
            assert!(matches!(rt.block_on(Channels::connect(bad, 1)), Err(GrpcError::Target(_))), "{bad}");
        }
    }
}
