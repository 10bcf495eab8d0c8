//! The scripted source of the batching tests: requests that arrive at fixed virtual instants, and a clock that
//! only waiting moves. The fixed policy's tests and the adaptive rule's simulations ([`crate::adaptive`]) run
//! the real collector ([`super::collect_with`]) on it.

use std::{
    cell::RefCell,
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::{Pending, Recv, Skip, Source};

/// A request on virtual time: id, arrival instant, an optional skip reason, its sample's shape and its deadline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub(crate) id: usize,
    pub(crate) at: Instant,
    pub(crate) skip: Option<Skip>,
    pub(crate) shape: u8,
    pub(crate) deadline: Option<Instant>,
}

impl Pending for Item {
    fn arrived(&self) -> Instant {
        self.at
    }
    fn skip(&self, _now: Instant) -> Option<Skip> {
        self.skip
    }
    fn batches_with(&self, first: &Self) -> bool {
        self.shape == first.shape
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// A scripted source: arrivals at fixed virtual instants; waiting advances virtual time, never real time.
pub(crate) struct Script {
    pub(crate) start: Instant,
    pub(crate) now: RefCell<Instant>,
    arrivals: RefCell<VecDeque<Item>>,
    closed: bool,
}

impl Script {
    /// Arrivals at these offsets in µs, each with an optional skip reason.
    pub(crate) fn new(arrivals_us: &[(u64, Option<Skip>)], closed: bool) -> Self {
        let shaped: Vec<_> = arrivals_us.iter().map(|&(us, skip)| (us, skip, 0)).collect();
        Self::shaped(&shaped, closed)
    }

    /// Arrivals of samples of several shapes: (µs, skip, shape).
    pub(crate) fn shaped(arrivals_us: &[(u64, Option<Skip>, u8)], closed: bool) -> Self {
        let start = Instant::now();
        let arrivals = arrivals_us
            .iter()
            .enumerate()
            .map(|(id, &(us, skip, shape))| Item {
                id,
                at: start + Duration::from_micros(us),
                skip,
                shape,
                deadline: None,
            })
            .collect();
        Self::of(start, arrivals, closed)
    }

    /// These items, in order of arrival, on a clock that starts at `start`.
    pub(crate) fn of(start: Instant, arrivals: VecDeque<Item>, closed: bool) -> Self {
        Self { start, now: RefCell::new(start), arrivals: RefCell::new(arrivals), closed }
    }

    pub(crate) fn elapsed_us(&self) -> u128 {
        (*self.now.borrow() - self.start).as_micros()
    }

    /// Moves the clock on to `at`, when it is later (a worker that becomes free then).
    pub(crate) fn advance_to(&self, at: Instant) {
        let mut now = self.now.borrow_mut();
        *now = (*now).max(at);
    }

    fn take(&self) -> Item {
        let item = self.arrivals.borrow_mut().pop_front().expect("checked non-empty");
        self.advance_to(item.at);
        item
    }
}

impl Source for Script {
    type Item = Item;
    fn recv(&self) -> Option<Item> {
        if self.arrivals.borrow().is_empty() {
            assert!(self.closed, "test would wait forever");
            return None;
        }
        Some(self.take())
    }
    fn recv_until(&self, until: Instant) -> Recv<Item> {
        let next_at = self.arrivals.borrow().front().map(|i| i.at);
        match next_at {
            Some(at) if at <= until => Recv::Item(self.take()),
            None if self.closed => Recv::Closed,
            _ => {
                self.advance_to(until);
                Recv::Timeout
            }
        }
    }
    fn now(&self) -> Instant {
        *self.now.borrow()
    }
    fn put_back(&self, item: Item) {
        self.arrivals.borrow_mut().push_front(item);
    }
}
