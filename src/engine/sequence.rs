//! One request inside the engine: its tokens, how many of them have KV in its blocks, its block
//! table and prefix keys, its output side (sampling, text, stop strings) and its timeline.

use std::sync::Arc;
use std::time::Instant;

use super::kv_pool::{block_key, BlockId, KvPool};
use super::outcomes::{Outcomes, CANCELLED};
use super::stats::EngineStats;
use super::{EngineError, EngineEvent, Job};
use crate::generation::Decoding;

pub struct Sequence {
    pub job: Job,
    pub out: Decoding,
    /// KV blocks in position order.
    pub blocks: Vec<BlockId>,
    /// Keys of the leading full blocks that are in (or were offered to) the prefix cache.
    pub keys: Vec<u64>,
    /// Positions whose K/V are in `blocks`.
    pub computed: usize,
    /// Prompt positions taken from the prefix cache at first admission.
    pub cached_tokens: Option<usize>,
    /// Counted against the queue limit (from submission until first admission).
    pub queued: bool,
    /// When it was first admitted (the `Started` event), first sampled (its prompt done), and
    /// how long its steps waited for the loader.
    pub admitted: Option<Instant>,
    pub first_token: Option<Instant>,
    pub waited_for_load_ms: f64,
    /// Order of (re)admission: the youngest running sequence is preempted first.
    pub admit_order: u64,
    /// When its last token was streamed (for the inter-token latency).
    pub last_token: Option<Instant>,
    /// Where its end is counted.
    pub outcomes: Arc<Outcomes>,
}

impl Sequence {
    pub fn new(job: Job, outcomes: Arc<Outcomes>) -> Sequence {
        let out = Decoding::new(&job.request, &job.prompt);
        Sequence {
            job,
            outcomes,
            out,
            blocks: Vec::new(),
            keys: Vec::new(),
            computed: 0,
            cached_tokens: None,
            queued: true,
            admitted: None,
            first_token: None,
            waited_for_load_ms: 0.0,
            admit_order: 0,
            last_token: None,
        }
    }

    /// Tokens whose K/V still have to be computed (the prompt, a recomputed prefix after
    /// preemption, or the last sampled token).
    pub fn pending(&self) -> usize {
        self.out.all_tokens().len() - self.computed
    }

    /// It left the queue (admitted, dropped or refused): its slot is free for another request.
    /// Counted once, whatever happens to it afterwards (a preempted sequence is not queued).
    pub fn leave_queue(&mut self, stats: &EngineStats) {
        if std::mem::take(&mut self.queued) {
            stats.dequeued();
        }
    }

    /// End the request with `e` (counted by its type).
    pub fn fail(&self, e: EngineError) {
        self.outcomes.failed(e.kind());
        let _ = self.job.events.send(EngineEvent::Error(e));
    }

    /// The client left: counted, nothing to send.
    pub fn cancelled(&self) {
        self.outcomes.failed(CANCELLED);
        tracing::info!(id = %self.job.id, tokens = self.out.generated().len(), "request cancelled: client disconnected");
    }

    /// Whether the client is gone.
    pub fn is_abandoned(&self) -> bool {
        self.job.events.is_closed()
    }

    /// Blocks still to allocate for `positions` positions in all.
    pub fn blocks_missing(&self, pool: &KvPool, positions: usize) -> usize {
        pool.blocks_for(positions).saturating_sub(self.blocks.len())
    }

    /// Take the cached prefix of the tokens; returns how many positions it covers.
    pub fn take_prefix(&mut self, pool: &mut KvPool) -> usize {
        debug_assert!(self.blocks.is_empty() && self.computed == 0);
        let (blocks, keys) = pool.take_prefix(self.out.all_tokens());
        self.computed = blocks.len() * pool.block_size();
        self.blocks = blocks;
        self.keys = keys;
        self.computed
    }

    /// Give every block back (finished, cancelled or preempted); the sequence starts over from
    /// position 0 if it runs again.
    pub fn release(&mut self, pool: &mut KvPool) {
        pool.release_all(&mut self.blocks);
        self.keys.clear();
        self.computed = 0;
    }

    /// Offer each block that became full (and whose K/V are now written) to the prefix cache.
    pub fn register_full_blocks(&mut self, pool: &mut KvPool) {
        let bs = pool.block_size();
        while (self.keys.len() + 1) * bs <= self.computed {
            let b = self.keys.len();
            let tokens = &self.out.all_tokens()[b * bs..(b + 1) * bs];
            let key = block_key(self.keys.last().copied(), tokens);
            pool.register(self.blocks[b], key, tokens);
            self.keys.push(key);
        }
    }
}
