//! The CUDA loader thread. While the CUDA context is being created the file's unit ranges are
//! prefetched into the page cache; then the arena (weights + KV cache + scratch) is reserved in one
//! allocation (refused with bytes needed/available before READY if it does not fit), reader
//! threads fill a ring of pinned staging buffers with `pread`, and this thread issues each chunk's
//! `cuMemcpyHtoDAsync` on the dedicated load stream, reusing a buffer only after its copy's event
//! completed. After a unit's last copy (and device dequantization) it records the unit's event,
//! advances the device load counter, and enqueues a host callback that marks the unit resident —
//! so host residency (READY, /load-progress) follows the device, not the issue order.

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cudarc::driver::sys;

use super::chunks::{After, Chunk, CopyPlan, Route};
use super::driver::{ck, copy_htod, write_value, DevBuf, Event, Gpu, Pinned, Stream};
use super::finite::{FiniteCheck, Verdict};
use super::kernels::Kernels;
use super::layout::Layout;
use super::{CudaModel, Device};
use crate::gguf::GgufFile;
use crate::load::loader::{LoaderOptions, FAULT_ENV};
use crate::load::plan::LoadPlan;
use crate::load::progress::Progress;
use crate::load::residency::{Residency, WaitError};
use crate::model::ModelSpec;
use crate::panic_message::panic_message;

/// Bytes per pinned staging buffer, and how many buffers the ring has.
const CHUNK: usize = 16 << 20;
const RING: usize = 6;
/// Device memory left free beyond the arena (cuBLAS workspace, the context's own allocations).
const HEADROOM: usize = 512 << 20;

pub struct CudaLoadJob {
    pub file: Arc<GgufFile>,
    pub spec: ModelSpec,
    pub plan: LoadPlan,
    pub progress: Arc<Progress>,
    pub options: LoaderOptions,
    pub model: Arc<CudaModel>,
    pub ordinal: usize,
}

pub fn spawn(job: CudaLoadJob) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("loader".into())
        .spawn(move || {
            // Buffers the device may still be using outlive the failure's publication: freeing
            // pinned or device memory waits for the whole device, and a compute stream gated on
            // this load only goes on once the failure released its gates.
            let mut held = Held::default();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job, &mut held)));
            let error = match outcome {
                Ok(Ok(())) => {
                    drop(held);
                    job.model.loader_finished();
                    return;
                }
                Ok(Err(e)) => e,
                Err(panic) => format!("loader thread panicked: {}", panic_message(&*panic)),
            };
            tracing::error!("model load failed: {error}");
            job.model.residency.fail(error.clone());
            job.progress.fail(error);
            // A compute stream waiting on the load counter must not wait forever.
            if let Some(load) = &held.load {
                let _ = load.sync();
            }
            job.model.release_gates();
            drop(held);
            job.model.loader_finished();
        })
}

/// The loader's staging buffers, dropped only after a failure was published.
#[derive(Default)]
struct Held {
    ring: Vec<Pinned>,
    /// The device NaN/infinity check's flag and its pinned copy (read by unit callbacks).
    finite: Option<FiniteCheck>,
    stage: Option<DevBuf>,
    /// The load stream: drained before the gates are opened, so none of its later counter
    /// writes can close them again.
    load: Option<Stream>,
}

fn run(job: &CudaLoadJob, held: &mut Held) -> Result<(), String> {
    job.progress.load_started();
    start_prefetch(job)?;
    let (device, copy) = set_up_device(job, held)?;
    stream_chunks(job, held, &device, copy)
}

/// Page-cache prefetch in unit order, overlapping context creation on a cold cache.
fn start_prefetch(job: &CudaLoadJob) -> Result<(), String> {
    let file = job.file.clone();
    let ranges: Vec<(u64, u64)> = job
        .plan
        .units
        .iter()
        .flat_map(|u| {
            u.tensors
                .iter()
                .filter_map(|t| file.tensor(t))
                .map(|t| (t.offset, t.n_bytes))
        })
        .collect();
    std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || ranges.into_iter().for_each(|(at, n)| file.prefetch(at, n)))
        .map_err(|e| format!("cannot start the prefetch thread: {e}"))?;
    Ok(())
}

/// The context, the kernels, the arena (refused before anything is copied when it does not fit)
/// published to the model, and the kernel preload started.
fn set_up_device(job: &CudaLoadJob, held: &mut Held) -> Result<(Arc<Device>, CopyPlan), String> {
    let t0 = Instant::now();
    let gpu = Gpu::new(job.ordinal)?;
    gpu.bind()?;
    let kernels = Kernels::load()?;
    let layout = Layout::new(&job.spec, job.model.ctx);
    let copy = CopyPlan::new(&job.file, &job.spec, &job.plan, &layout, CHUNK)?;
    for c in &copy.chunks {
        for p in c.pieces.iter().filter(|p| p.route == Route::Dequant) {
            if !kernels.can_dequant(p.tensor.ty) {
                return Err(format!(
                    "tensor '{}': {} cannot be dequantized on the GPU",
                    p.tensor.name,
                    p.tensor.ty.name()
                ));
            }
        }
    }
    let (free, total) = gpu.mem_info()?;
    let needed = layout.total + copy.stage_bytes + HEADROOM;
    if needed > free {
        return Err(format!(
            "the model needs {needed} bytes of GPU memory ({} weights, {} KV cache for {} positions, {} staging, {HEADROOM} headroom); {free} of {total} bytes are free",
            layout.weights_bytes, layout.kv_bytes, layout.ctx, copy.stage_bytes
        ));
    }
    let arena = DevBuf::alloc(layout.total)?;
    ck("cuMemsetD32 (load counter)", unsafe {
        sys::cuMemsetD32_v2(arena.ptr + layout.load_counter as u64, 0, 1)
    })?;
    ck("cuMemsetD32 (attention merge counts)", unsafe {
        sys::cuMemsetD32_v2(
            arena.ptr + layout.scratch.merge_count as u64,
            0,
            job.spec.hp.n_head,
        )
    })?;
    write_rope_tables(&arena, &layout, &job.spec.hp)?;
    held.stage = Some(DevBuf::alloc(copy.stage_bytes)?);
    held.finite = Some(FiniteCheck::new(&copy.chunks)?);
    let n_units = job.plan.units.len();
    let unit_events = (0..n_units)
        .map(|_| Event::new(false))
        .collect::<Result<Vec<_>, _>>()?;
    let device = Arc::new(Device::new(gpu, kernels, arena, layout, unit_events));
    job.model
        .bytes
        .store(device.arena.bytes as u64, Ordering::Relaxed);
    let _ = job.model.device.set(device.clone());
    job.model.device_known.set();
    *job.model.preload.lock() = super::preload::spawn(
        device.clone(),
        job.spec.hp.clone(),
        job.model.stopping.clone(),
        job.model.prepared.clone(),
        job.model.kernel_loading.clone(),
    );
    tracing::info!(
        "CUDA device ready in {:.0} ms: {} bytes reserved ({} weights, {} KV cache)",
        t0.elapsed().as_secs_f64() * 1e3,
        device.arena.bytes,
        device.layout.weights_bytes,
        device.layout.kv_bytes
    );
    Ok((device, copy))
}

/// The RoPE tables (`HParams::inv_freq`) into the arena, before any pass can read them.
fn write_rope_tables(
    arena: &DevBuf,
    layout: &Layout,
    hp: &crate::model::HParams,
) -> Result<(), String> {
    let tables = [(Some(layout.rope_global), false), (layout.rope_local, true)];
    for (at, local) in tables {
        let Some(v) = at else { continue };
        let t = hp.inv_freq(local);
        ck("cuMemcpyHtoD (RoPE table)", unsafe {
            sys::cuMemcpyHtoD_v2(arena.ptr + v.off as u64, t.as_ptr().cast(), t.len() * 4)
        })?;
    }
    Ok(())
}

/// Copy every chunk in unit order through the ring of pinned buffers, each unit's completion
/// published by its callback; stop early on a failed unit or a shutdown.
fn stream_chunks(
    job: &CudaLoadJob,
    held: &mut Held,
    device: &Arc<Device>,
    copy: CopyPlan,
) -> Result<(), String> {
    let started = Instant::now();
    held.load = Some(Stream::new()?);
    held.ring = (0..RING.min(copy.chunks.len()).max(1))
        .map(|_| Pinned::alloc(CHUNK, true))
        .collect::<Result<Vec<_>, _>>()?;
    let ring = &held.ring;
    let load = held.load.as_ref().ok_or("no load stream")?;
    let stage = held.stage.as_ref().ok_or("no staging buffer")?;
    let finite = held.finite.as_ref().ok_or("no finite check")?;
    let ring_events = ring
        .iter()
        .map(|_| Event::new(false))
        .collect::<Result<Vec<_>, _>>()?;
    let chunks = Arc::new(copy.chunks);
    let readers = Readers::start(
        job.file.clone(),
        chunks.clone(),
        &job.plan,
        job.options.fail_unit.clone(),
    )?;
    let rate = job.options.bandwidth_limit_mb_s.map(|mb| mb * 1e6);
    let n = chunks.len();
    // Reads run a ring ahead of the copies; under a bandwidth limit only one chunk ahead, so the
    // file is read at the limited rate too.
    let ahead = if rate.is_some() { 1 } else { ring.len() };
    for k in 0..ahead.min(n) {
        readers.read(k, ring[k % ring.len()].ptr as usize);
    }
    let mut total_bytes = 0u64;
    // Chunks whose bytes /load-progress counts: only those known to have landed (a unit's
    // remaining bytes are counted when it is marked resident).
    let mut counted = 0;
    for k in 0..n {
        readers.wait(k)?;
        let slot = k % ring.len();
        let chunk: &Chunk = &chunks[k];
        let bytes: u64 = chunk.pieces.iter().map(|p| p.src_len).sum();
        throttle(job, rate, total_bytes + bytes, started);
        // A unit found holding NaN or infinity (by its callback) ends the load.
        if let Some(WaitError::Failed(e)) = job.model.residency.wait_error() {
            return Err(e);
        }
        if job.model.is_stopping() {
            load.sync()?;
            job.model.release_gates();
            tracing::info!("loading stopped: shutting down");
            return Ok(());
        }
        copy_pieces(device, chunk, ring[slot].ptr, load, stage, finite)?;
        total_bytes += bytes;
        ring_events[slot].record(load)?;
        after_chunk(job, device, chunk, load, stage, finite)?;
        let next = k + ahead;
        if next < n {
            // The buffer is reused only once the copy that last read it is done.
            let s = next % ring.len();
            ring_events[s].sync()?;
            // Copies complete in stream order: that one and every chunk before it have landed.
            if let Some(landed) = (next + 1).checked_sub(ring.len()) {
                count_landed(&job.progress, &chunks, &mut counted, landed);
            }
            readers.read(next, ring[s].ptr as usize);
        }
    }
    load.sync()?;
    count_landed(&job.progress, &chunks, &mut counted, n);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "fully resident in {:.0} ms: {} units, {:.1} MB at {:.0} MB/s",
        job.progress.snapshot().resident_ms.unwrap_or(0.0),
        job.plan.units.len(),
        total_bytes as f64 / 1e6,
        total_bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}

/// Under `--load-bandwidth-limit` (`rate` bytes/s): wait until `bytes` are due since `started`,
/// in short naps so a shutdown is noticed promptly.
fn throttle(job: &CudaLoadJob, rate: Option<f64>, bytes: u64, started: Instant) {
    let Some(rate) = rate else { return };
    let due = Duration::from_secs_f64(bytes as f64 / rate);
    while let Some(wait) = due.checked_sub(started.elapsed()) {
        if job.model.is_stopping() {
            break;
        }
        std::thread::sleep(wait.min(Duration::from_millis(20)));
    }
}

/// Issue a chunk's copies from its pinned buffer `src` (weights straight into the arena, with
/// their NaN/infinity check; quantized ones to the staging buffer).
fn copy_pieces(
    device: &Device,
    chunk: &Chunk,
    src: *mut u8,
    load: &Stream,
    stage: &DevBuf,
    finite: &FiniteCheck,
) -> Result<(), String> {
    for p in &chunk.pieces {
        let base = if p.route == Route::Dequant {
            stage.ptr
        } else {
            device.arena.ptr
        };
        unsafe {
            copy_htod(
                base + p.dst_off as u64,
                src.add(p.slot_off),
                p.staged_len,
                load,
            )?
        };
        if p.route != Route::Dequant {
            finite.piece(&device.kernels, load, device.arena.ptr, p)?;
        }
    }
    Ok(())
}

/// What follows a chunk's copies: device dequantization, and each unit it completes.
fn after_chunk(
    job: &CudaLoadJob,
    device: &Device,
    chunk: &Chunk,
    load: &Stream,
    stage: &DevBuf,
    finite: &FiniteCheck,
) -> Result<(), String> {
    for a in &chunk.after {
        match *a {
            After::Dequant {
                ty,
                n,
                dst_off,
                ref name,
            } => {
                let dst = device.arena.ptr + dst_off as u64;
                device.kernels.dequant(load, ty, stage.ptr, dst, n)?;
                finite.dequantized(&device.kernels, load, dst, n, name)?;
            }
            After::UnitDone { slot } => {
                let open = job.model.gates_open.load(Ordering::Acquire);
                finite.publish(load)?;
                let landed = Landed {
                    residency: job.model.residency.clone(),
                    progress: job.progress.clone(),
                    slot,
                    verdict: finite.verdict(),
                };
                unit_done(device, load, open, landed)?
            }
        }
    }
    Ok(())
}

/// Count the bytes of chunks `*counted..upto` (landed) in the progress report.
fn count_landed(progress: &Progress, chunks: &[Chunk], counted: &mut usize, upto: usize) {
    for chunk in chunks.get(*counted..upto).unwrap_or(&[]) {
        for p in &chunk.pieces {
            progress.add_bytes(p.unit, p.src_len);
        }
    }
    *counted = (*counted).max(upto);
}

/// What the host callback of a landed unit needs.
struct Landed {
    residency: Arc<Residency>,
    progress: Arc<Progress>,
    slot: usize,
    verdict: Verdict,
}

unsafe extern "C" fn on_landed(data: *mut c_void) {
    // Runs on a driver thread once the load stream reaches this point; takes back the Box.
    let landed = Box::from_raw(data.cast::<Landed>());
    if let Some(e) = landed.verdict.error() {
        // Not resident: the loader thread sees the failure at its next chunk and stops.
        landed.residency.fail(e.clone());
        landed.progress.fail(e);
        return;
    }
    landed.residency.mark_resident(landed.slot);
    landed.progress.unit_resident(landed.slot);
}

/// After unit `slot`'s last copy: its event, the device counter, and the host callback.
fn unit_done(dev: &Device, load: &Stream, gates_open: bool, landed: Landed) -> Result<(), String> {
    let slot = landed.slot;
    let event = dev.unit_events.get(slot).ok_or("unit event out of range")?;
    event.record(load)?;
    if let Some(flag) = dev.recorded.get(slot) {
        flag.store(true, Ordering::Release);
    }
    // Once the gates were opened (an interrupt), they stay open.
    let value = if gates_open {
        super::GATES_OPEN
    } else {
        slot as u32 + 1
    };
    write_value(load, dev.arena.ptr + dev.layout.load_counter as u64, value)?;
    let data = Box::into_raw(Box::new(landed));
    let r = unsafe { sys::cuLaunchHostFunc(load.0, Some(on_landed), data.cast()) };
    if r != sys::CUresult::CUDA_SUCCESS {
        drop(unsafe { Box::from_raw(data) });
        return Err(format!("cuLaunchHostFunc failed: {r:?}"));
    }
    Ok(())
}

/// Reader threads: `pread` chunk pieces into pinned buffers; results come back in any order.
struct Readers {
    /// Dropped first on drop, so the threads see the end of the jobs and can be joined.
    jobs: Option<crossbeam_channel::Sender<(usize, usize)>>,
    threads: Vec<JoinHandle<()>>,
    done: crossbeam_channel::Receiver<(usize, Result<(), String>)>,
    /// Results that arrived ahead of the chunk being waited for.
    early: parking_lot::Mutex<Vec<Option<Result<(), String>>>>,
}

impl Readers {
    fn start(
        file: Arc<GgufFile>,
        chunks: Arc<Vec<Chunk>>,
        plan: &LoadPlan,
        fail_unit: Option<String>,
    ) -> Result<Readers, String> {
        let (jobs, job_rx) = crossbeam_channel::unbounded::<(usize, usize)>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let fail_slot = fail_unit.and_then(|name| {
            plan.units
                .iter()
                .position(|u| u.name == name)
                .map(|s| (s, name))
        });
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 4);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (rx, tx, file, chunks, fail) = (
                job_rx.clone(),
                done_tx.clone(),
                file.clone(),
                chunks.clone(),
                fail_slot.clone(),
            );
            let t = std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || {
                    while let Ok((k, buf)) = rx.recv() {
                        let r = read_chunk(&file, &chunks[k], buf as *mut u8, fail.as_ref());
                        if tx.send((k, r)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| format!("cannot start a reader thread: {e}"))?;
            threads.push(t);
        }
        let count = chunks.len();
        Ok(Readers {
            jobs: Some(jobs),
            threads,
            done,
            early: parking_lot::Mutex::new(vec![None; count]),
        })
    }

    fn read(&self, k: usize, buf: usize) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send((k, buf));
        }
    }

    /// Block until chunk `k` is staged; its own read error, not that of a chunk read ahead.
    fn wait(&self, k: usize) -> Result<(), String> {
        loop {
            if let Some(r) = self.early.lock().get_mut(k).and_then(Option::take) {
                return r;
            }
            let (j, r) = self
                .done
                .recv()
                .map_err(|_| "reader threads stopped".to_string())?;
            if j == k {
                return r;
            }
            if let Some(slot) = self.early.lock().get_mut(j) {
                *slot = Some(r);
            }
        }
    }
}

impl Drop for Readers {
    /// No reader may still be writing into a staging buffer once the buffers can be freed.
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn read_chunk(
    file: &GgufFile,
    chunk: &Chunk,
    buf: *mut u8,
    fail: Option<&(usize, String)>,
) -> Result<(), String> {
    for p in &chunk.pieces {
        if let Some((slot, name)) = fail {
            if p.unit == *slot {
                return Err(format!(
                    "tensor '{}': read failed: injected fault in unit '{name}' ({FAULT_ENV})",
                    p.tensor.name
                ));
            }
        }
        // The staging buffer is CHUNK bytes and pieces were packed to fit; no other thread
        // touches this buffer until its chunk is reported done.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.add(p.slot_off), p.staged_len) };
        match p.route {
            Route::Direct | Route::Dequant => file
                .read_tensor_at(&p.tensor, p.src_start, dst)
                .map_err(|e| e.to_string())?,
            Route::HostF32 => {
                let mut raw = vec![0u8; p.src_len as usize];
                file.read_tensor_at(&p.tensor, 0, &mut raw)
                    .map_err(|e| e.to_string())?;
                let mut vals = vec![0f32; p.tensor.n_elems as usize];
                crate::quant::dequantize(p.tensor.ty, &raw, &mut vals)
                    .map_err(|e| format!("tensor '{}': {e}", p.tensor.name))?;
                dst.copy_from_slice(bytemuck::cast_slice(&vals));
            }
        }
    }
    Ok(())
}
