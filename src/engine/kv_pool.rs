//! The KV pool's bookkeeping: which fixed-size blocks are free, which sequence holds which, and
//! the prefix cache. The backend owns the blocks' memory; this owns their ids.
//!
//! Prefix caching: a full block is keyed by a hash of its tokens chained with the hash of the
//! block before it, so a key names the whole prefix up to the block's end. A new sequence whose
//! tokens start with cached blocks takes them by reference (ref-counted; full blocks are never
//! written again, so no copy-on-write). A block nobody holds stays cached until its id is
//! needed: free blocks without a key go first, then cached ones, least recently used first.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

pub type BlockId = u32;

#[derive(Debug, Default, Clone)]
struct BlockMeta {
    refs: u32,
    /// The prefix key while the block is in the cache, and the tokens it was made from (checked
    /// on every hit, so a hash collision can never hand out another prefix's KV).
    key: Option<(u64, Vec<u32>)>,
    last_use: u64,
}

/// Counts for observability and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    pub total: usize,
    /// Held by at least one sequence.
    pub used: usize,
    /// Held by none but still cached (reusable by a matching prefix, or evicted when needed).
    pub cached: usize,
}

#[derive(Debug)]
pub struct KvPool {
    block_size: usize,
    meta: Vec<BlockMeta>,
    /// Unreferenced blocks without a key.
    free: Vec<BlockId>,
    /// Unreferenced cached blocks by last use (oldest first).
    evictable: BTreeSet<(u64, BlockId)>,
    cached: HashMap<u64, BlockId>,
    /// Whether blocks may be shared (off: the backend cannot share them, or caching is off).
    share: bool,
    tick: u64,
}

/// The chained key of a full block.
pub fn block_key(prev: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl KvPool {
    pub fn new(num_blocks: usize, block_size: usize, share: bool) -> KvPool {
        KvPool {
            block_size,
            meta: vec![BlockMeta::default(); num_blocks],
            // Popped from the end: low ids first.
            free: (0..num_blocks as BlockId).rev().collect(),
            evictable: BTreeSet::new(),
            cached: HashMap::new(),
            share,
            tick: 0,
        }
    }

    /// Whether full blocks are shared between sequences (prefix caching on).
    pub fn shares(&self) -> bool {
        self.share
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total(&self) -> usize {
        self.meta.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    pub fn counts(&self) -> PoolCounts {
        PoolCounts {
            total: self.total(),
            used: self.total() - self.available(),
            cached: self.evictable.len(),
        }
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// Take references on the longest run of cached full blocks that `tokens` starts with,
    /// leaving at least one token to compute (its logits are needed). Returns the blocks and
    /// their keys.
    pub fn take_prefix(&mut self, tokens: &[u32]) -> (Vec<BlockId>, Vec<u64>) {
        let (mut blocks, mut keys) = (Vec::new(), Vec::new());
        if !self.share {
            return (blocks, keys);
        }
        let bs = self.block_size;
        let full = tokens.len().saturating_sub(1) / bs;
        for b in 0..full {
            let chunk = &tokens[b * bs..(b + 1) * bs];
            let key = block_key(keys.last().copied(), chunk);
            let Some(&id) = self.cached.get(&key) else {
                break;
            };
            let same = self.meta[id as usize]
                .key
                .as_ref()
                .is_some_and(|(k, t)| *k == key && t == chunk);
            if !same {
                break;
            }
            self.hold(id);
            blocks.push(id);
            keys.push(key);
        }
        (blocks, keys)
    }

    fn hold(&mut self, id: BlockId) {
        self.tick += 1;
        let m = &mut self.meta[id as usize];
        if m.refs == 0 {
            self.evictable.remove(&(m.last_use, id));
        }
        m.refs += 1;
        m.last_use = self.tick;
    }

    /// A block for a sequence's next positions: a free one, else the least recently used cached
    /// one (dropped from the cache). None when every block is held.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.evictable.pop_first()?;
                if let Some((key, _)) = self.meta[id as usize].key.take() {
                    self.cached.remove(&key);
                }
                id
            }
        };
        self.tick += 1;
        let m = &mut self.meta[id as usize];
        m.refs = 1;
        m.last_use = self.tick;
        Some(id)
    }

    /// Drop one reference; a block nobody holds becomes free, or evictable if cached.
    pub fn release(&mut self, id: BlockId) {
        let m = &mut self.meta[id as usize];
        debug_assert!(m.refs > 0, "block {id} released more often than held");
        m.refs = m.refs.saturating_sub(1);
        if m.refs > 0 {
            return;
        }
        if m.key.is_some() {
            self.evictable.insert((m.last_use, id));
        } else {
            self.free.push(id);
        }
    }

    /// Release every block of a table.
    pub fn release_all(&mut self, blocks: &mut Vec<BlockId>) {
        for id in blocks.drain(..) {
            self.release(id);
        }
    }

    /// Enter a full block (its KV written) into the cache under `key`, unless caching is off or
    /// another block already holds that prefix.
    pub fn register(&mut self, id: BlockId, key: u64, tokens: &[u32]) {
        if !self.share || self.cached.contains_key(&key) {
            return;
        }
        let m = &mut self.meta[id as usize];
        if m.key.is_some() {
            return;
        }
        m.key = Some((key, tokens.to_vec()));
        self.cached.insert(key, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(pool: &mut KvPool, tokens: &[u32]) -> Vec<BlockId> {
        let bs = pool.block_size();
        let mut blocks = Vec::new();
        let mut prev = None;
        for chunk in tokens.chunks(bs) {
            let id = pool.allocate().unwrap();
            if chunk.len() == bs {
                let key = block_key(prev, chunk);
                pool.register(id, key, chunk);
                prev = Some(key);
            }
            blocks.push(id);
        }
        blocks
    }

    #[test]
    fn a_shared_prefix_is_taken_by_reference_and_freed_when_nobody_holds_it() {
        let mut pool = KvPool::new(8, 4, true);
        let prompt: Vec<u32> = (0..10).collect();
        let mut a = fill(&mut pool, &prompt);
        assert_eq!(pool.counts().used, 3);
        let (mut b, keys) = pool.take_prefix(&prompt);
        assert_eq!(b, a[..2].to_vec(), "two full blocks are shared");
        assert_eq!(keys.len(), 2);
        pool.release_all(&mut a);
        assert_eq!(pool.counts().used, 2, "the shared blocks are still held");
        pool.release_all(&mut b);
        assert_eq!(
            pool.counts(),
            PoolCounts {
                total: 8,
                used: 0,
                cached: 2
            }
        );
    }

    #[test]
    fn a_prompt_of_whole_blocks_leaves_its_last_token_to_compute() {
        let mut pool = KvPool::new(8, 4, true);
        let prompt: Vec<u32> = (0..8).collect();
        let mut a = fill(&mut pool, &prompt);
        let (b, _) = pool.take_prefix(&prompt);
        assert_eq!(b.len(), 1);
        pool.release_all(&mut a);
    }

    #[test]
    fn a_different_prefix_does_not_match_even_with_equal_later_blocks() {
        let mut pool = KvPool::new(8, 4, true);
        let mut a = fill(&mut pool, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let (b, _) = pool.take_prefix(&[0, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(b.is_empty());
        pool.release_all(&mut a);
    }

    #[test]
    fn cached_blocks_are_evicted_least_recently_used_first() {
        let mut pool = KvPool::new(3, 2, true);
        let mut a = fill(&mut pool, &[1, 2]);
        let mut b = fill(&mut pool, &[3, 4]);
        let mut c = fill(&mut pool, &[5, 6]);
        let (a0, b0) = (a[0], b[0]);
        pool.release_all(&mut a);
        pool.release_all(&mut b);
        pool.release_all(&mut c);
        assert_eq!(
            pool.allocate(),
            Some(a0),
            "the oldest cached block goes first"
        );
        let (hit, _) = pool.take_prefix(&[1, 2, 9]);
        assert!(hit.is_empty(), "an evicted block is no longer cached");
        let (hit, _) = pool.take_prefix(&[3, 4, 9]);
        assert_eq!(hit, vec![b0]);
    }

    #[test]
    fn without_sharing_nothing_is_cached() {
        let mut pool = KvPool::new(4, 2, false);
        let mut a = fill(&mut pool, &[1, 2, 3]);
        let (b, _) = pool.take_prefix(&[1, 2, 3]);
        assert!(b.is_empty());
        pool.release_all(&mut a);
        assert_eq!(pool.counts().cached, 0);
        assert_eq!(pool.available(), 4);
    }
}
