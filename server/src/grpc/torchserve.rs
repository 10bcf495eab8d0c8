//! TorchServe's gRPC services over the same handlers as its HTTP APIs.
//!
//! Inference (`InferenceAPIsService`): `Ping` answers the health JSON of `GET /ping`; `Predictions` runs the
//! request's `input` map as `POST /predictions` would its body: an archive's Python handler gets each entry as a
//! request part (and the metadata as headers), the landmark path reads the JSON of the entry `data` (or `body`,
//! or the only entry) and an optional `topk` entry. `StreamPredictions` answers the whole prediction as one
//! message; `StreamPredictions2` answers each request of its stream in turn, an error in the response's
//! `status`, with the request's `sequenceId`.
//!
//! Management (`ManagementAPIsService`): each call is the HTTP call of the same name, its fields as the query
//! parameters (proto3's zeros, empty strings and `false` meaning "not given", as TorchServe reads them;
//! `ScaleWorker`'s `min_worker` is 1 when not given and `max_worker` then `min_worker`), and answers the same
//! JSON in `msg`.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use ferroserve_engine::request::{HandlerInput, Part};
use http_body_util::BodyExt as _;
use hyper::{Method, StatusCode};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt as _};
use tonic::{metadata::MetadataMap, Request, Response, Status, Streaming};

use super::{admit, admitted, answer, unary, Kind, Limits};
use crate::{
    api::{management::dispatch, predictions},
    config::Api,
    error::ApiError,
    infer::{bucket_of, on_model, Answer, CANARY_KEY},
    proto::{
        google::rpc,
        torchserve_inference::{
            self as inference,
            inference_ap_is_service_server::{InferenceApIsService, InferenceApIsServiceServer},
        },
        torchserve_management::{
            self as management,
            management_ap_is_service_server::{ManagementApIsService, ManagementApIsServiceServer},
        },
    },
    reply::Reply,
    state::AppState,
};

/// TorchServe's inference service, with its message size limits.
pub(super) fn inference(state: &Arc<AppState>, limits: Limits) -> InferenceApIsServiceServer<Inference> {
    InferenceApIsServiceServer::new(Inference { state: Arc::clone(state) })
        .max_decoding_message_size(limits.decode)
        .max_encoding_message_size(limits.encode)
}

/// TorchServe's management service, with its message size limits.
pub(super) fn management(state: &Arc<AppState>, limits: Limits) -> ManagementApIsServiceServer<Management> {
    ManagementApIsServiceServer::new(Management { state: Arc::clone(state) })
        .max_decoding_message_size(limits.decode)
        .max_encoding_message_size(limits.encode)
}

/// TorchServe's gRPC inference API over the server's state.
pub(super) struct Inference {
    state: Arc<AppState>,
}

/// TorchServe's gRPC management API over the server's state.
pub(super) struct Management {
    state: Arc<AppState>,
}

/// The whole body of a reply, as text.
async fn text(reply: Reply) -> String {
    let bytes = reply.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The empty string of proto3 as "not given".
fn non_empty(value: &str) -> Option<&str> {
    Some(value).filter(|v| !v.is_empty())
}

/// A prediction's bytes, for [`on_model`].
struct Prediction(Vec<u8>);

impl Answer for Prediction {
    fn status(&self) -> StatusCode {
        StatusCode::OK
    }

    fn answered_by(&mut self, _version: &str) {}
}

/// One `Predictions` request, admitted: the same paths as `POST /predictions/{model}[/{version}]`.
async fn predict(
    state: &AppState,
    metadata: &MetadataMap,
    mut request: inference::PredictionsRequest,
    timeout: Option<std::time::Duration>,
) -> Result<Vec<u8>, ApiError> {
    let name = std::mem::take(&mut request.model_name);
    let version = non_empty(&request.model_version).map(str::to_string);
    let version = version.as_deref();
    let bucket = bucket_of(&name, metadata.get(CANARY_KEY).map(|v| v.as_bytes()));
    let input = request.input;
    let prediction = on_model(state, &name, version, bucket, |model| async move {
        if model.runs_handler() {
            let (handler, _) =
                predictions::predict_handler(state, &model, version, handler_input(metadata, input), timeout).await?;
            let status = StatusCode::from_u16(handler.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if !status.is_success() {
                let message = String::from_utf8_lossy(&handler.body).into_owned();
                return Err(ApiError { status, ..ApiError::internal(message) });
            }
            return Ok(Prediction(handler.body));
        }
        let (body, topk) = landmark_input(input)?;
        let (prediction, _) = predictions::predict_landmarks(state, &model, version, body, topk, timeout).await?;
        Ok(Prediction(prediction))
    })
    .await?;
    Ok(prediction.0)
}

/// The request as a Python handler gets it: the metadata as headers, each input entry a part.
fn handler_input(metadata: &MetadataMap, input: HashMap<String, Vec<u8>>) -> HandlerInput {
    let headers = metadata
        .clone()
        .into_headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let mut parts: Vec<Part> =
        input.into_iter().map(|(name, value)| Part { name, content_type: String::new(), value }).collect();
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    HandlerInput { headers, parts }
}

/// The landmark JSON of an input map (`data`, else `body`, else its only entry) and its `topk`, when given.
fn landmark_input(mut input: HashMap<String, Vec<u8>>) -> Result<(Vec<u8>, Option<usize>), ApiError> {
    let topk = match input.remove("topk") {
        Some(value) => match std::str::from_utf8(&value).ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(k) if k > 0 => Some(k),
            _ => return Err(ApiError::bad_request("input entry `topk` must be a positive integer")),
        },
        None => None,
    };
    let body = match (input.remove("data"), input.remove("body")) {
        (Some(data), _) | (None, Some(data)) => data,
        (None, None) if input.len() == 1 => input.into_values().next().unwrap_or_default(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "the landmark model reads its JSON from the input entry `data` (or `body`)",
            ))
        }
    };
    Ok((body, topk))
}

/// A stream of answers.
type Answers = Pin<Box<dyn Stream<Item = Result<inference::PredictionResponse, Status>> + Send>>;

#[tonic::async_trait]
impl InferenceApIsService for Inference {
    async fn ping(&self, request: Request<()>) -> Result<Response<inference::TorchServeHealthResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Inference, Kind::Health, request, |_, (), _| async {
            let reply = predictions::ping(state);
            let healthy = reply.status().is_success();
            let health = text(reply).await;
            if healthy {
                Ok(inference::TorchServeHealthResponse { health })
            } else {
                Err(ApiError::internal(health))
            }
        })
        .await
    }

    async fn predictions(
        &self,
        request: Request<inference::PredictionsRequest>,
    ) -> Result<Response<inference::PredictionResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Inference, Kind::Infer, request, |metadata, message, timeout| async move {
            let prediction = predict(state, &metadata, message, timeout).await?;
            Ok(inference::PredictionResponse { prediction, sequence_id: None, status: None })
        })
        .await
    }

    type StreamPredictionsStream = Answers;

    async fn stream_predictions(
        &self,
        request: Request<inference::PredictionsRequest>,
    ) -> Result<Response<Self::StreamPredictionsStream>, Status> {
        let answered = self.predictions(request).await?;
        let stream: Answers = Box::pin(tokio_stream::once(Ok(answered.into_inner())));
        Ok(Response::new(stream))
    }

    type StreamPredictions2Stream = Answers;

    async fn stream_predictions2(
        &self,
        request: Request<Streaming<inference::PredictionsRequest>>,
    ) -> Result<Response<Self::StreamPredictions2Stream>, Status> {
        let state = Arc::clone(&self.state);
        let (metadata, _, mut requests) = request.into_parts();
        // The token is checked once, for the stream; each request takes its own place in flight.
        answer(&state, Api::Inference, admit(&state, Api::Inference, &metadata, Kind::Other))?;
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(crate::exchange::carry(async move {
            while let Some(Ok(mut message)) = requests.next().await {
                let sequence_id = message.sequence_id.take();
                let result = admitted(&state, Api::Inference, &metadata, Kind::Infer, |timeout| {
                    predict(&state, &metadata, message, timeout)
                })
                .await;
                let reply = match answer(&state, Api::Inference, result) {
                    Ok(prediction) => {
                        inference::PredictionResponse { prediction: prediction.into_inner(), sequence_id, status: None }
                    }
                    Err(error) => inference::PredictionResponse {
                        prediction: Vec::new(),
                        sequence_id,
                        status: Some(rpc::Status {
                            code: error.code() as i32,
                            message: error.message().to_string(),
                            details: Vec::new(),
                        }),
                    },
                };
                if sender.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Query parameters from `(key, value)` pairs, leaving out those not given.
fn params<const N: usize>(pairs: [(&str, Option<String>); N]) -> HashMap<String, String> {
    pairs.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))).collect()
}

/// A proto3 number as a parameter: not given when 0.
fn given(n: i32) -> Option<String> {
    (n != 0).then(|| n.to_string())
}

/// A proto3 string as a path segment or parameter: not given when empty.
fn named(s: &str) -> Option<String> {
    non_empty(s).map(str::to_string)
}

/// The management call `method` on `path` with `params`, its JSON answer in `msg`.
async fn manage(
    state: &Arc<AppState>,
    method: Method,
    path: &[Option<&str>],
    params: &HashMap<String, String>,
) -> Result<management::ManagementResponse, ApiError> {
    let segments: Vec<&str> = path.iter().flatten().copied().collect();
    let reply = dispatch(state, &method, &segments, params).await?;
    Ok(management::ManagementResponse { msg: text(reply).await })
}

/// The model a management call names.
fn model_name(name: &str) -> Result<&str, ApiError> {
    non_empty(name).ok_or_else(|| ApiError::bad_request("model_name is required"))
}

#[tonic::async_trait]
impl ManagementApIsService for Management {
    async fn describe_model(
        &self,
        request: Request<management::DescribeModelRequest>,
    ) -> Result<Response<management::ManagementResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Management, Kind::Other, request, |_, m, _| async move {
            let path = [Some("models"), Some(model_name(&m.model_name)?), non_empty(&m.model_version)];
            manage(state, Method::GET, &path, &HashMap::new()).await
        })
        .await
    }

    async fn list_models(
        &self,
        request: Request<management::ListModelsRequest>,
    ) -> Result<Response<management::ManagementResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Management, Kind::Other, request, |_, m, _| async move {
            let params = params([("limit", given(m.limit)), ("next_page_token", given(m.next_page_token))]);
            manage(state, Method::GET, &[Some("models")], &params).await
        })
        .await
    }

    async fn register_model(
        &self,
        request: Request<management::RegisterModelRequest>,
    ) -> Result<Response<management::ManagementResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Management, Kind::Other, request, |_, m, _| async move {
            let params = params([
                ("url", named(&m.url)),
                ("model_name", named(&m.model_name)),
                ("batch_size", given(m.batch_size)),
                ("max_batch_delay", given(m.max_batch_delay)),
                ("initial_workers", given(m.initial_workers)),
                ("response_timeout", given(m.response_timeout)),
                ("synchronous", Some(m.synchronous.to_string())),
            ]);
            manage(state, Method::POST, &[Some("models")], &params).await
        })
        .await
    }

    async fn scale_worker(
        &self,
        request: Request<management::ScaleWorkerRequest>,
    ) -> Result<Response<management::ManagementResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Management, Kind::Other, request, |_, m, _| async move {
            let min = if m.min_worker == 0 { 1 } else { m.min_worker };
            let max = if m.max_worker == 0 { min } else { m.max_worker };
            let params = params([
                ("min_worker", Some(min.to_string())),
                ("max_worker", Some(max.to_string())),
                ("synchronous", Some(m.synchronous.to_string())),
            ]);
            let path = [Some("models"), Some(model_name(&m.model_name)?), non_empty(&m.model_version)];
            manage(state, Method::PUT, &path, &params).await
        })
        .await
    }

    async fn set_default(
        &self,
        request: Request<management::SetDefaultRequest>,
    ) -> Result<Response<management::ManagementResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Management, Kind::Other, request, |_, m, _| async move {
            let version =
                non_empty(&m.model_version).ok_or_else(|| ApiError::bad_request("model_version is required"))?;
            let path = [Some("models"), Some(model_name(&m.model_name)?), Some(version), Some("set-default")];
            manage(state, Method::PUT, &path, &HashMap::new()).await
        })
        .await
    }

    async fn unregister_model(
        &self,
        request: Request<management::UnregisterModelRequest>,
    ) -> Result<Response<management::ManagementResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Management, Kind::Other, request, |_, m, _| async move {
            let path = [Some("models"), Some(model_name(&m.model_name)?), non_empty(&m.model_version)];
            manage(state, Method::DELETE, &path, &HashMap::new()).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_landmark_json_comes_from_data_body_or_the_only_entry() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, Vec<u8>> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
        };
        assert_eq!(landmark_input(map(&[("data", "[1]"), ("topk", "3")])).ok(), Some((b"[1]".to_vec(), Some(3))));
        assert_eq!(landmark_input(map(&[("body", "[2]")])).ok(), Some((b"[2]".to_vec(), None)));
        assert_eq!(landmark_input(map(&[("frames", "[3]")])).ok(), Some((b"[3]".to_vec(), None)));
        let refused = |pairs: &[(&str, &str)]| landmark_input(map(pairs)).expect_err("refused").message;
        assert!(refused(&[("a", "1"), ("b", "2")]).contains("entry `data`"));
        assert!(refused(&[("data", "[1]"), ("topk", "0")]).contains("topk"));
    }
}
