//! The engine's batched step on the GPU: a paged KV pool reserved before READY (one device
//! buffer, every layer's K and V rows by block), and each step issued as one pass over all rows
//! (`Pass::rows`: cuBLAS over every row, attention of each row over its own sequence's blocks),
//! or — a lone decode row — as the fused one-token step, replayed from a captured graph once
//! every unit is resident. Each layer stays gated on its unit, as for a lone sequence. The graph
//! replays are in `runner/replay.rs`, the answers to the engine in `runner/answers.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::driver::{copy_dtoh, copy_htod, DevBuf, Pinned};
use super::gemm_fixed::FixedGemm;
use super::graph_steps::{head_capacity, row_capacity, split_chunk, Graphs, HeadStage, RowsStage};
use super::kernels::{Paged, RowsAt, HEAD_ROW_WORDS, LOGITS_SCRATCH_WORDS, MAX_ROW_SPLITS};
use super::layout::MAX_BATCH;
use super::pass::{KvPlace, Pass, INVARIANT_ROWS};
use super::res::{wait_done, Res};
use super::step_timing::StepTiming;
use super::CudaModel;
use crate::backend::step::{
    pool_row, BatchLimits, KvGeometry, RowWant, StepBatch, StepOut, StepRunner,
};
use crate::backend::BackendError;

mod answers;
mod replay;
mod warm;

pub struct CudaRunner {
    model: Arc<CudaModel>,
    res: Option<Res>,
    /// The KV pool; `kv` points into it.
    _pool: DevBuf,
    kv: Arc<KvPlace>,
    geo: KvGeometry,
    /// Rows and sequences a step may hold; block-table entries a sequence may hold.
    max_rows: usize,
    max_seqs: usize,
    max_blocks: usize,
    /// Rows and logit rows the staging holds: the buckets at or above the two limits.
    row_cap: usize,
    head_cap: usize,
    /// The rows' inputs (`RowsStage`) and the logit rows' (`HeadStage`), staged on the host and
    /// copied in a transfer each.
    staging_host: Pinned,
    staging_dev: DevBuf,
    head_host: Pinned,
    head_dev: DevBuf,
    logits_dev: DevBuf,
    logits_host: Pinned,
    /// `logits_rows`'s answers (`HEAD_ROW_WORDS` u32 a row), and which rows of the last step
    /// were copied whole into `logits_host`.
    rows_dev: DevBuf,
    rows_host: Pinned,
    /// `logits_rows`'s scratch for the head's rows.
    rows_scratch: DevBuf,
    whole: Vec<bool>,
    /// Where the last step's logit rows are on the device (for `full_row`).
    whole_src: u64,
    /// Batch-invariant mode (see `Pass::fixed_rows`).
    invariant: bool,
    /// Partials of attention split over long rows' keys (`RowsSplit`'s `acc` and `ml`), the keys
    /// a split takes, and the most splits.
    split_acc: DevBuf,
    split_ml: DevBuf,
    split_chunk: usize,
    max_splits: usize,
    /// Steps replayed from graphs per bucket (graph_steps.rs).
    graphs: Graphs,
    /// The graphs to capture while idle (runner/warm.rs), and the next to look at.
    warm: Vec<warm::WarmKey>,
    warm_at: usize,
    timing: Option<StepTiming>,
}

/// How a step was issued: the lone decode row (its logits whole in the `Res`, or answered on the
/// device), or `n` logit rows.
enum Ran {
    Lone,
    LoneAnswered,
    Rows(usize),
}

/// A step's staged inputs: see `CudaRunner::stage`.
struct Staged {
    /// The logit rows (host indices).
    picks: Vec<usize>,
    rows: RowsAt,
    head: HeadStage,
    /// Words of the rows' staging.
    words: usize,
}

/// Where the head's inputs and outputs sit: the staged logit rows, the logits, the answers.
#[derive(Clone, Copy)]
struct HeadBufs {
    head_dev: u64,
    logits: u64,
    out: u64,
    scratch: u64,
    vocab: usize,
}

impl HeadBufs {
    /// `logits_rows` over the first `m` logit rows staged (as `HeadStage { m }`).
    fn answers(&self, pass: &Pass, m: usize, n_text: usize) -> Result<(), String> {
        let (mode, inv_t, u) = HeadStage { m }.modes(self.head_dev);
        let k = &pass.dev.kernels;
        k.logits_rows(
            pass.s,
            self.logits,
            m,
            self.vocab,
            n_text,
            (mode, inv_t, u),
            self.scratch,
            self.out,
        )
    }
}

/// KV pool bytes per position: every layer's K and V rows, F16.
pub fn kv_bytes_per_token(hp: &crate::model::HParams) -> usize {
    hp.n_layer * 2 * hp.kv_dim() * 2
}

impl CudaRunner {
    /// Reserve the pool and the step buffers for `limits`.
    pub fn new(model: Arc<CudaModel>, limits: &BatchLimits) -> Result<CudaRunner, BackendError> {
        let e = BackendError::Device;
        let dev = model.device()?;
        dev.gpu.bind().map_err(e)?;
        let hp = &model.hp;
        let geo = limits.kv;
        // One block more than the engine's: the padded rows of a replayed step write there.
        let layer_bytes = (geo.num_blocks + 1) * geo.block_size * hp.kv_dim() * 2;
        let pool = DevBuf::alloc(layer_bytes * 2 * hp.n_layer).map_err(e)?;
        let kv = Arc::new(KvPlace {
            layers: (0..hp.n_layer)
                .map(|l| {
                    let k = pool.ptr + (2 * l * layer_bytes) as u64;
                    (k, k + layer_bytes as u64)
                })
                .collect(),
        });
        let (max_rows, max_seqs) = (limits.max_batch_tokens, limits.max_seqs);
        let max_blocks = limits.ctx.div_ceil(geo.block_size);
        let (row_cap, head_cap) = (row_capacity(max_rows), head_capacity(max_seqs));
        let ints = RowsStage::capacity(row_cap, max_seqs, max_blocks);
        let head_bytes = HeadStage { m: head_cap }.words() * 4;
        let split_chunk = split_chunk(replay::split_keys_from_env(), limits.ctx, MAX_ROW_SPLITS);
        let max_splits = limits.ctx.div_ceil(split_chunk).clamp(1, MAX_ROW_SPLITS);
        let parts = row_cap * hp.n_head * max_splits;
        Ok(CudaRunner {
            split_acc: DevBuf::alloc(parts * hp.head_dim * 4).map_err(e)?,
            split_ml: DevBuf::alloc(parts * 2 * 4).map_err(e)?,
            split_chunk,
            max_splits,
            res: None,
            _pool: pool,
            kv,
            geo,
            max_rows,
            max_seqs,
            max_blocks,
            row_cap,
            head_cap,
            staging_host: Pinned::alloc(ints * 4, true).map_err(e)?,
            staging_dev: DevBuf::alloc(ints * 4).map_err(e)?,
            head_host: Pinned::alloc(head_bytes, true).map_err(e)?,
            head_dev: DevBuf::alloc(head_bytes).map_err(e)?,
            // Room for the padded rows of a replayed or batch-invariant LM head.
            logits_dev: DevBuf::alloc(head_cap.next_multiple_of(INVARIANT_ROWS) * hp.vocab * 4)
                .map_err(e)?,
            logits_host: Pinned::alloc(max_seqs * hp.vocab * 4, false).map_err(e)?,
            rows_dev: DevBuf::alloc(head_cap * HEAD_ROW_WORDS * 4).map_err(e)?,
            rows_scratch: DevBuf::zeroed(head_cap * LOGITS_SCRATCH_WORDS * 4).map_err(e)?,
            rows_host: Pinned::alloc(max_seqs * HEAD_ROW_WORDS * 4, false).map_err(e)?,
            whole: Vec::new(),
            whole_src: 0,
            invariant: limits.batch_invariant,
            graphs: Graphs::from_env(),
            warm: warm::warm_order(row_cap, head_cap, max_splits),
            warm_at: 0,
            timing: StepTiming::from_env().map_err(e)?,
            model,
        })
    }

    fn res(&mut self) -> Result<&mut Res, BackendError> {
        if self.res.is_none() {
            self.res = Some(Res::take_or_make(&self.model, self.max_blocks)?);
        }
        self.res
            .as_mut()
            .ok_or_else(|| BackendError::Device("no runner resources".into()))
    }

    /// Stage the step's inputs for `r` rows and `m` logit rows (each at least the step's; the
    /// rest padding) in the two pinned buffers.
    fn stage(&mut self, batch: &StepBatch<'_>, wants: &[RowWant], r: usize, m: usize) -> Staged {
        let (bs, spare) = (self.geo.block_size, self.geo.num_blocks as u32);
        let rows = RowsStage { r };
        let buf = bytemuck::cast_slice_mut::<u8, u32>(self.staging_host.as_mut_slice());
        let words = rows.stage(buf, batch, bs, spare);
        let head = HeadStage { m };
        let hbuf = bytemuck::cast_slice_mut::<u8, u32>(self.head_host.as_mut_slice());
        let picks = head.stage(hbuf, batch, wants);
        Staged {
            picks,
            rows: rows.at(self.staging_dev.ptr, bs),
            head,
            words,
        }
    }

    /// A step of several rows: every layer over all of them (replayed from the row bucket's graph
    /// when `graph` gives the buckets), the LM head over the logit rows, then either every such
    /// row whole to the host, or `logits_rows`'s answer per row (and whole only the rows that
    /// want it).
    fn issue_rows(
        &mut self,
        batch: &StepBatch<'_>,
        pass: &mut Pass,
        rows_want: Option<(&[RowWant], usize)>,
        graph: Option<(usize, usize)>,
    ) -> Result<usize, String> {
        let wants = rows_want.map_or(&[][..], |w| w.0);
        let (n, m) = (batch.tokens.len(), batch.logit_rows());
        let (r, mb) = graph.unwrap_or((n, m));
        let st = self.stage(batch, wants, r, mb);
        StepTiming::mark(&self.timing, 0, pass.s)?;
        let (stage_dev, head_dev) = (self.staging_dev.ptr, self.head_dev.ptr);
        unsafe {
            copy_htod(stage_dev, self.staging_host.ptr, st.words * 4, pass.s)?;
            copy_htod(head_dev, self.head_host.ptr, st.head.words() * 4, pass.s)?;
        }
        match graph {
            Some(_) => self.replay_rows(pass, r)?,
            None => {
                let res = self.res.as_ref().ok_or("no runner resources")?;
                pass.rows(&res.blas, stage_dev, n, &st.rows)?;
            }
        }
        StepTiming::mark(&self.timing, 1, pass.s)?;
        let answers = rows_want.filter(|(w, _)| w.iter().any(|w| *w != RowWant::Full));
        if m > 0 {
            match (graph, answers) {
                (Some(_), Some((_, n_text))) => self.replay_head(pass, mb, n_text)?,
                _ => {
                    let res = self.res.as_ref().ok_or("no runner resources")?;
                    pass.head(&res.blas, &st.picks, head_dev, self.logits_dev.ptr)?;
                    if let Some((_, n_text)) = answers {
                        self.head_bufs().answers(pass, m, n_text)?;
                    }
                }
            }
        }
        StepTiming::mark(&self.timing, 2, pass.s)?;
        if answers.is_some() && m > 0 {
            let bytes = m * HEAD_ROW_WORDS * 4;
            unsafe { copy_dtoh(self.rows_host.ptr, self.rows_dev.ptr, bytes, pass.s)? };
        }
        self.whole_src = self.logits_dev.ptr;
        self.copy_whole_rows(pass, if answers.is_some() { wants } else { &[] }, m)?;
        StepTiming::mark(&self.timing, 3, pass.s)?;
        Ok(m)
    }

    /// In batch-invariant mode, when the LM head falls back to cuBLAS at its fixed row count
    /// (operands `gemm_fixed` does not take), cuBLAS's kernel for that shape, loaded now: a step
    /// gated on the loader must not load one (see `Pass::gate`). Reads whatever the head's memory
    /// holds yet, into the step's own logits buffer.
    fn load_head_kernels(&mut self) -> Result<(), BackendError> {
        if !self.invariant {
            return Ok(());
        }
        let e = BackendError::Device;
        let res = self.res.as_ref().ok_or(BackendError::Interrupted)?;
        let (d, hp) = (&res.dev, &self.model.hp);
        let (xn, w) = (d.ptr(d.layout.scratch.xn), d.ptr(d.layout.out.off));
        if FixedGemm::fits(xn, w, hp.hidden) {
            return Ok(());
        }
        res.blas
            .gemm(
                xn,
                w,
                self.logits_dev.ptr,
                INVARIANT_ROWS,
                hp.vocab,
                hp.hidden,
                false,
            )
            .map_err(e)?;
        res.stream.sync().map_err(e)
    }

    fn check(&self, batch: &StepBatch<'_>) -> Result<(), BackendError> {
        batch.validate(&self.geo, self.model.hp.vocab)?;
        if batch.tokens.len() > self.max_rows || batch.seqs.len() > self.max_seqs {
            return Err(BackendError::Device(format!(
                "a step of {} rows and {} sequences exceeds the {} rows and {} sequences reserved",
                batch.tokens.len(),
                batch.seqs.len(),
                self.max_rows,
                self.max_seqs
            )));
        }
        if let Some(s) = batch.seqs.iter().find(|s| s.blocks.len() > self.max_blocks) {
            return Err(BackendError::ContextFull {
                needed: s.pos + s.rows.len(),
                capacity: self.max_blocks * self.geo.block_size,
            });
        }
        match self.model.residency.wait_error() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl CudaRunner {
    /// Issue the step and wait for it: the lone decode row's fused path (its logits whole in
    /// the `Res`), or one pass over every row.
    fn run(
        &mut self,
        batch: &StepBatch<'_>,
        rows_want: Option<(&[RowWant], usize)>,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Ran, BackendError> {
        self.check(batch)?;
        let model = self.model.clone();
        let (dev, stream) = {
            let res = self.res()?;
            (res.dev.clone(), res.stream.clone())
        };
        let e = BackendError::Device;
        dev.gpu.bind().map_err(e)?;
        let kv = self.kv.clone();
        let t_issue = Instant::now();
        let mut pass = Pass::new(&model, &dev, &stream, &kv);
        pass.fixed_rows = self.invariant.then_some(INVARIANT_ROWS);
        pass.split = Some(self.split_for(batch));
        let ran = match batch.seqs {
            [s] if s.rows.len() == 1 && s.logits && !self.invariant => {
                let bs = self.geo.block_size;
                let slot = pool_row(s.blocks, s.pos, bs);
                let pg = Paged {
                    table: dev.ptr(dev.layout.scratch.table),
                    bs,
                };
                let (table_ints, all) = (self.max_blocks, model.residency.all_resident());
                let answers = rows_want.filter(|(w, _)| w.iter().any(|w| *w != RowWant::Full));
                let res = self.res()?;
                res.set_decode_params(s.pos, slot, batch.tokens[s.rows.start], s.blocks);
                res.issue_decode(&mut pass, table_ints, pg, all, answers.is_none())
                    .map_err(e)?;
                match answers {
                    Some((wants, n_text)) => {
                        self.lone_answers(batch, &pass, wants, n_text).map_err(e)?;
                        Ran::LoneAnswered
                    }
                    None => Ran::Lone,
                }
            }
            _ => {
                let graph = self.graph_buckets(batch);
                Ran::Rows(
                    self.issue_rows(batch, &mut pass, rows_want, graph)
                        .map_err(e)?,
                )
            }
        };
        let res = self.res.as_mut().ok_or(BackendError::Interrupted)?;
        let gated = std::mem::take(&mut pass.gated);
        res.done.record(&stream).map_err(e)?;
        meanwhile();
        wait_done(&model, &res.done, !gated.is_empty())?;
        drop(pass);
        model.add_waited(&gated, t_issue);
        if let (Some(t), Ran::Rows(_)) = (&mut self.timing, &ran) {
            t.collect(batch.tokens.len()).map_err(e)?;
        }
        Ok(ran)
    }

    /// The logits of the last step, whole.
    fn logits(&mut self, ran: Ran) -> Result<&mut [f32], BackendError> {
        let vocab = self.model.hp.vocab;
        let (host, rows) = match ran {
            Ran::LoneAnswered => {
                return Err(BackendError::Device(
                    "the row was answered on the device".into(),
                ))
            }
            Ran::Lone => (
                &mut self
                    .res
                    .as_mut()
                    .ok_or(BackendError::Interrupted)?
                    .logits_host,
                1,
            ),
            Ran::Rows(m) => (&mut self.logits_host, m),
        };
        Ok(&mut bytemuck::cast_slice_mut::<u8, f32>(host.as_mut_slice())[..rows * vocab])
    }
}

impl StepRunner for CudaRunner {
    fn step(&mut self, batch: &StepBatch<'_>) -> Result<&mut [f32], BackendError> {
        let ran = self.run(batch, None, &mut || {})?;
        self.logits(ran)
    }

    fn step_rows(
        &mut self,
        batch: &StepBatch<'_>,
        wants: &[RowWant],
        n_text: usize,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<StepOut<'_>, BackendError> {
        match self.run(batch, Some((wants, n_text)), meanwhile)? {
            Ran::LoneAnswered => Ok(StepOut::Rows(self.row_results(wants))),
            Ran::Rows(m) if self.whole.len() == m && self.whole.iter().any(|w| !w) => {
                Ok(StepOut::Rows(self.row_results(wants)))
            }
            ran => self.logits(ran).map(StepOut::Logits),
        }
    }

    fn full_row(&mut self, i: usize) -> Result<&mut [f32], BackendError> {
        let vocab = self.model.hp.vocab;
        if i >= self.whole.len() {
            return Err(BackendError::Device(format!(
                "no logit row {i} in the last step"
            )));
        }
        if !self.whole[i] {
            let e = BackendError::Device;
            let res = self.res.as_ref().ok_or(BackendError::Interrupted)?;
            let (dst, src) = (i * vocab * 4, self.whole_src + (i * vocab * 4) as u64);
            unsafe {
                copy_dtoh(self.logits_host.ptr.add(dst), src, vocab * 4, &res.stream).map_err(e)?
            };
            res.stream.sync().map_err(e)?;
            self.whole[i] = true;
        }
        let all = bytemuck::cast_slice_mut::<u8, f32>(self.logits_host.as_mut_slice());
        Ok(&mut all[i * vocab..(i + 1) * vocab])
    }

    fn idle_work(&mut self, n_text: usize) -> Result<bool, BackendError> {
        self.warm_next(n_text)
    }

    fn prepare(&mut self) -> Result<(), BackendError> {
        let made = self.res().and_then(|r| r.load_blas_kernels());
        let made = made.and_then(|_| self.load_head_kernels());
        self.model.prepared.set();
        made
    }
}

impl Drop for CudaRunner {
    fn drop(&mut self) {
        if let Some(r) = &mut self.res {
            let _ = r.stream.sync();
            r.log_timing();
        }
        if let Some(t) = &mut self.timing {
            t.log();
        }
        *self.model.parked.lock() = self.res.take();
        self.model.session_taken.store(false, Ordering::Release);
    }
}

/// The rows one step may hold on the GPU (the scratch buffers' size).
pub const MAX_ROWS: usize = MAX_BATCH;
