//! One forward pass issued on a compute stream: the layer math of every family written once for
//! the GPU, the family's row of the architecture table choosing what each layer applies (biases,
//! q/k norms, RoPE table and pair layout, window, post norms, gated activation, embedding scale).
//! `rows` runs any number of rows of any sequences (cuBLAS projections, per-row RoPE and KV
//! append, attention of each row over its own sequence's blocks); `decode` runs the one-row step
//! with GEMVs (kept for batch 1's speed, and captured into a CUDA graph), its attention half
//! fused into two kernels where the family allows (no q/k norms). Before
//! a unit's first kernel, while the unit is not known resident, the stream waits on the device
//! (its event once recorded, else the load counter): the host never blocks on the loader.

use std::sync::atomic::Ordering;

use cudarc::driver::sys::CUdeviceptr;

use super::blas::Blas;
use super::driver::{copy_dtoh, copy_htod, wait_event, wait_value, Stream};
use super::gemm_fixed::FixedGemm;
use super::kernels::{Paged, QkvPost, RowsAt, RowsSplit};
use super::layout::Vector;
use super::{CudaModel, Device};
use crate::model::arch::{Activation, RopeStyle};
use crate::model::HParams;

/// What the embedding rows are multiplied by: sqrt(hidden) in F32 for the families that scale
/// them (Gemma), else 1.
fn embed_scale(hp: &HParams) -> f32 {
    match hp.family.info().embed_scale {
        true => (hp.hidden as f32).sqrt(),
        false => 1.0,
    }
}

/// Where a pass reads and writes the KV cache: each layer's K and V rows (`[rows, kv_dim]` F16).
#[derive(Clone, Debug)]
pub struct KvPlace {
    pub layers: Vec<(CUdeviceptr, CUdeviceptr)>,
}

/// Issues one forward pass on a stream.
pub struct Pass<'a> {
    pub m: &'a CudaModel,
    pub dev: &'a Device,
    pub s: &'a Stream,
    pub kv: &'a KvPlace,
    /// Units this pass had to wait for on the device.
    pub gated: Vec<usize>,
    /// Decode with the fused kernels (`decode_fused.cu`) rather than the separate ones.
    pub fused: bool,
    /// The model's kernel-loading lock, taken at the first gate that waits (see `gate`).
    pub no_loading: Option<parking_lot::MutexGuard<'a, ()>>,
    /// Batch-invariant mode: every product sums each output in an order fixed by K alone (the
    /// tensor-core kernel of `cuda/gemm_fixed.cu`) or, for operands it does not take, runs over
    /// exactly this many rows (in chunks, the last padded) so cuBLAS picks one kernel whatever the
    /// step holds; either way a row's sums never depend on the other rows. The LM head always
    /// takes the product path.
    pub fixed_rows: Option<usize>,
    /// Split each row's attention over its keys (long contexts; `Pass::rows` only).
    pub split: Option<RowsSplit>,
}

/// Rows of every product in batch-invariant mode (divides `MAX_BATCH`).
pub const INVARIANT_ROWS: usize = 64;

impl<'a> Pass<'a> {
    pub fn new(m: &'a CudaModel, dev: &'a Device, s: &'a Stream, kv: &'a KvPlace) -> Pass<'a> {
        Pass {
            m,
            dev,
            s,
            kv,
            gated: Vec::new(),
            fused: true,
            no_loading: None,
            fixed_rows: None,
            split: None,
        }
    }

    /// Make the stream wait for unit `slot` unless it is known resident.
    fn gate(&mut self, slot: usize) -> Result<(), String> {
        let r = &self.m.residency;
        if r.is_resident(slot) {
            return Ok(());
        }
        // No other thread may load kernels while this stream waits on the loader: loading one
        // synchronises the context, which would then wait for this stream, which waits for a
        // loader held up by that synchronisation. The kernel preload loads under this lock (one
        // GEMM shape at a time), held from here until the pass has completed; this pass's own
        // kernels were loaded at layer 0 (resident at READY), before any wait.
        if self.no_loading.is_none() {
            self.no_loading = Some(self.m.kernel_loading.lock());
        }
        let recorded = self
            .dev
            .recorded
            .get(slot)
            .is_some_and(|f| f.load(Ordering::Acquire));
        match self.dev.unit_events.get(slot) {
            Some(e) if recorded => wait_event(self.s, e)?,
            _ => wait_value(
                self.s,
                self.dev.ptr(self.dev.layout.load_counter),
                slot as u32 + 1,
            )?,
        }
        self.gated.push(slot);
        Ok(())
    }

    /// One token. `params` (pinned host): i32 [position, K/V row, token id], then the sequence's
    /// block table (`table_ints` of them) when `pg` is paged; copied inside the pass so a captured
    /// graph reads the current values. Logits in the scratch `logits`, and to `logits` (pinned
    /// host) unless it is null.
    pub fn decode(
        &mut self,
        params: *const u8,
        table_ints: usize,
        pg: Paged,
        logits: *mut u8,
    ) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let (l, sc, k) = (&dev.layout, &dev.layout.scratch, &dev.kernels);
        let p = |off: usize| dev.ptr(off);
        let (pos, slot, id) = (p(sc.dec), p(sc.dec) + 4, p(sc.dec) + 8);
        unsafe {
            copy_htod(pos, params, 12, s)?;
            if pg.table != 0 {
                copy_htod(pg.table, params.add(16), table_ints * 4, s)?;
            }
        }
        let slot = if pg.table != 0 { slot } else { 0 };
        let (h, q, f) = (hp.hidden, hp.q_dim(), hp.ffn);
        let gelu = hp.family.info().activation == Activation::GeluTanhGated;
        self.gate(0)?;
        k.embed_gather(s, p(l.embed.off), id, p(sc.x), 1, h, embed_scale(hp))?;
        for (i, ly) in l.layers.iter().enumerate() {
            self.gate(i + 1)?;
            let (post, window) = (self.qkv_post(i), hp.window(i).unwrap_or(0));
            if self.fused && post.q_norm == 0 {
                self.decode_attention_fused(i, pos, slot, pg, &post, window)?;
            } else {
                self.decode_attention_separate(i, pos, slot, pg, &post)?;
            }
            self.add_out(ly.attn_post_norm, 1, |y, acc| {
                k.gemv_plain(s, p(ly.wo.off), p(sc.att32), 0, y, h, q, acc)
            })?;
            k.gemv_norm(
                s,
                p(ly.wgu.off),
                p(sc.x),
                p(ly.ffn_norm.off),
                hp.rms_eps,
                0,
                p(sc.gu),
                2 * f,
                h,
                false,
            )?;
            self.add_out(ly.ffn_post_norm, 1, |y, acc| {
                k.gemv_silu(s, p(ly.wdown.off), p(sc.gu), 0, y, h, f, acc, gelu)
            })?;
        }
        self.head_one(p(sc.x), p(sc.logits), logits)
    }

    /// The decode step's attention half fused: RoPE + KV append in the QKV product's epilogue,
    /// the split merge in the attention's last block per head (three launches fewer).
    fn decode_attention_fused(
        &mut self,
        i: usize,
        pos: CUdeviceptr,
        slot: CUdeviceptr,
        pg: Paged,
        post: &QkvPost,
        window: usize,
    ) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let (l, sc, k) = (&dev.layout, &dev.layout.scratch, &dev.kernels);
        let p = |off: usize| dev.ptr(off);
        let ly = &l.layers[i];
        let (kc, vc) = self.kv.layers[i];
        k.gemv_qkv_rope(
            s,
            p(ly.wqkv.off),
            p(sc.x),
            p(ly.attn_norm.off),
            post,
            p(sc.q),
            kc,
            vc,
            pos,
            slot,
            hp,
        )?;
        k.attn_decode_merged(
            s,
            p(sc.q),
            kc,
            vc,
            pg,
            p(sc.part_acc),
            p(sc.part_ml),
            p(sc.att32),
            p(sc.merge_count),
            pos,
            l.split_keys,
            l.max_splits,
            hp,
            window,
        )
    }

    /// Layer `i`'s Q/K/V post-processing: its biases and q/k norms where it has them, its RoPE
    /// table and the family's pair layout.
    fn qkv_post(&self, i: usize) -> QkvPost {
        let (dev, hp) = (self.dev, &self.m.hp);
        let ly = &dev.layout.layers[i];
        let opt = |v: Option<Vector>| v.map_or(0, |v| dev.ptr(v.off));
        QkvPost {
            bias: opt(ly.bqkv),
            q_norm: opt(ly.q_norm),
            k_norm: opt(ly.k_norm),
            inv_freq: dev.ptr(dev.layout.rope_of(hp, i)),
            mscale: hp.rope_mscale(hp.local_rope(i)),
            interleaved: hp.family.info().rope == RopeStyle::Interleaved,
        }
    }

    /// Add a projection's `n` output rows to the residual rows: `product(y, acc)` writes them to
    /// `y`, accumulating when `acc`. Without a post norm it accumulates straight into the residual;
    /// with one (Gemma 3) it writes the scratch `proj`, whose normed rows are then added.
    fn add_out(
        &self,
        post_norm: Option<Vector>,
        n: usize,
        product: impl FnOnce(CUdeviceptr, bool) -> Result<(), String>,
    ) -> Result<(), String> {
        let (dev, hp) = (self.dev, &self.m.hp);
        let sc = &dev.layout.scratch;
        let Some(w) = post_norm else {
            return product(dev.ptr(sc.x), true);
        };
        product(dev.ptr(sc.proj), false)?;
        let (y, x) = (dev.ptr(sc.proj), dev.ptr(sc.x));
        dev.kernels
            .rmsnorm_add(self.s, y, dev.ptr(w.off), x, n, hp.hidden, hp.rms_eps)
    }

    /// The decode step's attention half with the separate kernels (norm + QKV GEMV, the Q/K/V
    /// post-processing with RoPE and the KV append, split attention + merge): the path of every
    /// family the fused kernel does not compute (q/k norms), and the fused one's reference.
    fn decode_attention_separate(
        &mut self,
        i: usize,
        pos: CUdeviceptr,
        slot: CUdeviceptr,
        pg: Paged,
        post: &QkvPost,
    ) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let (l, sc, k) = (&dev.layout, &dev.layout.scratch, &dev.kernels);
        let p = |off: usize| dev.ptr(off);
        let ly = &l.layers[i];
        let (kc, vc) = self.kv.layers[i];
        let (h, q, kv) = (hp.hidden, hp.q_dim(), hp.kv_dim());
        k.gemv_norm(
            s,
            p(ly.wqkv.off),
            p(sc.x),
            p(ly.attn_norm.off),
            hp.rms_eps,
            0,
            p(sc.qkv),
            q + 2 * kv,
            h,
            false,
        )?;
        let at = RowsAt {
            pos_dev: pos,
            slots: slot,
            ..RowsAt::contiguous(0)
        };
        k.rope_qkv(s, p(sc.qkv), post, p(sc.q), kc, vc, &at, 1, hp)?;
        k.attn_decode(
            s,
            p(sc.q),
            kc,
            vc,
            pg,
            p(sc.part_acc),
            p(sc.part_ml),
            p(sc.att32),
            pos,
            l.split_keys,
            l.max_splits,
            hp,
            hp.window(i).unwrap_or(0),
        )
    }

    /// `n` rows whose token ids are at `ids` (device), placed as `at` says; every layer over all
    /// of them. The residual rows end in the scratch `x` for [`Pass::head`].
    pub fn rows(
        &mut self,
        blas: &Blas,
        ids: CUdeviceptr,
        n: usize,
        at: &RowsAt,
    ) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let (l, sc, k) = (&dev.layout, &dev.layout.scratch, &dev.kernels);
        let p = |off: usize| dev.ptr(off);
        let (h, q, kv, f) = (hp.hidden, hp.q_dim(), hp.kv_dim(), hp.ffn);
        let gelu = hp.family.info().activation == Activation::GeluTanhGated;
        self.gate(0)?;
        k.embed_gather(s, p(l.embed.off), ids, p(sc.x), n, h, embed_scale(hp))?;
        for (i, ly) in l.layers.iter().enumerate() {
            self.gate(i + 1)?;
            let (kc, vc) = self.kv.layers[i];
            let (post, window) = (self.qkv_post(i), hp.window(i).unwrap_or(0));
            let eps = hp.rms_eps;
            k.rmsnorm_f16(s, p(sc.x), p(ly.attn_norm.off), p(sc.xn), 0, n, h, eps)?;
            let (xn, qkv) = (p(sc.xn), p(sc.qkv));
            self.gemm(blas, xn, p(ly.wqkv.off), qkv, n, q + 2 * kv, h, false)?;
            k.rope_qkv(s, p(sc.qkv), &post, p(sc.q), kc, vc, at, n, hp)?;
            let (qb, att) = (p(sc.q), p(sc.att16));
            match self.split.filter(|sp| sp.splits > 1) {
                Some(sp) => k.attn_rows_split(s, qb, kc, vc, att, n, at, &sp, hp, window)?,
                None => k.attn_rows(s, qb, kc, vc, att, n, at, hp, window)?,
            }
            self.add_out(ly.attn_post_norm, n, |y, acc| {
                self.gemm(blas, att, p(ly.wo.off), y, n, h, q, acc)
            })?;
            k.rmsnorm_f16(s, p(sc.x), p(ly.ffn_norm.off), p(sc.xn), 0, n, h, eps)?;
            self.gemm(blas, xn, p(ly.wgu.off), p(sc.gu), n, 2 * f, h, false)?;
            k.gated_mul(s, p(sc.gu), p(sc.act), n, f, gelu)?;
            self.add_out(ly.ffn_post_norm, n, |y, acc| {
                self.gemm(blas, p(sc.act), p(ly.wdown.off), y, n, h, f, acc)
            })?;
        }
        Ok(())
    }

    /// Final norm and LM head of the residual rows `rows` (host indices; `pick`: the same as i32
    /// on the device, used when there are several), logits `[rows, vocab]` F32 into `logits_dev`.
    pub fn head(
        &mut self,
        blas: &Blas,
        rows: &[usize],
        pick: CUdeviceptr,
        logits_dev: CUdeviceptr,
    ) -> Result<(), String> {
        let (dev, hp) = (self.dev, &self.m.hp);
        self.gate(hp.n_layer + 1)?;
        if self.fixed_rows.is_none() && (rows.len() == 1 || !self.gated.is_empty()) {
            // One GEMV per row: the fast path for one row, and while gated on the loader (cuBLAS
            // may load a kernel for a product shape it has not run yet, which synchronises the
            // context: never while this stream waits on the loader, see `gate`).
            for (j, row) in rows.iter().enumerate() {
                let x = dev.ptr(dev.layout.scratch.x) + (row * hp.hidden * 4) as u64;
                self.head_gemv(x, logits_dev + (j * hp.vocab * 4) as u64)?;
            }
            return Ok(());
        }
        self.head_picked(blas, rows.len(), pick, logits_dev)
    }

    /// Final norm and LM head of the `m` residual rows whose indices are at `pick` (i32, device),
    /// as one product: what a captured graph replays for any rows.
    pub fn head_picked(
        &mut self,
        blas: &Blas,
        m: usize,
        pick: CUdeviceptr,
        logits_dev: CUdeviceptr,
    ) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let (l, sc) = (&dev.layout, &dev.layout.scratch);
        self.gate(hp.n_layer + 1)?;
        let xn = dev.ptr(sc.xn);
        dev.kernels.rmsnorm_f16(
            s,
            dev.ptr(sc.x),
            dev.ptr(l.out_norm.off),
            xn,
            pick,
            m,
            hp.hidden,
            hp.rms_eps,
        )?;
        let w = dev.ptr(l.out.off);
        self.gemm(blas, xn, w, logits_dev, m, hp.vocab, hp.hidden, false)
    }

    /// Y[n, out] (+)= X[n, k] · W[out, k]ᵀ (F16 X, F32 Y), at the fixed row count when set.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        blas: &Blas,
        x: CUdeviceptr,
        w: CUdeviceptr,
        y: CUdeviceptr,
        n: usize,
        out: usize,
        k: usize,
        acc: bool,
    ) -> Result<(), String> {
        let Some(f) = self.fixed_rows else {
            return blas.gemm(x, w, y, n, out, k, acc);
        };
        if FixedGemm::fits(x, w, k) {
            return self.dev.kernels.gemm_fixed(self.s, x, w, y, n, out, k, acc);
        }
        for c in (0..n).step_by(f) {
            blas.gemm(
                x + (c * k * 2) as u64,
                w,
                y + (c * out * 4) as u64,
                f,
                out,
                k,
                acc,
            )?;
        }
        Ok(())
    }

    /// Final norm and LM head of the one residual row at `x` (the GEMV path), copied to `logits`
    /// (pinned host) unless it is null.
    fn head_one(&mut self, x: u64, logits_dev: CUdeviceptr, logits: *mut u8) -> Result<(), String> {
        self.gate(self.m.hp.n_layer + 1)?;
        self.head_gemv(x, logits_dev)?;
        if logits.is_null() {
            return Ok(());
        }
        unsafe { copy_dtoh(logits, logits_dev, self.m.hp.vocab * 4, self.s) }
    }

    /// Final norm and LM head of the residual row at `x` into `y` (device), one GEMV.
    fn head_gemv(&self, x: u64, y: CUdeviceptr) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let l = &dev.layout;
        dev.kernels.gemv_norm(
            s,
            dev.ptr(l.out.off),
            x,
            dev.ptr(l.out_norm.off),
            hp.rms_eps,
            0,
            y,
            hp.vocab,
            hp.hidden,
            false,
        )
    }
}
