//! One sequence on the GPU: issues the forward pass on its compute stream. Before a unit's first
//! kernel, while the unit is not known resident, the stream waits on the device (its event once
//! recorded, else the load counter) — the host never blocks on the loader. Prefill uses cuBLAS
//! for the projections; decode uses the fused GEMV kernels, and once every unit is resident the
//! decode step is captured into a CUDA graph and replayed (token id and position are read from
//! device memory, so one graph serves every step).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys;

use super::blas::Blas;
use super::driver::{ck, copy_dtoh, copy_htod, wait_event, wait_value, Event, Pinned, Stream};
use super::early_blas;
use super::kernels;
use super::layout::MAX_BATCH;
use super::{CudaModel, Device};
use crate::backend::{BackendError, Session};

struct Graph(sys::CUgraphExec);

impl Drop for Graph {
    fn drop(&mut self) {
        unsafe { sys::cuGraphExecDestroy(self.0) };
    }
}

unsafe impl Send for Graph {}

/// Per-session device objects, made on the first evaluation (or `prepare`), parked in the model
/// when the session ends and taken up by the next session.
pub(super) struct Res {
    /// Positions `ids_host` holds.
    ctx: usize,
    dev: Arc<Device>,
    stream: Stream,
    blas: Blas,
    done: Event,
    /// Token ids of the whole sequence (prefill chunks are never overwritten before they are copied).
    ids_host: Pinned,
    /// [position, token id] of the decode step.
    params_host: Pinned,
    logits_host: Pinned,
    graph: Option<Graph>,
    /// Fused decode kernels, unless `LAYERSTREAM_CUDA_DECODE=separate` (for comparing the two).
    fused: bool,
    /// The captured decode step's kernels launched as programmatic dependents (each prefetches
    /// its weights while the previous one finishes), unless `LAYERSTREAM_CUDA_PDL=0`, or the
    /// driver refused to capture them.
    dependent: bool,
    /// With `LAYERSTREAM_CUDA_TIMING` set: events around each replayed decode step, and the
    /// device and whole-call times (µs) they measured, logged when the session ends.
    timing: Option<(Event, Event, Vec<f64>, Vec<f64>)>,
}

pub struct CudaSession {
    model: Arc<CudaModel>,
    res: Option<Res>,
    ctx: usize,
    len: usize,
}

impl CudaSession {
    pub fn new(model: Arc<CudaModel>, ctx: usize) -> CudaSession {
        CudaSession {
            model,
            res: None,
            ctx,
            len: 0,
        }
    }

    fn res(&mut self) -> Result<&mut Res, BackendError> {
        if self.res.is_none() {
            self.res = self
                .model
                .parked
                .lock()
                .take()
                .filter(|r| r.ctx >= self.ctx);
        }
        if self.res.is_none() {
            let dev = self.model.device()?;
            let e = BackendError::Device;
            dev.gpu.bind().map_err(e)?;
            // The handle made beside the context at startup, if there is one (see early_blas).
            let (stream, blas) = match early_blas::take(dev.gpu.ctx.ordinal()) {
                Some(made) => made,
                None => {
                    let stream = Stream::new().map_err(e)?;
                    let blas = Blas::new(&stream).map_err(e)?;
                    (stream, blas)
                }
            };
            self.res = Some(Res {
                ctx: self.ctx.max(1),
                blas,
                stream,
                done: Event::new(false).map_err(e)?,
                ids_host: Pinned::alloc(self.ctx.max(1) * 4, false).map_err(e)?,
                params_host: Pinned::alloc(8, false).map_err(e)?,
                logits_host: Pinned::alloc(self.model.hp.vocab * 4, false).map_err(e)?,
                graph: None,
                fused: std::env::var("LAYERSTREAM_CUDA_DECODE").map_or(true, |v| v != "separate"),
                dependent: std::env::var("LAYERSTREAM_CUDA_PDL").map_or(true, |v| v != "0"),
                timing: match std::env::var_os("LAYERSTREAM_CUDA_TIMING") {
                    Some(_) => Some((
                        Event::new(true).map_err(e)?,
                        Event::new(true).map_err(e)?,
                        Vec::new(),
                        Vec::new(),
                    )),
                    None => None,
                },
                dev,
            });
        }
        self.res
            .as_mut()
            .ok_or_else(|| BackendError::Device("no session resources".into()))
    }
}

impl Drop for CudaSession {
    fn drop(&mut self) {
        if let Some(r) = &mut self.res {
            let _ = r.stream.sync();
            if let Some((_, _, gpu, call)) = &mut r.timing {
                let med = |v: &mut Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2).copied().unwrap_or(0.0)
                };
                tracing::info!(
                    steps = gpu.len(),
                    "decode step: device {:.1} us, whole call {:.1} us (medians)",
                    med(gpu),
                    med(call)
                );
                gpu.clear();
                call.clear();
            }
        }
        // Parked before the sequence is given back, so the next session finds it.
        *self.model.parked.lock() = self.res.take();
        self.model.session_taken.store(false, Ordering::Release);
    }
}

impl Session for CudaSession {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError> {
        let hp = self.model.hp.clone();
        if tokens.is_empty() {
            return Err(BackendError::EmptyInput);
        }
        let needed = self.len + tokens.len();
        if needed > self.ctx {
            return Err(BackendError::ContextFull {
                needed,
                capacity: self.ctx,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= hp.vocab) {
            return Err(BackendError::TokenOutOfRange {
                id,
                vocab: hp.vocab,
            });
        }
        if let Some(e) = self.model.residency.wait_error() {
            return Err(e.into());
        }
        let model = self.model.clone();
        let pos0 = self.len;
        let res = self.res()?;
        res.dev.gpu.bind().map_err(BackendError::Device)?;
        let t_issue = Instant::now();
        let mut pass = Pass {
            m: &model,
            dev: &res.dev,
            s: &res.stream,
            gated: Vec::new(),
            fused: res.fused,
            no_loading: None,
        };
        let e = BackendError::Device;
        if tokens.len() == 1 {
            // SAFETY of the pinned writes: the previous evaluation finished (synchronised below).
            let params =
                bytemuck::cast_slice_mut::<u8, u32>(&mut res.params_host.as_mut_slice()[..8]);
            params[0] = pos0 as u32;
            params[1] = tokens[0];
            if model.residency.all_resident() {
                if res.graph.is_none() {
                    let (params, logits) = (res.params_host.ptr, res.logits_host.ptr);
                    let mut graph = capture(&mut pass, params, logits, res.dependent);
                    if let (Err(why), true) = (&graph, res.dependent) {
                        tracing::warn!("decode graph with dependent launches refused ({why}); capturing without");
                        res.dependent = false;
                        graph = capture(&mut pass, params, logits, false);
                    }
                    res.graph = Some(graph.map_err(e)?);
                }
                let g = res
                    .graph
                    .as_ref()
                    .map(|g| g.0)
                    .unwrap_or(std::ptr::null_mut());
                if let Some((t0, _, _, _)) = &res.timing {
                    t0.record(&res.stream).map_err(e)?;
                }
                ck("cuGraphLaunch", unsafe {
                    sys::cuGraphLaunch(g, res.stream.0)
                })
                .map_err(e)?;
                if let Some((_, t1, _, _)) = &res.timing {
                    t1.record(&res.stream).map_err(e)?;
                }
            } else {
                pass.decode(res.params_host.ptr, res.logits_host.ptr)
                    .map_err(e)?;
            }
        } else {
            let ids = bytemuck::cast_slice_mut::<u8, u32>(res.ids_host.as_mut_slice());
            ids[pos0..pos0 + tokens.len()].copy_from_slice(tokens);
            let ids_ptr = res.ids_host.ptr;
            let mut at = 0;
            while at < tokens.len() {
                let n = (tokens.len() - at).min(MAX_BATCH);
                let last = at + n == tokens.len();
                let src = unsafe { ids_ptr.add((pos0 + at) * 4) };
                pass.prefill(
                    &res.blas,
                    src,
                    pos0 + at,
                    n,
                    last.then_some(res.logits_host.ptr),
                )
                .map_err(e)?;
                at += n;
                // The next chunk's length may be a GEMM shape whose kernels are not loaded yet,
                // and loading one synchronises the context: never while this stream waits on the
                // loader (see `Pass::gate`).
                if !last && !pass.gated.is_empty() {
                    res.done.record(&res.stream).map_err(e)?;
                    wait_done(&model, &res.done, true)?;
                }
            }
        }
        let gated = std::mem::take(&mut pass.gated);
        res.done.record(&res.stream).map_err(e)?;
        wait_done(&model, &res.done, !gated.is_empty())?;
        drop(pass); // the kernel-loading lock, if a gate took it
        if let Some(waited) = gated
            .iter()
            .filter_map(|&slot| model.residency.resident_at(slot))
            .map(|at| at.saturating_duration_since(t_issue))
            .max()
        {
            model
                .waited_ns
                .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        }
        if let Some((t0, t1, gpu, call)) = &mut res.timing {
            if tokens.len() == 1 && gated.is_empty() {
                gpu.push(t0.elapsed_ms(t1).map_err(e)? as f64 * 1e3);
                call.push(t_issue.elapsed().as_secs_f64() * 1e6);
            }
        }
        self.len = needed;
        let res = self
            .res
            .as_ref()
            .ok_or_else(|| BackendError::Device("no session resources".into()))?;
        Ok(&bytemuck::cast_slice::<u8, f32>(res.logits_host.as_slice())[..hp.vocab])
    }

    fn reset(&mut self) {
        self.len = 0;
    }

    fn prepare(&mut self) -> Result<(), BackendError> {
        let made = self.make_objects();
        // The kernel preload waits for this (whatever the outcome), so the two do not contend.
        self.model.prepared.set();
        made
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl CudaSession {
    /// The session's device objects, and cuBLAS's kernels for a small product loaded.
    fn make_objects(&mut self) -> Result<(), BackendError> {
        let res = self.res()?;
        let e = BackendError::Device;
        res.dev.gpu.bind().map_err(e)?;
        // One small product on scratch buffers loads cuBLAS's kernels; no weights are touched.
        let sc = &res.dev.layout.scratch;
        res.blas
            .gemm(
                res.dev.ptr(sc.xn),
                res.dev.ptr(sc.att16),
                res.dev.ptr(sc.gu),
                1,
                8,
                8,
                false,
            )
            .map_err(e)?;
        res.stream.sync().map_err(e)
    }
}

/// Wait for the evaluation; while it may be gated on the loader, poll so that a failed or
/// interrupted load ends the wait instead of hanging the engine.
fn wait_done(model: &CudaModel, done: &Event, gated: bool) -> Result<(), BackendError> {
    if !gated {
        return done.sync().map_err(BackendError::Device);
    }
    loop {
        if done.done().map_err(BackendError::Device)? {
            return Ok(());
        }
        if let Some(e) = model.residency.wait_error() {
            return Err(e.into());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Capture one decode step into a graph (every unit resident: no gates in it), its kernels
/// launched as programmatic dependents when `dependent`.
fn capture(
    pass: &mut Pass,
    params: *mut u8,
    logits: *mut u8,
    dependent: bool,
) -> Result<Graph, String> {
    ck("cuStreamBeginCapture", unsafe {
        sys::cuStreamBeginCapture_v2(
            pass.s.0,
            sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
    })?;
    let issued = {
        let _dependent = kernels::dependent_launches(dependent);
        pass.decode(params, logits)
    };
    let mut graph = std::ptr::null_mut();
    let ended = ck("cuStreamEndCapture", unsafe {
        sys::cuStreamEndCapture(pass.s.0, &mut graph)
    });
    issued?;
    ended?;
    let mut exec = std::ptr::null_mut();
    let inst = ck("cuGraphInstantiate", unsafe {
        sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0)
    });
    unsafe { sys::cuGraphDestroy(graph) };
    inst?;
    Ok(Graph(exec))
}

/// Issues one forward pass on a stream.
struct Pass<'a> {
    m: &'a CudaModel,
    dev: &'a Device,
    s: &'a Stream,
    /// Units this pass had to wait for on the device.
    gated: Vec<usize>,
    /// Decode with the fused kernels (`decode_fused.cu`) rather than the separate ones.
    fused: bool,
    /// The model's kernel-loading lock, taken at the first gate that waits (see `gate`).
    no_loading: Option<parking_lot::MutexGuard<'a, ()>>,
}

impl Pass<'_> {
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

    /// One token: position and id from `params` (pinned host, copied inside the pass so that a
    /// captured graph reads the current values), logits to `logits` (pinned host).
    fn decode(&mut self, params: *mut u8, logits: *mut u8) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let (l, sc, k) = (&dev.layout, &dev.layout.scratch, &dev.kernels);
        let p = |off: usize| dev.ptr(off);
        unsafe {
            copy_htod(p(sc.pos), params, 4, s)?;
            copy_htod(p(sc.ids), params.add(4), 4, s)?;
        }
        let (h, q, kv, f) = (hp.hidden, hp.q_dim(), hp.kv_dim(), hp.ffn);
        self.gate(0)?;
        k.embed_gather(s, p(l.embed.off), p(sc.ids), p(sc.x), 1, h)?;
        for (i, ly) in l.layers.iter().enumerate() {
            self.gate(i + 1)?;
            if self.fused {
                // Three launches fewer: RoPE + KV append in the QKV product's epilogue, the split
                // merge in the attention's last block per head.
                k.gemv_qkv_rope(
                    s,
                    p(ly.wqkv.off),
                    p(sc.x),
                    p(ly.attn_norm.off),
                    p(ly.bqkv.off),
                    p(sc.q),
                    p(ly.k_cache),
                    p(ly.v_cache),
                    p(sc.pos),
                    hp,
                )?;
                k.attn_decode_merged(
                    s,
                    p(sc.q),
                    p(ly.k_cache),
                    p(ly.v_cache),
                    p(sc.part_acc),
                    p(sc.part_ml),
                    p(sc.att32),
                    p(sc.merge_count),
                    p(sc.pos),
                    l.split_keys,
                    l.max_splits,
                    hp,
                )?;
                k.gemv_plain(s, p(ly.wo.off), p(sc.att32), 0, p(sc.x), h, q, true)?;
            } else {
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
                k.rope_qkv(
                    s,
                    p(sc.qkv),
                    p(ly.bqkv.off),
                    p(sc.q),
                    p(ly.k_cache),
                    p(ly.v_cache),
                    p(sc.pos),
                    0,
                    1,
                    hp,
                )?;
                k.attn_decode(
                    s,
                    p(sc.q),
                    p(ly.k_cache),
                    p(ly.v_cache),
                    p(sc.part_acc),
                    p(sc.part_ml),
                    p(sc.att32),
                    p(sc.pos),
                    l.split_keys,
                    l.max_splits,
                    hp,
                )?;
                k.gemv_plain(s, p(ly.wo.off), p(sc.att32), 0, p(sc.x), h, q, true)?;
            }
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
            k.gemv_silu(s, p(ly.wdown.off), p(sc.gu), 0, p(sc.x), h, f, true)?;
        }
        self.head(p(sc.x), logits)
    }

    /// `n` prompt tokens at positions `pos0..`, ids at `ids` (pinned host); logits of the last
    /// one to `logits` when given.
    fn prefill(
        &mut self,
        blas: &Blas,
        ids: *const u8,
        pos0: usize,
        n: usize,
        logits: Option<*mut u8>,
    ) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let (l, sc, k) = (&dev.layout, &dev.layout.scratch, &dev.kernels);
        let p = |off: usize| dev.ptr(off);
        unsafe { copy_htod(p(sc.ids), ids, n * 4, s)? };
        let (h, q, kv, f) = (hp.hidden, hp.q_dim(), hp.kv_dim(), hp.ffn);
        self.gate(0)?;
        k.embed_gather(s, p(l.embed.off), p(sc.ids), p(sc.x), n, h)?;
        for (i, ly) in l.layers.iter().enumerate() {
            self.gate(i + 1)?;
            k.rmsnorm_f16(s, p(sc.x), p(ly.attn_norm.off), p(sc.xn), n, h, hp.rms_eps)?;
            blas.gemm(p(sc.xn), p(ly.wqkv.off), p(sc.qkv), n, q + 2 * kv, h, false)?;
            k.rope_qkv(
                s,
                p(sc.qkv),
                p(ly.bqkv.off),
                p(sc.q),
                p(ly.k_cache),
                p(ly.v_cache),
                0,
                pos0,
                n,
                hp,
            )?;
            k.attn_prefill(
                s,
                p(sc.q),
                p(ly.k_cache),
                p(ly.v_cache),
                p(sc.att16),
                n,
                pos0,
                hp,
            )?;
            blas.gemm(p(sc.att16), p(ly.wo.off), p(sc.x), n, h, q, true)?;
            k.rmsnorm_f16(s, p(sc.x), p(ly.ffn_norm.off), p(sc.xn), n, h, hp.rms_eps)?;
            blas.gemm(p(sc.xn), p(ly.wgu.off), p(sc.gu), n, 2 * f, h, false)?;
            k.silu_mul(s, p(sc.gu), p(sc.act), n, f)?;
            blas.gemm(p(sc.act), p(ly.wdown.off), p(sc.x), n, h, f, true)?;
        }
        let Some(logits) = logits else { return Ok(()) };
        self.head(p(sc.x) + ((n - 1) * h * 4) as u64, logits)
    }

    /// Final norm and LM head of the residual row at `x`, logits copied to `logits` (pinned host).
    fn head(&mut self, x: u64, logits: *mut u8) -> Result<(), String> {
        let (dev, hp, s) = (self.dev, &self.m.hp, self.s);
        let (l, sc) = (&dev.layout, &dev.layout.scratch);
        self.gate(hp.n_layer + 1)?;
        dev.kernels.gemv_norm(
            s,
            dev.ptr(l.out.off),
            x,
            dev.ptr(l.out_norm.off),
            hp.rms_eps,
            0,
            dev.ptr(sc.logits),
            hp.vocab,
            hp.hidden,
            false,
        )?;
        unsafe { copy_dtoh(logits, dev.ptr(sc.logits), hp.vocab * 4, s) }
    }
}
