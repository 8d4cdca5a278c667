//! The engine's batched step on the GPU: a paged KV pool reserved before READY (one device
//! buffer, every layer's K and V rows by block), and each step issued as one pass over all rows
//! (`Pass::rows`: cuBLAS over every row, attention of each row over its own sequence's blocks),
//! or — a lone decode row — as the fused one-token step, replayed from a captured graph once
//! every unit is resident. Each layer stays gated on its unit, as for a lone sequence.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::driver::{copy_dtoh, copy_htod, DevBuf, Pinned};
use super::graph_steps::{Fixed, Graphs};
use super::kernels::{row_mode, Paged, RowsAt, HEAD_ROW_WORDS};
use super::layout::MAX_BATCH;
use super::pass::{KvPlace, Pass, INVARIANT_ROWS};
use super::res::capture_on;
use super::res::{wait_done, Graph, Res};
use super::step_timing::StepTiming;
use super::CudaModel;
use crate::backend::step::{
    pool_row, BatchLimits, KvGeometry, LogitHead, RowResult, RowWant, StepBatch, StepOut,
    StepRunner,
};
use crate::backend::BackendError;

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
    /// i32 step inputs (ids, positions, K/V rows, table offsets, logit rows, block tables),
    /// staged on the host and copied in one transfer.
    staging_host: Pinned,
    staging_dev: DevBuf,
    logits_dev: DevBuf,
    logits_host: Pinned,
    /// `logits_rows`'s answers (`HEAD_ROW_WORDS` u32 a row), and which rows of the last step
    /// were copied whole into `logits_host`.
    rows_dev: DevBuf,
    rows_host: Pinned,
    whole: Vec<bool>,
    /// Batch-invariant mode (see `Pass::fixed_rows`).
    invariant: bool,
    /// Decode steps replayed from a graph per bucket (graph_steps.rs).
    graphs: Graphs,
    timing: Option<StepTiming>,
}

/// How a step was issued: the lone decode row (its logits in the `Res`), or `n` logit rows.
enum Ran {
    Lone,
    Rows(usize),
}

/// A step's staged inputs: see `CudaRunner::stage`.
struct Staged {
    picks: Vec<usize>,
    rows: RowsAt,
    ids: u64,
    pick_dev: u64,
    modes: u64,
    ints: usize,
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
        let ints = 4 * max_rows + 4 * max_seqs + max_seqs * max_blocks;
        Ok(CudaRunner {
            res: None,
            _pool: pool,
            kv,
            geo,
            max_rows,
            max_seqs,
            max_blocks,
            staging_host: Pinned::alloc(ints * 4, true).map_err(e)?,
            staging_dev: DevBuf::alloc(ints * 4).map_err(e)?,
            // Room for the padded rows of a batch-invariant LM head.
            logits_dev: DevBuf::alloc(max_seqs.next_multiple_of(INVARIANT_ROWS) * hp.vocab * 4)
                .map_err(e)?,
            logits_host: Pinned::alloc(max_seqs * hp.vocab * 4, false).map_err(e)?,
            rows_dev: DevBuf::alloc(max_seqs * HEAD_ROW_WORDS * 4).map_err(e)?,
            rows_host: Pinned::alloc(max_seqs * HEAD_ROW_WORDS * 4, false).map_err(e)?,
            whole: Vec::new(),
            invariant: limits.batch_invariant,
            graphs: Graphs::from_env(),
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

    /// Stage the step's inputs (and each logit row's mode, 1/temperature and uniform draw for
    /// `logits_rows`); returns the logit rows (host indices), the rows' placement, where the ids,
    /// the picked rows and the modes start on the device, and the ints staged.
    fn stage(&mut self, batch: &StepBatch<'_>, wants: &[RowWant]) -> Staged {
        let n = batch.tokens.len();
        let m = batch.logit_rows();
        let bs = self.geo.block_size;
        let base = self.staging_dev.ptr;
        let buf = bytemuck::cast_slice_mut::<u8, u32>(self.staging_host.as_mut_slice());
        buf[..n].copy_from_slice(batch.tokens);
        let mut picks = Vec::new();
        let tables0 = 4 * n + 4 * m;
        let mut t = tables0;
        for s in batch.seqs {
            for (j, r) in s.rows.clone().enumerate() {
                let pos = s.pos + j;
                buf[n + r] = pos as u32;
                buf[2 * n + r] = pool_row(s.blocks, pos, bs) as u32;
                buf[3 * n + r] = (t - tables0) as u32;
            }
            if s.logits {
                buf[4 * n + picks.len()] = (s.rows.end - 1) as u32;
                picks.push(s.rows.end - 1);
            }
            let used = (s.pos + s.rows.len()).div_ceil(bs);
            buf[t..t + used].copy_from_slice(&s.blocks[..used]);
            t += used;
        }
        for (j, w) in wants.iter().enumerate().take(m) {
            let (mode, inv_t, u) = row_mode(*w);
            buf[4 * n + m + j] = mode;
            buf[4 * n + 2 * m + j] = f32::to_bits(inv_t);
            buf[4 * n + 3 * m + j] = f32::to_bits(u);
        }
        let at = |i: usize| base + (i * 4) as u64;
        Staged {
            picks,
            rows: RowsAt {
                pos_dev: 0,
                row_pos: at(n),
                pos0: 0,
                slots: at(2 * n),
                row_tab: at(3 * n),
                tables: at(tables0),
                bs,
            },
            ids: base,
            pick_dev: at(4 * n),
            modes: at(4 * n + m),
            ints: t,
        }
    }

    /// A step of several rows: one pass over all of them; then, for the logit rows, either every
    /// row whole to the host, or `logits_rows`'s answer per row (and whole only the rows that
    /// want it).
    fn issue_rows(
        &mut self,
        batch: &StepBatch<'_>,
        pass: &mut Pass,
        rows_want: Option<(&[RowWant], usize)>,
    ) -> Result<usize, String> {
        let wants = rows_want.map_or(&[][..], |w| w.0);
        let st = self.stage(batch, wants);
        StepTiming::mark(&self.timing, 0, pass.s)?;
        unsafe {
            copy_htod(
                self.staging_dev.ptr,
                self.staging_host.ptr,
                st.ints * 4,
                pass.s,
            )?
        };
        let res = self.res.as_ref().ok_or("no runner resources")?;
        pass.rows(&res.blas, st.ids, batch.tokens.len(), &st.rows)?;
        StepTiming::mark(&self.timing, 1, pass.s)?;
        let m = st.picks.len();
        if m > 0 {
            pass.head(&res.blas, &st.picks, st.pick_dev, self.logits_dev.ptr)?;
        }
        StepTiming::mark(&self.timing, 2, pass.s)?;
        let vocab = self.model.hp.vocab;
        let wants = match rows_want {
            Some((wants, n_text)) if wants.iter().any(|w| *w != RowWant::Full) => {
                let (lo, u) = (st.modes, st.modes + (2 * m * 4) as u64);
                let (logits, out) = (self.logits_dev.ptr, self.rows_dev.ptr);
                let k = &pass.dev.kernels;
                k.logits_rows(
                    pass.s,
                    logits,
                    m,
                    vocab,
                    n_text,
                    lo,
                    lo + (m * 4) as u64,
                    u,
                    out,
                )?;
                let bytes = m * HEAD_ROW_WORDS * 4;
                unsafe { copy_dtoh(self.rows_host.ptr, self.rows_dev.ptr, bytes, pass.s)? };
                wants
            }
            _ => &[],
        };
        self.copy_whole_rows(pass, wants, m)?;
        StepTiming::mark(&self.timing, 3, pass.s)?;
        Ok(m)
    }

    /// The bucket whose graph replays this step, when one may.
    fn graph_bucket(&self, batch: &StepBatch<'_>) -> Option<usize> {
        if !self.model.residency.all_resident() {
            return None;
        }
        self.graphs.fits(batch, self.max_seqs)
    }

    /// A decode-only step replayed from its bucket's graph (captured on the bucket's first
    /// step; a capture the driver refuses turns graphs off and the step runs as `issue_rows`).
    fn issue_graph(
        &mut self,
        batch: &StepBatch<'_>,
        pass: &mut Pass,
        rows_want: Option<(&[RowWant], usize)>,
        b: usize,
    ) -> Result<usize, String> {
        let fx = Fixed {
            b,
            max_blocks: self.max_blocks,
        };
        let (bs, trash) = (self.geo.block_size, self.geo.num_blocks as u32);
        let wants = rows_want.map_or(&[][..], |w| w.0);
        let n_text = rows_want.map_or(self.model.hp.vocab, |w| w.1);
        let buf = bytemuck::cast_slice_mut::<u8, u32>(self.staging_host.as_mut_slice());
        fx.stage(buf, batch, wants, bs, trash);
        if !self.graphs.map.contains_key(&b) {
            match self.capture_bucket(pass, &fx, n_text) {
                Ok(g) => {
                    self.graphs.map.insert(b, g);
                }
                Err(why) => {
                    tracing::warn!("batched decode graph refused ({why}); steps run unrecorded");
                    self.graphs.off = true;
                    return self.issue_rows(batch, pass, rows_want);
                }
            }
        }
        if let Some(g) = self.graphs.map.get(&b) {
            g.launch(pass.s)?;
        }
        let m = batch.seqs.len();
        self.copy_whole_rows(pass, wants, m)?;
        Ok(m)
    }

    /// Capture bucket `fx`'s step: the inputs copy, every layer, the LM head, the per-row
    /// answers and their copy to the host.
    fn capture_bucket(&self, pass: &mut Pass, fx: &Fixed, n_text: usize) -> Result<Graph, String> {
        let res = self.res.as_ref().ok_or("no runner resources")?;
        let base = self.staging_dev.ptr;
        let (b, vocab) = (fx.b, self.model.hp.vocab);
        let picks: Vec<usize> = (0..b).collect();
        let s = pass.s;
        let (stage_host, logits_dev) = (self.staging_host.ptr, self.logits_dev.ptr);
        let (rows_dev, rows_host) = (self.rows_dev.ptr, self.rows_host.ptr);
        capture_on(s, || {
            unsafe { copy_htod(base, stage_host, fx.ints() * 4, s)? };
            pass.rows(&res.blas, base, b, &fx.rows(base, self.geo.block_size))?;
            pass.head(&res.blas, &picks, fx.picks(base), logits_dev)?;
            let mode = fx.modes(base);
            let (inv_t, u) = (mode + (b * 4) as u64, mode + (2 * b * 4) as u64);
            let k = &pass.dev.kernels;
            k.logits_rows(s, logits_dev, b, vocab, n_text, mode, inv_t, u, rows_dev)?;
            unsafe { copy_dtoh(rows_host, rows_dev, b * HEAD_ROW_WORDS * 4, s) }
        })
    }

    /// After the step's kernels: the rows wanted whole (every row when `wants` is empty or all
    /// whole) to the host.
    fn copy_whole_rows(&mut self, pass: &Pass, wants: &[RowWant], m: usize) -> Result<(), String> {
        let row_bytes = self.model.hp.vocab * 4;
        self.whole.clear();
        if wants.is_empty() || wants.iter().all(|w| *w == RowWant::Full) {
            unsafe {
                copy_dtoh(
                    self.logits_host.ptr,
                    self.logits_dev.ptr,
                    m * row_bytes,
                    pass.s,
                )?
            };
            self.whole.resize(m, true);
            return Ok(());
        }
        for (i, w) in wants.iter().enumerate().take(m) {
            let full = *w == RowWant::Full;
            if full {
                let (dst, src) = (i * row_bytes, self.logits_dev.ptr + (i * row_bytes) as u64);
                unsafe { copy_dtoh(self.logits_host.ptr.add(dst), src, row_bytes, pass.s)? };
            }
            self.whole.push(full);
        }
        Ok(())
    }

    /// The answers of the last step's logit rows, from `logits_rows`'s output.
    fn row_results(&self, wants: &[RowWant]) -> Vec<RowResult> {
        let words = bytemuck::cast_slice::<u8, u32>(self.rows_host.as_slice());
        wants
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = &words[i * HEAD_ROW_WORDS..(i + 1) * HEAD_ROW_WORDS];
                match (w, o[0]) {
                    (RowWant::Full, _) => RowResult::Full,
                    (_, 1) => RowResult::NonFinite,
                    (_, 2) => RowResult::Full,
                    (RowWant::Argmax, _) => RowResult::Token(o[1]),
                    (RowWant::Draw { .. }, _) => RowResult::Token(o[2]),
                    (RowWant::Head { .. }, _) => RowResult::Head(LogitHead {
                        max: f32::from_bits(o[4]),
                        total: f32::from_bits(o[5]) as f64,
                        cand: (0..o[3] as usize)
                            .map(|j| (f32::from_bits(o[8 + 2 * j]), o[9 + 2 * j]))
                            .collect(),
                    }),
                }
            })
            .collect()
    }

    /// In batch-invariant mode, cuBLAS's kernel for the LM head's fixed shape, loaded now: a
    /// step gated on the loader must not load one (see `Pass::gate`). Reads whatever the head's
    /// memory holds yet, into the step's own logits buffer.
    fn load_head_kernels(&mut self) -> Result<(), BackendError> {
        if !self.invariant {
            return Ok(());
        }
        let e = BackendError::Device;
        let res = self.res.as_ref().ok_or(BackendError::Interrupted)?;
        let (d, hp) = (&res.dev, &self.model.hp);
        let (xn, w) = (d.ptr(d.layout.scratch.xn), d.ptr(d.layout.out.off));
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
        let ran = match batch.seqs {
            [s] if s.rows.len() == 1 && s.logits && !self.invariant => {
                let bs = self.geo.block_size;
                let slot = pool_row(s.blocks, s.pos, bs);
                let pg = Paged {
                    table: dev.ptr(dev.layout.scratch.table),
                    bs,
                };
                let (table_ints, all) = (self.max_blocks, model.residency.all_resident());
                let res = self.res()?;
                res.set_decode_params(s.pos, slot, batch.tokens[s.rows.start], s.blocks);
                res.issue_decode(&mut pass, table_ints, pg, all)
                    .map_err(e)?;
                Ran::Lone
            }
            _ => match self.graph_bucket(batch) {
                Some(b) => Ran::Rows(
                    self.issue_graph(batch, &mut pass, rows_want, b)
                        .map_err(e)?,
                ),
                None => Ran::Rows(self.issue_rows(batch, &mut pass, rows_want).map_err(e)?),
            },
        };
        let res = self.res.as_mut().ok_or(BackendError::Interrupted)?;
        let gated = std::mem::take(&mut pass.gated);
        res.done.record(&stream).map_err(e)?;
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
        let ran = self.run(batch, None)?;
        self.logits(ran)
    }

    fn step_rows(
        &mut self,
        batch: &StepBatch<'_>,
        wants: &[RowWant],
        n_text: usize,
    ) -> Result<StepOut<'_>, BackendError> {
        match self.run(batch, Some((wants, n_text)))? {
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
            let (dst, src) = (i * vocab * 4, self.logits_dev.ptr + (i * vocab * 4) as u64);
            unsafe {
                copy_dtoh(self.logits_host.ptr.add(dst), src, vocab * 4, &res.stream).map_err(e)?
            };
            res.stream.sync().map_err(e)?;
            self.whole[i] = true;
        }
        let all = bytemuck::cast_slice_mut::<u8, f32>(self.logits_host.as_mut_slice());
        Ok(&mut all[i * vocab..(i + 1) * vocab])
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
