//! The closed loop: `concurrency` senders, each sending its next request when the previous answer arrives.
//! Latency is counted from the send, so a stalled server slows the senders down instead of showing its stall
//! in every request that would have been sent: use the open loop to measure latency under a given load.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::{task::JoinSet, time::Instant};

use super::{one_request, Plan};
use crate::{client::Target, recorder::Recorder};

pub(super) async fn run(target: &Arc<Target>, recorder: &Arc<Recorder>, plan: &Plan, concurrency: usize) {
    let started = Arc::new(AtomicU64::new(0));
    let mut senders = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (target, recorder, plan, started) =
            (Arc::clone(target), Arc::clone(recorder), plan.clone(), Arc::clone(&started));
        senders.spawn(async move {
            loop {
                let now = Instant::now();
                if plan.stop.is_set() || plan.end.is_some_and(|end| now >= end) {
                    break;
                }
                let record = now >= plan.record_from;
                if record && plan.requests.is_some_and(|n| started.fetch_add(1, Ordering::Relaxed) >= n) {
                    break;
                }
                one_request(Arc::clone(&target), Arc::clone(&recorder), now, record).await;
            }
        });
    }
    while senders.join_next().await.is_some() {}
}
