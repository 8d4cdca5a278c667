//! What the engine reports about itself, read by the HTTP side without a lock: the queue (also
//! the 429 limit), the batch, the KV pool and the prefix cache; and how requests ended, from
//! the one count `/metrics` reads too (`outcomes`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::outcomes::{OutcomeCounts, Outcomes, CANCELLED, NON_FINITE};
use super::scheduler::Scheduler;

#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests submitted and not yet admitted or dropped (the queue the limit applies to).
    queued: AtomicUsize,
    running: AtomicUsize,
    waiting: AtomicUsize,
    kv_blocks_total: AtomicUsize,
    kv_blocks_used: AtomicUsize,
    kv_blocks_cached: AtomicUsize,
    block_size: AtomicUsize,
    preemptions: AtomicU64,
    /// How requests ended (shared with the HTTP side, which counts its refusals there).
    pub outcomes: Arc<Outcomes>,
}

/// A snapshot for `/health`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub queued: usize,
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_cached: usize,
    pub kv_block_size: usize,
    pub preemptions: u64,
    /// Sequences that ended with a result.
    pub finished: u64,
    /// Requests whose client left (queued, during the prompt or while decoding).
    pub cancelled: u64,
    /// Requests that failed in the engine (a client leaving is `cancelled`).
    pub failed: u64,
    /// Requests refused before they reached the engine (invalid, queue full, unauthorized…).
    pub refused: u64,
    /// Requests ended because the model's logits were not finite (also counted in `failed`).
    pub non_finite: u64,
    /// The counts by finish reason and error type, as `/metrics` shows them.
    pub outcomes: OutcomeCounts,
}

impl EngineStats {
    pub fn new(outcomes: Arc<Outcomes>) -> EngineStats {
        EngineStats {
            outcomes,
            ..EngineStats::default()
        }
    }

    /// Count `n` submissions unless the queue would then hold more than `limit` (a request
    /// larger than the whole limit is let in alone, when the queue is empty); false when full.
    pub fn try_enqueue(&self, limit: usize, n: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= limit || q == 0).then_some(q + n)
            })
            .is_ok()
    }

    pub fn is_full(&self, limit: usize) -> bool {
        self.queued.load(Ordering::Acquire) >= limit
    }

    /// A queued request was admitted, dropped or refused.
    pub fn dequeued(&self) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| q.checked_sub(1));
    }

    pub fn publish(&self, s: &Scheduler) {
        let c = s.pool.counts();
        self.running.store(s.running.len(), Ordering::Relaxed);
        self.waiting.store(s.waiting.len(), Ordering::Relaxed);
        self.kv_blocks_total.store(c.total, Ordering::Relaxed);
        self.kv_blocks_used.store(c.used, Ordering::Relaxed);
        self.kv_blocks_cached.store(c.cached, Ordering::Relaxed);
        self.block_size
            .store(s.pool.block_size(), Ordering::Relaxed);
        self.preemptions.store(s.preemptions, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let r = Ordering::Relaxed;
        let outcomes = self.outcomes.snapshot();
        StatsSnapshot {
            queued: self.queued.load(r),
            running: self.running.load(r),
            waiting: self.waiting.load(r),
            kv_blocks_total: self.kv_blocks_total.load(r),
            kv_blocks_used: self.kv_blocks_used.load(r),
            kv_blocks_cached: self.kv_blocks_cached.load(r),
            kv_block_size: self.block_size.load(r),
            preemptions: self.preemptions.load(r),
            finished: outcomes.total_finished(),
            cancelled: outcomes.failed_as(CANCELLED),
            failed: outcomes.total_failed(),
            refused: outcomes.total_refused(),
            non_finite: outcomes.failed_as(NON_FINITE),
            outcomes,
        }
    }
}
