//! `--grpc` against an in-process fake KServe v2 gRPC server over HTTP/2: the requests follow the model's
//! `ModelMetadata`, go out as gRPC frames with the inference key, and each answer's grpc-status (in the headers
//! of a trailers-only answer, or in the trailers) counts as the HTTP status of the same meaning.

mod support;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{
    body::{Body, Frame, Incoming},
    service::service_fn,
    HeaderMap, Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;

/// A gRPC answer: one message, then trailers.
struct Answer {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// `ModelMetadataResponse.inputs[0]`: `x`, FP32, [-1, 3].
#[derive(Clone, PartialEq, prost::Message)]
struct Tensor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    datatype: String,
    #[prost(int64, repeated, tag = "3")]
    shape: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Metadata {
    #[prost(message, repeated, tag = "4")]
    inputs: Vec<Tensor>,
}

/// `ModelInferRequest`, the fields the fake checks.
#[derive(Clone, PartialEq, prost::Message)]
struct Infer {
    #[prost(string, tag = "1")]
    model_name: String,
    #[prost(message, repeated, tag = "5")]
    inputs: Vec<Tensor>,
    #[prost(bytes = "vec", repeated, tag = "7")]
    raw_input_contents: Vec<Vec<u8>>,
}

fn framed(message: &[u8]) -> Bytes {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

/// The fake: metadata of one input; each 4th `ModelInfer` answered `UNAVAILABLE` (trailers-only), the others
/// with a message and `grpc-status: 0` in the trailers. Counts the calls that were not what `--grpc` sends.
#[derive(Default)]
struct Fake {
    calls: AtomicUsize,
    bad: AtomicUsize,
}

impl Fake {
    async fn answer(&self, request: Request<Incoming>) -> Response<Answer> {
        let path = request.uri().path().to_string();
        let key_ok = request.headers().get("authorization").is_some_and(|v| v == "Bearer k-1");
        let grpc = request.headers().get("content-type").is_some_and(|v| v == "application/grpc");
        let body = request.into_body().collect().await.expect("a body").to_bytes();
        let message = body.get(5..).unwrap_or_default();
        let ok = |data: Vec<u8>| {
            let trailers = HeaderMap::from_iter([("grpc-status".parse().expect("name"), "0".parse().expect("value"))]);
            Response::new(Answer { data: Some(framed(&data)), trailers: Some(trailers) })
        };
        if !key_ok || !grpc {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
        match path.as_str() {
            "/inference.GRPCInferenceService/ModelMetadata" => {
                let input = Tensor { name: "x".into(), datatype: "FP32".into(), shape: vec![-1, 3] };
                ok(Metadata { inputs: vec![input] }.encode_to_vec())
            }
            "/inference.GRPCInferenceService/ModelInfer" => {
                let request = Infer::decode(message).expect("a ModelInferRequest");
                if request.model_name != "signnet"
                    || request.inputs[0].shape != [1, 3]
                    || request.raw_input_contents[0].len() != 12
                {
                    self.bad.fetch_add(1, Ordering::Relaxed);
                }
                if self.calls.fetch_add(1, Ordering::Relaxed) % 4 == 3 {
                    let mut refused = Response::new(Answer { data: None, trailers: None });
                    refused.headers_mut().insert("grpc-status", "14".parse().expect("value"));
                    return refused;
                }
                ok(vec![0; 40])
            }
            _ => {
                self.bad.fetch_add(1, Ordering::Relaxed);
                let mut missing = Response::new(Answer { data: None, trailers: None });
                missing.headers_mut().insert("grpc-status", "12".parse().expect("value"));
                missing
            }
        }
    }
}

/// Starts the fake on 127.0.0.1:0; its address.
async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let fake = Arc::clone(&fake);
            let service = service_fn(move |request| {
                let fake = Arc::clone(&fake);
                async move { Ok::<_, Infallible>(fake.answer(request).await) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr.to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_requests_follow_the_metadata_and_codes_count_as_http_statuses() {
    let fake = Arc::new(Fake::default());
    let addr = serve(Arc::clone(&fake)).await;
    let cli = support::cli(&[
        "--grpc",
        "--target",
        &addr,
        "--grpc-connections",
        "2",
        "--inference-key",
        "k-1",
        "--concurrency",
        "3",
        "--requests",
        "40",
        "--quiet",
    ]);
    let report = ferroserve_loadtest::run::run(&cli.run).await.expect("run");
    assert_eq!(report.requests, 40);
    assert_eq!(fake.calls.load(Ordering::Relaxed), 40);
    assert_eq!(report.successes, 30, "{:?}", report.errors);
    assert_eq!(report.errors.get("503"), Some(&10), "UNAVAILABLE counts as 503");
    assert_eq!(fake.bad.load(Ordering::Relaxed), 0, "every call was a well-formed ModelInfer with the key");
    assert!(report.settings.url.ends_with("/inference.GRPCInferenceService/ModelInfer"), "{}", report.settings.url);
}
