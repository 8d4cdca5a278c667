//! The device objects a session or the batched runner issues passes with (stream, cuBLAS handle,
//! pinned buffers, the captured decode graph), made on first use and parked in the model when
//! their owner ends; plus waiting for a pass and capturing the decode step into a graph.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys;

use super::blas::Blas;
use super::driver::{ck, Event, Pinned, Stream};
use super::early_blas;
use super::kernels;
use super::kernels::Paged;
use super::pass::Pass;
use super::{CudaModel, Device};
use crate::backend::BackendError;

pub struct Graph(sys::CUgraphExec);

impl Drop for Graph {
    fn drop(&mut self) {
        unsafe { sys::cuGraphExecDestroy(self.0) };
    }
}

unsafe impl Send for Graph {}

impl Graph {
    pub fn launch(&self, s: &Stream) -> Result<(), String> {
        ck("cuGraphLaunch", unsafe { sys::cuGraphLaunch(self.0, s.0) })
    }
}

/// Per-owner device objects.
pub struct Res {
    /// Positions `params_host` has room for (the decode step's block table).
    pub ctx: usize,
    pub dev: Arc<Device>,
    pub stream: Arc<Stream>,
    pub blas: Blas,
    pub done: Event,
    /// i32 [position, K/V row, token id, 0], then a block table of up to `ctx` entries.
    pub params_host: Pinned,
    /// One row of logits.
    pub logits_host: Pinned,
    /// The captured decode step, and the KV cache it was captured for (its layer-0 K address);
    /// `graph_bare` leaves the logits on the device (the batched runner answers from them there).
    pub graph: Option<(u64, Graph)>,
    pub graph_bare: Option<(u64, Graph)>,
    /// Fused decode kernels, unless `LAYERSTREAM_CUDA_DECODE=separate` (for comparing the two).
    pub fused: bool,
    /// The captured decode step's kernels launched as programmatic dependents (each prefetches
    /// its weights while the previous one finishes), unless `LAYERSTREAM_CUDA_PDL=0`, or the
    /// driver refused to capture them.
    pub dependent: bool,
    /// With `LAYERSTREAM_CUDA_TIMING` set: events around each replayed decode step, and the
    /// device and whole-call times (µs) they measured, logged when the owner ends.
    pub timing: Option<(Event, Event, Vec<f64>, Vec<f64>)>,
}

/// Decode with the separate kernels whatever `Res::fused` says (`check-cuda` compares the two
/// paths of one model this way).
static SEPARATE_DECODE: AtomicBool = AtomicBool::new(false);

/// Make every following decode step take the separate kernels (`true`) or the configured path.
pub fn force_separate_decode(on: bool) {
    SEPARATE_DECODE.store(on, Ordering::Relaxed);
}

impl Res {
    /// Take the parked objects if they fit `ctx`, else make new ones.
    pub fn take_or_make(model: &CudaModel, ctx: usize) -> Result<Res, BackendError> {
        if let Some(r) = model.parked.lock().take().filter(|r| r.ctx >= ctx) {
            return Ok(r);
        }
        let dev = model.device()?;
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
        let timing = match std::env::var_os("LAYERSTREAM_CUDA_TIMING") {
            Some(_) => Some((
                Event::new(true).map_err(e)?,
                Event::new(true).map_err(e)?,
                Vec::new(),
                Vec::new(),
            )),
            None => None,
        };
        Ok(Res {
            ctx: ctx.max(1),
            blas,
            stream: Arc::new(stream),
            done: Event::new(false).map_err(e)?,
            params_host: Pinned::alloc(16 + ctx.max(1) * 4, false).map_err(e)?,
            logits_host: Pinned::alloc(model.hp.vocab * 4, false).map_err(e)?,
            graph: None,
            graph_bare: None,
            fused: std::env::var("LAYERSTREAM_CUDA_DECODE").map_or(true, |v| v != "separate"),
            dependent: std::env::var("LAYERSTREAM_CUDA_PDL").map_or(true, |v| v != "0"),
            timing,
            dev,
        })
    }

    /// Load cuBLAS's kernels for a small product (on scratch buffers; no weights touched), so
    /// the first request pays none of it.
    pub fn load_blas_kernels(&mut self) -> Result<(), BackendError> {
        let e = BackendError::Device;
        self.dev.gpu.bind().map_err(e)?;
        let (d, sc) = (&self.dev, &self.dev.layout.scratch);
        self.blas
            .gemm(d.ptr(sc.xn), d.ptr(sc.att16), d.ptr(sc.gu), 1, 8, 8, false)
            .map_err(e)?;
        self.stream.sync().map_err(e)
    }

    /// Write the decode step's parameters (the previous pass has completed).
    pub fn set_decode_params(&mut self, pos: usize, slot: usize, id: u32, table: &[u32]) {
        let p = bytemuck::cast_slice_mut::<u8, u32>(self.params_host.as_mut_slice());
        p[0] = pos as u32;
        p[1] = slot as u32;
        p[2] = id;
        p[4..4 + table.len()].copy_from_slice(table);
    }

    /// Issue one decode step: the captured graph once every unit is resident (captured on first
    /// use for this KV cache), else the kernels one by one. The logits end in `logits_host` when
    /// `copy`, else only on the device (the scratch `logits`).
    pub fn issue_decode(
        &mut self,
        pass: &mut Pass,
        table_ints: usize,
        pg: Paged,
        all_resident: bool,
        copy: bool,
    ) -> Result<(), String> {
        pass.fused = self.fused && !SEPARATE_DECODE.load(Ordering::Relaxed);
        let params = self.params_host.ptr;
        let logits = if copy {
            self.logits_host.ptr
        } else {
            std::ptr::null_mut()
        };
        if !all_resident {
            return pass.decode(params, table_ints, pg, logits);
        }
        // The KV cache's address (256-byte aligned) and, in its low bit, the path captured.
        let key = pass.kv.layers.first().map_or(0, |l| l.0) | pass.fused as u64;
        let dependent = self.dependent;
        let slot = if copy {
            &mut self.graph
        } else {
            &mut self.graph_bare
        };
        if slot.as_ref().is_none_or(|(k, _)| *k != key) {
            *slot = None;
            let mut graph = capture(pass, params, table_ints, pg, logits, dependent);
            if let (Err(why), true) = (&graph, dependent) {
                tracing::warn!(
                    "decode graph with dependent launches refused ({why}); capturing without"
                );
                self.dependent = false;
                graph = capture(pass, params, table_ints, pg, logits, false);
            }
            let slot = if copy {
                &mut self.graph
            } else {
                &mut self.graph_bare
            };
            *slot = Some((key, graph?));
        }
        if let Some((t0, _, _, _)) = &self.timing {
            t0.record(&self.stream)?;
        }
        let graph = if copy { &self.graph } else { &self.graph_bare };
        if let Some((_, g)) = graph {
            g.launch(&self.stream)?;
        }
        if let Some((_, t1, _, _)) = &self.timing {
            t1.record(&self.stream)?;
        }
        Ok(())
    }

    /// Log the decode timings gathered with `LAYERSTREAM_CUDA_TIMING`.
    pub fn log_timing(&mut self) {
        if let Some((_, _, gpu, call)) = &mut self.timing {
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(0.0)
            };
            if !gpu.is_empty() {
                tracing::info!(
                    steps = gpu.len(),
                    "decode step: device {:.1} us, whole call {:.1} us (medians)",
                    med(gpu),
                    med(call)
                );
            }
            gpu.clear();
            call.clear();
        }
    }
}

/// Wait for the pass; while it may be gated on the loader, poll so that a failed or interrupted
/// load ends the wait instead of hanging the engine.
pub fn wait_done(model: &CudaModel, done: &Event, gated: bool) -> Result<(), BackendError> {
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
    params: *const u8,
    table_ints: usize,
    pg: Paged,
    logits: *mut u8,
    dependent: bool,
) -> Result<Graph, String> {
    let s = pass.s;
    capture_dependent(s, dependent, || pass.decode(params, table_ints, pg, logits))
}

/// Capture what `issue` puts on `s` into an instantiated graph, its kernels that allow it
/// launched as programmatic dependents when `dependent`.
pub fn capture_dependent(
    s: &Stream,
    dependent: bool,
    issue: impl FnOnce() -> Result<(), String>,
) -> Result<Graph, String> {
    capture_on(s, || {
        let _dependent = kernels::dependent_launches(dependent);
        issue()
    })
}

/// Capture what `issue` puts on stream `s` into an instantiated graph.
pub fn capture_on(s: &Stream, issue: impl FnOnce() -> Result<(), String>) -> Result<Graph, String> {
    ck("cuStreamBeginCapture", unsafe {
        sys::cuStreamBeginCapture_v2(
            s.0,
            sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
    })?;
    let issued = issue();
    let mut graph = std::ptr::null_mut();
    let ended = ck("cuStreamEndCapture", unsafe {
        sys::cuStreamEndCapture(s.0, &mut graph)
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
