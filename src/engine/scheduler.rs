//! Iteration-level scheduling: every step, the decode token of each running sequence first, then
//! chunks of the prompts still being computed, then newly admitted requests (first come, first
//! served) while the token budget, the sequence limit and the KV pool allow. A long prompt is cut
//! into chunks, so it never holds the others' decoding for more than one step.
//!
//! One request's choices (`n` > 1) take at most half the sequence slots at once; its other
//! choices wait while requests behind them are admitted.
//!
//! A request is admitted only when blocks for its whole prompt are free (beyond one block per
//! running sequence, kept for their decoding); a decoding sequence that finds the pool empty
//! preempts the youngest running sequence, which gives its blocks back and goes to the front of
//! the queue, to be recomputed later (its full blocks usually still cached).

use std::collections::VecDeque;

use super::kv_pool::KvPool;
use super::sequence::Sequence;

/// Limits the scheduler keeps.
#[derive(Clone, Copy, Debug)]
pub struct SchedLimits {
    pub max_seqs: usize,
    pub max_batch_tokens: usize,
}

/// One running sequence's share of a step: `n` of its pending tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Index into `Scheduler::running`.
    pub seq: usize,
    pub n: usize,
}

pub struct Scheduler {
    pub waiting: VecDeque<Sequence>,
    /// In admission order: the last is the youngest.
    pub running: Vec<Sequence>,
    pub pool: KvPool,
    limits: SchedLimits,
    next_order: u64,
    pub preemptions: u64,
}

/// What scheduling decided besides the plan: sequences that can never fit the pool.
pub struct Schedule {
    pub plan: Vec<Planned>,
    pub unfit: Vec<Sequence>,
}

impl Scheduler {
    pub fn new(pool: KvPool, limits: SchedLimits) -> Scheduler {
        Scheduler {
            waiting: VecDeque::new(),
            running: Vec::new(),
            pool,
            limits,
            next_order: 0,
            preemptions: 0,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Decide the next step.
    pub fn schedule(&mut self) -> Schedule {
        let mut plan = Vec::new();
        let mut budget = self.limits.max_batch_tokens;
        self.plan_decodes(&mut plan, &mut budget);
        for i in 0..self.running.len() {
            let pending = self.running[i].pending();
            if budget == 0 || pending <= 1 || plan.iter().any(|p| p.seq == i) {
                continue;
            }
            let n = pending.min(budget);
            plan.push(Planned { seq: i, n });
            budget -= n;
        }
        let unfit = self.admit(&mut plan, &mut budget);
        Schedule { plan, unfit }
    }

    /// One token for each decoding sequence, oldest first, each with room for its position.
    fn plan_decodes(&mut self, plan: &mut Vec<Planned>, budget: &mut usize) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            if self.running[i].pending() != 1 {
                i += 1;
                continue;
            }
            if !self.make_room(i) {
                break; // `i` was the youngest and was preempted itself.
            }
            plan.push(Planned { seq: i, n: 1 });
            *budget -= 1;
            i += 1;
        }
    }

    /// Allocate the blocks running sequence `i` needs for its pending tokens, preempting the
    /// youngest sequences while the pool is empty. False if `i` itself had to go.
    fn make_room(&mut self, i: usize) -> bool {
        let seq = &self.running[i];
        let mut missing = seq.blocks_missing(&self.pool, seq.computed + seq.pending());
        while missing > 0 {
            if let Some(id) = self.pool.allocate() {
                self.running[i].blocks.push(id);
                missing -= 1;
                continue;
            }
            let victim = self.running.len() - 1;
            self.preempt_last();
            if victim == i {
                return false;
            }
        }
        true
    }

    fn preempt_last(&mut self) {
        if let Some(mut seq) = self.running.pop() {
            tracing::info!(id = %seq.job.id, tokens = seq.out.all_tokens().len(), "KV pool full: sequence preempted, to be recomputed");
            seq.release(&mut self.pool);
            self.waiting.push_front(seq);
            self.preemptions += 1;
        }
    }

    /// Admit waiting requests in order while they fit; returns those that never can. A request's
    /// choices (`n` > 1) run at most `share` at a time, the rest waiting behind other requests, so
    /// one request cannot hold every sequence slot while another client waits.
    fn admit(&mut self, plan: &mut Vec<Planned>, budget: &mut usize) -> Vec<Sequence> {
        let mut unfit = Vec::new();
        let share = request_share(self.limits.max_seqs);
        let mut j = 0;
        while *budget > 0 && self.running.len() < self.limits.max_seqs {
            let Some(seq) = self.waiting.get_mut(j) else {
                break;
            };
            let group = seq.job.group;
            if self.running.iter().filter(|r| r.job.group == group).count() >= share {
                j += 1; // its request has its share running: let the ones behind it in
                continue;
            }
            let cached = seq.take_prefix(&mut self.pool);
            if prefix_in_progress(&self.running, &self.pool, seq, cached) {
                // Its prompt's next blocks are being computed by a running sequence (the other
                // choices of an `n` > 1 request, a system prompt shared by requests sent
                // together): wait for them to reach the cache instead of computing the same
                // positions again.
                seq.release(&mut self.pool);
                j += 1;
                continue;
            }
            let total = seq.out.all_tokens().len();
            let missing = seq.blocks_missing(&self.pool, total);
            // One block per running sequence stays free for their decoding.
            if missing + self.running.len() > self.pool.available() {
                seq.release(&mut self.pool);
                if self.running.is_empty() {
                    // Nothing will ever free more: this request cannot fit the pool.
                    unfit.extend(self.waiting.remove(j));
                    continue;
                }
                break; // memory is taken in arrival order
            }
            let blocks: Vec<_> = (0..missing).map_while(|_| self.pool.allocate()).collect();
            let short = blocks.len() < missing;
            seq.blocks.extend(blocks);
            if short {
                seq.release(&mut self.pool); // not expected: availability was checked
                break;
            }
            let Some(mut seq) = self.waiting.remove(j) else {
                break;
            };
            seq.cached_tokens.get_or_insert(cached);
            seq.admit_order = self.next_order;
            self.next_order += 1;
            let n = seq.pending().min(*budget);
            plan.push(Planned {
                seq: self.running.len(),
                n,
            });
            *budget -= n;
            self.running.push(seq);
        }
        unfit
    }
}

/// Sequences one request may have running at once: half the slots (at least one), so a request
/// with many choices leaves room for others.
pub fn request_share(max_seqs: usize) -> usize {
    (max_seqs / 2).max(1)
}

/// Whether a running sequence is still computing at least one more full block of `seq`'s
/// tokens than the `cached` positions the prefix cache already gave it.
fn prefix_in_progress(running: &[Sequence], pool: &KvPool, seq: &Sequence, cached: usize) -> bool {
    let bs = pool.block_size();
    if !pool.shares() {
        return false;
    }
    let mine = seq.out.all_tokens();
    running.iter().any(|r| {
        let theirs = r.out.all_tokens();
        let common = mine.iter().zip(theirs).take_while(|(a, b)| a == b).count();
        // Full blocks only (the last position is always computed by its own sequence).
        let shareable = (common.min(mine.len().saturating_sub(1)) / bs) * bs;
        shareable >= cached + bs && r.computed < shareable
    })
}
