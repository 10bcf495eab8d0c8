//! The body of a KServe v2 infer request, validated into the model's input: `N` samples of f32.
//!
//! The engine computes in f32, so every accepted datatype (FP32, FP16, INT64, INT32, BOOL) is converted to f32:
//! FP16 values are taken at f32 precision, integers beyond 2^24 are rounded to the nearest f32, BOOL is 0 or 1.
//! `data` may be flat or nested (row-major, at most as deep as the shape); the binary tensor data extension
//! (`binary_data_size` with the `Inference-Header-Content-Length` header) carries the same values little-endian.
//! Sizes are checked against the data actually sent before anything proportional to the claimed shape is
//! allocated, so a shape of a billion samples costs nothing.

use ferroserve_engine::{backend::elements_of, ModelSpec};
use simd_json::prelude::*;

use crate::{
    error::ApiError,
    json::{self, Json, Object},
};

/// How an infer body looks, for the message about an empty one.
const EXPECTED: &str = r#"{"inputs": [{"name", "shape", "datatype", "data"}]}"#;

/// The datatypes an input may have, each converted to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataType {
    /// 32-bit float.
    Fp32,
    /// 16-bit float.
    Fp16,
    /// 64-bit signed integer.
    Int64,
    /// 32-bit signed integer.
    Int32,
    /// true or false (one byte in binary).
    Bool,
}

impl DataType {
    /// The protocol's names of the accepted datatypes, for messages.
    const ACCEPTED: &'static str = "FP32, FP16, INT64, INT32, BOOL";

    fn parse(name: &str) -> Option<Self> {
        match name {
            "FP32" => Some(Self::Fp32),
            "FP16" => Some(Self::Fp16),
            "INT64" => Some(Self::Int64),
            "INT32" => Some(Self::Int32),
            "BOOL" => Some(Self::Bool),
            _ => None,
        }
    }

    /// Bytes per element in binary data.
    pub(crate) fn width(self) -> usize {
        match self {
            Self::Fp32 | Self::Int32 => 4,
            Self::Fp16 => 2,
            Self::Int64 => 8,
            Self::Bool => 1,
        }
    }

    /// What an element must be, for messages.
    pub(crate) fn element(self) -> &'static str {
        match self {
            Self::Fp32 => "a finite FP32 number",
            Self::Fp16 => "a finite FP16 number",
            Self::Int64 => "an INT64 integer",
            Self::Int32 => "an INT32 integer",
            Self::Bool => "true or false",
        }
    }

    /// One JSON element as f32, when it is of this datatype.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    fn parse_json(self, v: Json<'_, '_>) -> Option<f32> {
        match self {
            Self::Fp32 => json::finite_f32(v),
            Self::Fp16 => v.cast_f64().filter(|x| x.abs() <= F16_MAX).map(|x| x as f32),
            Self::Int64 => v.as_i64().map(|x| x as f32),
            Self::Int32 => v.as_i64().and_then(|x| i32::try_from(x).ok()).map(|x| x as f32),
            Self::Bool => v.as_bool().map(f32::from),
        }
    }

    /// One little-endian binary element (`self.width()` bytes) as f32, when it is valid.
    #[allow(clippy::cast_precision_loss)]
    fn parse_le(self, bytes: &[u8]) -> Option<f32> {
        match (self, bytes) {
            (Self::Fp32, &[a, b, c, d]) => Some(f32::from_le_bytes([a, b, c, d])).filter(|x| x.is_finite()),
            (Self::Fp16, &[a, b]) => f16_to_f32(u16::from_le_bytes([a, b])),
            (Self::Int64, b) => Some(i64::from_le_bytes(b.try_into().ok()?) as f32),
            (Self::Int32, &[a, b, c, d]) => Some(i32::from_le_bytes([a, b, c, d]) as f32),
            (Self::Bool, &[b]) if b <= 1 => Some(f32::from(b)),
            _ => None,
        }
    }
}

/// The largest finite FP16 value.
const F16_MAX: f64 = 65504.0;

/// An IEEE half-precision value as f32 (exactly), or `None` for infinities and NaNs.
fn f16_to_f32(bits: u16) -> Option<f32> {
    let exponent = (bits >> 10) & 0x1f;
    let fraction = bits & 0x3ff;
    let magnitude = match exponent {
        0x1f => return None,
        // Subnormal: fraction x 2^-24.
        0 => f32::from(fraction) * f32::from_bits(0x3380_0000),
        // Rebias the exponent from 15 to 127 and widen the fraction from 10 to 23 bits.
        e => f32::from_bits((u32::from(e) + 112) << 23 | u32::from(fraction) << 13),
    };
    Some(if bits & 0x8000 == 0 { magnitude } else { -magnitude })
}

/// A validated infer request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRequest {
    /// The request's `id`, echoed in the response.
    pub(crate) id: Option<String>,
    /// Samples in the request (`shape[0]`).
    pub(crate) samples: usize,
    /// The shape of one sample (`shape[1..]`): the model's, or within what the model leaves open.
    pub(crate) sample_shape: Vec<usize>,
    /// `samples` rows of the model's per-sample input, row-major.
    pub(crate) input: Vec<f32>,
    /// Whether the output goes back as binary data.
    pub(crate) binary_output: bool,
}

/// Parses and validates an infer body against `spec`. With `json_len` (the `Inference-Header-Content-Length`
/// header), the JSON is the body's first `json_len` bytes and binary tensor data follows it.
///
/// # Errors
/// [`ApiError`] 400 that says what is wrong: the JSON, the input's name, datatype, shape or data, or an output.
pub(crate) fn parse(body: &mut [u8], json_len: Option<usize>, spec: &ModelSpec) -> Result<TensorRequest, ApiError> {
    let json_len = json_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(ApiError::bad_request(format!(
            "Inference-Header-Content-Length is {json_len}, the body has {} bytes",
            body.len()
        )));
    }
    let (header, binary) = body.split_at_mut(json_len);
    let tape = json::tape(header, EXPECTED)?;
    let request = json::root(&tape)?;
    let id = match request.get("id") {
        Some(v) => Some(v.into_string().ok_or_else(|| ApiError::bad_request("`id` must be a string"))?.to_string()),
        None => None,
    };
    let binary_output = binary_output(&request, spec)?;
    let input = only_input(&request, spec)?;
    let claim = Claim::of(&input, spec)?;
    let input = match parameter(&input, "binary_data_size")? {
        Some(size) if input.get("data").is_none() => read_binary(size, binary, &claim)?,
        Some(_) => return Err(ApiError::bad_request("inputs[0] has both `data` and `binary_data_size`")),
        None if !binary.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "the body has {} bytes after the JSON, but no input has `binary_data_size`",
                binary.len()
            )))
        }
        // An element takes at least two bytes of JSON: the capacity is bounded by the body, not by the shape.
        None => read_json(input.get("data"), &claim, json_len / 2)?,
    };
    Ok(TensorRequest { id, samples: claim.samples, sample_shape: claim.sample_shape, input, binary_output })
}

/// The one input the model takes.
fn only_input<'t, 'i>(request: &Object<'t, 'i>, spec: &ModelSpec) -> Result<Object<'t, 'i>, ApiError> {
    let inputs = request
        .get("inputs")
        .ok_or_else(|| ApiError::bad_request("missing field `inputs`"))?
        .into_array()
        .ok_or_else(|| ApiError::bad_request("`inputs` must be an array of tensors"))?;
    if inputs.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "the model takes one input, `{}`; the request has {}",
            spec.input_name,
            inputs.len()
        )));
    }
    inputs.get(0).and_then(Json::into_object).ok_or_else(|| ApiError::bad_request("inputs[0] must be an object"))
}

/// What an input says of its data, checked against the model: its name, datatype and shape. Both protocols'
/// decoders check an input through it before reading its data.
pub(crate) struct Claim {
    pub(crate) dtype: DataType,
    /// `shape[0]`.
    pub(crate) samples: usize,
    /// `shape[1..]`.
    pub(crate) sample_shape: Vec<usize>,
    /// Elements in the shape (which the data must have).
    pub(crate) count: usize,
    /// Dimensions in the shape: the deepest nesting of JSON data.
    rank: usize,
}

impl Claim {
    fn of(input: &Object<'_, '_>, spec: &ModelSpec) -> Result<Self, ApiError> {
        let name = string_field(input, "inputs[0]", "name")?;
        let datatype = string_field(input, "inputs[0]", "datatype")?;
        let not_integers = || ApiError::bad_request("inputs[0].shape must be an array of integers");
        let shape = input.get("shape").and_then(Json::into_array).ok_or_else(not_integers)?;
        let dims = shape.iter().map(|d| d.as_i64()).collect::<Option<Vec<i64>>>().ok_or_else(not_integers)?;
        Self::new(name, datatype, &dims, spec)
    }

    /// Checks an input named `name` of `datatype` and shape `dims` against the model.
    ///
    /// # Errors
    /// 400 naming what does not fit: the name, the datatype, the shape, or a shape too large to count.
    pub(crate) fn new(name: &str, datatype: &str, dims: &[i64], spec: &ModelSpec) -> Result<Self, ApiError> {
        if name != spec.input_name {
            return Err(ApiError::bad_request(format!(
                "unknown input `{name}`: the model takes one input, `{}`",
                spec.input_name
            )));
        }
        let dtype = DataType::parse(datatype).ok_or_else(|| {
            ApiError::bad_request(format!("unsupported datatype `{datatype}`: use one of {}", DataType::ACCEPTED))
        })?;
        let (samples, sample_shape) = shape(dims, spec)?;
        let too_many = || ApiError::bad_request(format!("inputs[0].shape claims {samples} samples, too many"));
        let count = elements_of(&sample_shape).and_then(|n| n.checked_mul(samples)).ok_or_else(too_many)?;
        Ok(Self { dtype, samples, rank: sample_shape.len() + 1, sample_shape, count })
    }
}

/// `shape[0]` and `shape[1..]`, once the shape is checked to be `[N, ...a shape the model takes]` with `N >= 1`
/// and every size at least 1 (the model's own sizes where it fixes them).
fn shape(dims: &[i64], spec: &ModelSpec) -> Result<(usize, Vec<usize>), ApiError> {
    let expected = || {
        let dims =
            spec.input_shape.signed().map_or_else(|| vec!["...".into()], |d| d.iter().map(i64::to_string).collect());
        format!("[{}] with N >= 1", std::iter::once("N".to_string()).chain(dims).collect::<Vec<_>>().join(", "))
    };
    match spec.input_shape.dims() {
        Some(model) if dims.len() != model.len() + 1 => {
            let n = dims.len();
            return Err(ApiError::bad_request(format!(
                "inputs[0].shape has {n} dimensions, the model takes {}",
                expected()
            )));
        }
        None if dims.is_empty() => {
            return Err(ApiError::bad_request(format!("inputs[0].shape is [], the model takes {}", expected())));
        }
        _ => {}
    }
    let sizes = dims.iter().map(|&d| usize::try_from(d).ok().filter(|&d| d >= 1)).collect::<Option<Vec<usize>>>();
    match sizes {
        Some(sizes) if spec.input_shape.admits(&sizes[1..]) => Ok((sizes[0], sizes[1..].to_vec())),
        _ => Err(ApiError::bad_request(format!("inputs[0].shape is {dims:?}, the model takes {}", expected()))),
    }
}

/// The JSON `data`, flat or nested, which must hold exactly the claimed elements.
fn read_json(data: Option<Json<'_, '_>>, claim: &Claim, capacity: usize) -> Result<Vec<f32>, ApiError> {
    let data = data.ok_or_else(|| {
        ApiError::bad_request("inputs[0] has no `data` (nor `binary_data_size` with binary data after the JSON)")
    })?;
    let mut values = Vec::with_capacity(claim.count.min(capacity));
    flatten(data, claim.rank, claim.dtype, &mut values)?;
    if values.len() != claim.count {
        return Err(ApiError::bad_request(format!(
            "inputs[0].shape has {} elements, inputs[0].data has {}",
            claim.count,
            values.len()
        )));
    }
    Ok(values)
}

/// Appends the elements of `data` (an array, maybe of arrays at most `depth` deep) in row-major order.
fn flatten(data: Json<'_, '_>, depth: usize, dtype: DataType, out: &mut Vec<f32>) -> Result<(), ApiError> {
    let array = data.into_array().ok_or_else(|| ApiError::bad_request("inputs[0].data must be an array"))?;
    for v in &array {
        if v.into_array().is_some() {
            if depth <= 1 {
                return Err(ApiError::bad_request("inputs[0].data is nested deeper than its shape"));
            }
            flatten(v, depth - 1, dtype, out)?;
        } else {
            let x = dtype.parse_json(v).ok_or_else(|| {
                let (k, what, got) = (out.len(), dtype.element(), json::describe(v));
                ApiError::bad_request(format!("inputs[0].data: element {k} (row-major) must be {what}, got {got}"))
            })?;
            out.push(x);
        }
    }
    Ok(())
}

/// The binary data after the JSON, which must be exactly the claimed elements.
fn read_binary(size: Json<'_, '_>, binary: &[u8], claim: &Claim) -> Result<Vec<f32>, ApiError> {
    let size = size
        .as_u64()
        .ok_or_else(|| ApiError::bad_request("parameter `binary_data_size` must be a non-negative integer"))?;
    let (count, width) = (claim.count, claim.dtype.width());
    if count.checked_mul(width).and_then(|w| u64::try_from(w).ok()) != Some(size) {
        return Err(ApiError::bad_request(format!(
            "binary_data_size is {size} bytes, inputs[0].shape needs {count} x {width} bytes"
        )));
    }
    if u64::try_from(binary.len()).ok() != Some(size) {
        return Err(ApiError::bad_request(format!(
            "binary_data_size is {size} bytes, the body has {} bytes after the JSON (whose length \
             Inference-Header-Content-Length gives)",
            binary.len()
        )));
    }
    decode_le(binary, claim, "inputs[0] binary")
}

/// The little-endian elements of `bytes`, which holds exactly the claimed elements; `what` names them in
/// messages.
///
/// # Errors
/// 400 naming the first element that is not of the claim's datatype.
pub(crate) fn decode_le(bytes: &[u8], claim: &Claim, what: &str) -> Result<Vec<f32>, ApiError> {
    let width = claim.dtype.width();
    let mut values = Vec::with_capacity(bytes.len() / width);
    for (k, element) in bytes.chunks_exact(width).enumerate() {
        let x = claim
            .dtype
            .parse_le(element)
            .ok_or_else(|| ApiError::bad_request(format!("{what} element {k} must be {}", claim.dtype.element())))?;
        values.push(x);
    }
    Ok(values)
}

/// Whether the output goes back as binary data: the output's `binary_data` parameter, else the request's
/// `binary_data_output`. Every requested output must be the model's.
fn binary_output(request: &Object<'_, '_>, spec: &ModelSpec) -> Result<bool, ApiError> {
    let mut binary = bool_parameter(request, "binary_data_output")?.unwrap_or(false);
    let Some(outputs) = request.get("outputs") else {
        return Ok(binary);
    };
    let outputs = outputs.into_array().ok_or_else(|| ApiError::bad_request("`outputs` must be an array"))?;
    for (i, output) in outputs.iter().enumerate() {
        let output =
            output.into_object().ok_or_else(|| ApiError::bad_request(format!("outputs[{i}] must be an object")))?;
        check_output(i, string_field(&output, &format!("outputs[{i}]"), "name")?, spec)?;
        if let Some(flag) = bool_parameter(&output, "binary_data")? {
            binary = flag;
        }
    }
    Ok(binary)
}

/// Checks that the `i`th requested output, `name`, is the model's one output.
///
/// # Errors
/// 400 for another name, or a second output.
pub(crate) fn check_output(i: usize, name: &str, spec: &ModelSpec) -> Result<(), ApiError> {
    if name != spec.output_name {
        return Err(ApiError::bad_request(format!(
            "unknown output `{name}`: the model gives one output, `{}`",
            spec.output_name
        )));
    }
    if i > 0 {
        return Err(ApiError::bad_request(format!("output `{name}` is requested twice")));
    }
    Ok(())
}

/// The string `key` of `object`, which is `what` in messages.
fn string_field<'i>(object: &Object<'_, 'i>, what: &str, key: &str) -> Result<&'i str, ApiError> {
    object
        .get(key)
        .and_then(Json::into_string)
        .ok_or_else(|| ApiError::bad_request(format!("{what}.{key} must be a string")))
}

/// `parameters.{key}` of a request, input or output.
fn parameter<'t, 'i>(object: &Object<'t, 'i>, key: &str) -> Result<Option<Json<'t, 'i>>, ApiError> {
    match object.get("parameters") {
        None => Ok(None),
        Some(p) => Ok(p.into_object().ok_or_else(|| ApiError::bad_request("`parameters` must be an object"))?.get(key)),
    }
}

/// A boolean parameter.
fn bool_parameter(object: &Object<'_, '_>, key: &str) -> Result<Option<bool>, ApiError> {
    parameter(object, key)?
        .map(|v| v.as_bool().ok_or_else(|| ApiError::bad_request(format!("parameter `{key}` must be true or false"))))
        .transpose()
}

#[cfg(test)]
mod tests {
    use ferroserve_engine::backend::Shape;

    use super::*;

    /// Per sample: input `x` of shape [2, 3], output `y` of shape [4].
    fn spec() -> ModelSpec {
        ModelSpec {
            input_name: "x".into(),
            input_shape: vec![2, 3].into(),
            output_name: "y".into(),
            output_shape: vec![4].into(),
        }
    }

    fn body(datatype: &str, shape: &str, data: &str) -> String {
        format!(r#"{{"inputs": [{{"name": "x", "datatype": "{datatype}", "shape": {shape}, "data": {data}}}]}}"#)
    }

    fn parse_with(text: &str, binary: &[u8]) -> Result<TensorRequest, ApiError> {
        let mut bytes = [text.as_bytes(), binary].concat();
        let json_len = (!binary.is_empty()).then_some(text.len());
        parse(&mut bytes, json_len, &spec())
    }

    fn ok(text: &str) -> TensorRequest {
        parse_with(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        let e = parse_with(text, &[]).expect_err(text);
        assert_eq!(e.status, hyper::StatusCode::BAD_REQUEST);
        e.message
    }

    #[test]
    fn flat_and_nested_data_are_the_same_rows() {
        let flat = ok(&body("FP32", "[2, 2, 3]", "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12.5]"));
        let nested = ok(&body("FP32", "[2, 2, 3]", "[[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12.5]]]"));
        assert_eq!(flat, nested);
        assert_eq!(flat.samples, 2);
        assert_eq!(flat.input[11], 12.5);
        assert_eq!((flat.id, flat.binary_output), (None, false));
    }

    #[test]
    fn every_datatype_is_converted_to_f32() {
        let input = |datatype: &str, data: &str| ok(&body(datatype, "[1, 2, 3]", data)).input;
        assert_eq!(input("INT32", "[0, -1, 2, 3, 4, 2147483647]")[..5], [0.0, -1.0, 2.0, 3.0, 4.0]);
        assert_eq!(input("INT64", "[1099511627776, 0, 0, 0, 0, -5]")[0], 1_099_511_627_776.0);
        assert_eq!(input("FP16", "[0.5, 65504, -65504, 0, 1, 2]")[..3], [0.5, 65504.0, -65504.0]);
        assert_eq!(input("BOOL", "[true, false, true, true, false, false]"), [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn half_floats_decode_exactly() {
        assert_eq!(f16_to_f32(0x3c00), Some(1.0));
        assert_eq!(f16_to_f32(0xc000), Some(-2.0));
        assert_eq!(f16_to_f32(0x7bff), Some(65504.0));
        assert_eq!(f16_to_f32(0x3555), Some(0.333_251_95));
        assert_eq!(f16_to_f32(0x0001), Some(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x8000), Some(-0.0));
        assert_eq!(f16_to_f32(0x7c00), None);
        assert_eq!(f16_to_f32(0xfe00), None);
    }

    #[test]
    fn id_and_outputs_are_read() {
        let input =
            serde_json::json!({"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [1, 2, 3, 4, 5, 6]});
        let output = serde_json::json!({"name": "y", "parameters": {"binary_data": true}});
        let request = ok(&serde_json::json!({"id": "r-7", "inputs": [input], "outputs": [output]}).to_string());
        assert_eq!(request.id.as_deref(), Some("r-7"));
        assert!(request.binary_output);
        let all_binary = serde_json::json!({"inputs": [input], "parameters": {"binary_data_output": true}});
        assert!(ok(&all_binary.to_string()).binary_output);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let good = body("FP32", "[1, 2, 3]", "[1, 2, 3, 4, 5, 6]");
        let cases = [
            (String::new(), "empty body"),
            ("{\"inputs\": [".into(), "not valid JSON"),
            ("[]".into(), "JSON object"),
            ("{}".into(), "missing field `inputs`"),
            ("{\"inputs\": []}".into(), "takes one input, `x`; the request has 0"),
            (good.replace("\"x\"", "\"landmarks\""), "unknown input `landmarks`: the model takes one input, `x`"),
            (good.replace("FP32", "FP64"), "unsupported datatype `FP64`"),
            (good.replace("FP32", "BYTES"), "unsupported datatype"),
            (good.replace("[1, 2, 3],", "[1, 3, 2],"), "the model takes [N, 2, 3] with N >= 1"),
            (good.replace("[1, 2, 3],", "[0, 2, 3],"), "is [0, 2, 3]"),
            (good.replace("[1, 2, 3],", "[-1, 2, 3],"), "is [-1, 2, 3]"),
            (good.replace("[1, 2, 3],", "[2, 3],"), "has 2 dimensions"),
            (good.replace("[1, 2, 3],", "[1, 2, \"3\"],"), "array of integers"),
            (good.replace("4, 5, 6]", "4, 5]"), "has 6 elements, inputs[0].data has 5"),
            (good.replace("4, 5, 6]", "4, 5, 6, 7]"), "has 6 elements, inputs[0].data has 7"),
            (good.replace("[1, 2, 3, 4", "[[[[1]]], 2, 3, 4"), "nested deeper"),
            (
                good.replace("[1, 2, 3, 4", "[1, \"a\", 3, 4"),
                "element 1 (row-major) must be a finite FP32 number, got the string \"a\"",
            ),
            (good.replace("[1, 2, 3, 4", "[1, 2, null, 4"), "element 2"),
            (good.replace("[1, 2, 3, 4", "[1, 2, 3, 1e300"), "element 3"),
            (good.replace("[1, 2, 3, 4", "[1, NaN, 3, 4"), "not valid JSON"),
            (body("INT32", "[1, 2, 3]", "[1, 2, 3, 4, 5, 2147483648]"), "element 5 (row-major) must be an INT32"),
            (body("INT64", "[1, 2, 3]", "[1, 2, 3, 4, 5, 6.5]"), "must be an INT64 integer"),
            (body("FP16", "[1, 2, 3]", "[1, 2, 3, 4, 5, 70000]"), "must be a finite FP16 number"),
            (body("BOOL", "[1, 2, 3]", "[1, 0, 1, 0, 1, 0]"), "must be true or false, got u64"),
            (good.replace("\"data\": [1, 2, 3, 4, 5, 6]", "\"data\": 7"), "data must be an array"),
            (good.replace(", \"data\": [1, 2, 3, 4, 5, 6]", ""), "has no `data`"),
            (good.replace("]}]}", "]}], \"id\": 7}"), "`id` must be a string"),
            (
                good.replace("]}]}", "]}], \"outputs\": [{\"name\": \"z\"}]}"),
                "unknown output `z`: the model gives one output, `y`",
            ),
            (good.replace("]}]}", "]}], \"outputs\": [{\"name\": \"y\"}, {\"name\": \"y\"}]}"), "requested twice"),
            (good.replace("]}]}", "]}], \"outputs\": {}}"), "`outputs` must be an array"),
            (good.replace("]}]}", "]}], \"parameters\": {\"binary_data_output\": 1}}"), "must be true or false"),
        ];
        for (text, expected) in cases {
            let message = err(&text);
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn a_model_that_leaves_sizes_open_takes_the_requests_shape() {
        let open = |input_shape| ModelSpec { input_shape, ..spec() };
        let parse_for = |spec: &ModelSpec, text: String| parse(&mut text.into_bytes(), None, spec);
        let frames_open = open(Shape::partial(vec![None, Some(3)]));
        let data = |n: usize| format!("[{}]", vec!["1"; n].join(", "));
        let request = parse_for(&frames_open, body("FP32", "[2, 4, 3]", &data(24))).expect("4 rows of 3");
        assert_eq!((request.samples, request.sample_shape, request.input.len()), (2, vec![4, 3], 24));
        for (shape, n, why) in [
            ("[1, 4, 2]", 8, "inputs[0].shape is [1, 4, 2], the model takes [N, -1, 3] with N >= 1"),
            ("[1, 0, 3]", 0, "inputs[0].shape is [1, 0, 3]"),
            ("[1, 3]", 3, "inputs[0].shape has 2 dimensions, the model takes [N, -1, 3] with N >= 1"),
        ] {
            let message = parse_for(&frames_open, body("FP32", shape, &data(n))).expect_err(shape).message;
            assert!(message.contains(why), "{shape}: {message}");
        }

        let unknown = open(Shape::unknown());
        let scalars = parse_for(&unknown, body("FP32", "[3]", "[1, 2, 3]")).expect("three scalar samples");
        assert_eq!((scalars.samples, scalars.sample_shape), (3, vec![]));
        let deep = parse_for(&unknown, body("FP32", "[1, 2, 1, 2]", &data(4))).expect("any rank");
        assert_eq!(deep.sample_shape, [2, 1, 2]);
        let message = parse_for(&unknown, body("FP32", "[]", "[]")).expect_err("no N").message;
        assert!(message.contains("inputs[0].shape is [], the model takes [N, ...] with N >= 1"), "{message}");
    }

    #[test]
    fn a_huge_shape_is_refused_without_allocating_for_it() {
        let message = err(&body("FP32", "[1000000000, 2, 3]", "[1, 2, 3, 4, 5, 6]"));
        assert!(message.contains("has 6000000000 elements, inputs[0].data has 6"), "{message}");
        let message = err(&body("FP32", "[9223372036854775807, 2, 3]", "[1]"));
        assert!(message.contains("too many"), "{message}");
    }

    #[test]
    fn binary_data_follows_the_json() {
        let header = |datatype: &str, size: usize| {
            let parameters = serde_json::json!({"binary_data_size": size});
            let input =
                serde_json::json!({"name": "x", "datatype": datatype, "shape": [1, 2, 3], "parameters": parameters});
            serde_json::json!({ "inputs": [input] }).to_string()
        };
        let floats: Vec<u8> = (1..=6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
        let request = parse_with(&header("FP32", 24), &floats).expect("FP32");
        assert_eq!(request.input, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
        let halves: Vec<u8> = [0x3c00u16, 0xc000, 0, 0, 0, 0x3800].iter().flat_map(|h| h.to_le_bytes()).collect();
        assert_eq!(parse_with(&header("FP16", 12), &halves).expect("FP16").input, [1.0, -2.0, 0.0, 0.0, 0.0, 0.5]);
        let longs: Vec<u8> = [-3i64, 0, 0, 0, 0, 1 << 40].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(parse_with(&header("INT64", 48), &longs).expect("INT64").input[5], 1_099_511_627_776.0);
        let ints: Vec<u8> = [7i32, 0, 0, 0, 0, -7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(parse_with(&header("INT32", 24), &ints).expect("INT32").input[5], -7.0);
        assert_eq!(parse_with(&header("BOOL", 6), &[1, 0, 1, 0, 0, 1]).expect("BOOL").input, [1., 0., 1., 0., 0., 1.]);

        let refused = |text: &str, binary: &[u8], expected: &str| {
            let message = parse_with(text, binary).expect_err(expected).message;
            assert!(message.contains(expected), "{message}");
        };
        refused(&header("FP32", 20), &floats[..20], "needs 6 x 4 bytes");
        refused(&header("FP32", 24), &floats[..20], "the body has 20 bytes after the JSON");
        refused(&header("BOOL", 6), &[1, 0, 2, 0, 0, 1], "binary element 2 must be true or false");
        refused(
            &header("FP32", 24),
            &[f32::NAN.to_le_bytes(), [0; 4], [0; 4], [0; 4], [0; 4], [0; 4]].concat(),
            "element 0",
        );
        refused(&body("FP32", "[1, 2, 3]", "[1, 2, 3, 4, 5, 6]"), &floats, "no input has `binary_data_size`");
        let mut bytes = header("FP32", 24).into_bytes();
        let e = parse(&mut bytes, Some(10_000), &spec()).expect_err("header too long");
        assert!(e.message.contains("Inference-Header-Content-Length is 10000"), "{}", e.message);
    }
}
