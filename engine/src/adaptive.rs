//! Batching that aims at a latency objective instead of a fixed delay (`"maxBatchDelay": "auto"` with
//! `"sloP99Ms"`): the dispatch rule and the admission check, pure functions of what the model knows at one
//! instant ([`AutoPolicy`]), beside the fixed policy of [`crate::batcher`] and tested the same way.
//!
//! The rule, after Clipper (NSDI 2017: adaptive batch sizes against a latency objective) and Clockwork (OSDI
//! 2020: predictable batch times from a fitted cost model, requests that cannot make their deadline refused
//! early), with the cost line and arrival rate of [`crate::cost`]:
//!
//! - a batch waits for nobody while the model knows nothing of its cost yet, or when it is full;
//! - it goes at once when it is already large enough for the load: the smallest batch `n*` whose cost per
//!   request keeps the workers below [`TARGET_UTILISATION`] at the present arrival rate. At low load `n*` is 1,
//!   so a lone request never waits for companions that are not coming;
//! - else it waits for one more request, but only while that one could still join and the oldest request (or
//!   any request's own deadline, `x-request-timeout-ms`) would still be answered within its share of the
//!   objective ([`SLO_SHARE`]), with the batch's predicted time plus [`SPREAD_MARGIN`] residual deviations; and
//!   only when another request is likely to come in that time ([`MIN_ARRIVAL_CHANCE`] at the arrival rate).
//!
//! Once the batch goes, requests already queued still join it up to `batchSize` (as with the fixed policy): they
//! wait for nothing, and leaving them behind would only lengthen the queue.
//!
//! Admission ([`AutoPolicy::admit`]) sheds a request only when even full batches, after the time the running
//! ones have left, would answer it past the objective: near the capacity the queue must stay long enough for
//! the workers to form full batches, or throughput is lost to partial ones.

use std::time::{Duration, Instant};

use crate::{
    batcher::{BatchPolicy, Forming, Next, Rule},
    cost::Cost,
};

/// The part of the objective a request's time inside the engine may take: the rest is for reading the request,
/// writing the answer and the network.
pub const SLO_SHARE: f64 = 0.8;

/// Residual standard deviations of the cost fit added to a predicted batch time (the normal law's 99th
/// percentile is 2.33 deviations above the mean).
pub const SPREAD_MARGIN: f64 = 2.33;

/// Deviations of the predicted time of a chain of batches that admission adds. One, not the 2.33 of a batch's
/// own 99th percentile: the objective is the 99th percentile of all requests, most of which have time to spare,
/// and 2.33 deviations on every admission shed borderline requests that are mostly served in time (the
/// simulations at 95 % of the capacity lose answers to them that fixed settings give in time).
pub const ADMISSION_MARGIN: f64 = 1.0;

/// The busy share of the workers a batch size must keep them under, at the present arrival rate, before
/// batches go without waiting: above it, batches grow so that the queue does not.
pub const TARGET_UTILISATION: f64 = 0.9;

/// The least chance that another request arrives in the time a batch may still wait, for it to wait at all.
pub const MIN_ARRIVAL_CHANCE: f64 = 0.5;

/// What the adaptive rule knows at one instant about one model on one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoPolicy {
    /// The most requests in one batch (`batchSize`, at least 1).
    pub max_batch_size: usize,
    /// The objective: the 99th percentile of request latency (`sloP99Ms`).
    pub slo_p99: Duration,
    /// The fitted cost of a batch on the collecting worker's device; `None` while too few batches have run.
    pub cost: Option<Cost>,
    /// Requests arriving per second, lately.
    pub arrivals_per_second: f64,
    /// Workers running batches for the model.
    pub workers: usize,
}

/// Why a request is refused at admission by [`AutoPolicy::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue is so long that even full batches would answer it past the objective.
    Slo,
    /// It would be answered past its own deadline (`x-request-timeout-ms`).
    Deadline,
}

impl Shed {
    /// The `reason` label it is counted under.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::Slo => "slo",
            Self::Deadline => "deadline",
        }
    }
}

impl AutoPolicy {
    fn max(&self) -> usize {
        self.max_batch_size.max(1)
    }

    /// The time a request's stay in the engine may take: [`SLO_SHARE`] of the objective.
    #[must_use]
    pub fn budget(&self) -> Duration {
        self.slo_p99.mul_f64(SLO_SHARE)
    }

    /// A batch of `n`'s predicted time plus the margin for the spread.
    fn pessimistic(cost: &Cost, n: usize) -> Duration {
        cost.predict(n).saturating_add(cost.spread().mul_f64(SPREAD_MARGIN))
    }

    /// The smallest batch size whose cost per request keeps the workers under [`TARGET_UTILISATION`] at the
    /// present arrival rate; `batchSize` when none does.
    #[must_use]
    pub fn needed_batch(&self, cost: &Cost) -> usize {
        let (rate, workers) = (self.arrivals_per_second.max(0.0), self.workers.max(1));
        #[allow(clippy::cast_precision_loss)]
        let room = TARGET_UTILISATION * workers as f64 - rate * cost.per_request;
        if room <= 0.0 {
            return self.max();
        }
        let n = (rate * cost.fixed / room).ceil();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        if n.is_finite() && n < self.max() as f64 {
            (n as usize).max(1)
        } else {
            self.max()
        }
    }

    /// Admission of a request that would find `queued` requests ahead of it in the queue, while the workers
    /// running a batch are predicted to be free in `busy`, and that may wait for at most `timeout`: refused when
    /// the cost model predicts that even full batches answer it past the objective, or past its own deadline. A
    /// request that finds the queue empty is always taken (a worker takes it soon, in a batch that starts with
    /// it); so is every request while the cost of a full batch is not known (only smaller batches of one size
    /// have run: a proportional fit would predict a full batch far too long, and shed what full batches, which
    /// the rule forms from then on, will serve in time).
    ///
    /// The prediction, as Clockwork makes it: the full batches ahead of it go, one after the other, to the
    /// worker free first (each busy one when its batch is predicted to end, an idle one at once); its own batch
    /// starts when the next worker is free and takes a full batch's time (near the capacity batches are full:
    /// requests arriving after it join it); plus [`ADMISSION_MARGIN`] deviations of that chain of batch times. The
    /// batch times are independent, so the deviation of a chain of `k` is `√k` spreads, not `k`. The time left
    /// of the running batches, rather than a whole batch each, and the deviation of the sum, rather than a
    /// margin per batch, keep admission from shedding what full batches could still serve in time: a queue
    /// kept shorter than that leaves the workers partial batches near the capacity, and loses throughput.
    ///
    /// When a full batch alone (with the margin) takes longer than the objective, no request can be sure to meet
    /// it: admission then keeps
    /// a round of full batches (`batchSize × workers`) queued and sheds the rest.
    ///
    /// # Errors
    /// [`Shed`], the cause, with the predicted time.
    pub fn admit(&self, queued: usize, busy: &[Duration], timeout: Duration) -> Result<(), (Shed, Duration)> {
        let Some(cost) = self.cost.filter(|c| queued > 0 && c.knows(self.max())) else { return Ok(()) };
        let full = cost.predict(self.max());
        let workers = self.workers.max(1).max(busy.len());
        let alone = full.saturating_add(cost.spread().mul_f64(ADMISSION_MARGIN));
        if alone > self.slo_p99 && queued < self.max() * workers {
            // Not even a full batch started now meets the objective (a slower device, a starved CPU): every
            // request is late whatever is shed, so admission keeps a round of full batches queued for the most
            // answers, and sheds only beyond it (shedding down to an empty queue would leave the workers
            // batches of one or two, the slowest way to serve anything).
            return Ok(());
        }
        let mut free: Vec<Duration> = (0..workers).map(|w| busy.get(w).copied().unwrap_or_default()).collect();
        let ahead = queued / self.max();
        for _ in 0..ahead {
            let Some(first) = free.iter_mut().min() else { break };
            if *first > self.slo_p99 {
                break; // Late already: no need to count the rest.
            }
            *first = first.saturating_add(full);
        }
        let start = free.iter().min().copied().unwrap_or_default();
        #[allow(clippy::cast_precision_loss)]
        let chain = (ahead / workers + 2) as f64;
        let predicted =
            start.saturating_add(full).saturating_add(cost.spread().mul_f64(ADMISSION_MARGIN * chain.sqrt()));
        if predicted > self.slo_p99 {
            Err((Shed::Slo, predicted))
        } else if predicted > timeout {
            Err((Shed::Deadline, predicted))
        } else {
            Ok(())
        }
    }
}

impl Rule for AutoPolicy {
    fn max_batch_size(&self) -> usize {
        self.max()
    }

    fn next(&self, forming: &Forming, now: Instant) -> Next {
        let Some(oldest) = forming.oldest.filter(|_| forming.len > 0) else {
            return Next::WaitForFirst;
        };
        let Some(cost) = self.cost.filter(|_| forming.len < self.max()) else {
            return Next::Dispatch;
        };
        if forming.len >= self.needed_batch(&cost) {
            return Next::Dispatch;
        }
        let due = forming.deadline.map_or(oldest + self.budget(), |d| d.min(oldest + self.budget()));
        let Some(latest) = due.checked_sub(Self::pessimistic(&cost, forming.len + 1)).filter(|&t| t > now) else {
            return Next::Dispatch;
        };
        let chance = 1.0 - (-self.arrivals_per_second * (latest - now).as_secs_f64()).exp();
        if chance < MIN_ARRIVAL_CHANCE {
            Next::Dispatch
        } else {
            Next::WaitUntil(latest)
        }
    }
}

/// The rule in force for a model at one step: its fixed policy, or the adaptive one when it has an objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// `batchSize` and `maxBatchDelay`.
    Fixed(BatchPolicy),
    /// `maxBatchDelay: "auto"`.
    Auto(AutoPolicy),
}

impl Rule for Policy {
    fn max_batch_size(&self) -> usize {
        match self {
            Self::Fixed(p) => Rule::max_batch_size(p),
            Self::Auto(p) => p.max_batch_size(),
        }
    }

    fn next(&self, forming: &Forming, now: Instant) -> Next {
        match self {
            Self::Fixed(p) => Rule::next(p, forming, now),
            Self::Auto(p) => p.next(forming, now),
        }
    }
}

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A model whose batches cost 2 ms + 0.5 ms a request with 0.1 ms spread, one worker, a 25 ms objective.
    fn policy(rate: f64) -> AutoPolicy {
        let cost =
            Cost { fixed: 0.002, per_request: 0.000_5, spread: 0.000_1, samples: 100, largest: 16, sloped: true };
        AutoPolicy { max_batch_size: 16, slo_p99: ms(25), cost: Some(cost), arrivals_per_second: rate, workers: 1 }
    }

    fn forming(len: usize, oldest: Instant) -> Forming {
        Forming { len, oldest: Some(oldest), deadline: None }
    }

    #[test]
    fn nothing_collected_waits_for_a_first_request() {
        let t0 = Instant::now();
        assert_eq!(policy(1_000.0).next(&Forming::default(), t0), Next::WaitForFirst);
    }

    #[test]
    fn a_lone_request_at_low_load_goes_at_once() {
        // 50 requests a second use an eighth of a worker at batches of one: nothing to gain by waiting.
        let t0 = Instant::now();
        assert_eq!(policy(50.0).needed_batch(&policy(50.0).cost.expect("a cost")), 1);
        assert_eq!(policy(50.0).next(&forming(1, t0), t0), Next::Dispatch);
    }

    #[test]
    fn without_a_cost_model_nothing_waits() {
        let t0 = Instant::now();
        let p = AutoPolicy { cost: None, ..policy(5_000.0) };
        assert_eq!(p.next(&forming(1, t0), t0), Next::Dispatch);
    }

    #[test]
    fn a_full_batch_goes() {
        let t0 = Instant::now();
        assert_eq!(policy(5_000.0).next(&forming(16, t0), t0), Next::Dispatch);
        let one = AutoPolicy { max_batch_size: 0, ..policy(5_000.0) };
        assert_eq!(one.next(&forming(1, t0), t0), Next::Dispatch, "a batch size of 0 behaves as 1");
    }

    #[test]
    fn at_high_load_a_small_batch_waits_no_later_than_its_share_of_the_objective_allows() {
        // 1500 a second: n* = ceil(1500·0.002 / (0.9 − 1500·0.0005)) = 20 → the whole batch of 16.
        let t0 = Instant::now();
        let p = policy(1_500.0);
        assert_eq!(p.needed_batch(&p.cost.expect("a cost")), 16);
        // Oldest at t0, 3 collected: due at 20 ms (0.8 × 25), a batch of 4 takes 4 ms + 0.233 ms.
        let latest = t0 + ms(20) - Duration::from_micros(4_233);
        assert_eq!(p.next(&forming(3, t0), t0 + ms(1)), Next::WaitUntil(latest));
        assert_eq!(p.next(&forming(3, t0), latest), Next::Dispatch);
    }

    #[test]
    fn a_batch_large_enough_for_the_load_goes_without_waiting() {
        // 1100 a second: n* = ceil(1100·0.002 / (0.9 − 0.55)) = ceil(6.3) = 7.
        let t0 = Instant::now();
        let p = policy(1_100.0);
        assert_eq!(p.needed_batch(&p.cost.expect("a cost")), 7);
        assert!(matches!(p.next(&forming(6, t0), t0), Next::WaitUntil(_)));
        assert_eq!(p.next(&forming(7, t0), t0), Next::Dispatch);
    }

    #[test]
    fn a_request_deadline_earlier_than_the_objective_bounds_the_wait() {
        let t0 = Instant::now();
        let p = policy(1_500.0);
        let tight = Forming { deadline: Some(t0 + ms(8)), ..forming(3, t0) };
        let latest = t0 + ms(8) - Duration::from_micros(4_233);
        assert_eq!(p.next(&tight, t0), Next::WaitUntil(latest));
        let hopeless = Forming { deadline: Some(t0 + ms(3)), ..forming(3, t0) };
        assert_eq!(p.next(&hopeless, t0), Next::Dispatch);
    }

    #[test]
    fn a_batch_does_not_wait_when_another_request_is_unlikely_in_time() {
        // 200 a second with batches of 4 ms + 1 ms a request: batches of two are needed (n* = 2). A batch of two
        // takes 6 ms, due by 20 ms: with 0.2 ms left to wait, another request comes with a chance of 4 %.
        let t0 = Instant::now();
        let cost = Cost { fixed: 0.004, per_request: 0.001, spread: 0.0, samples: 100, largest: 16, sloped: true };
        let p = AutoPolicy { cost: Some(cost), arrivals_per_second: 200.0, ..policy(0.0) };
        assert_eq!(p.needed_batch(&cost), 2);
        let late = t0 + ms(20) - ms(6) - Duration::from_micros(200);
        assert_eq!(p.next(&forming(1, t0), late), Next::Dispatch);
        assert!(matches!(p.next(&forming(1, t0), t0), Next::WaitUntil(_)));
    }

    #[test]
    fn admission_sheds_only_when_full_batches_cannot_keep_the_queue_under_the_objective() {
        let p = policy(10_000.0);
        let forever = Duration::MAX;
        // A full batch: 10 ms. An empty queue always admits; so does a short one behind an idle worker.
        assert_eq!(p.admit(0, &[ms(10)], forever), Ok(()));
        assert_eq!(p.admit(10, &[], forever), Ok(()));
        // Behind a batch with 10 ms left, its own full batch: 20 ms, and 0.1 × √2.
        assert_eq!(p.admit(10, &[ms(10)], forever), Ok(()));
        // 16 ahead: a full batch first. Behind a batch just started, 30 ms; behind one that ends in 2 ms, 22.
        assert_eq!(p.admit(16, &[ms(10)], forever).map_err(|e| e.0), Err(Shed::Slo));
        assert_eq!(p.admit(16, &[ms(2)], forever), Ok(()));
        // 33 ahead of an idle worker: two full batches, then its own.
        let (why, predicted) = p.admit(33, &[], forever).expect_err("shed");
        assert_eq!(why, Shed::Slo);
        assert!(predicted > ms(25), "{predicted:?}");
        // Two workers share the batches ahead.
        assert_eq!(AutoPolicy { workers: 2, ..p }.admit(33, &[], forever), Ok(()));
        assert_eq!(AutoPolicy { workers: 2, ..p }.admit(33, &[ms(9), ms(9)], forever).map_err(|e| e.0), Err(Shed::Slo));
        // A request's own deadline sheds it earlier, under another cause.
        assert_eq!(p.admit(10, &[], ms(5)).map_err(|e| e.0), Err(Shed::Deadline));
        assert_eq!(AutoPolicy { cost: None, ..p }.admit(1_000, &[], ms(1)), Ok(()));
        // Batches of one only (a proportional fit: a full batch would be 40 ms) say nothing of a full batch.
        let ones = Cost { fixed: 0.0, per_request: 0.002_5, spread: 0.0, samples: 100, largest: 1, sloped: false };
        assert_eq!(AutoPolicy { cost: Some(ones), ..p }.admit(40, &[], forever), Ok(()));
        let fulls = Cost { largest: 16, ..ones };
        assert_eq!(AutoPolicy { cost: Some(fulls), ..p }.admit(40, &[], forever).map_err(|e| e.0), Err(Shed::Slo));
    }

    #[test]
    fn when_no_batch_can_meet_the_objective_a_round_of_full_batches_stays_queued() {
        // 2 ms + 2 ms a request: a full batch takes 34 ms, over the 25 ms objective.
        let cost = Cost { fixed: 0.002, per_request: 0.002, spread: 0.0, samples: 100, largest: 16, sloped: true };
        let p = AutoPolicy { cost: Some(cost), workers: 2, ..policy(10_000.0) };
        assert_eq!(p.admit(31, &[ms(30), ms(30)], Duration::MAX), Ok(()));
        assert_eq!(p.admit(32, &[], Duration::MAX).map_err(|e| e.0), Err(Shed::Slo));
        // So with a spread as large as a batch: 10 ms + 20 ms.
        let erratic = AutoPolicy { cost: policy(0.0).cost.map(|c| Cost { spread: 0.02, ..c }), ..policy(10_000.0) };
        assert_eq!(erratic.admit(15, &[ms(10)], Duration::MAX), Ok(()));
        assert_eq!(erratic.admit(16, &[ms(10)], Duration::MAX).map_err(|e| e.0), Err(Shed::Slo));
        // Where a full batch meets it, the prediction decides as before.
        assert_eq!(policy(10_000.0).admit(31, &[ms(10)], Duration::MAX).map_err(|e| e.0), Err(Shed::Slo));
    }

    #[test]
    fn the_margin_is_the_deviation_of_the_chain_of_batches_not_one_per_batch() {
        let p = policy(10_000.0);
        let spread = AutoPolicy { cost: p.cost.map(|c| Cost { spread: 0.001_5, ..c }), ..p };
        // 16 ahead, 2 ms left of the running batch: 22 ms predicted. A margin per batch (3 × 1.5 = 4.5 ms) would
        // shed it; the deviation of the sum (√3 × 1.5 = 2.6 ms) does not.
        assert_eq!(spread.admit(16, &[ms(2)], Duration::MAX), Ok(()));
        assert_eq!(spread.admit(16, &[ms(4)], Duration::MAX).map_err(|e| e.0), Err(Shed::Slo));
    }
}
