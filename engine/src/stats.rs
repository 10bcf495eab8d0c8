//! Per-model counters kept by the engine (lock-free atomics), read by the server's metrics and by tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one model since it was loaded.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Requests accepted into the queue.
    pub accepted: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected_queue_full: AtomicU64,
    /// Requests skipped because their caller had gone before dispatch.
    pub caller_gone: AtomicU64,
    /// Requests skipped because their deadline passed in the queue.
    pub expired: AtomicU64,
    /// Batches run.
    pub batches: AtomicU64,
    /// Requests run, summed over batches (`batched / batches` is the mean batch size).
    pub batched: AtomicU64,
    /// Batches the backend failed (or panicked) on.
    pub failed_batches: AtomicU64,
    /// Worker threads restarted after a panic outside the backend call.
    pub restarts: AtomicU64,
}

/// A copy of [`ModelStats`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`ModelStats::accepted`].
    pub accepted: u64,
    /// See [`ModelStats::rejected_queue_full`].
    pub rejected_queue_full: u64,
    /// See [`ModelStats::caller_gone`].
    pub caller_gone: u64,
    /// See [`ModelStats::expired`].
    pub expired: u64,
    /// See [`ModelStats::batches`].
    pub batches: u64,
    /// See [`ModelStats::batched`].
    pub batched: u64,
    /// See [`ModelStats::failed_batches`].
    pub failed_batches: u64,
    /// See [`ModelStats::restarts`].
    pub restarts: u64,
}

impl ModelStats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: get(&self.accepted),
            rejected_queue_full: get(&self.rejected_queue_full),
            caller_gone: get(&self.caller_gone),
            expired: get(&self.expired),
            batches: get(&self.batches),
            batched: get(&self.batched),
            failed_batches: get(&self.failed_batches),
            restarts: get(&self.restarts),
        }
    }
}
