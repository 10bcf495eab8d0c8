//! What the drift monitor watches in each request: a few numbers per input that a person can read, computed on
//! the request path in microseconds, and the model's top-1 class and confidence from its output.
//!
//! For a hand-landmark model (MediaPipe's 21 points, `[frames, 21, 2 or 3]`) the features are what the model's
//! own normalisation removes (signnet centres each sequence on its mean wrist position and divides by the mean
//! wrist-to-middle-knuckle length), so they move when the camera, the framing or the signer change while the
//! predictions may not yet:
//!
//! | feature | what | moves when |
//! |---|---|---|
//! | `hand_x`, `hand_y` | mean wrist position in the image (0..1) | the hand is framed off-centre, the camera moved |
//! | `hand_size` | mean wrist to middle-finger knuckle length (image units) | the signer stands nearer or farther, another lens or resolution |
//! | `hand_openness` | mean fingertip distance from the wrist, in hand sizes | another hand shape, a different signer population, a tracker that mislabels points |
//! | `motion` | mean wrist movement per frame, in hand sizes | another frame rate, faster or slower signers |
//!
//! For any other model, the mean and standard deviation of each input channel: the first axis of a per-sample
//! shape of rank 3 or more whose first size is at most 4 (an NCHW image), else the last axis when it is at most
//! 16 wide, else the whole input as one channel.

/// Indices of MediaPipe's hand points used here.
const WRIST: usize = 0;
const MIDDLE_KNUCKLE: usize = 9;
const FINGERTIPS: [usize; 5] = [4, 8, 12, 16, 20];
/// Points per frame of a MediaPipe hand.
pub const HAND_POINTS: usize = 21;

/// Which features a model's inputs give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureSet {
    /// A hand-landmark sequence: the five features of the module's table.
    Hand,
    /// Mean and standard deviation of each of `channels` channels along `axis` of the per-sample shape (`None`:
    /// the whole input is one channel).
    Channels {
        /// The channel axis.
        axis: Option<usize>,
        /// How many channels it has.
        channels: usize,
    },
}

/// One request's features, in place for the hand's five and up to four channels (the request path allocates
/// nothing for them, and the monitor's thread frees nothing the request threads allocated).
pub type Features = smallvec::SmallVec<[f32; 8]>;

/// The hand features' names, in the order [`FeatureSet::compute`] gives them.
pub const HAND_FEATURES: [&str; 5] = ["hand_x", "hand_y", "hand_size", "hand_openness", "motion"];

/// The name of the top-1 confidence, watched as one more feature.
pub const CONFIDENCE: &str = "confidence";

impl FeatureSet {
    /// The feature set for samples of per-sample `shape`: a hand for `[frames, 21, 2 or 3]`, whichever protocol
    /// the request came by, so that both give a model the same features.
    #[must_use]
    pub fn for_shape(shape: &[usize]) -> Self {
        if matches!(shape, [_, HAND_POINTS, 2 | 3]) {
            return Self::Hand;
        }
        let axis = match shape {
            [first, _, _, ..] if *first <= 4 => Some(0),
            [.., last] if shape.len() >= 2 && *last <= 16 => Some(shape.len() - 1),
            _ => None,
        };
        let channels = axis.map_or(1, |a| shape[a]);
        Self::Channels { axis, channels }
    }

    /// The features' names (without the confidence).
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::Hand => HAND_FEATURES.iter().map(ToString::to_string).collect(),
            Self::Channels { axis: None, .. } => vec!["input_mean".into(), "input_std".into()],
            Self::Channels { channels, .. } => {
                (0..*channels).flat_map(|c| [format!("channel{c}_mean"), format!("channel{c}_std")]).collect()
            }
        }
    }

    /// The features of one sample `input` of per-sample `shape` (row-major), as many as [`Self::names`].
    #[must_use]
    pub fn compute(&self, input: &[f32], shape: &[usize]) -> Features {
        match self {
            Self::Hand => Features::from_slice(&hand(input, shape.get(2).copied().unwrap_or(3))),
            Self::Channels { axis, channels } => channel_summaries(input, shape, *axis, *channels).into(),
        }
    }
}

/// The five hand features of a `[frames, 21, coords]` sequence.
fn hand(input: &[f32], coords: usize) -> [f32; 5] {
    let frame_len = HAND_POINTS * coords;
    fn point(frame: &[f32], p: usize, coords: usize) -> &[f32] {
        &frame[p * coords..p * coords + coords]
    }
    let distance = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
    let frames: Vec<&[f32]> = input.chunks_exact(frame_len).collect();
    let n = frames.len().max(1) as f32;
    let (mut x, mut y, mut size, mut tips) = (0.0, 0.0, 0.0, 0.0);
    for frame in &frames {
        let wrist = point(frame, WRIST, coords);
        x += wrist[0];
        y += wrist[1];
        size += distance(wrist, point(frame, MIDDLE_KNUCKLE, coords));
        tips +=
            FINGERTIPS.iter().map(|&t| distance(wrist, point(frame, t, coords))).sum::<f32>() / FINGERTIPS.len() as f32;
    }
    let size = size / n;
    let scale = if size > 0.0 { size } else { 1.0 };
    let moved: f32 = frames.windows(2).map(|w| distance(point(w[0], WRIST, coords), point(w[1], WRIST, coords))).sum();
    let steps = (frames.len().max(2) - 1) as f32;
    [x / n, y / n, size, tips / n / scale, moved / steps / scale]
}

/// Mean and standard deviation of each channel (see [`FeatureSet::Channels`]).
fn channel_summaries(input: &[f32], shape: &[usize], axis: Option<usize>, channels: usize) -> Vec<f32> {
    // Row-major: the channel of element i is (i / inner) % channels, `inner` the product of the sizes after it.
    let inner: usize = axis.map_or(1, |a| shape[a + 1..].iter().product());
    let mut sums = vec![(0.0_f64, 0.0_f64, 0_u64); channels.max(1)];
    for (i, &v) in input.iter().enumerate() {
        let c = if axis.is_some() { (i / inner.max(1)) % channels } else { 0 };
        let entry = &mut sums[c];
        let v = f64::from(v);
        *entry = (entry.0 + v, entry.1 + v * v, entry.2 + 1);
    }
    let mut out = Vec::with_capacity(sums.len() * 2);
    for (sum, squares, count) in sums {
        #[allow(clippy::cast_precision_loss)]
        let n = count.max(1) as f64;
        let mean = sum / n;
        #[allow(clippy::cast_possible_truncation)]
        out.extend([mean as f32, (squares / n - mean * mean).max(0.0).sqrt() as f32]);
    }
    out
}

/// The top-1 class and its score of one output row: its largest value and the first index holding it.
#[must_use]
pub fn top1(output: &[f32]) -> Option<(usize, f32)> {
    output.iter().copied().enumerate().fold(None, |best, (i, v)| match best {
        Some((_, b)) if b >= v => best,
        _ => Some((i, v)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A still hand: wrist at (x, y), middle knuckle `size` above it, fingertips 2 sizes away, moving `step`
    /// to the right per frame.
    fn hand_sequence(frames: usize, x: f32, y: f32, size: f32, step: f32) -> Vec<f32> {
        let mut out = Vec::new();
        for f in 0..frames {
            let dx = step * f as f32;
            for p in 0..HAND_POINTS {
                let (px, py) = match p {
                    MIDDLE_KNUCKLE => (0.0, -size),
                    p if FINGERTIPS.contains(&p) => (0.0, -2.0 * size),
                    _ => (0.0, 0.0),
                };
                out.extend([x + dx + px, y + py, 0.0]);
            }
        }
        out
    }

    #[test]
    fn hand_features_undo_the_models_normalisation() {
        let set = FeatureSet::for_shape(&[4, 21, 3]);
        assert_eq!(set, FeatureSet::Hand);
        let f = set.compute(&hand_sequence(4, 0.4, 0.6, 0.1, 0.01), &[4, 21, 3]);
        let want = [0.415, 0.6, 0.1, 2.0, 0.1];
        for ((name, got), want) in HAND_FEATURES.iter().zip(&f).zip(want) {
            assert!((got - want).abs() < 1e-5, "{name}: {got}, want {want}");
        }
    }

    #[test]
    fn other_inputs_are_summarised_per_channel() {
        // [2 channels, 2, 2], channel-first: channel 0 is 1, 2, 3, 4, channel 1 all 5.
        let set = FeatureSet::for_shape(&[2, 2, 2]);
        assert_eq!(set, FeatureSet::Channels { axis: Some(0), channels: 2 });
        assert_eq!(set.names(), ["channel0_mean", "channel0_std", "channel1_mean", "channel1_std"]);
        let f = set.compute(&[1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0], &[2, 2, 2]);
        assert!((f[0] - 2.5).abs() < 1e-6 && (f[1] - 1.25_f32.sqrt()).abs() < 1e-6 && f[2] == 5.0 && f[3] == 0.0);
        // Channel-last: [3 rows, 2 channels].
        let set = FeatureSet::for_shape(&[30, 2]);
        assert_eq!(set, FeatureSet::Channels { axis: Some(1), channels: 2 });
        let f = set.compute(&[1.0, 10.0, 3.0, 10.0, 5.0, 10.0], &[30, 2]);
        assert_eq!((f[0], f[2]), (3.0, 10.0));
        // Landmarks of another layout, and wide vectors, are summarised too.
        assert_eq!(FeatureSet::for_shape(&[30, 5, 3]), FeatureSet::Channels { axis: Some(2), channels: 3 });
        assert_eq!(FeatureSet::for_shape(&[100]).names(), ["input_mean", "input_std"]);
    }

    #[test]
    fn top1_takes_the_first_largest() {
        assert_eq!(top1(&[0.1, 0.7, 0.7, 0.2]), Some((1, 0.7)));
        assert_eq!(top1(&[]), None);
    }
}
