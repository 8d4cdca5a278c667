//! The runner's graph replays: how a step splits its rows' attention, which row and head buckets
//! replay it, and the capture and launch of the layers and head graphs (graph_steps.rs has the
//! buckets and the staging layouts).

use super::{CudaRunner, HeadBufs};
use crate::backend::cuda::graph_steps::{attn_splits, RowsStage};
use crate::backend::cuda::kernels::RowsSplit;
use crate::backend::cuda::pass::Pass;
use crate::backend::cuda::res::capture_dependent;
use crate::backend::step::StepBatch;

/// Keys a split of a row's attention takes: `LAYERSTREAM_CUDA_ATTN_SPLIT_KEYS` (for comparing
/// split sizes), else 32, as the lone decode's (a few decode rows are otherwise one warp per head
/// walking the whole context: 1.9 ms a step instead of 1.0 for one row at 256 positions).
pub(super) fn split_keys_from_env() -> usize {
    std::env::var("LAYERSTREAM_CUDA_ATTN_SPLIT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&k| k >= 1)
        .unwrap_or(32)
}

impl CudaRunner {
    pub(super) fn head_bufs(&self) -> HeadBufs {
        HeadBufs {
            head_dev: self.head_dev.ptr,
            logits: self.logits_dev.ptr,
            out: self.rows_dev.ptr,
            scratch: self.rows_scratch.ptr,
            vocab: self.model.hp.vocab,
        }
    }

    /// How this step splits its rows' attention (by its longest row).
    pub(super) fn split_for(&self, batch: &StepBatch<'_>) -> RowsSplit {
        let max_len = batch
            .seqs
            .iter()
            .map(|s| s.pos + s.rows.len())
            .max()
            .unwrap_or(0);
        self.split(attn_splits(max_len, self.split_chunk, self.max_splits))
    }

    /// The rows' attention split `splits` ways over the runner's partials.
    pub(super) fn split(&self, splits: usize) -> RowsSplit {
        RowsSplit {
            acc: self.split_acc.ptr,
            ml: self.split_ml.ptr,
            chunk: self.split_chunk,
            splits,
        }
    }

    /// The (row, head) buckets whose graphs replay this step, when they may: every unit
    /// resident, and more than the lone decode row.
    pub(super) fn graph_buckets(&self, batch: &StepBatch<'_>) -> Option<(usize, usize)> {
        if !self.model.residency.all_resident() {
            return None;
        }
        let (n, m) = (batch.tokens.len(), batch.logit_rows());
        self.graphs.buckets(n, m, self.row_cap, self.head_cap)
    }

    /// Every layer over the `r` rows staged, from bucket `r`'s graph. The bucket's first step
    /// runs unrecorded (so every kernel its capture needs is loaded), its second is captured; a
    /// capture the driver refuses turns graphs off.
    pub(super) fn replay_rows(&mut self, pass: &mut Pass, r: usize) -> Result<(), String> {
        let res = self.res.as_ref().ok_or("no runner resources")?;
        let (base, bs) = (self.staging_dev.ptr, self.geo.block_size);
        let at = RowsStage { r }.at(base, bs);
        let key = (r, pass.split.map_or(1, |sp| sp.splits));
        if !self.graphs.rows.contains_key(&key) {
            if self.graphs.seen_rows.insert(key) {
                tracing::debug!(
                    rows = r,
                    splits = key.1,
                    "rows bucket: first step unrecorded"
                );
                return pass.rows(&res.blas, base, r, &at);
            }
            let t0 = std::time::Instant::now();
            let captured = capture_dependent(pass.s, self.graphs.dependent, || {
                pass.rows(&res.blas, base, r, &at)
            });
            match captured {
                Ok(g) => {
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    tracing::debug!(
                        rows = r,
                        splits = key.1,
                        "rows bucket captured in {ms:.1} ms"
                    );
                    self.graphs.rows.insert(key, g);
                }
                Err(why) => {
                    tracing::warn!("step graph refused ({why}); steps run unrecorded");
                    self.graphs.off = true;
                    return pass.rows(&res.blas, base, r, &at);
                }
            }
        }
        match self.graphs.rows.get(&key) {
            Some(g) => g.launch(pass.s),
            None => Err("no graph for the row bucket".into()),
        }
    }

    /// The LM head and the per-row answers over the `m` logit rows staged, from the head
    /// bucket's graph (first step unrecorded, second captured, as `replay_rows`).
    pub(super) fn replay_head(
        &mut self,
        pass: &mut Pass,
        m: usize,
        n_text: usize,
    ) -> Result<(), String> {
        let bufs = self.head_bufs();
        let res = self.res.as_ref().ok_or("no runner resources")?;
        let key = (m, n_text);
        if !self.graphs.heads.contains_key(&key) {
            let run = |pass: &mut Pass| -> Result<(), String> {
                pass.head_picked(&res.blas, m, bufs.head_dev, bufs.logits)?;
                bufs.answers(pass, m, n_text)
            };
            if self.graphs.seen_heads.insert(key) {
                tracing::debug!(logit_rows = m, "head bucket: first step unrecorded");
                return run(pass);
            }
            let t0 = std::time::Instant::now();
            let captured = capture_dependent(pass.s, self.graphs.dependent, || run(pass));
            match captured {
                Ok(g) => {
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    tracing::debug!(logit_rows = m, "head bucket captured in {ms:.1} ms");
                    self.graphs.heads.insert(key, g);
                }
                Err(why) => {
                    tracing::warn!("head graph refused ({why}); steps run unrecorded");
                    self.graphs.off = true;
                    return run(pass);
                }
            }
        }
        match self.graphs.heads.get(&key) {
            Some(g) => g.launch(pass.s),
            None => Err("no graph for the head bucket".into()),
        }
    }
}
