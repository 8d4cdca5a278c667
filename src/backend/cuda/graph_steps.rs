//! CUDA graphs of the batched decode step, one per batch-size bucket: once every unit is
//! resident, a step whose sequences each bring one token is padded to the next bucket and
//! replayed from the bucket's graph (the inputs copy, every layer, the LM head, the per-row
//! answers and their copy back), so its ~250 launches cost one. Padded rows decode token 0 at
//! position 0 into a block of the pool no sequence owns, and their answers are ignored. Every
//! input sits at a fixed place in the staging buffer for the bucket, so one graph serves every
//! step of that size. Off with `LAYERSTREAM_CUDA_GRAPHS=0`.

use std::collections::HashMap;

use super::kernels::{row_mode, RowsAt};
use super::res::Graph;
use crate::backend::step::{pool_row, RowWant, StepBatch};

/// Batch sizes with a graph of their own (a step of n rows takes the smallest that holds it).
const BUCKETS: [usize; 14] = [2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512];

/// The bucket for a step of `n` rows, if one fits under `max`.
pub fn bucket(n: usize, max: usize) -> Option<usize> {
    BUCKETS.into_iter().find(|&b| b >= n).filter(|&b| b <= max)
}

/// Where a bucket's inputs sit in the staging buffer (u32 words): ids, positions, pool rows,
/// table offsets, logit rows, modes, 1/temperatures, uniforms (`b` each), then `b` block tables
/// of `max_blocks` entries.
#[derive(Clone, Copy, Debug)]
pub struct Fixed {
    pub b: usize,
    pub max_blocks: usize,
}

impl Fixed {
    pub fn ints(&self) -> usize {
        8 * self.b + self.b * self.max_blocks
    }

    /// Device address of word `i` from `base`.
    fn word(base: u64, i: usize) -> u64 {
        base + (i * 4) as u64
    }

    pub fn rows(&self, base: u64, bs: usize) -> RowsAt {
        RowsAt {
            pos_dev: 0,
            row_pos: Self::word(base, self.b),
            pos0: 0,
            slots: Self::word(base, 2 * self.b),
            row_tab: Self::word(base, 3 * self.b),
            tables: Self::word(base, 8 * self.b),
            bs,
        }
    }

    pub fn picks(&self, base: u64) -> u64 {
        Self::word(base, 4 * self.b)
    }

    /// Modes; 1/temperatures and uniforms follow at `b` and `2b` words on.
    pub fn modes(&self, base: u64) -> u64 {
        Self::word(base, 5 * self.b)
    }

    /// Fill `buf` for a decode-only `batch` (one row per sequence, each wanting logits), padded
    /// with rows of token 0 at position 0 of block `trash` (`bs` positions a block).
    pub fn stage(
        &self,
        buf: &mut [u32],
        batch: &StepBatch<'_>,
        wants: &[RowWant],
        bs: usize,
        trash: u32,
    ) {
        let b = self.b;
        for i in 0..b {
            let tab = 8 * b + i * self.max_blocks;
            let (id, pos, slot) = match batch.seqs.get(i) {
                Some(s) => {
                    let used = (s.pos + 1).div_ceil(bs);
                    buf[tab..tab + used].copy_from_slice(&s.blocks[..used]);
                    let slot = pool_row(s.blocks, s.pos, bs) as u32;
                    (batch.tokens[s.rows.start], s.pos as u32, slot)
                }
                None => {
                    buf[tab] = trash;
                    (0, 0, trash * bs as u32)
                }
            };
            let (mode, inv_t, u) = row_mode(wants.get(i).copied().unwrap_or(RowWant::Full));
            buf[i] = id;
            buf[b + i] = pos;
            buf[2 * b + i] = slot;
            buf[3 * b + i] = (i * self.max_blocks) as u32;
            buf[4 * b + i] = i as u32;
            buf[5 * b + i] = mode;
            buf[6 * b + i] = inv_t.to_bits();
            buf[7 * b + i] = u.to_bits();
        }
    }
}

/// The captured graphs by bucket; `off` once capture failed (or by the environment).
pub struct Graphs {
    pub map: HashMap<usize, Graph>,
    pub off: bool,
}

impl Graphs {
    pub fn from_env() -> Graphs {
        Graphs {
            map: HashMap::new(),
            off: std::env::var("LAYERSTREAM_CUDA_GRAPHS").is_ok_and(|v| v == "0"),
        }
    }

    /// Whether `batch` may be replayed from a graph: every sequence brings one token and wants
    /// logits, more than one sequence, a bucket fits.
    pub fn fits(&self, batch: &StepBatch<'_>, max: usize) -> Option<usize> {
        let one_each = batch.seqs.iter().all(|s| s.rows.len() == 1 && s.logits);
        if self.off || !one_each || batch.seqs.len() < 2 {
            return None;
        }
        bucket(batch.seqs.len(), max)
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_hold_the_step_and_respect_the_cap() {
        assert_eq!(bucket(2, 128), Some(2));
        assert_eq!(bucket(3, 128), Some(4));
        assert_eq!(bucket(64, 128), Some(64));
        assert_eq!(bucket(65, 128), Some(96));
        assert_eq!(bucket(100, 128), Some(128));
        assert_eq!(bucket(100, 100), None);
    }
}
