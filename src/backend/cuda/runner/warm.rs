//! Graphs captured while the engine is idle: once every unit is resident, each call runs one row
//! bucket (or head bucket) of padding rows twice — the first run loads its kernels, the second is
//! captured — so that a request's first step at a new bucket replays a graph instead of paying
//! for the unrecorded run and the capture (measured: a 5-row prompt step 17 ms, 21–26-row ones
//! 4–5 ms, against 1–2 ms replayed). Padding rows write only the spare block; no sequence is
//! touched.

use super::CudaRunner;
use crate::backend::cuda::driver::copy_htod;
use crate::backend::cuda::graph_steps::{HeadStage, RowsStage, ROW_BUCKETS};
use crate::backend::cuda::pass::{Pass, INVARIANT_ROWS};
use crate::backend::step::StepBatch;
use crate::backend::BackendError;

/// Attention splits warmed for every row bucket: a step's longest row up to 8 chunks of keys
/// (256 positions at the default 32 keys a chunk); longer contexts capture on use.
const WARM_SPLITS: [usize; 4] = [1, 2, 4, 8];

/// One graph to warm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WarmKey {
    Rows { r: usize, splits: usize },
    Head { m: usize },
}

/// What to warm, most used first: every row bucket up to `row_cap` without a split, then with
/// more splits; the head buckets up to `head_cap` after the rows.
pub(super) fn warm_order(row_cap: usize, head_cap: usize, max_splits: usize) -> Vec<WarmKey> {
    let rows = ROW_BUCKETS.iter().copied().filter(|&r| r <= row_cap);
    let mut keys: Vec<WarmKey> = WARM_SPLITS
        .iter()
        .filter(|&&s| s <= max_splits)
        .flat_map(|&splits| rows.clone().map(move |r| WarmKey::Rows { r, splits }))
        .collect();
    let heads = crate::backend::cuda::graph_steps::HEAD_BUCKETS;
    keys.extend(
        heads
            .iter()
            .filter(|&&m| m <= head_cap)
            .map(|&m| WarmKey::Head { m }),
    );
    keys
}

impl CudaRunner {
    /// Warm the next graph not yet captured; false once there is nothing left to warm (or graphs
    /// are off). Before every unit is resident it does nothing and answers true (try later).
    pub(super) fn warm_next(&mut self, n_text: usize) -> Result<bool, BackendError> {
        if self.graphs.off {
            return Ok(false);
        }
        if !self.model.residency.all_resident() {
            return Ok(true);
        }
        while let Some(&key) = self.warm.get(self.warm_at) {
            self.warm_at += 1;
            let done = match key {
                WarmKey::Rows { r, splits } => self.graphs.rows.contains_key(&(r, splits)),
                WarmKey::Head { m } => self.graphs.heads.contains_key(&(m, n_text)),
            };
            if !done {
                let t0 = std::time::Instant::now();
                self.warm_one(key, n_text).map_err(BackendError::Device)?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                tracing::debug!(?key, "graph warmed in {ms:.1} ms");
                return Ok(self.warm_at < self.warm.len() && !self.graphs.off);
            }
        }
        Ok(false)
    }

    /// Run `key`'s bucket of padding rows twice (unrecorded, then captured), and wait.
    fn warm_one(&mut self, key: WarmKey, n_text: usize) -> Result<(), String> {
        let model = self.model.clone();
        let (dev, stream) = {
            let res = self.res().map_err(|e| e.to_string())?;
            (res.dev.clone(), res.stream.clone())
        };
        dev.gpu.bind()?;
        let kv = self.kv.clone();
        let mut pass = Pass::new(&model, &dev, &stream, &kv);
        pass.fixed_rows = self.invariant.then_some(INVARIANT_ROWS);
        let empty = StepBatch {
            tokens: &[],
            seqs: &[],
        };
        match key {
            WarmKey::Rows { r, splits } => {
                pass.split = Some(self.split(splits));
                let (bs, spare) = (self.geo.block_size, self.geo.num_blocks as u32);
                let buf = bytemuck::cast_slice_mut::<u8, u32>(self.staging_host.as_mut_slice());
                let words = RowsStage { r }.stage(buf, &empty, bs, spare);
                unsafe {
                    copy_htod(
                        self.staging_dev.ptr,
                        self.staging_host.ptr,
                        words * 4,
                        &stream,
                    )?
                };
                self.replay_rows(&mut pass, r)?;
                self.replay_rows(&mut pass, r)?;
            }
            WarmKey::Head { m } => {
                let head = HeadStage { m };
                let hbuf = bytemuck::cast_slice_mut::<u8, u32>(self.head_host.as_mut_slice());
                head.stage(hbuf, &empty, &[]);
                let bytes = head.words() * 4;
                unsafe { copy_htod(self.head_dev.ptr, self.head_host.ptr, bytes, &stream)? };
                self.replay_head(&mut pass, m, n_text)?;
                self.replay_head(&mut pass, m, n_text)?;
            }
        }
        drop(pass);
        stream.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_without_a_split_come_first_and_heads_last() {
        let keys = warm_order(64, 16, 4);
        assert_eq!(keys[0], WarmKey::Rows { r: 1, splits: 1 });
        let per_split = ROW_BUCKETS.iter().filter(|&&r| r <= 64).count();
        assert_eq!(keys[per_split], WarmKey::Rows { r: 1, splits: 2 });
        // Splits 1, 2 and 4 (8 is past the most), then heads 1..=16.
        assert_eq!(keys.len(), 3 * per_split + 6);
        assert_eq!(keys.last(), Some(&WarmKey::Head { m: 16 }));
        assert!(!keys.contains(&WarmKey::Rows { r: 80, splits: 1 }));
    }
}
