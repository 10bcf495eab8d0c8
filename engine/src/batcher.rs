//! The dynamic batching policy, free of threads and clocks so that it can be tested on virtual time.
//!
//! A batch holds at most `max_batch_size` requests. It is dispatched as soon as it is full, or once `max_delay`
//! has passed since the arrival of the OLDEST request in it (not since a worker started polling, which is what
//! TorchServe does), measured on a monotonic clock at microsecond resolution. Requests whose caller has gone, or
//! whose deadline has passed, are skipped before they take a place in the batch.
//!
//! A batch is one tensor, so its samples share one shape. Models that fix their input shape give every request
//! the same one and batch as if shapes did not exist; for a model that leaves the shape to the requests, a request
//! of another shape than the batch's ends the batch (dispatched at once: it waits for nothing more) and is put
//! back to start the next one, so requests keep their order and no shape waits behind another.

use std::time::{Duration, Instant};

/// How batches are formed for one model (TorchServe's `batchSize` and `maxBatchDelay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// The most requests in one batch (at least 1).
    pub max_batch_size: usize,
    /// The longest the oldest request of a batch waits for others to join it.
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    /// TorchServe's defaults: batches of 1, 100 ms delay.
    fn default() -> Self {
        Self { max_batch_size: 1, max_delay: Duration::from_millis(100) }
    }
}

/// What a collector should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing is collected yet: wait for a first request, however long.
    WaitForFirst,
    /// Wait for another request until this instant at most.
    WaitUntil(Instant),
    /// Send the batch now.
    Dispatch,
}

impl BatchPolicy {
    /// Decides the next step for a batch of `len` requests whose oldest arrived at `oldest`.
    #[must_use]
    pub fn next(&self, len: usize, oldest: Option<Instant>, now: Instant) -> Next {
        let Some(oldest) = oldest.filter(|_| len > 0) else {
            return Next::WaitForFirst;
        };
        if len >= self.max_batch_size.max(1) {
            return Next::Dispatch;
        }
        let due = oldest + self.max_delay;
        if now >= due {
            Next::Dispatch
        } else {
            Next::WaitUntil(due)
        }
    }
}

/// The batch being formed, as a dispatch rule sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forming {
    /// Requests collected so far.
    pub len: usize,
    /// When the oldest of them arrived.
    pub oldest: Option<Instant>,
    /// The earliest of their deadlines.
    pub deadline: Option<Instant>,
}

/// A dispatch rule: the fixed [`BatchPolicy`], or the adaptive one of [`crate::adaptive`]. Pure: what it decides
/// depends on its own value, the batch being formed and the instant only.
pub trait Rule {
    /// The most requests in one batch (at least 1).
    fn max_batch_size(&self) -> usize;
    /// Decides the next step for the batch `forming` at `now`.
    fn next(&self, forming: &Forming, now: Instant) -> Next;
}

impl Rule for BatchPolicy {
    fn max_batch_size(&self) -> usize {
        self.max_batch_size.max(1)
    }

    fn next(&self, forming: &Forming, now: Instant) -> Next {
        BatchPolicy::next(self, forming.len, forming.oldest, now)
    }
}

/// Why a queued request is not put into a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its caller dropped the reply channel (client disconnected).
    CallerGone,
    /// Its deadline passed while it waited.
    Expired,
}

/// A queued item as the collector sees it.
pub trait Pending {
    /// When it arrived.
    fn arrived(&self) -> Instant;
    /// Whether it should be skipped at `now`, and why.
    fn skip(&self, now: Instant) -> Option<Skip>;
    /// Whether it can share a batch with `first`, the batch's first item (their samples have one shape).
    fn batches_with(&self, first: &Self) -> bool;
    /// When its caller stops waiting for it, when it says.
    fn deadline(&self) -> Option<Instant> {
        None
    }
}

/// Outcome of a bounded wait on a [`Source`].
#[derive(Debug)]
pub enum Recv<T> {
    /// An item arrived.
    Item(T),
    /// The instant passed with nothing new.
    Timeout,
    /// The source is closed and empty.
    Closed,
}

/// Where a collector takes requests from, and its clock. The real one is a crossbeam channel with
/// `Instant::now`; tests use a scripted source on virtual time.
pub trait Source {
    /// The queued item type.
    type Item: Pending;
    /// Waits for the next item, however long; `None` when the source is closed and empty.
    fn recv(&self) -> Option<Self::Item>;
    /// Waits for the next item until `until` at most. An instant already past takes an item that is queued and
    /// waits for none.
    fn recv_until(&self, until: Instant) -> Recv<Self::Item>;
    /// The current instant of this source's clock.
    fn now(&self) -> Instant;
    /// Keeps `item`, taken but not batched, as the next one `recv` or `recv_until` returns.
    fn put_back(&self, item: Self::Item);
}

/// Collects one batch from `source` by `policy`. Skipped items are handed to `on_skip` (which answers them);
/// they never count towards the batch nor start its delay. An item that cannot share the batch (another shape)
/// is put back and the batch returned at once. Returns `None` once the source is closed and empty.
///
/// Once the delay is spent, items already queued still join the batch (up to its size) without any wait: the
/// delay bounds how long a batch waits for requests yet to come. Under load the oldest request has always waited
/// longer than the delay, and leaving the queued ones behind would shrink every batch to one request.
pub fn collect<S: Source>(
    policy: &BatchPolicy,
    source: &S,
    on_skip: impl FnMut(S::Item, Skip),
) -> Option<Vec<S::Item>> {
    collect_with(|| *policy, source, on_skip)
}

/// [`collect`] with a rule read afresh at every step, so that a change made while a worker waits applies to
/// the batch it is forming (and an adaptive rule sees the latest costs and arrival rate).
pub fn collect_with<S: Source, R: Rule>(
    policy: impl Fn() -> R,
    source: &S,
    mut on_skip: impl FnMut(S::Item, Skip),
) -> Option<Vec<S::Item>> {
    let mut batch: Vec<S::Item> = Vec::new();
    let mut forming = Forming::default();
    loop {
        let policy = policy();
        let max = policy.max_batch_size();
        forming.len = batch.len();
        let item = match policy.next(&forming, source.now()) {
            Next::Dispatch if batch.len() >= max => return Some(batch),
            // A wait until now takes what is queued already and nothing else.
            Next::Dispatch => match source.recv_until(source.now()) {
                Recv::Item(item) => item,
                Recv::Timeout | Recv::Closed => return Some(batch),
            },
            Next::WaitForFirst => source.recv()?,
            Next::WaitUntil(until) => match source.recv_until(until) {
                Recv::Item(item) => item,
                Recv::Timeout => continue,
                Recv::Closed => return Some(batch),
            },
        };
        match item.skip(source.now()) {
            Some(why) => on_skip(item, why),
            None if batch.first().is_some_and(|first| !item.batches_with(first)) => {
                source.put_back(item);
                return Some(batch);
            }
            None => {
                forming.oldest = forming.oldest.or(Some(item.arrived()));
                forming.deadline = match (forming.deadline, item.deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                batch.push(item);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod script;

#[cfg(test)]
mod tests {
    use super::{
        script::{Item, Script},
        *,
    };

    fn policy(size: usize, delay_us: u64) -> BatchPolicy {
        BatchPolicy { max_batch_size: size, max_delay: Duration::from_micros(delay_us) }
    }

    fn ids(batch: &[Item]) -> Vec<usize> {
        batch.iter().map(|i| i.id).collect()
    }

    fn no_skip(item: Item, why: Skip) {
        panic!("unexpected skip of {item:?}: {why:?}");
    }

    #[test]
    fn full_batch_goes_without_waiting() {
        let src = Script::new(&[(0, None), (10, None), (20, None), (5_000, None)], false);
        let batch = collect(&policy(3, 1_000_000), &src, no_skip).expect("batch");
        assert_eq!(ids(&batch), vec![0, 1, 2]);
        assert_eq!(src.elapsed_us(), 20, "dispatched when the third arrived, not at the delay");
    }

    #[test]
    fn never_more_than_max_batch_size() {
        let arrivals: Vec<_> = (0..50).map(|i| (i, None)).collect();
        let src = Script::new(&arrivals, true);
        let mut seen = Vec::new();
        while let Some(batch) = collect(&policy(8, 1_000), &src, no_skip) {
            assert!(batch.len() <= 8 && !batch.is_empty());
            seen.extend(ids(&batch));
        }
        assert_eq!(seen, (0..50).collect::<Vec<_>>(), "FIFO, nothing lost or repeated");
    }

    #[test]
    fn deadline_counts_from_the_oldest_arrival() {
        // The first request arrives at 1 ms; the worker became free at 0. Delay 5 ms: dispatch at 6 ms exactly.
        let src = Script::new(&[(1_000, None), (2_000, None), (9_000, None)], false);
        let batch = collect(&policy(16, 5_000), &src, no_skip).expect("batch");
        assert_eq!(ids(&batch), vec![0, 1]);
        assert_eq!(src.elapsed_us(), 6_000);
    }

    #[test]
    fn a_backlog_whose_delay_is_spent_goes_at_once_with_what_is_queued() {
        // Two requests arrived long before a worker came to collect: the oldest's delay is already spent, yet both
        // go together; the third, not there yet, is not awaited.
        let src = Script::new(&[(0, None), (100, None), (60_000, None)], false);
        *src.now.borrow_mut() = src.start + Duration::from_micros(50_000);
        let batch = collect(&policy(16, 5_000), &src, no_skip).expect("batch");
        assert_eq!(ids(&batch), vec![0, 1]);
        assert_eq!(src.elapsed_us(), 50_000);
    }

    #[test]
    fn a_backlog_whose_delay_is_spent_still_fills_batches_to_the_size() {
        let arrivals: Vec<_> = (0..20).map(|i| (i, None)).collect();
        let src = Script::new(&arrivals, true);
        *src.now.borrow_mut() = src.start + Duration::from_micros(50_000);
        let mut sizes = Vec::new();
        while let Some(batch) = collect(&policy(8, 1_000), &src, no_skip) {
            sizes.push(batch.len());
        }
        assert_eq!(sizes, vec![8, 8, 4]);
    }

    #[test]
    fn zero_delay_dispatches_what_is_there() {
        let src = Script::new(&[(0, None), (0, None), (1, None)], false);
        let batch = collect(&policy(16, 0), &src, no_skip).expect("batch");
        assert_eq!(ids(&batch), vec![0, 1], "the one at 1 µs is not awaited");
        assert_eq!(src.elapsed_us(), 0);
    }

    #[test]
    fn skipped_requests_take_no_place_and_start_no_delay() {
        let src = Script::new(
            &[(0, Some(Skip::CallerGone)), (3_000, None), (4_000, Some(Skip::Expired)), (5_000, None), (6_000, None)],
            false,
        );
        let mut skipped = Vec::new();
        let batch = collect(&policy(2, 10_000), &src, |item, why| skipped.push((item.id, why))).expect("batch");
        assert_eq!(ids(&batch), vec![1, 3]);
        assert_eq!(skipped, vec![(0, Skip::CallerGone), (2, Skip::Expired)]);
        assert_eq!(src.elapsed_us(), 5_000);
    }

    #[test]
    fn skipped_oldest_does_not_shorten_the_delay() {
        // The first live request arrives at 8 ms; delay 5 ms must count from 8 ms, not from the gone one at 0.
        let src = Script::new(&[(0, Some(Skip::CallerGone)), (8_000, None), (12_000, None), (20_000, None)], false);
        let batch = collect(&policy(16, 5_000), &src, |_, _| {}).expect("batch");
        assert_eq!(ids(&batch), vec![1, 2]);
        assert_eq!(src.elapsed_us(), 13_000);
    }

    #[test]
    fn closed_source_flushes_then_ends() {
        let src = Script::new(&[(0, None), (10, None)], true);
        let batch = collect(&policy(16, 1_000_000), &src, no_skip).expect("batch");
        assert_eq!(ids(&batch), vec![0, 1]);
        assert!(collect(&policy(16, 1_000_000), &src, no_skip).is_none());
    }

    /// The policy in force at each virtual instant: `before` until `at_us`, `after` from then on, as a
    /// `Model::set_policy` at that instant would make it.
    fn changes_at(src: &Script, at_us: u128, before: BatchPolicy, after: BatchPolicy) -> impl Fn() -> BatchPolicy + '_ {
        move || if src.elapsed_us() < at_us { before } else { after }
    }

    #[test]
    fn a_larger_size_set_while_waiting_for_the_first_request_fills_the_batch_being_formed() {
        // Batches of one until 500 µs, while the collector waits for a first request; then of four. The request
        // at 1 ms must not go alone: the batch waits for the fourth and goes when it arrives.
        let src = Script::new(&[(1_000, None), (1_100, None), (1_200, None), (1_300, None), (1_400, None)], false);
        let policy = changes_at(&src, 500, policy(1, 0), policy(4, 1_000_000));
        let batch = collect_with(policy, &src, no_skip).expect("batch");
        assert_eq!(ids(&batch), vec![0, 1, 2, 3]);
        assert_eq!(src.elapsed_us(), 1_300);
    }

    #[test]
    fn a_delay_shortened_in_the_middle_of_a_batch_dispatches_it_at_the_new_deadline() {
        // A 20 ms delay until 5 ms, then 8 ms. The batch holds two requests when it changes; the next arrival
        // (6 ms) joins, and the batch goes 8 ms after its oldest arrival, not 20 ms.
        let src = Script::new(&[(0, None), (1_000, None), (6_000, None), (50_000, None)], false);
        let policy = changes_at(&src, 5_000, policy(16, 20_000), policy(16, 8_000));
        let batch = collect_with(policy, &src, no_skip).expect("batch");
        assert_eq!(ids(&batch), vec![0, 1, 2]);
        assert_eq!(src.elapsed_us(), 8_000);
    }

    #[test]
    fn policy_next_is_pure() {
        let t0 = Instant::now();
        let p = policy(4, 2_000);
        assert_eq!(p.next(0, None, t0), Next::WaitForFirst);
        assert_eq!(p.next(1, Some(t0), t0), Next::WaitUntil(t0 + Duration::from_micros(2_000)));
        assert_eq!(p.next(3, Some(t0), t0 + Duration::from_micros(2_000)), Next::Dispatch);
        assert_eq!(p.next(4, Some(t0), t0), Next::Dispatch);
        // A batch size of 0 in a config behaves as 1, never as "wait forever".
        assert_eq!(policy(0, 2_000).next(1, Some(t0), t0), Next::Dispatch);
    }

    #[test]
    fn a_request_of_another_shape_ends_the_batch_and_starts_the_next() {
        // Shapes 0 0 1 0 1 1: each change of shape dispatches the batch at that arrival, never waiting for its
        // delay, and the request of the new shape is the first of the next batch.
        let src = Script::shaped(
            &[(0, None, 0), (100, None, 0), (200, None, 1), (300, None, 0), (400, None, 1), (500, None, 1)],
            true,
        );
        let mut batches = Vec::new();
        while let Some(batch) = collect(&policy(4, 1_000), &src, no_skip) {
            batches.push((ids(&batch), src.elapsed_us()));
        }
        assert_eq!(batches, vec![(vec![0, 1], 200), (vec![2], 300), (vec![3], 400), (vec![4, 5], 500)]);
    }

    #[test]
    fn a_skipped_request_of_another_shape_does_not_end_the_batch() {
        let src = Script::shaped(&[(0, None, 0), (100, Some(Skip::CallerGone), 1), (200, None, 0)], true);
        let mut skipped = Vec::new();
        let batch = collect(&policy(2, 1_000), &src, |item, _| skipped.push(item.id)).expect("batch");
        assert_eq!((ids(&batch), skipped), (vec![0, 2], vec![1]));
    }

    proptest::proptest! {
        #[test]
        fn batches_never_mix_shapes_and_keep_the_order(
            arrivals in proptest::collection::vec((0u64..2_000, 0u8..3), 1..120),
            size in 1usize..10,
            delay in 0u64..3_000,
        ) {
            let mut at = 0;
            let arrivals: Vec<_> = arrivals.iter().map(|&(gap, shape)| { at += gap; (at, None, shape) }).collect();
            let src = Script::shaped(&arrivals, true);
            let mut next_id = 0;
            while let Some(batch) = collect(&policy(size, delay), &src, no_skip) {
                proptest::prop_assert!(!batch.is_empty() && batch.len() <= size);
                proptest::prop_assert!(batch.iter().all(|item| item.shape == batch[0].shape), "{:?}", batch);
                for item in &batch {
                    proptest::prop_assert_eq!(item.id, next_id);
                    next_id += 1;
                }
            }
            proptest::prop_assert_eq!(next_id, arrivals.len());
        }
    }

    proptest::proptest! {
        #[test]
        fn batches_respect_size_order_and_deadline(
            gaps in proptest::collection::vec(0u64..3_000, 1..120),
            size in 1usize..20,
            delay in 0u64..5_000,
        ) {
            let mut at = 0;
            let arrivals: Vec<_> = gaps.iter().map(|g| { at += g; (at, None) }).collect();
            let src = Script::new(&arrivals, true);
            let p = policy(size, delay);
            let mut next_id = 0;
            while let Some(batch) = collect(&p, &src, no_skip) {
                proptest::prop_assert!(!batch.is_empty() && batch.len() <= size);
                let oldest_us = (batch[0].at - src.start).as_micros();
                // Dispatched no later than the oldest's deadline, unless it only arrived after that instant.
                let dispatched = src.elapsed_us();
                proptest::prop_assert!(dispatched <= (oldest_us + u128::from(delay)).max(oldest_us));
                for item in &batch {
                    proptest::prop_assert_eq!(item.id, next_id);
                    next_id += 1;
                }
            }
            proptest::prop_assert_eq!(next_id, arrivals.len());
        }
    }
}
