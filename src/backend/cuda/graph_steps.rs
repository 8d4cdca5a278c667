//! Where a batched step's inputs sit on the device, and the CUDA graphs that replay its passes.
//! A step of n rows (any mix of prompt chunks and decode rows) and m logit rows is staged as two
//! small arrays: the rows' (ids, positions, pool rows, table offsets, block tables) and the logit
//! rows' (which row, mode, 1/temperature, uniform draw). Once every unit is resident, n is padded
//! to a row bucket and m to a head bucket, and the step is two graph launches — every layer for
//! the row bucket, then the LM head and the per-row answers for the head bucket — instead of
//! ~250 kernel launches. Padded rows run token 0 at position 0 in a block of the pool no sequence
//! owns; padded logit rows read row 0; their answers are ignored. Off with
//! `LAYERSTREAM_CUDA_GRAPHS=0`.

use std::collections::{HashMap, HashSet};

use super::kernels::{row_mode, RowsAt};
use super::res::Graph;
use crate::backend::step::{pool_row, RowWant, StepBatch};

/// Row counts with a layers graph of their own (a step of n rows takes the smallest that holds
/// it): fine steps where padding would cost most, coarser above.
pub const ROW_BUCKETS: [usize; 23] = [
    1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448,
    512,
];
/// Logit-row counts with a head graph of their own.
pub const HEAD_BUCKETS: [usize; 16] = [
    1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 192, 256, 512,
];

fn bucket(list: &[usize], n: usize, max: usize) -> Option<usize> {
    list.iter().copied().find(|&b| b >= n).filter(|&b| b <= max)
}

/// Rows the staging holds for steps of up to `max_rows` rows: the bucket that holds them.
pub fn row_capacity(max_rows: usize) -> usize {
    bucket(&ROW_BUCKETS, max_rows, usize::MAX).unwrap_or(max_rows)
}

/// Logit rows the head's buffers hold for steps of up to `max_seqs` sequences.
pub fn head_capacity(max_seqs: usize) -> usize {
    bucket(&HEAD_BUCKETS, max_seqs, usize::MAX).unwrap_or(max_seqs)
}

/// Device address of u32 word `i` from `base`.
fn word(base: u64, i: usize) -> u64 {
    base + (i * 4) as u64
}

/// A step's rows staged for `r` rows (`r` ≥ the step's; the rest padding): u32 words ids, then
/// positions, pool rows and table offsets (`r` each), then the block tables — first the padding
/// rows' one-block table holding the spare block, then each sequence's.
#[derive(Clone, Copy, Debug)]
pub struct RowsStage {
    pub r: usize,
}

impl RowsStage {
    /// Where a pass finds the rows staged at `base` (`bs` positions a block).
    pub fn at(&self, base: u64, bs: usize) -> RowsAt {
        RowsAt {
            pos_dev: 0,
            row_pos: word(base, self.r),
            pos0: 0,
            slots: word(base, 2 * self.r),
            row_tab: word(base, 3 * self.r),
            tables: word(base, 4 * self.r),
            bs,
        }
    }

    /// Fill `buf` for `batch` (`bs` positions a block; `spare`: the block padding rows write);
    /// returns the words written.
    pub fn stage(&self, buf: &mut [u32], batch: &StepBatch<'_>, bs: usize, spare: u32) -> usize {
        let (r, n) = (self.r, batch.tokens.len());
        buf[..n].copy_from_slice(batch.tokens);
        let tables0 = 4 * r;
        buf[tables0] = spare;
        let mut t = tables0 + 1;
        for s in batch.seqs {
            for (j, row) in s.rows.clone().enumerate() {
                let pos = s.pos + j;
                buf[r + row] = pos as u32;
                buf[2 * r + row] = pool_row(s.blocks, pos, bs) as u32;
                buf[3 * r + row] = (t - tables0) as u32;
            }
            let used = (s.pos + s.rows.len()).div_ceil(bs);
            buf[t..t + used].copy_from_slice(&s.blocks[..used]);
            t += used;
        }
        for row in n..r {
            buf[row] = 0;
            buf[r + row] = 0;
            buf[2 * r + row] = spare * bs as u32;
            buf[3 * r + row] = 0;
        }
        t
    }

    /// Words `stage` may write for `r` rows of at most `seqs` sequences of `max_blocks` blocks.
    pub fn capacity(r: usize, seqs: usize, max_blocks: usize) -> usize {
        4 * r + 1 + seqs * max_blocks
    }
}

/// A step's logit rows staged for `m` rows (`m` ≥ the step's): u32 words the row each reads (from
/// the staging's start), then
/// the mode, 1/temperature and uniform draw of `logits_rows` (`m` each).
#[derive(Clone, Copy, Debug)]
pub struct HeadStage {
    pub m: usize,
}

impl HeadStage {
    /// Modes, then 1/temperatures and uniforms (`m` words apart).
    pub fn modes(&self, base: u64) -> (u64, u64, u64) {
        let m = self.m;
        (word(base, m), word(base, 2 * m), word(base, 3 * m))
    }

    /// Fill `buf` with the logit rows of `batch` and `wants` (padded: row 0, argmax); returns the
    /// rows (host indices).
    pub fn stage(&self, buf: &mut [u32], batch: &StepBatch<'_>, wants: &[RowWant]) -> Vec<usize> {
        let m = self.m;
        let picks: Vec<usize> = batch
            .seqs
            .iter()
            .filter(|s| s.logits)
            .map(|s| s.rows.end - 1)
            .collect();
        for j in 0..m {
            let w = wants.get(j).copied().unwrap_or(RowWant::Full);
            let (mode, inv_t, u) = row_mode(w);
            buf[j] = picks.get(j).copied().unwrap_or(0) as u32;
            buf[m + j] = mode;
            buf[2 * m + j] = inv_t.to_bits();
            buf[3 * m + j] = u.to_bits();
        }
        picks
    }

    pub fn words(&self) -> usize {
        4 * self.m
    }
}

/// The captured graphs: the layers by row bucket (and attention splits), the head by head bucket
/// (and the text vocabulary its answers kernel was given); `off` once a capture failed (or by the
/// environment).
pub struct Graphs {
    pub rows: HashMap<(usize, usize), Graph>,
    pub heads: HashMap<(usize, usize), Graph>,
    /// Keys run once unrecorded: the next step with the same key captures them.
    pub seen_rows: HashSet<(usize, usize)>,
    pub seen_heads: HashSet<(usize, usize)>,
    pub off: bool,
    /// Capture the kernels that allow it as programmatic dependents (each starts, and fetches
    /// its weights, while the previous one finishes), unless `LAYERSTREAM_CUDA_PDL=0`.
    pub dependent: bool,
}

impl Graphs {
    pub fn from_env() -> Graphs {
        Graphs {
            rows: HashMap::new(),
            heads: HashMap::new(),
            seen_rows: HashSet::new(),
            seen_heads: HashSet::new(),
            off: std::env::var("LAYERSTREAM_CUDA_GRAPHS").is_ok_and(|v| v == "0"),
            dependent: std::env::var("LAYERSTREAM_CUDA_PDL").map_or(true, |v| v != "0"),
        }
    }

    /// The (row, head) buckets a step of `n` rows and `m` logit rows replays, when both fit
    /// (`max_rows`, `max_heads`).
    pub fn buckets(
        &self,
        n: usize,
        m: usize,
        max_rows: usize,
        max_heads: usize,
    ) -> Option<(usize, usize)> {
        if self.off {
            return None;
        }
        let r = bucket(&ROW_BUCKETS, n, max_rows)?;
        let h = if m == 0 {
            0
        } else {
            bucket(&HEAD_BUCKETS, m, max_heads)?
        };
        Some((r, h))
    }
}

/// How many ranges of `chunk` keys a step splits its rows' attention into, when its longest row
/// reaches `max_len` positions: 1 (no split) up to `chunk`, else a power of two that covers it, at
/// most `max_splits` (which, with `chunk`, covers the context). A row's own splits depend only on
/// its length, so its result does not depend on the others' (see `attn_rows_merge`).
pub fn attn_splits(max_len: usize, chunk: usize, max_splits: usize) -> usize {
    let need = max_len.div_ceil(chunk.max(1));
    if need <= 1 {
        1
    } else {
        need.next_power_of_two().min(max_splits)
    }
}

/// Keys a split takes for a context of `ctx` positions: `want`, or more so that
/// `MAX_ROW_SPLITS` of them cover the context.
pub fn split_chunk(want: usize, ctx: usize, max_splits: usize) -> usize {
    want.max(1).max(ctx.div_ceil(max_splits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::step::SeqStep;

    #[test]
    fn attention_splits_cover_the_longest_row() {
        assert_eq!(attn_splits(100, 256, 16), 1);
        assert_eq!(attn_splits(256, 256, 16), 1);
        assert_eq!(attn_splits(257, 256, 16), 2);
        assert_eq!(attn_splits(700, 256, 16), 4);
        assert_eq!(attn_splits(4096, 256, 16), 16);
        assert_eq!(attn_splits(4000, 256, 12), 12);
        assert_eq!(split_chunk(256, 32768, 64), 512);
        assert_eq!(split_chunk(256, 4096, 64), 256);
        assert_eq!(split_chunk(16, 128, 64), 16);
    }

    #[test]
    fn buckets_hold_the_step_and_respect_the_caps() {
        let g = Graphs {
            rows: HashMap::new(),
            heads: HashMap::new(),
            seen_rows: HashSet::new(),
            seen_heads: HashSet::new(),
            off: false,
            dependent: true,
        };
        assert_eq!(g.buckets(3, 3, 512, 128), Some((4, 4)));
        assert_eq!(g.buckets(65, 64, 512, 128), Some((80, 64)));
        assert_eq!(g.buckets(100, 0, 512, 128), Some((112, 0)));
        assert_eq!(g.buckets(500, 100, 512, 128), Some((512, 128)));
        assert_eq!(g.buckets(100, 100, 100, 128), None);
        assert_eq!(g.buckets(10, 100, 512, 96), None);
    }

    #[test]
    fn padded_rows_write_the_spare_block_and_real_rows_their_own() {
        let blocks_a = [7u32, 3];
        let blocks_b = [5u32];
        let seqs = [
            SeqStep {
                rows: 0..3,
                pos: 14,
                blocks: &blocks_a,
                logits: true,
            },
            SeqStep {
                rows: 3..4,
                pos: 2,
                blocks: &blocks_b,
                logits: false,
            },
        ];
        let tokens = [11, 12, 13, 14];
        let batch = StepBatch {
            tokens: &tokens,
            seqs: &seqs,
        };
        let st = RowsStage { r: 8 };
        let mut buf = vec![u32::MAX; RowsStage::capacity(8, 2, 4)];
        let used = st.stage(&mut buf, &batch, 16, 9);
        assert_eq!(&buf[..8], &[11, 12, 13, 14, 0, 0, 0, 0]);
        assert_eq!(&buf[8..16], &[14, 15, 16, 2, 0, 0, 0, 0]);
        assert_eq!(&buf[16..24], &[126, 127, 48, 82, 144, 144, 144, 144]);
        assert_eq!(&buf[24..32], &[1, 1, 1, 3, 0, 0, 0, 0]);
        assert_eq!(&buf[32..used], &[9, 7, 3, 5]);

        let head = HeadStage { m: 2 };
        let mut hb = vec![u32::MAX; head.words()];
        let wants = [RowWant::Draw { inv_t: 2.0, u: 0.5 }];
        assert_eq!(head.stage(&mut hb, &batch, &wants), vec![2]);
        assert_eq!(&hb[..4], &[2, 0, 1, 0]);
        assert_eq!(hb[4..], [2.0f32.to_bits(), 0, 0.5f32.to_bits(), 0]);
    }
}
