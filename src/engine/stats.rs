//! What the engine reports about itself, read by the HTTP side without a lock: the queue (also
//! the 429 limit), the batch, the KV pool and the prefix cache, and retirement counts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

use super::emit::Retired;
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
    finished: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    non_finite: AtomicU64,
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
    pub finished: u64,
    pub cancelled: u64,
    pub failed: u64,
    /// Requests ended because the model's logits were not finite (also counted in `failed`).
    pub non_finite: u64,
}

impl EngineStats {
    /// Count a submission unless the queue already holds `limit`; false when full.
    pub fn try_enqueue(&self, limit: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < limit).then_some(q + 1)
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

    pub fn count_retired(&self, retired: &[Retired]) {
        for r in retired {
            let c = match r {
                Retired::Finished(_) => &self.finished,
                Retired::Cancelled => &self.cancelled,
                Retired::Failed => &self.failed,
                Retired::NonFinite => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    &self.non_finite
                }
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let r = Ordering::Relaxed;
        StatsSnapshot {
            queued: self.queued.load(r),
            running: self.running.load(r),
            waiting: self.waiting.load(r),
            kv_blocks_total: self.kv_blocks_total.load(r),
            kv_blocks_used: self.kv_blocks_used.load(r),
            kv_blocks_cached: self.kv_blocks_cached.load(r),
            kv_block_size: self.block_size.load(r),
            preemptions: self.preemptions.load(r),
            finished: self.finished.load(r),
            cancelled: self.cancelled.load(r),
            failed: self.failed.load(r),
            non_finite: self.non_finite.load(r),
        }
    }
}
