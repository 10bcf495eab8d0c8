//! The open loop: request i is due at start + i / rate and is sent then (or as soon as the sender can, which
//! is recorded as schedule lag), each in its own task, so that the number in flight follows the server and
//! not a connection count (wrk2's fix for coordinated omission).

use std::{sync::Arc, time::Duration};

use tokio::{task::JoinSet, time::Instant};

use super::{one_request, Plan};
use crate::{client::Target, recorder::Recorder};

/// How long to wait for stragglers beyond the request timeout once sending stops.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Slots of the schedule due before `at`: i with start + i / rate < at.
fn slots_before(plan: &Plan, at: Instant, rate: f64) -> u64 {
    let seconds = at.saturating_duration_since(plan.start).as_secs_f64();
    (seconds * rate - 1e-9).ceil().max(0.0) as u64
}

/// Runs the schedule and returns how many recorded slots were due before the end but never sent (the sender
/// was held back by `max_in_flight` until the end of the run).
pub(super) async fn run(
    target: &Arc<Target>,
    recorder: &Arc<Recorder>,
    plan: &Plan,
    rate: f64,
    max_in_flight: usize,
) -> u64 {
    let period = 1.0 / rate.max(1e-6);
    let mut in_flight = JoinSet::new();
    let mut recorded = 0u64;
    'schedule: for i in 0u64.. {
        let due = plan.start + Duration::from_secs_f64(i as f64 * period);
        let record = due >= plan.record_from;
        let finished =
            plan.end.is_some_and(|end| due >= end) || (record && plan.requests.is_some_and(|n| recorded >= n));
        if finished || plan.stop.is_set() {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
            if plan.stop.is_set() {
                break;
            }
        }
        while in_flight.try_join_next().is_some() {}
        // Held back by the cap: wait for a slot, but never past the end of the run.
        while in_flight.len() >= max_in_flight.max(1) {
            match plan.end {
                Some(end) if tokio::time::timeout_at(end, in_flight.join_next()).await.is_err() => break 'schedule,
                Some(_) => {}
                None => drop(in_flight.join_next().await),
            }
        }
        if plan.end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        if record {
            recorder.record_lag(Instant::now().saturating_duration_since(due));
            recorded += 1;
        }
        in_flight.spawn(one_request(Arc::clone(target), Arc::clone(recorder), due, record));
    }
    let drain = async { while in_flight.join_next().await.is_some() {} };
    if tokio::time::timeout(target.timeout() + DRAIN_GRACE, drain).await.is_err() {
        in_flight.abort_all();
    }
    match plan.end {
        Some(end) if !plan.stop.is_set() => {
            let due = slots_before(plan, end, rate).saturating_sub(slots_before(plan, plan.record_from, rate));
            due.saturating_sub(recorded)
        }
        _ => 0,
    }
}
