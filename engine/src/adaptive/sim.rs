//! Simulations of the adaptive rule on virtual time: the real collector ([`collect_with`]) on the scripted source,
//! workers that run each batch for a scripted cost (a line with seeded jitter), and the cost fit and arrival rate
//! fed as the workers feed them, each at the instant it happens. Poisson and bursty arrivals from seeded
//! generators at several shares of the capacity; every fixed setting of a grid runs on the same arrivals, so that
//! "some fixed setting meets the objective here" is decided in the same simulation.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::AutoPolicy;
use crate::{
    batcher::{
        collect_with,
        script::{Item, Script},
        BatchPolicy, Recv, Rule, Source,
    },
    cost::{ArrivalRate, CostFit},
};

/// The scripted cost: 2 ms a batch plus 0.5 ms a request, each run off by up to ±10 %.
const FIXED_US: f64 = 2_000.0;
const PER_REQUEST_US: f64 = 500.0;
const JITTER: f64 = 0.1;
const BATCH: usize = 16;
const SLO: Duration = Duration::from_millis(25);
/// Seconds of arrivals per run.
const HORIZON: f64 = 2.0;

/// Requests a second that `workers` running full batches can serve.
fn capacity(workers: usize) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let (batch, workers) = (BATCH as f64, workers as f64);
    workers * batch * 1e6 / (FIXED_US + PER_REQUEST_US * batch)
}

#[derive(Debug, Clone, Copy)]
enum Arrivals {
    /// Exponential gaps at the mean rate.
    Poisson,
    /// A Poisson stream whose rate switches between 1.7 and 0.3 times the mean, in phases of random length
    /// (100 ms on average).
    Bursty,
}

/// Arrival instants over [`HORIZON`] at a mean of `rate` a second.
fn arrivals(kind: Arrivals, rate: f64, seed: u64, start: Instant) -> Vec<Instant> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut exp = |mean: f64| -mean * (1.0 - rng.f64()).ln();
    let (mut at, mut out) = (0.0, Vec::new());
    let (mut high, mut phase_end) = (true, 0.0);
    while at < HORIZON {
        let now_rate = match kind {
            Arrivals::Poisson => rate,
            Arrivals::Bursty => {
                while at >= phase_end {
                    high = !high;
                    phase_end += exp(0.1);
                }
                rate * if high { 1.7 } else { 0.3 }
            }
        };
        at += exp(1.0 / now_rate);
        out.push(start + Duration::from_secs_f64(at));
    }
    out
}

/// What the workers have told the model by one instant: the arrivals and the batches finished by then.
struct Known {
    arrivals: VecDeque<Instant>,
    rate: ArrivalRate,
    /// Batches running or done: (end, size, time taken), fed to the fit once their end has passed.
    running: Vec<(Instant, usize, Duration)>,
    fit: CostFit,
}

impl Known {
    fn catch_up(&mut self, now: Instant) {
        while self.arrivals.front().is_some_and(|&at| at <= now) {
            self.rate.record(self.arrivals.pop_front().expect("checked"));
        }
        self.running.sort_by_key(|r| r.0);
        let done = self.running.partition_point(|r| r.0 <= now);
        for (_, n, took) in self.running.drain(..done) {
            self.fit.record(n, took);
        }
    }
}

/// The scripted source behind the front door: each request is admitted or shed as at its arrival, by `admit`
/// given the requests queued ahead of it then (admitted before it and not yet taken by a collector).
struct Admitting<'a, F> {
    script: &'a Script,
    admit: F,
    /// When each admitted request was taken, in order.
    taken: RefCell<Vec<Instant>>,
    shed: Cell<usize>,
}

impl<F: Fn(usize) -> bool> Admitting<'_, F> {
    fn keep(&self, item: &Item) -> bool {
        let mut taken = self.taken.borrow_mut();
        let queued = taken.len() - taken.partition_point(|&t| t <= item.at);
        if (self.admit)(queued) {
            taken.push(self.script.now());
            true
        } else {
            self.shed.set(self.shed.get() + 1);
            false
        }
    }
}

impl<F: Fn(usize) -> bool> Source for Admitting<'_, F> {
    type Item = Item;
    fn recv(&self) -> Option<Item> {
        loop {
            let item = self.script.recv()?;
            if self.keep(&item) {
                return Some(item);
            }
        }
    }
    fn recv_until(&self, until: Instant) -> Recv<Item> {
        loop {
            match self.script.recv_until(until) {
                Recv::Item(item) if !self.keep(&item) => {}
                other => return other,
            }
        }
    }
    fn now(&self) -> Instant {
        self.script.now()
    }
    fn put_back(&self, _item: Item) {
        unreachable!("every simulated request has one shape");
    }
}

/// One simulated run.
struct Outcome {
    /// Arrival to answer, per admitted request.
    latencies: Vec<Duration>,
    /// Requests shed at admission.
    shed: usize,
    /// Per batch, how long it was held after a worker could have run its oldest request.
    held: Vec<Duration>,
}

impl Outcome {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// Runs `workers` workers on `times` by the rule `rule` makes of what is known at each step; with `shedding`,
/// admission sheds as the adaptive rule's does.
fn simulate<R: Rule>(
    times: &[Instant],
    start: Instant,
    (workers, shedding): (usize, bool),
    seed: u64,
    rule: impl Fn(&Known, Instant) -> R,
) -> Outcome {
    let items =
        times.iter().enumerate().map(|(id, &at)| Item { id, at, skip: None, shape: 0, deadline: None }).collect();
    let script = Script::of(start, items, true);
    let known = RefCell::new(Known {
        arrivals: times.iter().copied().collect(),
        rate: ArrivalRate::default(),
        running: Vec::new(),
        fit: CostFit::default(),
    });
    let admit = |queued| !shedding || auto(workers)(&known.borrow(), script.now()).admit(queued, Duration::MAX).is_ok();
    let source = Admitting { script: &script, admit, taken: RefCell::default(), shed: Cell::new(0) };
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let mut free = vec![start; workers];
    let mut outcome = Outcome { latencies: Vec::with_capacity(times.len()), shed: 0, held: Vec::new() };
    loop {
        let (worker, &free_at) = free.iter().enumerate().min_by_key(|w| *w.1).expect("a worker");
        script.advance_to(free_at);
        let policy = || {
            let now = source.now();
            let mut known = known.borrow_mut();
            known.catch_up(now);
            rule(&known, now)
        };
        let Some(batch) = collect_with(policy, &source, |item, why| panic!("{item:?} skipped: {why:?}")) else {
            break;
        };
        let (dispatched, n) = (source.now(), batch.len());
        #[allow(clippy::cast_precision_loss)]
        let mean = FIXED_US + PER_REQUEST_US * n as f64;
        let took = Duration::from_secs_f64(mean * (1.0 + JITTER * (2.0 * rng.f64() - 1.0)) / 1e6);
        free[worker] = dispatched + took;
        known.borrow_mut().running.push((dispatched + took, n, took));
        outcome.held.push(dispatched - batch[0].at.max(free_at));
        outcome.latencies.extend(batch.iter().map(|item| dispatched + took - item.at));
    }
    outcome.shed = source.shed.get();
    assert_eq!(outcome.latencies.len() + outcome.shed, times.len(), "every request answered or shed, once");
    outcome
}

fn auto(workers: usize) -> impl Fn(&Known, Instant) -> AutoPolicy {
    move |known, now| AutoPolicy {
        max_batch_size: BATCH,
        slo_p99: SLO,
        cost: known.fit.cost(),
        arrivals_per_second: known.rate.per_second(now),
        workers,
    }
}

/// The fixed settings tried: batch sizes 1 to 16, delays 0 to 8 ms.
fn fixed_grid() -> Vec<BatchPolicy> {
    let sizes = [1, 2, 4, 8, 16];
    let delays_us = [0, 1_000, 2_000, 4_000, 8_000];
    sizes
        .iter()
        .flat_map(|&max_batch_size| {
            delays_us.iter().map(move |&us| BatchPolicy { max_batch_size, max_delay: Duration::from_micros(us) })
        })
        .collect()
}

/// At each share of the capacity: the best fixed setting's p99 and the rule's, on the same arrivals. Where a
/// fixed setting meets the objective, the rule must. Bursts reach 1.7 times the mean rate, so bursty arrivals
/// are tried at lower shares: at 0.6 their bursts already pass the capacity.
fn meets_the_objective_wherever_a_fixed_setting_does(kind: Arrivals, workers: usize, seed: u64) {
    let shares = match kind {
        Arrivals::Poisson => [0.1, 0.5, 0.8, 0.95],
        Arrivals::Bursty => [0.1, 0.3, 0.5, 0.6],
    };
    let mut met_somewhere = 0;
    for share in shares {
        let start = Instant::now();
        let times = arrivals(kind, share * capacity(workers), seed, start);
        let best = fixed_grid()
            .into_iter()
            .map(|p| (simulate(&times, start, (workers, false), seed, |_, _| p).percentile(0.99), p))
            .min_by_key(|r| r.0)
            .expect("a grid");
        let adaptive = simulate(&times, start, (workers, false), seed, auto(workers)).percentile(0.99);
        eprintln!("{kind:?} ×{workers} at {share}: rule p99 {adaptive:?}, best fixed {best:?}");
        if best.0 <= SLO {
            met_somewhere += 1;
            assert!(adaptive <= SLO, "{kind:?} at {share} of capacity: p99 {adaptive:?} > {SLO:?}; {best:?} meets it");
        }
    }
    assert!(
        met_somewhere >= 3,
        "the scenario must test something: a fixed setting met the objective at {met_somewhere} rates"
    );
}

#[test]
fn poisson_arrivals_meet_the_objective_wherever_a_fixed_setting_does() {
    meets_the_objective_wherever_a_fixed_setting_does(Arrivals::Poisson, 1, 7);
}

#[test]
fn bursty_arrivals_meet_the_objective_wherever_a_fixed_setting_does() {
    meets_the_objective_wherever_a_fixed_setting_does(Arrivals::Bursty, 1, 11);
}

#[test]
fn two_workers_meet_the_objective_wherever_a_fixed_setting_does() {
    meets_the_objective_wherever_a_fixed_setting_does(Arrivals::Poisson, 2, 13);
    meets_the_objective_wherever_a_fixed_setting_does(Arrivals::Bursty, 2, 17);
}

#[test]
fn at_low_load_batches_go_at_once() {
    for kind in [Arrivals::Poisson, Arrivals::Bursty] {
        let start = Instant::now();
        let times = arrivals(kind, 0.1 * capacity(1), 3, start);
        let outcome = simulate(&times, start, (1, false), 3, auto(1));
        assert!(outcome.held.iter().all(Duration::is_zero), "{kind:?}: a batch waited for companions");
        let one_by_one = BatchPolicy { max_batch_size: 1, max_delay: Duration::ZERO };
        let alone = simulate(&times, start, (1, false), 3, |_, _| one_by_one).percentile(0.5);
        let median = outcome.percentile(0.5);
        assert!(median.as_secs_f64() <= 1.2 * alone.as_secs_f64(), "{kind:?}: p50 {median:?} against {alone:?} alone");
    }
}

#[test]
fn a_fixed_delay_makes_a_lone_request_wait_where_the_rule_does_not() {
    // The check above can fail: the grid's usual setting holds batches at low load.
    let start = Instant::now();
    let times = arrivals(Arrivals::Poisson, 0.1 * capacity(1), 3, start);
    let usual = BatchPolicy { max_batch_size: BATCH, max_delay: Duration::from_millis(2) };
    let outcome = simulate(&times, start, (1, false), 3, |_, _| usual);
    assert!(outcome.held.iter().filter(|h| !h.is_zero()).count() > outcome.held.len() / 2);
}

#[test]
fn overload_is_shed_early_and_what_is_admitted_meets_the_objective() {
    let start = Instant::now();
    let times = arrivals(Arrivals::Poisson, 1.5 * capacity(1), 19, start);
    let unshed = simulate(&times, start, (1, false), 19, auto(1));
    let shed = simulate(&times, start, (1, true), 19, auto(1));
    #[allow(clippy::cast_precision_loss)]
    let share = shed.shed as f64 / times.len() as f64;
    eprintln!(
        "at 1.5 × capacity: p99 {:?} without shedding, {:?} with {share:.2} shed",
        unshed.percentile(0.99),
        shed.percentile(0.99)
    );
    assert!(unshed.percentile(0.99) > 4 * SLO, "without shedding the queue grows");
    assert_eq!(unshed.shed, 0);
    assert!(shed.percentile(0.99) <= SLO, "p99 {:?} of what was admitted", shed.percentile(0.99));
    // A third of the load is more than the capacity; shedding much more would refuse what could be served.
    assert!((0.3..0.5).contains(&share), "{share:.2} shed");
}
