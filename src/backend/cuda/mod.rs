//! The CUDA backend: weights in one device arena filled by the loader thread over its own stream
//! (`loader`), per-unit gating of the compute stream on the device (`session`), cuBLAS for
//! prefill projections and our kernels (`cuda/*.cu`) for everything else, a captured CUDA graph
//! for the decode step once every unit is resident. Checked against the CPU backend (`check`).

mod blas;
pub mod check;
mod check_answers;
mod check_attention;
mod check_batch;
mod check_gemm_fixed;
mod check_model;
mod check_paged;
mod check_rope;
mod check_sample;
mod chunks;
mod driver;
mod early_blas;
mod finite;
mod flag;
mod gemm_fixed;
mod graph_steps;
mod kernels;
mod layout;
mod loader;
mod pass;
mod preload;
mod res;
mod runner;
mod session;
mod step_timing;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::step::{BatchLimits, BatchRequest, KvGeometry, StepRunner};
use super::{Backend, BackendError, Session};
use crate::gguf::GgufFile;
use crate::load::loader::LoaderOptions;
use crate::load::plan::LoadPlan;
use crate::load::progress::Progress;
use crate::load::residency::Residency;
use crate::model::{HParams, ModelSpec};
use driver::{DevBuf, Event, Gpu};
use flag::Flag;
use kernels::Kernels;
use layout::Layout;

pub use driver::{prewarm, probe};

/// The load counter's value once every gate is open. Stream waits compare cyclically
/// (`(int32_t)(*addr - value) >= 0`), so it must be within 2^31 above every unit's slot number:
/// u32::MAX would read as -1 and hold every gate shut.
pub(crate) const GATES_OPEN: u32 = 1 << 30;

/// How long `shutdown` waits for the loader thread to stop.
const LOADER_STOP_WAIT: Duration = Duration::from_secs(5);

/// Everything `start` needs.
pub struct CudaStart {
    pub file: Arc<GgufFile>,
    pub spec: ModelSpec,
    pub plan: LoadPlan,
    pub progress: Arc<Progress>,
    pub options: LoaderOptions,
    pub ordinal: usize,
    /// Positions of the one sequence whose KV cache is reserved with the weights.
    pub ctx: usize,
}

/// Check the shapes, start the loader thread, and return the model its units land in.
pub fn start(s: CudaStart) -> Result<Arc<dyn Backend>, String> {
    layout::check_shapes(&s.spec.hp)?;
    let model = Arc::new(CudaModel {
        hp: s.spec.hp.clone(),
        residency: Arc::new(Residency::new(s.plan.units.len())),
        device: OnceLock::new(),
        waited_ns: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        session_taken: AtomicBool::new(false),
        ctx: s.ctx,
        stopping: Arc::new(AtomicBool::new(false)),
        preload: parking_lot::Mutex::new(None),
        kernel_loading: Arc::new(parking_lot::Mutex::new(())),
        prepared: Arc::new(Flag::default()),
        gates_open: AtomicBool::new(false),
        loader_done: Flag::default(),
        device_known: Flag::default(),
        parked: parking_lot::Mutex::new(None),
    });
    loader::spawn(loader::CudaLoadJob {
        file: s.file,
        spec: s.spec,
        plan: s.plan,
        progress: s.progress,
        options: s.options,
        model: model.clone(),
        ordinal: s.ordinal,
    })
    .map_err(|e| format!("cannot start the loader thread: {e}"))?;
    Ok(model)
}

/// The device side, set up by the loader thread once the context and arena exist.
pub struct Device {
    gpu: Gpu,
    kernels: Kernels,
    arena: DevBuf,
    layout: Layout,
    /// One event per unit, recorded on the load stream after the unit's last copy.
    unit_events: Vec<Event>,
    /// Whether each unit's event has been recorded (waiting on an unrecorded event is a no-op,
    /// so until then the compute stream waits on the load counter instead).
    recorded: Vec<AtomicBool>,
}

impl Device {
    fn new(
        gpu: Gpu,
        kernels: Kernels,
        arena: DevBuf,
        layout: Layout,
        unit_events: Vec<Event>,
    ) -> Device {
        let recorded = unit_events.iter().map(|_| AtomicBool::new(false)).collect();
        Device {
            gpu,
            kernels,
            arena,
            layout,
            unit_events,
            recorded,
        }
    }

    fn ptr(&self, off: usize) -> u64 {
        self.arena.ptr + off as u64
    }
}

pub struct CudaModel {
    hp: HParams,
    residency: Arc<Residency>,
    device: OnceLock<Arc<Device>>,
    waited_ns: AtomicU64,
    bytes: AtomicU64,
    session_taken: AtomicBool,
    ctx: usize,
    /// Set at shutdown: the loader stops at its next chunk, the kernel preload at its next shape.
    stopping: Arc<AtomicBool>,
    /// The kernel preload thread (preload.rs), joined at shutdown or when the model is dropped.
    preload: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held by the kernel preload while it loads one GEMM shape, and by a pass from its first
    /// wait on the loader until it completes: no kernel is loaded while a stream is gated.
    kernel_loading: Arc<parking_lot::Mutex<()>>,
    /// Set once a session's objects are made (`Session::prepare`): the preload starts then.
    prepared: Arc<Flag>,
    /// Set once the gates were opened (failure, interrupt, stop): the loader's later counter
    /// writes keep them open instead of writing unit numbers below [`GATES_OPEN`].
    gates_open: AtomicBool,
    /// Set by the loader thread when it ends (loaded, failed or stopped).
    loader_done: Flag,
    /// Set once `device` is set, or when the loader ended without setting it.
    device_known: Flag,
    /// The device objects of the last session (its stream, cuBLAS handle, pinned buffers and
    /// captured decode graph), kept when it ends for the next one: one sequence exists at a time.
    parked: parking_lot::Mutex<Option<res::Res>>,
}

impl CudaModel {
    /// Called by the loader thread as it ends.
    fn loader_finished(&self) {
        self.device_known.set();
        self.loader_done.set();
    }

    /// Stop the kernel preload thread at its next shape and wait for it.
    fn join_preload(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(t) = self.preload.lock().take() {
            let _ = t.join();
        }
    }

    /// Account the time a pass issued at `issued` waited for the units in `gated`.
    fn add_waited(&self, gated: &[usize], issued: std::time::Instant) {
        if let Some(waited) = gated
            .iter()
            .filter_map(|&slot| self.residency.resident_at(slot))
            .map(|at| at.saturating_duration_since(issued))
            .max()
        {
            self.waited_ns
                .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Let every compute stream waiting on the loader go on (its results are discarded: the load
    /// failed or the server is stopping). The write goes through a stream of its own, so neither a
    /// stuck stream nor a synchronous call can hold it up.
    fn release_gates(&self) {
        self.gates_open.store(true, Ordering::Release);
        let Some(dev) = self.device.get() else { return };
        if dev.gpu.bind().is_err() {
            return;
        }
        match driver::Stream::new() {
            Ok(s) => {
                if let Err(e) =
                    driver::write_value(&s, dev.ptr(dev.layout.load_counter), GATES_OPEN)
                {
                    tracing::warn!("cannot release the GPU's load gates: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot release the GPU's load gates: {e}"),
        }
    }

    /// The device objects, once the context and the arena exist (before the first unit lands: a
    /// session makes its own objects while the weights are on their way), or the load's failure.
    fn device(&self) -> Result<Arc<Device>, BackendError> {
        self.device_known.wait();
        if let Some(d) = self.device.get() {
            return Ok(d.clone());
        }
        Err(match self.residency.wait_error() {
            Some(e) => e.into(),
            None => BackendError::Device("the loader ended without setting up the GPU".into()),
        })
    }
}

impl CudaModel {
    /// KV pool positions that fill `fraction` of the device's memory, counting what is in use
    /// (the arena, other processes), less room for the step buffers and cuBLAS; at most what
    /// `max_seqs` sequences of `ctx` positions hold, at least one sequence. `fallback` when the
    /// device is not there (the load failed).
    fn pool_tokens_for(
        &self,
        fraction: f32,
        max_seqs: usize,
        ctx: usize,
        fallback: usize,
    ) -> usize {
        let Ok(dev) = self.device() else {
            return fallback;
        };
        let Ok((free, total)) = dev.gpu.bind().and_then(|_| dev.gpu.mem_info()) else {
            return fallback;
        };
        let reserve = 512 << 20;
        let budget = (total as f64 * fraction as f64) as usize;
        let usable = budget.saturating_sub(total - free).saturating_sub(reserve);
        let fits = usable / runner::kv_bytes_per_token(&self.hp);
        fits.min(max_seqs * ctx).max(ctx)
    }
}

impl Drop for CudaModel {
    fn drop(&mut self) {
        // The loader thread holds the model until it ends, so only the preload can be running.
        self.join_preload();
    }
}

impl Backend for CudaModel {
    fn hp(&self) -> &HParams {
        &self.hp
    }
    fn residency(&self) -> &Residency {
        &self.residency
    }
    fn take_waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.swap(0, Ordering::Relaxed))
    }
    fn new_session(self: Arc<Self>, ctx: usize) -> Result<Box<dyn Session>, BackendError> {
        if ctx > self.ctx {
            return Err(BackendError::Device(format!(
                "a session of {ctx} positions exceeds the {} reserved on the GPU",
                self.ctx
            )));
        }
        // The scratch buffers and the KV cache are reserved for one sequence.
        if self.session_taken.swap(true, Ordering::AcqRel) {
            return Err(BackendError::Device(
                "the GPU's one sequence is in use".into(),
            ));
        }
        Ok(Box::new(session::CudaSession::new(self, ctx)))
    }
    fn batch_limits(&self, want: &BatchRequest) -> BatchLimits {
        let block_size = want.block_size.max(1);
        let max_seqs = want.max_seqs.clamp(1, runner::MAX_ROWS);
        let ctx = want.ctx.min(self.ctx).max(1);
        let tokens = match want.gpu_memory_fraction {
            Some(f) => self.pool_tokens_for(f, max_seqs, ctx, want.kv_tokens),
            None => want.kv_tokens,
        };
        BatchLimits {
            max_seqs,
            max_batch_tokens: want.max_batch_tokens.clamp(max_seqs, runner::MAX_ROWS),
            kv: KvGeometry {
                block_size,
                num_blocks: tokens.max(ctx).div_ceil(block_size),
            },
            shared_blocks: want.prefix_cache,
            ctx,
            batch_invariant: want.batch_invariant,
        }
    }
    fn new_runner(
        self: Arc<Self>,
        limits: &BatchLimits,
    ) -> Result<Box<dyn StepRunner>, BackendError> {
        if self.session_taken.swap(true, Ordering::AcqRel) {
            return Err(BackendError::Device(
                "the GPU's scratch buffers are in use by a lone sequence".into(),
            ));
        }
        match runner::CudaRunner::new(self.clone(), limits) {
            Ok(r) => Ok(Box::new(r)),
            Err(e) => {
                self.session_taken.store(false, Ordering::Release);
                Err(e)
            }
        }
    }
    fn device_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    fn interrupt(&self) {
        self.residency.interrupt();
        self.release_gates();
    }
    fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.interrupt();
        if !self
            .loader_done
            .wait_until(std::time::Instant::now() + LOADER_STOP_WAIT)
        {
            tracing::warn!("the loader did not stop within {LOADER_STOP_WAIT:?}; exiting anyway");
            return;
        }
        self.join_preload();
    }
    fn name(&self) -> &'static str {
        "cuda"
    }
}
