//! What the adaptive batcher ([`crate::adaptive`]) knows of a model: how long a batch of `n` takes on a device,
//! fitted online from the batches the workers run, and how fast requests arrive.
//!
//! [`CostFit`] is a least-squares line `a + b·n` over a window of the last [`WINDOW`] batches (a sliding window
//! rather than a forgetting factor: it forgets a slow phase at once when the window has passed, and it cannot
//! wind up while every batch has the same size). Its residual standard deviation is the spread the dispatch rule
//! keeps as a margin. [`ArrivalRate`] is an exponentially decayed count of arrivals, over a fast and a slow time
//! constant. Both take the instants they
//! are given, so they run on virtual time in tests as on the monotonic clock in the workers.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::backend::Device;

/// How many of the last batches the fit covers.
pub const WINDOW: usize = 256;

/// Batches needed before the fit predicts anything: fewer say too little of the spread.
pub const MIN_SAMPLES: usize = 8;

/// The slow time constant of [`ArrivalRate`]: arrivals older than a few of these no longer count.
pub const RATE_TAU: Duration = Duration::from_millis(500);

/// The fast time constant of [`ArrivalRate`], which follows a rise of the load.
pub const RATE_TAU_FAST: Duration = Duration::from_millis(50);

/// A fitted cost line and its spread, in seconds, ready for the dispatch rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Seconds a batch costs whatever its size (`a`).
    pub fixed: f64,
    /// Seconds each request of a batch adds (`b`).
    pub per_request: f64,
    /// Residual standard deviation of the fit, in seconds.
    pub spread: f64,
    /// Batches the fit is made of.
    pub samples: usize,
    /// The largest batch among them.
    pub largest: usize,
    /// Whether they had several sizes, so that the line's slope was measured (with one size only, the fit is
    /// proportional, and overestimates larger batches by their fixed cost).
    pub sloped: bool,
}

impl Cost {
    /// The predicted time of a batch of `n`.
    #[must_use]
    pub fn predict(&self, n: usize) -> Duration {
        #[allow(clippy::cast_precision_loss)]
        let seconds = self.fixed + self.per_request * n as f64;
        Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
    }

    /// Whether the fit predicts a batch of `n` from what it has seen: a batch no larger than the largest
    /// measured, or any batch once the slope is measured.
    #[must_use]
    pub fn knows(&self, n: usize) -> bool {
        self.sloped || n <= self.largest
    }

    /// The spread as a duration.
    #[must_use]
    pub fn spread(&self) -> Duration {
        Duration::try_from_secs_f64(self.spread.max(0.0)).unwrap_or(Duration::MAX)
    }
}

/// The least-squares fit of batch time against batch size over the last [`WINDOW`] batches of one device.
#[derive(Debug, Clone, Default)]
pub struct CostFit {
    /// (size, seconds) of the batches in the window, oldest first.
    window: VecDeque<(f64, f64)>,
}

impl CostFit {
    /// Records a batch of `n` requests that took `took`.
    pub fn record(&mut self, n: usize, took: Duration) {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        #[allow(clippy::cast_precision_loss)]
        self.window.push_back((n as f64, took.as_secs_f64()));
    }

    /// The fit, once [`MIN_SAMPLES`] batches are recorded.
    ///
    /// The line is the ordinary least-squares one, held to `a ≥ 0` and `b ≥ 0` (a batch never costs less than
    /// nothing, nor less for more requests). While every batch has had the same size the slope cannot be told
    /// from the intercept; the fit is then proportional (`a = 0`, `b` the mean time per request), which never
    /// predicts a larger batch as cheaper than it is: the cautious side for a rule that waits within a budget.
    #[must_use]
    pub fn cost(&self) -> Option<Cost> {
        let samples = self.window.len();
        if samples < MIN_SAMPLES {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let count = samples as f64;
        let mean_n = self.window.iter().map(|p| p.0).sum::<f64>() / count;
        let mean_t = self.window.iter().map(|p| p.1).sum::<f64>() / count;
        let sxx: f64 = self.window.iter().map(|p| (p.0 - mean_n).powi(2)).sum();
        let sxy: f64 = self.window.iter().map(|p| (p.0 - mean_n) * (p.1 - mean_t)).sum();
        let sloped = sxx > f64::EPSILON * count;
        let (fixed, per_request) = if !sloped {
            (0.0, mean_t / mean_n.max(1.0))
        } else {
            let slope = sxy / sxx;
            let intercept = mean_t - slope * mean_n;
            if slope < 0.0 {
                (mean_t, 0.0)
            } else if intercept < 0.0 {
                let snn: f64 = self.window.iter().map(|p| p.0 * p.0).sum();
                let snt: f64 = self.window.iter().map(|p| p.0 * p.1).sum();
                (0.0, snt / snn)
            } else {
                (intercept, slope)
            }
        };
        let sse: f64 = self.window.iter().map(|&(n, t)| (t - fixed - per_request * n).powi(2)).sum();
        let spread = (sse / (count - 2.0).max(1.0)).sqrt();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let largest = self.window.iter().map(|p| p.0).fold(0.0, f64::max) as usize;
        Some(Cost { fixed, per_request, spread, samples, largest, sloped })
    }
}

/// Exponentially decayed counts of arrivals over two time constants: their rate is the larger of the two
/// estimates, so that it rises within a few [`RATE_TAU_FAST`] when the load steps up (a slow estimate leaves
/// batches too small for the new load for a second or more, and the queue grows meanwhile) and falls over
/// [`RATE_TAU`] when it steps down (waiting a little longer than needed for a while costs nothing against the
/// objective: the rule never waits past the budget).
#[derive(Debug, Clone, Copy, Default)]
pub struct ArrivalRate {
    /// The decayed counts at `last`: over [`RATE_TAU`], then over [`RATE_TAU_FAST`].
    counts: [f64; 2],
    /// The last arrival.
    last: Option<Instant>,
}

impl ArrivalRate {
    const TAUS: [Duration; 2] = [RATE_TAU, RATE_TAU_FAST];

    /// Counts an arrival at `at` (instants before the last one count as at the last one).
    pub fn record(&mut self, at: Instant) {
        self.counts = self.decayed(at).map(|c| c + 1.0);
        self.last = Some(self.last.map_or(at, |last| last.max(at)));
    }

    /// Arrivals per second at `now`.
    #[must_use]
    pub fn per_second(&self, now: Instant) -> f64 {
        let [slow, fast] = self.decayed(now);
        (slow / RATE_TAU.as_secs_f64()).max(fast / RATE_TAU_FAST.as_secs_f64())
    }

    fn decayed(&self, now: Instant) -> [f64; 2] {
        let Some(last) = self.last else { return [0.0; 2] };
        let age = now.saturating_duration_since(last).as_secs_f64();
        let mut decayed = self.counts;
        for (count, tau) in decayed.iter_mut().zip(Self::TAUS) {
            *count *= (-age / tau.as_secs_f64()).exp();
        }
        decayed
    }
}

/// What one model's workers have measured: the cost fit of each device they run on, and the arrival rate; and
/// when the batches running now are predicted to end.
#[derive(Debug, Default)]
pub struct Estimates {
    arrivals: ArrivalRate,
    /// Per device: its fit, and the cost last fitted (refitted after every batch, read at every step).
    devices: Vec<(Device, CostFit, Option<Cost>)>,
    /// Per worker running a batch: its id and when the batch is predicted to end.
    running: Vec<(usize, Instant)>,
}

impl Estimates {
    /// Records that worker `worker` started a batch of `n` on `device` at `at`, predicted to end when the
    /// device's cost says (at once while it has none).
    pub fn start_batch(&mut self, worker: usize, device: Device, n: usize, at: Instant) {
        let ends = at.checked_add(self.cost(device).map_or(Duration::ZERO, |c| c.predict(n))).unwrap_or(at);
        self.end_batch(worker);
        self.running.push((worker, ends));
    }

    /// Records that worker `worker` finished its batch, whether it succeeded or not.
    pub fn end_batch(&mut self, worker: usize) {
        self.running.retain(|r| r.0 != worker);
    }

    /// How long each worker running a batch still needs at `now`, as predicted (zero once overdue).
    #[must_use]
    pub fn busy(&self, now: Instant) -> Vec<Duration> {
        self.running.iter().map(|r| r.1.saturating_duration_since(now)).collect()
    }

    /// Counts a request arriving at `at`.
    pub fn record_arrival(&mut self, at: Instant) {
        self.arrivals.record(at);
    }

    /// Records a batch of `n` that took `took` on `device`.
    pub fn record_batch(&mut self, device: Device, n: usize, took: Duration) {
        let at = match self.devices.iter().position(|d| d.0 == device) {
            Some(at) => at,
            None => {
                self.devices.push((device, CostFit::default(), None));
                self.devices.len() - 1
            }
        };
        let (_, fit, cost) = &mut self.devices[at];
        fit.record(n, took);
        *cost = fit.cost();
    }

    /// The fitted cost on `device`, once known.
    #[must_use]
    pub fn cost(&self, device: Device) -> Option<Cost> {
        self.devices.iter().find(|d| d.0 == device).and_then(|d| d.2)
    }

    /// The fitted cost of the device whose batch of `n` is predicted the fastest; `None` while no device has
    /// one.
    #[must_use]
    pub fn fastest(&self, n: usize) -> Option<Cost> {
        self.devices.iter().filter_map(|d| d.2).min_by_key(|c| c.predict(n))
    }

    /// Every device's fitted cost, in the order the devices first ran a batch.
    #[must_use]
    pub fn costs(&self) -> Vec<(Device, Cost)> {
        self.devices.iter().filter_map(|d| d.2.map(|c| (d.0, c))).collect()
    }

    /// The devices that have run a batch.
    #[must_use]
    pub fn devices(&self) -> Vec<Device> {
        self.devices.iter().map(|d| d.0).collect()
    }

    /// Requests arriving per second at `now`.
    #[must_use]
    pub fn arrivals_per_second(&self, now: Instant) -> f64 {
        self.arrivals.per_second(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A deterministic jitter of ±`amp` µs (a linear congruential sequence: no RNG needed for a unit test).
    fn jitter(i: u64, amp: i64) -> i64 {
        let x = (i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) >> 33) as i64;
        x % (2 * amp + 1) - amp
    }

    #[test]
    fn nothing_is_predicted_before_enough_batches() {
        let mut fit = CostFit::default();
        for _ in 0..MIN_SAMPLES - 1 {
            fit.record(4, us(1_000));
        }
        assert!(fit.cost().is_none());
        fit.record(4, us(1_000));
        assert!(fit.cost().is_some());
    }

    #[test]
    fn an_exact_line_is_recovered_with_no_spread() {
        let mut fit = CostFit::default();
        for n in 1..=16 {
            fit.record(n, us(2_000 + 250 * n as u64));
        }
        let cost = fit.cost().expect("fitted");
        assert!((cost.fixed - 0.002).abs() < 1e-9, "{cost:?}");
        assert!((cost.per_request - 0.000_25).abs() < 1e-9, "{cost:?}");
        assert!(cost.spread < 1e-9, "{cost:?}");
        assert_eq!(cost.predict(8), us(4_000));
    }

    #[test]
    fn noise_gives_a_spread_near_its_standard_deviation() {
        let mut fit = CostFit::default();
        // Uniform jitter of ±300 µs: standard deviation 300/√3 ≈ 173 µs.
        for i in 0..WINDOW as u64 {
            let n = 1 + i % 16;
            let t = 1_000 + 500 * n as i64 + jitter(i, 300);
            fit.record(n as usize, us(t as u64));
        }
        let cost = fit.cost().expect("fitted");
        assert!((cost.fixed - 0.001).abs() < 100e-6, "{cost:?}");
        assert!((cost.per_request - 0.000_5).abs() < 20e-6, "{cost:?}");
        assert!((cost.spread - 173e-6).abs() < 40e-6, "{cost:?}");
    }

    #[test]
    fn one_batch_size_only_gives_a_proportional_fit() {
        let mut fit = CostFit::default();
        for _ in 0..20 {
            fit.record(1, us(400));
        }
        let cost = fit.cost().expect("fitted");
        assert_eq!((cost.fixed, cost.predict(1)), (0.0, us(400)));
        assert_eq!(cost.predict(4), us(1_600), "no batching gain is assumed until one is seen");
        assert!(cost.knows(1) && !cost.knows(2), "{cost:?}");
        fit.record(3, us(900));
        let cost = fit.cost().expect("fitted");
        assert!(cost.sloped && cost.knows(16) && cost.largest == 3, "{cost:?}");
    }

    #[test]
    fn the_window_forgets_an_old_phase() {
        let mut fit = CostFit::default();
        for n in 1..=WINDOW {
            fit.record(1 + n % 8, us(10_000));
        }
        for n in 1..=WINDOW {
            fit.record(1 + n % 8, us(1_000 * (1 + n % 8) as u64));
        }
        let cost = fit.cost().expect("fitted");
        assert!(cost.fixed < 1e-9 && (cost.per_request - 0.001).abs() < 1e-9, "{cost:?}");
    }

    #[test]
    fn a_negative_slope_or_intercept_is_held_at_zero() {
        let mut fit = CostFit::default();
        for n in 1..=10 {
            fit.record(n, us(5_000 - 100 * n as u64));
        }
        let cost = fit.cost().expect("fitted");
        assert_eq!(cost.per_request, 0.0);
        let mut fit = CostFit::default();
        for n in 1..=10 {
            fit.record(n, us(1_000 * n as u64 - 500));
        }
        let cost = fit.cost().expect("fitted");
        assert_eq!(cost.fixed, 0.0);
        assert!(cost.per_request > 0.0);
    }

    #[test]
    fn each_device_has_its_own_fit() {
        let mut estimates = Estimates::default();
        for n in 1..=MIN_SAMPLES {
            estimates.record_batch(Device::Cuda(0), n, us(1_000 * n as u64));
            estimates.record_batch(Device::Cuda(1), n, us(3_000 * n as u64));
        }
        let per_request = |d| estimates.cost(d).map(|c| c.per_request);
        assert_eq!(per_request(Device::Cuda(1)).map(|b| (b * 1e6).round()), Some(3_000.0));
        assert_eq!(per_request(Device::Cuda(0)).map(|b| (b * 1e6).round()), Some(1_000.0));
        assert_eq!(estimates.cost(Device::Cpu), None);
        assert_eq!(estimates.costs().len(), 2);
        assert_eq!(estimates.fastest(16), estimates.cost(Device::Cuda(0)));
        assert_eq!(Estimates::default().fastest(16), None);
    }

    #[test]
    fn running_batches_are_predicted_to_end_by_their_device_cost() {
        let (t0, mut estimates) = (Instant::now(), Estimates::default());
        estimates.start_batch(0, Device::Cpu, 4, t0);
        assert_eq!(estimates.busy(t0), [Duration::ZERO], "no cost yet: free at once");
        for n in 1..=MIN_SAMPLES {
            estimates.record_batch(Device::Cpu, n, us(1_000 + 500 * n as u64));
        }
        estimates.start_batch(0, Device::Cpu, 4, t0);
        estimates.start_batch(1, Device::Cpu, 16, t0);
        assert_eq!(estimates.busy(t0 + us(1_000)), [us(2_000), us(8_000)]);
        estimates.end_batch(0);
        assert_eq!(estimates.busy(t0 + us(10_000)), [Duration::ZERO], "overdue");
    }

    #[test]
    fn the_fastest_device_is_the_one_whose_batch_is_predicted_the_shortest() {
        let mut estimates = Estimates::default();
        for n in 1..=MIN_SAMPLES {
            // The first device has the cheaper batch of one, the second the cheaper full batch.
            estimates.record_batch(Device::Cpu, n, us(1_000 * n as u64));
            estimates.record_batch(Device::Cuda(0), n, us(4_000 + 100 * n as u64));
        }
        assert_eq!(estimates.fastest(1), estimates.cost(Device::Cpu));
        assert_eq!(estimates.fastest(16), estimates.cost(Device::Cuda(0)));
    }

    #[test]
    fn the_arrival_rate_follows_a_steady_stream_and_decays_when_it_stops() {
        let t0 = Instant::now();
        let mut rate = ArrivalRate::default();
        assert_eq!(rate.per_second(t0), 0.0);
        // 1000 per second for 5 s (ten time constants): the estimate has settled.
        for i in 0..5_000 {
            rate.record(t0 + us(1_000 * i));
        }
        let now = t0 + us(5_000_000);
        assert!((rate.per_second(now) - 1_000.0).abs() < 20.0, "{}", rate.per_second(now));
        // Two seconds of silence: four time constants, under 2 % left.
        assert!(rate.per_second(now + Duration::from_secs(2)) < 20.0);
    }

    #[test]
    fn the_arrival_rate_rises_within_a_tenth_of_a_second_and_falls_slowly() {
        let t0 = Instant::now();
        let mut rate = ArrivalRate::default();
        // 5 s at 500 a second, then 5000 a second.
        for i in 0..2_500 {
            rate.record(t0 + us(2_000 * i));
        }
        let step = t0 + us(5_000_000);
        assert!((rate.per_second(step) - 500.0).abs() < 60.0, "{}", rate.per_second(step));
        for i in 0..500 {
            rate.record(step + us(200 * i));
        }
        // 0.1 s after the step: two fast time constants, 86 % of the way (a 0.5 s constant alone: 18 %).
        let later = step + us(100_000);
        assert!(rate.per_second(later) > 4_200.0, "{}", rate.per_second(later));
        // 0.1 s of silence after it: the slow estimate still holds more than a fifth of the new rate.
        assert!(rate.per_second(later + us(100_000)) > 1_000.0, "{}", rate.per_second(later + us(100_000)));
    }
}
