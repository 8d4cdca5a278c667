//! Kernel preloading: CUDA loads library kernels lazily, at their first launch, and cuBLAS's
//! first use of a GEMM shape costs milliseconds each. Right after the context exists, a thread
//! runs the model's prefill GEMM shapes once (on layer 0's weight memory, whatever it holds yet,
//! into buffers of its own), so a request sent at READY does not pay for it. It starts once the
//! engine's own objects are made (or after `PREPARE_FIRST`), so the two do not contend, and it
//! loads one shape at a time under the model's kernel-loading lock, which a pass gated on the
//! loader holds (loading a kernel synchronises the context, and would wait for that pass).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use cudarc::driver::sys;

use super::blas::Blas;
use super::driver::{ck, Stream};
use super::flag::Flag;
use super::graph_steps::ROW_BUCKETS;
use super::layout::MAX_BATCH;
use super::Device;
use crate::model::HParams;

/// cuBLAS handles kept for the life of the process (see `run`).
static PARKED: parking_lot::Mutex<Vec<Blas>> = parking_lot::Mutex::new(Vec::new());

/// Row counts whose GEMM kernels are loaded ahead: the steps' row buckets (a step's rows are
/// padded to one once every unit is resident).
const SHAPES: [usize; ROW_BUCKETS.len()] = ROW_BUCKETS;

/// How long the preload waits for the engine's preparation before starting anyway (a `bench`
/// or `check-cuda` run has no engine).
const PREPARE_FIRST: Duration = Duration::from_millis(300);

/// Start the preload thread; it gives up between shapes once `stop` is set. The caller joins
/// it before the process exits (the driver and cuBLAS must not be torn down under it).
/// `prepared` is set once the engine's objects exist; `loading` is held for each shape.
pub fn spawn(
    dev: Arc<Device>,
    hp: HParams,
    stop: Arc<AtomicBool>,
    prepared: Arc<Flag>,
    loading: Arc<Mutex<()>>,
) -> Option<JoinHandle<()>> {
    let started = std::thread::Builder::new()
        .name("kernel-preload".into())
        .spawn(move || {
            prepared.wait_until(Instant::now() + PREPARE_FIRST);
            let t0 = Instant::now();
            match run(&dev, &hp, &stop, &loading) {
                Ok(()) => tracing::info!(
                    "GEMM kernels preloaded in {:.0} ms",
                    t0.elapsed().as_secs_f64() * 1e3
                ),
                Err(e) => {
                    tracing::warn!("kernel preload failed (first requests load them instead): {e}")
                }
            }
        });
    started
        .map_err(|e| tracing::warn!("cannot start the kernel preload thread: {e}"))
        .ok()
}

fn run(dev: &Device, hp: &HParams, stop: &AtomicBool, loading: &Mutex<()>) -> Result<(), String> {
    dev.gpu.bind()?;
    let Some(l0) = dev.layout.layers.first() else {
        return Ok(());
    };
    let (h, q, kv, f) = (hp.hidden, hp.q_dim(), hp.kv_dim(), hp.ffn);
    let widest_in = h.max(q).max(f);
    let widest_out = (q + 2 * kv).max(2 * f).max(h);
    let s = Stream::new()?;
    // Stream-ordered memory: freeing it does not wait for the whole device (a plain cuMemFree
    // would, and a compute stream gated on the loader may be waiting there).
    let alloc = |bytes: usize| -> Result<sys::CUdeviceptr, String> {
        let mut p = 0;
        ck("cuMemAllocAsync", unsafe {
            sys::cuMemAllocAsync(&mut p, bytes, s.0)
        })?;
        Ok(p)
    };
    let x = alloc(MAX_BATCH * widest_in * 2)?;
    let y = alloc(MAX_BATCH * widest_out * 4);
    let blas = y.and_then(|y| Blas::new(&s).map(|b| (y, b)));
    let result = blas.and_then(|(y, blas)| {
        let w = |off: usize| dev.ptr(off);
        let run = (|| {
            for n in SHAPES {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let _no_gated_pass = loading.lock();
                blas.gemm(x, w(l0.wqkv.off), y, n, q + 2 * kv, h, false)?;
                blas.gemm(x, w(l0.wo.off), y, n, h, q, true)?;
                blas.gemm(x, w(l0.wgu.off), y, n, 2 * f, h, false)?;
                blas.gemm(x, w(l0.wdown.off), y, n, h, f, true)?;
                s.sync()?;
            }
            Ok::<(), String>(())
        })();
        unsafe { sys::cuMemFreeAsync(y, s.0) };
        // Destroying a cuBLAS handle synchronises the whole device; this one is kept instead.
        PARKED.lock().push(blas);
        run
    });
    unsafe { sys::cuMemFreeAsync(x, s.0) };
    result?;
    s.sync()
}
