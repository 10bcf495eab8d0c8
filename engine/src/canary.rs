//! The canary split: which of a model's two live versions answers a request that names no version.
//!
//! A request falls in one of [`BUCKETS`] buckets: the hash of its client key (sticky) or a random draw. The
//! canary takes the buckets below its [`Weight`], the default version the rest. The hash is FNV-1a over the model
//! name and the key, finished with a 64-bit mixer, so the same key lands in the same bucket in every process and
//! every release, and a key's cohort differs from model to model. Since the canary takes the buckets *below* its
//! weight, a key that reached the canary keeps reaching it while the weight grows: stepping up never sends a
//! user back to the old version.

use std::hash::Hasher as _;

/// Buckets a request can fall in: weights are in hundredths of a percent.
pub const BUCKETS: u32 = 10_000;

/// The canary's share of the requests that name no version, in hundredths of a percent (0 to [`BUCKETS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Weight(u32);

impl Weight {
    /// No traffic.
    pub const ZERO: Self = Self(0);

    /// All of it.
    pub const FULL: Self = Self(BUCKETS);

    /// The weight of `percent`, rounded to a hundredth of a percent.
    ///
    /// # Errors
    /// A message when `percent` is not a number from 0 to 100.
    pub fn from_percent(percent: f64) -> Result<Self, String> {
        if !(percent.is_finite() && (0.0..=100.0).contains(&percent)) {
            return Err(format!("{percent} is not a percentage from 0 to 100"));
        }
        // In range by the check above: 0 ..= 10_000.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let buckets = (percent * f64::from(BUCKETS) / 100.0).round() as u32;
        Ok(Self(buckets.min(BUCKETS)))
    }

    /// The weight as a percentage (10.0 for 10 %).
    #[must_use]
    pub fn percent(self) -> f64 {
        f64::from(self.0) * 100.0 / f64::from(BUCKETS)
    }

    /// This weight raised by `step`, at most `max`.
    #[must_use]
    pub fn step_up(self, step: Self, max: Self) -> Self {
        Self(self.0.saturating_add(step.0).min(max.0))
    }

    /// Whether a request in `bucket` goes to the canary.
    #[must_use]
    pub fn takes(self, bucket: u32) -> bool {
        bucket < self.0
    }
}

/// The bucket of client key `key` for model `model`: the same for the same pair, always.
#[must_use]
pub fn bucket(model: &str, key: &[u8]) -> u32 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(model.as_bytes());
    hasher.write_u8(0xff); // No byte of UTF-8: "ab"+"c" and "a"+"bc" hash apart.
    hasher.write(key);
    let mixed = mix(hasher.finish());
    // Multiply-shift onto 0..BUCKETS: uses the high bits, without the bias of a modulo.
    #[allow(clippy::cast_possible_truncation)]
    let bucket = ((u128::from(mixed) * u128::from(BUCKETS)) >> 64) as u32;
    bucket
}

/// MurmurHash3's 64-bit finaliser: FNV-1a alone leaves short keys that differ in their last byte close together.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A small seeded generator (SplitMix64), so that the keys are the same on every run.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0)
        }
    }

    /// The share of `n` seeded keys that the canary takes at `percent`, in percent.
    fn observed(percent: f64, n: u32, seed: u64) -> f64 {
        let weight = Weight::from_percent(percent).expect("a percentage");
        let mut keys = SplitMix(seed);
        let hits = (0..n).filter(|_| weight.takes(bucket("signnet", keys.next().to_string().as_bytes()))).count();
        hits as f64 * 100.0 / f64::from(n)
    }

    #[test]
    fn the_split_over_100k_keys_is_within_half_a_point_of_the_target() {
        for percent in [1.0, 10.0, 50.0] {
            for seed in [1, 2, 3] {
                let got = observed(percent, 100_000, seed);
                assert!((got - percent).abs() <= 0.5, "target {percent} %, seed {seed}: {got} %");
            }
        }
    }

    #[test]
    fn the_ends_take_nothing_or_everything() {
        assert_eq!(observed(0.0, 10_000, 7), 0.0);
        assert_eq!(observed(100.0, 10_000, 7), 100.0);
    }

    #[test]
    fn a_bucket_is_stable_and_depends_on_the_model() {
        // A fixed value: a change of hash would move every user between versions, so it must be deliberate.
        assert_eq!(bucket("signnet", b"user-1"), 7000);
        let moved = (0..1000).filter(|i| {
            let key = format!("user-{i}");
            bucket("a", key.as_bytes()) != bucket("b", key.as_bytes())
        });
        assert!(moved.count() > 990, "the cohorts of two models are independent");
        assert_ne!(bucket("ab", b"c"), bucket("a", b"bc"));
    }

    #[test]
    fn percentages_are_checked_and_rounded() {
        assert_eq!(Weight::from_percent(10.0), Ok(Weight(1000)));
        assert_eq!(Weight::from_percent(0.005), Ok(Weight(1)));
        assert_eq!(Weight::from_percent(100.0), Ok(Weight::FULL));
        for bad in [-1.0, 100.5, f64::NAN, f64::INFINITY] {
            assert!(Weight::from_percent(bad).is_err(), "{bad}");
        }
        let step = Weight::from_percent(30.0).expect("30");
        let max = Weight::from_percent(50.0).expect("50");
        assert_eq!(Weight::from_percent(40.0).expect("40").step_up(step, max), max, "never past the maximum");
    }

    proptest! {
        /// Over any seed, a large sample lands within a tolerance of the weight (5 standard deviations of a
        /// binomial at 20,000 draws), and the canary takes exactly the buckets below its weight.
        #[test]
        fn any_percentage_is_respected(percent in 0.0f64..=100.0, seed in any::<u64>()) {
            let got = observed(percent, 20_000, seed);
            let p = Weight::from_percent(percent).expect("in range").percent();
            let sigma = (p * (100.0 - p) / 20_000.0).sqrt();
            prop_assert!((got - p).abs() <= 5.0 * sigma + 0.01, "target {} %: {} %", p, got);
        }

        /// Raising the weight never moves a key from the canary back to the default version.
        #[test]
        fn a_growing_weight_keeps_the_canarys_keys(key in any::<Vec<u8>>(), low in 0.0f64..=100.0, extra in 0.0f64..=100.0) {
            let low_w = Weight::from_percent(low).expect("in range");
            let high_w = Weight::from_percent((low + extra).min(100.0)).expect("in range");
            let b = bucket("m", &key);
            prop_assert!(!low_w.takes(b) || high_w.takes(b));
            prop_assert!(b < BUCKETS);
        }
    }
}
