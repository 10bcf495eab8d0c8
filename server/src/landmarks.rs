//! The landmark handler: validates `{"landmarks": [[[x, y, z], ...points], ...frames], "topk": k}` into one
//! model input, and turns class probabilities into the top-k `{"label", "confidence"}` predictions.
//!
//! A sequence whose frame count differs from the model's is resampled linearly in time (a longer one is
//! subsampled, a shorter one stretched); it is never zero-padded, because padding frames would be read as a hand
//! at the origin. The number of points per frame and of coordinates per point must match the model exactly.
//!
//! A model that does not fix its frame count (TorchScript without a declaration, or one with `-1` frames) gets the
//! frames as they come; one that does not fix its points per frame gets the first frame's count, which every
//! frame must then have. The body's shape, `[frames, points, coords]`, goes with the sample to the engine.

use ferroserve_engine::ModelSpec;
use serde::Serialize;
use simd_json::prelude::*;

use crate::{
    error::ApiError,
    json::{self, Json},
};

/// Longest sequence accepted before resampling.
pub const MAX_FRAMES: usize = 10_000;

/// The landmark layout a model takes: `[frames, points, coords]` per sample, as far as it fixes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandmarkShape {
    /// Frames per sequence, when the model fixes it (a body's are resampled to it); else the body's own.
    pub frames: Option<usize>,
    /// Points per frame (21 for a hand), when the model fixes it; else the body's first frame's.
    pub points: Option<usize>,
    /// Coordinates per point (3, or 2 when the model says so).
    pub coords: usize,
}

impl LandmarkShape {
    /// The layout of `spec`'s input, when it is, or may be, `[frames, points, coords]`.
    #[must_use]
    pub fn of(spec: &ModelSpec) -> Option<Self> {
        let positive = |d: Option<usize>| d != Some(0);
        match spec.input_shape.dims() {
            None => Some(Self { frames: None, points: None, coords: 3 }),
            Some(&[frames, points, coords]) if positive(frames) && positive(points) => {
                let coords = coords.unwrap_or(3);
                (2..=3).contains(&coords).then_some(Self { frames, points, coords })
            }
            Some(_) => None,
        }
    }
}

/// A validated landmark request.
#[derive(Debug, Clone, PartialEq)]
pub struct LandmarkRequest {
    /// The model input, `frames * points * coords` values, row-major.
    pub input: Vec<f32>,
    /// Its shape, `[frames, points, coords]` (the model's frame count once resampled).
    pub shape: [usize; 3],
    /// How many predictions to answer, when the body says.
    pub topk: Option<usize>,
}

/// Parses and validates a body (simd-json parses in place, hence `&mut`).
///
/// # Errors
/// [`ApiError`] 400 with a message that says what is wrong and where.
pub fn parse(body: &mut [u8], shape: LandmarkShape) -> Result<LandmarkRequest, ApiError> {
    let tape = json::tape(body, "{\"landmarks\": [[[x, y, z], ...], ...]}")?;
    let object = json::root(&tape)?;
    let topk = object.get("topk").map(parse_topk).transpose()?;
    let frames = object
        .get("landmarks")
        .ok_or_else(|| ApiError::bad_request("missing field `landmarks`"))?
        .into_array()
        .ok_or_else(|| ApiError::bad_request("`landmarks` must be an array of frames"))?;
    if frames.is_empty() {
        return Err(ApiError::bad_request("`landmarks` has no frames"));
    }
    if frames.len() > MAX_FRAMES {
        return Err(ApiError::bad_request(format!("`landmarks` has {} frames, at most {MAX_FRAMES}", frames.len())));
    }
    let points = match shape.points {
        Some(points) => points,
        None => frames.get(0).and_then(Json::into_array).map_or(0, |first| first.len()),
    };
    if points == 0 {
        return Err(ApiError::bad_request("landmarks[0] must be an array of points"));
    }
    let frame_len = points * shape.coords;
    let mut raw = Vec::with_capacity(frames.len() * frame_len);
    for (f, frame) in frames.iter().enumerate() {
        read_frame(frame, f, points, shape.coords, &mut raw)?;
    }
    let target = shape.frames.unwrap_or(frames.len());
    let input = resample(raw, frames.len(), target, frame_len);
    Ok(LandmarkRequest { input, shape: [target, points, shape.coords], topk })
}

fn parse_topk(value: Json<'_, '_>) -> Result<usize, ApiError> {
    match value.as_u64() {
        Some(k) if k > 0 => usize::try_from(k).map_err(|_| ApiError::bad_request("`topk` is too large")),
        _ => Err(ApiError::bad_request("`topk` must be a positive integer")),
    }
}

/// Reads frame `f`, which must have `want` points of `coords` numbers each.
fn read_frame(frame: Json<'_, '_>, f: usize, want: usize, coords: usize, out: &mut Vec<f32>) -> Result<(), ApiError> {
    let points = frame.into_array().ok_or_else(|| ApiError::bad_request(format!("landmarks[{f}] must be an array")))?;
    if points.len() != want {
        return Err(ApiError::bad_request(format!(
            "landmarks[{f}] has {} points, the model takes {want}",
            points.len()
        )));
    }
    for (p, point) in points.iter().enumerate() {
        let coords = point.into_array().filter(|c| c.len() == coords).ok_or_else(|| {
            ApiError::bad_request(format!("landmarks[{f}][{p}] must be an array of {coords} numbers"))
        })?;
        for (c, v) in coords.iter().enumerate() {
            let x = json::finite_f32(v).ok_or_else(|| {
                let got = json::describe(v);
                ApiError::bad_request(format!("landmarks[{f}][{p}][{c}] must be a finite number, got {got}"))
            })?;
            out.push(x);
        }
    }
    Ok(())
}

/// Resamples `n` frames of `frame_len` values to `target` frames by linear interpolation in time; a sequence
/// that already has `target` frames is returned as it is, without a copy.
#[must_use]
pub fn resample(raw: Vec<f32>, n: usize, target: usize, frame_len: usize) -> Vec<f32> {
    if n == target || n == 0 {
        return raw;
    }
    let mut out = Vec::with_capacity(target * frame_len);
    #[allow(clippy::cast_precision_loss)]
    let step = if target > 1 { (n - 1) as f64 / (target - 1) as f64 } else { 0.0 };
    for t in 0..target {
        #[allow(clippy::cast_precision_loss)]
        let pos = t as f64 * step;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i0 = (pos.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let w = (pos - i0 as f64) as f32;
        let (a, b) = (&raw[i0 * frame_len..][..frame_len], &raw[i1 * frame_len..][..frame_len]);
        out.extend(a.iter().zip(b).map(|(x, y)| x + (y - x) * w));
    }
    out
}

/// One prediction of the response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction<'a> {
    /// Class label (the index when the model has no labels).
    pub label: std::borrow::Cow<'a, str>,
    /// The model's probability for it.
    pub confidence: f32,
}

/// The `k` most probable classes, most probable first (ties by class index).
#[must_use]
pub fn top_k<'a>(probabilities: &[f32], labels: Option<&'a [String]>, k: usize) -> Vec<Prediction<'a>> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| Prediction {
            label: labels.and_then(|l| l.get(i)).map_or_else(|| i.to_string().into(), |s| s.as_str().into()),
            confidence: probabilities[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ferroserve_engine::backend::Shape;

    use super::*;

    const SHAPE: LandmarkShape = LandmarkShape { frames: Some(4), points: Some(2), coords: 3 };

    fn body(frames: usize) -> String {
        let frame = "[[0.1,0.2,0.3],[1,2,3]]";
        format!("{{\"landmarks\": [{}]}}", vec![frame; frames].join(","))
    }

    fn err(text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        let e = parse(&mut bytes, SHAPE).expect_err(text);
        assert_eq!(e.status, hyper::StatusCode::BAD_REQUEST);
        e.message
    }

    #[test]
    fn accepts_the_model_shape() {
        let mut bytes = body(4).into_bytes();
        let req = parse(&mut bytes, SHAPE).expect("valid");
        assert_eq!((req.input.len(), req.shape), (4 * 2 * 3, [4, 2, 3]));
        assert_eq!(&req.input[..6], &[0.1, 0.2, 0.3, 1.0, 2.0, 3.0]);
        assert_eq!(req.topk, None);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert!(err("").contains("empty body"));
        assert!(err("not json").contains("not valid JSON"));
        assert!(err("{\"landmarks\": [[[1,2,3]").contains("not valid JSON"));
        assert!(err("[1,2]").contains("JSON object"));
        assert!(err("{}").contains("missing field `landmarks`"));
        assert!(err("{\"landmarks\": 3}").contains("array of frames"));
        assert!(err("{\"landmarks\": []}").contains("no frames"));
        assert!(err("{\"landmarks\": [[[1,2,3]]]}").contains("has 1 points"));
        assert!(err("{\"landmarks\": [[[1,2],[1,2,3]]]}").contains("landmarks[0][0]"));
        assert!(err("{\"landmarks\": [[[1,\"a\",3],[1,2,3]]]}").contains("landmarks[0][0][1] must be a finite"));
        assert!(err("{\"landmarks\": [[[1,NaN,3],[1,2,3]]]}").contains("not valid JSON"));
        assert!(err("{\"landmarks\": [[[1,1e300,3],[1,2,3]]]}").contains("finite"));
        assert!(err("{\"landmarks\": [[[1,null,3],[1,2,3]]]}").contains("finite"));
        assert!(err(&body(4).replace('}', ",\"topk\": 0}")).contains("topk"));
        assert!(err(&body(4).replace('}', ",\"topk\": -1}")).contains("topk"));
    }

    #[test]
    fn frame_counts_are_resampled_linearly() {
        // 2 frames of one value each, 0 and 3, to 4 frames: 0, 1, 2, 3.
        assert_eq!(resample(vec![0.0, 3.0], 2, 4, 1), vec![0.0, 1.0, 2.0, 3.0]);
        // 7 frames to 4: every second frame.
        let raw: Vec<f32> = (0..7).map(|i| i as f32).collect();
        assert_eq!(resample(raw, 7, 4, 1), vec![0.0, 2.0, 4.0, 6.0]);
        // One frame is repeated.
        assert_eq!(resample(vec![5.0, 6.0], 1, 3, 2), vec![5.0, 6.0, 5.0, 6.0, 5.0, 6.0]);
        let mut bytes = body(9).into_bytes();
        assert_eq!(parse(&mut bytes, SHAPE).expect("9 frames").input.len(), 24);
    }

    #[test]
    fn a_model_that_fixes_neither_frames_nor_points_takes_the_bodys() {
        let open = LandmarkShape { frames: None, points: None, coords: 3 };
        let mut bytes = body(9).into_bytes();
        let req = parse(&mut bytes, open).expect("9 frames of 2 points");
        assert_eq!((req.input.len(), req.shape), (9 * 2 * 3, [9, 2, 3]), "sent as they come, not resampled");
        let mut ragged = "{\"landmarks\": [[[1,2,3],[1,2,3]], [[1,2,3]]]}".as_bytes().to_vec();
        let e = parse(&mut ragged, open).expect_err("ragged");
        assert!(e.message.contains("landmarks[1] has 1 points, the model takes 2"), "{}", e.message);
        let mut empty_frame = b"{\"landmarks\": [[]]}".to_vec();
        assert!(parse(&mut empty_frame, open).expect_err("no points").message.contains("array of points"));
        let frames_only = LandmarkShape { frames: None, points: Some(2), coords: 3 };
        let mut bytes = body(7).into_bytes();
        assert_eq!(parse(&mut bytes, frames_only).expect("7 frames").shape, [7, 2, 3]);
    }

    #[test]
    fn the_layout_comes_from_what_the_model_fixes() {
        let spec = |input_shape: Shape| ModelSpec {
            input_name: "x".into(),
            input_shape,
            output_name: "y".into(),
            output_shape: Shape::unknown(),
        };
        let of = |shape: Shape| LandmarkShape::of(&spec(shape));
        assert_eq!(
            of(Shape::fixed([30, 21, 3])),
            Some(LandmarkShape { frames: Some(30), points: Some(21), coords: 3 })
        );
        assert_eq!(
            of(Shape::partial(vec![None, Some(21), Some(3)])).map(|s| (s.frames, s.points)),
            Some((None, Some(21)))
        );
        assert_eq!(of(Shape::unknown()), Some(LandmarkShape { frames: None, points: None, coords: 3 }));
        assert_eq!(of(Shape::partial(vec![None, None, None])).map(|s| s.coords), Some(3));
        assert_eq!(of(Shape::fixed([30, 21, 4])), None);
        assert_eq!(of(Shape::fixed([3, 224, 224])), None);
        assert_eq!(of(Shape::partial(vec![None, Some(21)])), None);
    }

    #[test]
    fn top_k_orders_by_probability_then_index() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(ToString::to_string).collect();
        let p = top_k(&[0.2, 0.5, 0.2], Some(&labels), 3);
        let names: Vec<_> = p.iter().map(|p| p.label.as_ref()).collect();
        assert_eq!(names, vec!["b", "a", "c"]);
        assert_eq!(top_k(&[0.1, 0.9], None, 1)[0].label, "1");
        assert_eq!(top_k(&[0.1, 0.9], None, 5).len(), 2);
    }
}
