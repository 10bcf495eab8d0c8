//! KServe v2's `inference.GRPCInferenceService` (Triton's), over [`crate::api::kserve::grpc`]: health, metadata,
//! `ModelInfer`, and Triton's `ModelStreamInfer`, whose requests run one after another, each answered (or its
//! error given in `error_message`, as Triton does) before the next is read, and Triton's `ModelConfig` and
//! `ModelStatistics` ([`crate::api::kserve::triton`]).

use std::{pin::Pin, sync::Arc};

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt as _};
use tonic::{metadata::MetadataMap, Request, Response, Status, Streaming};

use super::{admit, admitted, answer, unary, Kind, Limits};
use crate::{
    api::kserve::{grpc as handlers, triton},
    config::Api,
    error::ApiError,
    infer::{bucket_of, CANARY_KEY},
    proto::inference::{
        self as pb,
        grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer},
    },
    state::AppState,
};

/// The service, with its message size limits.
pub(super) fn service(state: &Arc<AppState>, limits: Limits) -> GrpcInferenceServiceServer<KServe> {
    GrpcInferenceServiceServer::new(KServe { state: Arc::clone(state) })
        .max_decoding_message_size(limits.decode)
        .max_encoding_message_size(limits.encode)
}

/// KServe v2's gRPC service over the server's state.
pub(super) struct KServe {
    state: Arc<AppState>,
}

/// How many answers of a stream wait for the client to read them before the next request is read.
const STREAM_BACKLOG: usize = 16;

/// One `ModelInfer` request, admitted: the canary bucket from `x-canary-key` metadata, then the shared path.
async fn infer(
    state: &AppState,
    metadata: &MetadataMap,
    request: pb::ModelInferRequest,
    timeout: Option<std::time::Duration>,
) -> Result<pb::ModelInferResponse, ApiError> {
    let bucket = bucket_of(&request.model_name, metadata.get(CANARY_KEY).map(|v| v.as_bytes()));
    handlers::infer(state, request, bucket, timeout).await
}

#[tonic::async_trait]
impl GrpcInferenceService for KServe {
    async fn server_live(
        &self,
        request: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        unary(&self.state, Api::Inference, Kind::Health, request, |_, _, _| async {
            Ok(pb::ServerLiveResponse { live: true })
        })
        .await
    }

    async fn server_ready(
        &self,
        request: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Inference, Kind::Health, request, |_, _, _| async {
            Ok(pb::ServerReadyResponse { ready: state.is_ready() })
        })
        .await
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Inference, Kind::Health, request, |_, m, _| async move {
            Ok(pb::ModelReadyResponse { ready: handlers::model_ready(state, &m.name, &m.version) })
        })
        .await
    }

    async fn server_metadata(
        &self,
        request: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        unary(&self.state, Api::Inference, Kind::Other, request, |_, _, _| async { Ok(handlers::server_metadata()) })
            .await
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Inference, Kind::Other, request, |_, m, _| async move {
            handlers::model_metadata(state, &m.name, &m.version)
        })
        .await
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Inference, Kind::Infer, request, |metadata, message, timeout| async move {
            infer(state, &metadata, message, timeout).await
        })
        .await
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Inference, Kind::Other, request, |_, m, _| async move {
            triton::model_config(state, &m.name, &m.version)
        })
        .await
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let state = &self.state;
        unary(state, Api::Inference, Kind::Other, request, |_, m, _| async move {
            triton::model_statistics(state, &m.name, &m.version)
        })
        .await
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let state = Arc::clone(&self.state);
        let (metadata, _, mut requests) = request.into_parts();
        // The token is checked once, for the stream; each request takes its own place in flight.
        answer(&state, Api::Inference, admit(&state, Api::Inference, &metadata, Kind::Other))?;
        let (sender, receiver) = mpsc::channel(STREAM_BACKLOG);
        tokio::spawn(crate::exchange::carry(async move {
            while let Some(next) = requests.next().await {
                let message = match next {
                    Ok(message) => message,
                    // The client broke the stream: nobody reads the answers any more.
                    Err(_) => break,
                };
                let result = admitted(&state, Api::Inference, &metadata, Kind::Infer, |timeout| {
                    infer(&state, &metadata, message, timeout)
                })
                .await;
                let reply = match answer(&state, Api::Inference, result) {
                    Ok(response) => pb::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response.into_inner()),
                    },
                    Err(status) => pb::ModelStreamInferResponse {
                        error_message: status.message().to_string(),
                        infer_response: None,
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
