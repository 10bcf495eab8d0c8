//! An in-process fake model server for the integration tests (not ferroserve): it answers TorchServe and
//! KServe v2 inference, a management API that changes its batch setting, and Prometheus metrics, with a
//! latency the test controls: a fixed delay, a one-off stall, and a capacity (a single serial worker) that
//! may depend on the batch setting, so that queues build up exactly as on a real server.

#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// How a batch setting behaves: a serial worker of `capacity` requests/s (None: unlimited) plus `latency`.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Requests per second the worker completes; `None` for no queueing at all.
    pub capacity: Option<f64>,
    /// Added to every request.
    pub latency: Duration,
}

/// The latency model as a function of the batch size.
pub type ProfileFn = fn(u32) -> Profile;

#[derive(Debug)]
struct State {
    profile: ProfileFn,
    batch_size: u32,
    max_batch_delay_ms: f64,
    requests: u64,
    stall_at: Option<(u64, Duration)>,
    stalled_until: Option<Instant>,
    next_free: Instant,
    puts: Vec<(u32, f64)>,
    bad_bodies: u64,
}

/// The management key the fake server expects (`Authorization: Bearer ...`), as ferroserve does by default.
pub const MANAGEMENT_KEY: &str = "management-secret";

/// A running fake server; it stops with the test's runtime.
#[derive(Clone)]
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeServer {
    /// Starts a server with the given latency model and initial batch setting 16 / 2 ms.
    pub async fn start(profile: ProfileFn) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            profile,
            batch_size: 16,
            max_batch_delay_ms: 2.0,
            requests: 0,
            stall_at: None,
            stalled_until: None,
            next_free: Instant::now(),
            puts: Vec::new(),
            bad_bodies: 0,
        }));
        let server = Self { addr, state };
        let accept = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let server = accept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    /// An instant server.
    pub async fn instant() -> Self {
        Self::start(|_| Profile { capacity: None, latency: Duration::ZERO }).await
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stalls every request for `length` once the `nth` request arrives (the nth and all that come during it).
    pub fn stall_once(&self, nth: u64, length: Duration) {
        self.state.lock().expect("state").stall_at = Some((nth, length));
    }

    /// Inference requests received.
    pub fn requests(&self) -> u64 {
        self.state.lock().expect("state").requests
    }

    /// Requests whose body was not the expected shape.
    pub fn bad_bodies(&self) -> u64 {
        self.state.lock().expect("state").bad_bodies
    }

    /// The management calls received: (batch_size, max_batch_delay ms).
    pub fn puts(&self) -> Vec<(u32, f64)> {
        self.state.lock().expect("state").puts.clone()
    }

    /// The current batch setting.
    pub fn setting(&self) -> (u32, f64) {
        let s = self.state.lock().expect("state");
        (s.batch_size, s.max_batch_delay_ms)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (method, path, query) =
            (req.method().clone(), req.uri().path().to_string(), req.uri().query().unwrap_or("").to_string());
        let authorised = req.headers().get("authorization").is_some_and(|v| v == &format!("Bearer {MANAGEMENT_KEY}"));
        if path.starts_with("/models/") && !authorised {
            return json(StatusCode::UNAUTHORIZED, r#"{"code":401}"#.into());
        }
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        match (method, path.as_str()) {
            (Method::POST, p) if p.starts_with("/predictions/") => self.infer(&body, false).await,
            (Method::POST, p) if p.starts_with("/v2/models/") && p.ends_with("/infer") => self.infer(&body, true).await,
            (Method::GET, "/v2/models/signnet") => json(
                StatusCode::OK,
                r#"{"name":"signnet","versions":["1.0"],"platform":"onnxruntime_onnx",
                   "inputs":[{"name":"landmarks","datatype":"FP32","shape":[-1,30,21,3]}],
                   "outputs":[{"name":"probabilities","datatype":"FP32","shape":[-1,10]}]}"#
                    .to_string(),
            ),
            (Method::PUT, "/models/signnet") => self.put(&query),
            (Method::GET, "/models/signnet") => {
                let (b, d) = self.setting();
                json(
                    StatusCode::OK,
                    format!(r#"[{{"modelName":"signnet","modelVersion":"1.0","batchSize":{b},"maxBatchDelay":{d}}}]"#),
                )
            }
            (Method::GET, "/metrics") => self.metrics(),
            _ => json(StatusCode::NOT_FOUND, r#"{"code":404}"#.into()),
        }
    }

    async fn infer(&self, body: &[u8], kserve: bool) -> Response<Full<Bytes>> {
        let valid = serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
            if kserve {
                v["inputs"][0]["data"].as_array().is_some_and(|d| d.len() == 30 * 21 * 3)
            } else {
                v["landmarks"].as_array().is_some_and(|f| f.len() == 30)
            }
        });
        let now = Instant::now();
        let (ready, batch) = {
            let mut s = self.state.lock().expect("state");
            s.requests += 1;
            if !valid {
                s.bad_bodies += 1;
            }
            if let Some((nth, length)) = s.stall_at {
                if s.requests == nth {
                    s.stalled_until = Some(now + length);
                }
            }
            let start = s.stalled_until.map_or(now, |until| until.max(now));
            let profile = (s.profile)(s.batch_size);
            let done = match profile.capacity {
                Some(capacity) => {
                    let begin = start.max(s.next_free);
                    s.next_free = begin + Duration::from_secs_f64(1.0 / capacity);
                    s.next_free
                }
                None => start,
            };
            (done + profile.latency, s.batch_size)
        };
        tokio::time::sleep_until(ready).await;
        let mut response =
            json(StatusCode::OK, r#"{"predictions":[{"label":"hello","confidence":0.93}],"device":"cpu"}"#.into());
        let headers = response.headers_mut();
        headers.insert("x-batch-size", batch.into());
        headers.insert("x-queue-time", hyper::header::HeaderValue::from_static("0.500"));
        headers.insert("x-inference-time", hyper::header::HeaderValue::from_static("1.000"));
        response
    }

    fn put(&self, query: &str) -> Response<Full<Bytes>> {
        let mut batch = None;
        let mut delay = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("batch_size", v)) => batch = v.parse::<u32>().ok(),
                Some(("max_batch_delay", v)) => delay = v.parse::<f64>().ok(),
                _ => {}
            }
        }
        let (Some(b), Some(d)) = (batch, delay) else {
            return json(StatusCode::BAD_REQUEST, r#"{"code":400}"#.into());
        };
        let mut s = self.state.lock().expect("state");
        s.batch_size = b;
        s.max_batch_delay_ms = d;
        s.puts.push((b, d));
        json(StatusCode::OK, r#"{"status":"updated"}"#.into())
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let s = self.state.lock().expect("state");
        let n = s.requests;
        let labels = r#"model_name="signnet",model_version="1.0""#;
        let text = format!(
            "# TYPE ts_inference_requests_total counter\n\
             ts_inference_requests_total{{{labels}}} {n}\n\
             ts_queue_latency_microseconds{{{labels}}} {}\n\
             ts_inference_latency_microseconds{{{labels}}} {}\n\
             ferroserve_inference_count_total{{{labels},device=\"cpu\"}} {n}\n\
             ferroserve_execution_count_total{{{labels},device=\"cpu\"}} {}\n",
            n * 500,
            n * 1000,
            n / 4
        );
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = StatusCode::OK;
        response
    }
}

/// Parses a command line (without the program name).
pub fn cli(args: &[&str]) -> ferroserve_loadtest::cli::Cli {
    use clap::Parser;
    let argv = std::iter::once("ferroserve-loadtest").chain(args.iter().copied());
    ferroserve_loadtest::cli::Cli::try_parse_from(argv).expect("valid arguments")
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}
