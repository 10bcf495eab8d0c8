//! KServe v2 over gRPC (`inference.GRPCInferenceService`, as Triton serves it): its messages checked into the same
//! [`TensorRequest`] as an HTTP body, run through the same path (canary split, queue, drift, metrics), and
//! answered as Triton does, the output in `raw_output_contents` (FP32, little-endian).
//!
//! An input's values come either in `raw_input_contents` (one entry, for the one input) or typed in
//! `inputs[0].contents`: `fp32_contents` for FP32, `int_contents` for INT32, `int64_contents` for INT64,
//! `bool_contents` for BOOL; FP16 only raw, as the protocol says. The byte or element count must match the shape,
//! which is checked before anything is allocated for it.

use ferroserve_engine::{InferOutput, Model, ModelSpec};
use hyper::StatusCode;
use prost::Message as _;

use super::{
    is_ready, joined, output_shape, run_samples,
    tensor::{check_output, decode_le, Claim, DataType, TensorRequest},
    ModelMetadata,
};
use crate::{
    error::ApiError,
    infer::{find_model, on_model, Answer},
    proto::inference as pb,
    state::AppState,
};

/// The server's name and version, as both protocols give them.
#[must_use]
pub fn server_metadata() -> pb::ServerMetadataResponse {
    pb::ServerMetadataResponse {
        name: "ferroserve".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: Vec::new(),
    }
}

/// Whether model `name` (at `version`, when not empty) has a live worker; an unknown model is not ready, as
/// Triton answers it.
#[must_use]
pub fn model_ready(state: &AppState, name: &str, version: &str) -> bool {
    find_model(state, name, non_empty(version)).is_ok_and(|model| is_ready(&model))
}

/// The metadata of model `name` (at `version`, when not empty).
///
/// # Errors
/// 404 for an unknown model or version.
pub fn model_metadata(state: &AppState, name: &str, version: &str) -> Result<pb::ModelMetadataResponse, ApiError> {
    let model = find_model(state, name, non_empty(version))?;
    let metadata = ModelMetadata::of(&model);
    let tensor = |t: &super::TensorMetadata<'_>| pb::model_metadata_response::TensorMetadata {
        name: t.name.to_string(),
        datatype: t.datatype.to_string(),
        shape: t.shape.clone(),
    };
    Ok(pb::ModelMetadataResponse {
        name: metadata.name.to_string(),
        versions: metadata.versions.iter().map(ToString::to_string).collect(),
        platform: metadata.platform.to_string(),
        inputs: metadata.inputs.iter().map(tensor).collect(),
        outputs: metadata.outputs.iter().map(tensor).collect(),
    })
}

/// The empty string of proto3 as "not given".
fn non_empty(value: &str) -> Option<&str> {
    Some(value).filter(|v| !v.is_empty())
}

/// A gRPC answer, for [`on_model`]: a response message is a success.
struct Answered(pb::ModelInferResponse);

impl Answer for Answered {
    fn status(&self) -> StatusCode {
        StatusCode::OK
    }

    fn answered_by(&mut self, version: &str) {
        version.clone_into(&mut self.0.model_version);
    }
}

/// Runs one `ModelInfer` request on the model it names (the canary split's pick for `bucket` when it names no
/// version), within `timeout` when given, and answers its output.
///
/// # Errors
/// 404 for an unknown model, 400 for an input that does not fit it, and what the engine refuses or fails with.
pub async fn infer(
    state: &AppState,
    mut request: pb::ModelInferRequest,
    bucket: u32,
    timeout: Option<std::time::Duration>,
) -> Result<pb::ModelInferResponse, ApiError> {
    let name = std::mem::take(&mut request.model_name);
    let version = non_empty(&request.model_version).map(str::to_string);
    let version = version.as_deref();
    let answered = on_model(state, &name, version, bucket, |model| async move {
        let mut tensor = decode(&mut request, model.spec())?;
        // The samples may wait in the queue: the message's bytes are not needed any more.
        drop(request);
        let answers = run_samples(state, &model, version, &mut tensor, timeout).await?;
        response(&model, &tensor, &answers).map(Answered)
    })
    .await?;
    Ok(answered.0)
}

/// Decodes and checks a serialised `ModelInferRequest` against `spec` without running it, returning its number
/// of samples: the decoder the server uses, for fuzzing and tools.
///
/// # Errors
/// The status the server would answer: 400 for bytes that are no `ModelInferRequest`, or one that does not fit.
pub fn validate_request(bytes: &[u8], spec: &ModelSpec) -> Result<usize, ApiError> {
    let mut request = pb::ModelInferRequest::decode(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request is not a ModelInferRequest: {e}")))?;
    decode(&mut request, spec).map(|tensor| tensor.samples)
}

/// Checks `request` against the model's `spec` into the model's input, taking its values out of the message.
///
/// # Errors
/// 400 that says what is wrong: the outputs, the number of inputs, the input's name, datatype or shape, or its
/// contents.
pub(crate) fn decode(request: &mut pb::ModelInferRequest, spec: &ModelSpec) -> Result<TensorRequest, ApiError> {
    for (i, output) in request.outputs.iter().enumerate() {
        check_output(i, &output.name, spec)?;
    }
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!(
            "the model takes one input, `{}`; the request has {}",
            spec.input_name,
            request.inputs.len()
        )));
    };
    let claim = Claim::new(&input.name, &input.datatype, &input.shape, spec)?;
    let contents = input.contents.as_ref().filter(|c| **c != pb::InferTensorContents::default());
    let values = match (request.raw_input_contents.as_slice(), contents) {
        ([raw], None) => raw_values(raw, &claim)?,
        ([], Some(contents)) => typed_values(contents, &claim)?,
        ([], None) => {
            return Err(ApiError::bad_request(
                "inputs[0] has no values: send them in raw_input_contents or in inputs[0].contents",
            ))
        }
        ([_], Some(_)) => {
            return Err(ApiError::bad_request("inputs[0] has both contents and raw_input_contents: send one"))
        }
        (raw, _) => {
            return Err(ApiError::bad_request(format!(
                "raw_input_contents has {} entries, the request has 1 input",
                raw.len()
            )))
        }
    };
    let id = non_empty(&request.id).map(str::to_string);
    Ok(TensorRequest {
        id,
        samples: claim.samples,
        sample_shape: claim.sample_shape,
        input: values,
        binary_output: false,
    })
}

/// The raw bytes of the input, which must be exactly the claimed elements.
fn raw_values(raw: &[u8], claim: &Claim) -> Result<Vec<f32>, ApiError> {
    let (count, width) = (claim.count, claim.dtype.width());
    if count.checked_mul(width) != Some(raw.len()) {
        return Err(ApiError::bad_request(format!(
            "raw_input_contents[0] has {} bytes, inputs[0].shape needs {count} x {width} bytes",
            raw.len()
        )));
    }
    decode_le(raw, claim, "raw_input_contents[0]")
}

/// The typed values of the input, from the field of its datatype, which must hold exactly the claimed elements.
#[allow(clippy::cast_precision_loss)]
fn typed_values(contents: &pb::InferTensorContents, claim: &Claim) -> Result<Vec<f32>, ApiError> {
    match claim.dtype {
        DataType::Fp32 => {
            convert(&contents.fp32_contents, "fp32_contents", claim, |x| Some(x).filter(|x| x.is_finite()))
        }
        DataType::Int32 => convert(&contents.int_contents, "int_contents", claim, |x| Some(x as f32)),
        DataType::Int64 => convert(&contents.int64_contents, "int64_contents", claim, |x| Some(x as f32)),
        DataType::Bool => convert(&contents.bool_contents, "bool_contents", claim, |x| Some(f32::from(x))),
        DataType::Fp16 => Err(ApiError::bad_request(
            "FP16 values go in raw_input_contents: the protocol has no typed contents for FP16",
        )),
    }
}

/// `values`, the `field` of the contents, as f32, once their count is checked.
fn convert<T: Copy>(
    values: &[T],
    field: &str,
    claim: &Claim,
    to_f32: impl Fn(T) -> Option<f32>,
) -> Result<Vec<f32>, ApiError> {
    if values.len() != claim.count {
        return Err(ApiError::bad_request(format!(
            "inputs[0].shape has {} elements, inputs[0].contents.{field} has {}",
            claim.count,
            values.len()
        )));
    }
    values
        .iter()
        .enumerate()
        .map(|(k, &x)| {
            to_f32(x).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "inputs[0].contents.{field}: element {k} must be {}",
                    claim.dtype.element()
                ))
            })
        })
        .collect()
}

/// The answer: the samples' output rows joined as one FP32 tensor `[N, ...output shape]`, raw.
fn response(
    model: &Model,
    request: &TensorRequest,
    answers: &[InferOutput],
) -> Result<pb::ModelInferResponse, ApiError> {
    let row_shape = output_shape(model, answers)?;
    let raw: Vec<u8> = joined(answers).iter().flat_map(|x| x.to_le_bytes()).collect();
    let shape = std::iter::once(request.samples).chain(row_shape).map(|d| i64::try_from(d).unwrap_or(i64::MAX));
    Ok(pb::ModelInferResponse {
        model_name: model.name().to_string(),
        model_version: model.version().to_string(),
        id: request.id.clone().unwrap_or_default(),
        parameters: Default::default(),
        outputs: vec![pb::model_infer_response::InferOutputTensor {
            name: model.spec().output_name.clone(),
            datatype: "FP32".into(),
            shape: shape.collect(),
            parameters: Default::default(),
            contents: None,
        }],
        raw_output_contents: vec![raw.into()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per sample: input `landmarks` [2, 3, 3], output `probabilities` [10].
    fn spec() -> ModelSpec {
        ModelSpec {
            input_name: "landmarks".into(),
            input_shape: vec![2, 3, 3].into(),
            output_name: "probabilities".into(),
            output_shape: vec![10].into(),
        }
    }

    /// A valid request of `n` samples, encoded.
    fn valid(n: i64) -> Vec<u8> {
        let values = 18 * usize::try_from(n).unwrap_or_default();
        pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "landmarks".into(),
                datatype: "FP32".into(),
                shape: vec![n, 2, 3, 3],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0; values * 4].into()],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_valid_request_decodes_and_a_huge_claim_is_refused_from_the_bytes() {
        assert_eq!(validate_request(&valid(3), &spec()).ok(), Some(3));
        let mut huge = pb::ModelInferRequest::decode(valid(1).as_slice()).expect("valid");
        huge.inputs[0].shape[0] = 1 << 40;
        let e = validate_request(&huge.encode_to_vec(), &spec()).expect_err("refused");
        assert!(e.message.contains("raw_input_contents[0] has 72 bytes"), "{}", e.message);
    }

    #[test]
    fn random_and_mutated_bytes_are_refused_or_accepted_never_a_panic() {
        let mut rng = fastrand::Rng::with_seed(19);
        let seed = valid(2);
        for round in 0..3000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect()
            } else {
                let mut mutated = seed.clone();
                for _ in 0..rng.usize(1..4) {
                    let k = rng.usize(..mutated.len());
                    mutated[k] = rng.u8(..);
                }
                mutated.truncate(rng.usize(1..=mutated.len()));
                mutated
            };
            match validate_request(&bytes, &spec()) {
                Ok(samples) => assert!(samples >= 1),
                Err(e) => assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message),
            }
        }
    }
}
