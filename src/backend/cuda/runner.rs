//! The engine's batched step on the GPU: a paged KV pool reserved before READY (one device
//! buffer, every layer's K and V rows by block), and each step issued as one pass over all rows
//! (`Pass::rows`: cuBLAS over every row, attention of each row over its own sequence's blocks),
//! or — a lone decode row — as the fused one-token step, replayed from a captured graph once
//! every unit is resident. Each layer stays gated on its unit, as for a lone sequence.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::driver::{copy_dtoh, copy_htod, DevBuf, Event, Pinned};
use super::kernels::{Paged, RowsAt};
use super::layout::MAX_BATCH;
use super::pass::{KvPlace, Pass};
use super::res::{wait_done, Res};
use super::CudaModel;
use crate::backend::step::{BatchLimits, KvGeometry, StepBatch, StepRunner};
use crate::backend::BackendError;

pub struct CudaRunner {
    model: Arc<CudaModel>,
    res: Option<Res>,
    /// The KV pool; `kv` points into it.
    _pool: DevBuf,
    kv: KvPlace,
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
    timing: Option<StepTiming>,
}

/// With `LAYERSTREAM_CUDA_TIMING` set: events around a step of several rows (start, layers done,
/// LM head done, logits copied) and the times between them (µs), logged when the runner ends.
struct StepTiming {
    events: [Event; 4],
    /// (rows, layers, head, logits copy) per step.
    steps: Vec<(usize, f64, f64, f64)>,
}

impl StepTiming {
    fn from_env() -> Result<Option<StepTiming>, String> {
        if std::env::var_os("LAYERSTREAM_CUDA_TIMING").is_none() {
            return Ok(None);
        }
        let e = || Event::new(true);
        Ok(Some(StepTiming {
            events: [e()?, e()?, e()?, e()?],
            steps: Vec::new(),
        }))
    }

    /// After the step completed.
    fn collect(&mut self, rows: usize) -> Result<(), String> {
        let ev = &self.events;
        let us = |a: usize, b: usize| ev[a].elapsed_ms(&ev[b]).map(|m| m as f64 * 1e3);
        self.steps.push((rows, us(0, 1)?, us(1, 2)?, us(2, 3)?));
        Ok(())
    }

    fn log(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let med = |f: fn(&(usize, f64, f64, f64)) -> f64, v: &[(usize, f64, f64, f64)]| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let v = &self.steps;
        tracing::info!(
            steps = v.len(),
            "batched step (medians): {:.0} rows; layers {:.0} us, LM head {:.0} us, logits copy {:.0} us",
            med(|s| s.0 as f64, v),
            med(|s| s.1, v),
            med(|s| s.2, v),
            med(|s| s.3, v)
        );
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
        let layer_bytes = geo.tokens() * hp.kv_dim() * 2;
        let pool = DevBuf::alloc(layer_bytes * 2 * hp.n_layer).map_err(e)?;
        let kv = KvPlace {
            layers: (0..hp.n_layer)
                .map(|l| {
                    let k = pool.ptr + (2 * l * layer_bytes) as u64;
                    (k, k + layer_bytes as u64)
                })
                .collect(),
        };
        let (max_rows, max_seqs) = (limits.max_batch_tokens, limits.max_seqs);
        let max_blocks = limits.ctx.div_ceil(geo.block_size);
        let ints = 4 * max_rows + max_seqs + max_seqs * max_blocks;
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
            logits_dev: DevBuf::alloc(max_seqs * hp.vocab * 4).map_err(e)?,
            logits_host: Pinned::alloc(max_seqs * hp.vocab * 4, false).map_err(e)?,
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

    /// Stage the step's inputs; returns the logit rows (host indices) and where each input
    /// array starts on the device.
    fn stage(&mut self, batch: &StepBatch<'_>) -> (Vec<usize>, RowsAt, u64, u64, usize) {
        let n = batch.tokens.len();
        let bs = self.geo.block_size;
        let base = self.staging_dev.ptr;
        let buf = bytemuck::cast_slice_mut::<u8, u32>(self.staging_host.as_mut_slice());
        buf[..n].copy_from_slice(batch.tokens);
        let mut picks = Vec::new();
        let tables0 = 4 * n + batch.logit_rows();
        let mut t = tables0;
        for s in batch.seqs {
            for (j, r) in s.rows.clone().enumerate() {
                let pos = s.pos + j;
                buf[n + r] = pos as u32;
                buf[2 * n + r] = s.blocks[pos / bs] * bs as u32 + (pos % bs) as u32;
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
        let at = RowsAt {
            pos_dev: 0,
            row_pos: base + (n * 4) as u64,
            pos0: 0,
            slots: base + (2 * n * 4) as u64,
            row_tab: base + (3 * n * 4) as u64,
            tables: base + (tables0 * 4) as u64,
            bs,
        };
        (picks, at, base, base + (4 * n * 4) as u64, t)
    }

    /// A step of several rows: one pass over all of them, logits of the rows that want them.
    fn issue_rows(&mut self, batch: &StepBatch<'_>, pass: &mut Pass) -> Result<usize, String> {
        let (picks, at, ids, pick_dev, ints) = self.stage(batch);
        let mark = |t: &Option<StepTiming>, i: usize| match t {
            Some(t) => t.events[i].record(pass.s),
            None => Ok(()),
        };
        mark(&self.timing, 0)?;
        unsafe {
            copy_htod(
                self.staging_dev.ptr,
                self.staging_host.ptr,
                ints * 4,
                pass.s,
            )?
        };
        let res = self.res.as_ref().ok_or("no runner resources")?;
        pass.rows(&res.blas, ids, batch.tokens.len(), &at)?;
        mark(&self.timing, 1)?;
        if !picks.is_empty() {
            pass.head(&res.blas, &picks, pick_dev, self.logits_dev.ptr)?;
        }
        mark(&self.timing, 2)?;
        let bytes = picks.len() * self.model.hp.vocab * 4;
        unsafe { copy_dtoh(self.logits_host.ptr, self.logits_dev.ptr, bytes, pass.s)? };
        mark(&self.timing, 3)?;
        Ok(picks.len())
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

impl StepRunner for CudaRunner {
    fn step(&mut self, batch: &StepBatch<'_>) -> Result<&mut [f32], BackendError> {
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
        let lone = match batch.seqs {
            [s] if s.rows.len() == 1 && s.logits => Some(s),
            _ => None,
        };
        let rows = if let Some(s) = lone {
            let bs = self.geo.block_size;
            let slot = s.blocks[s.pos / bs] as usize * bs + s.pos % bs;
            let pg = Paged {
                table: dev.ptr(dev.layout.scratch.table),
                bs,
            };
            let (table_ints, all) = (self.max_blocks, model.residency.all_resident());
            let res = self.res()?;
            res.set_decode_params(s.pos, slot, batch.tokens[s.rows.start], s.blocks);
            res.issue_decode(&mut pass, table_ints, pg, all)
                .map_err(e)?;
            1
        } else {
            self.issue_rows(batch, &mut pass).map_err(e)?
        };
        let res = self.res.as_mut().ok_or(BackendError::Interrupted)?;
        let gated = std::mem::take(&mut pass.gated);
        res.done.record(&stream).map_err(e)?;
        wait_done(&model, &res.done, !gated.is_empty())?;
        drop(pass);
        model.add_waited(&gated, t_issue);
        if let (Some(t), None) = (&mut self.timing, lone) {
            t.collect(batch.tokens.len()).map_err(e)?;
        }
        let vocab = model.hp.vocab;
        let host = if lone.is_some() {
            &mut res.logits_host
        } else {
            &mut self.logits_host
        };
        Ok(&mut bytemuck::cast_slice_mut::<u8, f32>(host.as_mut_slice())[..rows * vocab])
    }

    fn prepare(&mut self) -> Result<(), BackendError> {
        let made = self.res().and_then(|r| r.load_blas_kernels());
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
