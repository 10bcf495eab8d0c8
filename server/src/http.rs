//! The inference API over hyper 1: `GET /ping` and `POST /predictions/{model}[/{version}]`, served by
//! [`run`] on a listener until a shutdown signal, then drained gracefully.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use ferroserve_engine::{InferOutput, Model, Registry};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE},
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::{
    error::ApiError,
    landmarks::{self, LandmarkShape},
};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct AppState {
    /// The loaded models.
    pub registry: Arc<Registry>,
    /// Largest request body accepted (`max_request_size`).
    pub max_request_size: usize,
}

type Reply = Response<Full<Bytes>>;

/// Serves the inference API on `listener` until `shutdown` completes, then lets open connections finish (for
/// [`DRAIN_TIMEOUT`] at most).
///
/// # Errors
/// Never at present: accept errors (such as running out of file descriptors) are logged and retried.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses must not wait for Nagle's algorithm (about 40 ms otherwise).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(route(req, &state).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after {DRAIN_TIMEOUT:?}");
    }
    Ok(())
}

async fn route(req: Request<Incoming>, state: &AppState) -> Reply {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["ping"]) => Ok(json(StatusCode::OK, br#"{"status":"Healthy"}"#.to_vec())),
        (&Method::POST, ["predictions", model]) => predict(req, state, model, None).await,
        (&Method::POST, ["predictions", model, version]) => {
            predict(req, state, model, Some(version)).await
        }
        (_, ["ping"] | ["predictions", _] | ["predictions", _, _]) => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::not_found(&path)),
    };
    result.unwrap_or_else(|e| json(e.status, e.body()))
}

fn json(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn find_model(state: &AppState, name: &str, version: Option<&str>) -> Result<Arc<Model>, ApiError> {
    state
        .registry
        .get(name, version)
        .ok_or_else(|| match version {
            Some(v) if state.registry.get(name, None).is_some() => ApiError::model_not_found(
                format!("Model version: {v} does not exist for model: {name}"),
            ),
            _ => ApiError::model_not_found(format!("Model not found: {name}")),
        })
}

/// Reads the whole body into one buffer, refusing more than `limit` bytes (early, from Content-Length, when the
/// client sends it).
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit));
    let mut buffer = Vec::with_capacity(capacity);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer)
}

/// `topk` from the query string (`?topk=3`); the body's `topk` field wins over it.
fn query_topk(req: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
    let Some(query) = req.uri().query() else {
        return Ok(None);
    };
    let Some(value) = query.split('&').find_map(|kv| kv.strip_prefix("topk=")) else {
        return Ok(None);
    };
    match value.parse::<usize>() {
        Ok(k) if k > 0 => Ok(Some(k)),
        _ => Err(ApiError::bad_request(format!(
            "query parameter topk={value} must be a positive integer"
        ))),
    }
}

async fn predict(
    req: Request<Incoming>,
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Reply, ApiError> {
    let model = find_model(state, name, version)?;
    let shape = LandmarkShape::of(model.spec()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "model {name} takes input `{}` of shape {:?}, not hand landmarks [frames, points, 3]",
            model.spec().input_name,
            model.spec().input_shape
        ))
    })?;
    let query_k = query_topk(&req)?;
    let mut body = read_body(req, state.max_request_size).await?;
    let request = landmarks::parse(&mut body, shape)?;
    let reply = model.submit(request.input)?;
    let output = reply.await.map_err(|_| {
        ApiError::internal(format!(
            "model {name} dropped the request (it is shutting down)"
        ))
    })??;
    let topk = request.topk.or(query_k).unwrap_or(1);
    Ok(prediction_response(&model, &output, topk))
}

#[derive(Serialize)]
struct PredictionBody<'a> {
    predictions: Vec<landmarks::Prediction<'a>>,
    device: &'static str,
}

fn prediction_response(model: &Model, output: &InferOutput, topk: usize) -> Reply {
    let body = PredictionBody {
        predictions: landmarks::top_k(&output.output, model.labels(), topk),
        device: output.device.kind(),
    };
    let mut response = json(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    let timing = output.timing;
    let headers = response.headers_mut();
    let ms = |d: Duration| HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1000.0));
    for (name, value) in [
        ("x-queue-time", ms(timing.queue)),
        ("x-inference-time", ms(timing.inference)),
        (
            "x-batch-size",
            HeaderValue::from_str(&timing.batch_size.to_string()),
        ),
        (
            "x-device",
            HeaderValue::from_str(&output.device.to_string()),
        ),
    ] {
        if let Ok(value) = value {
            headers.insert(name, value);
        }
    }
    response
}
