//! The synthetic sign sequences signnet was trained on (`models/signnet/make_signnet.py`'s `sample`), ported so
//! that tests can draw as much traffic as they need from the reference distribution, seeded, or from a shifted
//! one (another framing or hand size, as another camera would give). The same generator, not the same numbers:
//! the draws come from another generator than numpy's.

use std::f64::consts::PI;

/// Frames per sequence and points per frame.
pub const FRAMES: usize = 30;
const POINTS: usize = 21;

/// A small seeded generator (SplitMix64) with uniform and normal draws.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// Normal with mean `mu` and standard deviation `sigma` (Box-Muller).
    pub fn normal(&mut self, mu: f64, sigma: f64) -> f64 {
        let u = self.uniform(f64::MIN_POSITIVE, 1.0);
        let v = self.uniform(0.0, 1.0);
        mu + sigma * (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
    }

    /// An index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[derive(Clone, Copy)]
enum Motion {
    Wave,
    Forward,
    Nod,
    Shake,
    Circle,
    Up,
    Still,
    Tap,
    Tilt,
}

/// Per sign: finger extensions (thumb to pinky) and motion, as make_signnet.py's `SIGNS`.
const SIGNS: [([f64; 5], Motion); 10] = [
    ([1.0, 1.0, 1.0, 1.0, 1.0], Motion::Wave),
    ([1.0, 1.0, 1.0, 1.0, 1.0], Motion::Forward),
    ([0.0, 0.0, 0.0, 0.0, 0.0], Motion::Nod),
    ([0.3, 1.0, 1.0, 0.0, 0.0], Motion::Shake),
    ([1.0, 1.0, 1.0, 1.0, 1.0], Motion::Circle),
    ([0.0, 0.0, 0.0, 0.0, 0.0], Motion::Circle),
    ([1.0, 0.0, 0.0, 0.0, 0.0], Motion::Up),
    ([1.0, 1.0, 0.0, 0.0, 1.0], Motion::Still),
    ([0.5, 0.5, 0.5, 0.5, 0.5], Motion::Tap),
    ([0.6, 0.6, 0.6, 0.6, 0.6], Motion::Tilt),
];
const BASES: [[f64; 2]; 5] = [[-0.35, -0.25], [-0.2, -0.9], [0.0, -0.95], [0.18, -0.9], [0.33, -0.8]];
const LENGTHS: [f64; 5] = [0.55, 0.45, 0.5, 0.47, 0.38];

/// 21 points of a still hand whose fingers are extended by `ext`.
fn hand_pose(ext: [f64; 5]) -> [[f64; 3]; POINTS] {
    let mut pts = [[0.0; 3]; POINTS];
    for f in 0..5 {
        let base = [BASES[f][0], BASES[f][1], 0.0];
        let norm = (base[0] * base[0] + base[1] * base[1]).sqrt();
        let direction = [base[0] / norm, base[1] / norm];
        let curl = (1.0 - ext[f]) * 1.3;
        let (mut pos, mut angle, seg) = (base, 0.0_f64, LENGTHS[f] / 3.0);
        pts[1 + 4 * f] = pos;
        for j in 1..4 {
            angle += curl;
            let step = [direction[0] * angle.cos(), direction[1] * angle.cos(), -angle.sin()];
            pos = [pos[0] + seg * step[0], pos[1] + seg * step[1], pos[2] + seg * step[2]];
            pts[1 + 4 * f + j] = pos;
        }
    }
    pts
}

/// Wrist offset and in-plane rotation at time `t` in 0..1.
fn motion(kind: Motion, t: f64) -> ([f64; 3], f64) {
    let w = 2.0 * PI * t;
    match kind {
        Motion::Wave => ([0.0; 3], 0.45 * (2.0 * w).sin()),
        Motion::Forward => ([0.0, 0.6 * t, -0.5 * t], 0.0),
        Motion::Nod => ([0.0, 0.25 * (2.0 * w).sin(), 0.0], 0.0),
        Motion::Shake => ([0.3 * (2.0 * w).sin(), 0.0, 0.0], 0.0),
        Motion::Circle => ([0.35 * w.cos(), 0.35 * w.sin(), 0.0], 0.0),
        Motion::Up => ([0.0, -0.8 * t, 0.0], 0.0),
        Motion::Still => ([0.0; 3], 0.0),
        Motion::Tap => ([0.0, 0.0, 0.25 * (2.0 * w).sin().abs()], 0.0),
        Motion::Tilt => ([0.0, -0.2 * t, 0.0], -0.9 * t),
    }
}

/// The tracker's jitter per coordinate: uniform with the standard deviation of the script's normal (0.004),
/// a tenth of the cost in a debug build, and no feature tells the two apart.
const JITTER: f64 = 0.004 * 1.732_050_807_568_877_2;

/// How a camera frames the hands, relative to the training data.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    /// Added to the hand's horizontal position (image units).
    pub x_shift: f64,
    /// Multiplies the hand's size.
    pub size_scale: f64,
}

impl Framing {
    /// The training data's framing.
    pub const REFERENCE: Self = Self { x_shift: 0.0, size_scale: 1.0 };
}

/// One sequence `[30, 21, 3]` of a random sign, flattened, framed by `framing`.
pub fn sequence(rng: &mut Rng, framing: Framing) -> Vec<f32> {
    let (ext, kind) = SIGNS[rng.below(SIGNS.len())];
    let ext = ext.map(|e| (e + rng.normal(0.0, 0.08)).clamp(0.0, 1.0));
    let pose = hand_pose(ext);
    let size = rng.uniform(0.1, 0.25) * framing.size_scale;
    let centre = [rng.uniform(0.3, 0.7) + framing.x_shift, rng.uniform(0.35, 0.75), 0.0];
    let base_rot = rng.normal(0.0, 0.25);
    let speed = rng.uniform(0.8, 1.2);
    let phase = rng.uniform(0.0, 0.15);
    let mut out = Vec::with_capacity(FRAMES * POINTS * 3);
    for i in 0..FRAMES {
        let t = (phase + speed * i as f64 / (FRAMES - 1) as f64).min(1.0);
        let (offset, rot) = motion(kind, t);
        let (s, c) = (base_rot + rot).sin_cos();
        for p in &pose {
            let rotated = [c * p[0] - s * p[1], s * p[0] + c * p[1], p[2]];
            for k in 0..3 {
                out.push((centre[k] + size * (rotated[k] + offset[k]) + rng.uniform(-JITTER, JITTER)) as f32);
            }
        }
    }
    out
}

/// A `/predictions` body of one sequence.
pub fn body(sequence: &[f32]) -> String {
    let frames: Vec<Vec<&[f32]>> = sequence.chunks(POINTS * 3).map(|f| f.chunks(3).collect()).collect();
    serde_json::json!({ "landmarks": frames }).to_string()
}
