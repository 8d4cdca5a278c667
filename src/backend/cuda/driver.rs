//! Thin owners of CUDA driver objects (device memory, pinned host memory, streams, events, the
//! kernel module) over cudarc's raw `sys` bindings. Ordering between streams is ours: nothing here
//! records events behind our back. Every call's status is checked and turned into a message naming
//! the call.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use super::early_blas;

/// Turn a driver status into a `Result` naming the call.
pub fn ck(what: &str, r: sys::CUresult) -> Result<(), String> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what} failed: {r:?}"))
    }
}

/// Whether a driver is installed and device `ordinal` exists; its name when it does.
pub fn probe(ordinal: usize) -> Result<String, String> {
    // Without this check cudarc panics at the first call on a machine without libcuda.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so) on this machine".into());
    }
    ck("cuInit", unsafe { sys::cuInit(0) })?;
    let mut count = 0;
    ck("cuDeviceGetCount", unsafe {
        sys::cuDeviceGetCount(&mut count)
    })?;
    if ordinal >= count.max(0) as usize {
        return Err(format!(
            "GPU {ordinal} requested but {count} CUDA device(s) found"
        ));
    }
    let mut dev = 0;
    ck("cuDeviceGet", unsafe {
        sys::cuDeviceGet(&mut dev, ordinal as i32)
    })?;
    let mut name = [0 as std::ffi::c_char; 256];
    ck("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(name.as_mut_ptr(), 256, dev)
    })?;
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// Contexts created ahead of need (`prewarm`), kept alive so the loader's `Gpu::new` finds them.
static PREWARMED: parking_lot::Mutex<Vec<(usize, Arc<CudaContext>)>> =
    parking_lot::Mutex::new(Vec::new());

/// Start creating device `ordinal`'s context on a thread of its own (driver initialisation and
/// context creation take a few hundred ms), so it overlaps opening and validating the model file.
/// The same thread then makes the process's first cuBLAS handle (`early_blas`).
pub fn prewarm(ordinal: usize) {
    early_blas::announce();
    let spawned = std::thread::Builder::new()
        .name("cuda-init".into())
        .spawn(move || match Gpu::create(ordinal) {
            Ok(gpu) => {
                PREWARMED.lock().push((ordinal, gpu.ctx.clone()));
                match gpu.bind() {
                    Ok(()) => early_blas::make(ordinal),
                    Err(_) => early_blas::abandon(),
                }
            }
            Err(_) => early_blas::abandon(),
        });
    if let Err(e) = spawned {
        early_blas::abandon();
        tracing::debug!("cannot start the CUDA init thread: {e}");
    }
}

/// The primary context of one device, made current on whichever thread calls `bind`.
#[derive(Clone)]
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
}

impl Gpu {
    /// The device's context: the prewarmed one if it is there, else created now (the driver
    /// hands both threads the same primary context).
    pub fn new(ordinal: usize) -> Result<Gpu, String> {
        if let Some((_, ctx)) = PREWARMED.lock().iter().find(|(o, _)| *o == ordinal) {
            return Ok(Gpu { ctx: ctx.clone() });
        }
        Gpu::create(ordinal)
    }

    fn create(ordinal: usize) -> Result<Gpu, String> {
        probe(ordinal)?;
        let ctx =
            CudaContext::new(ordinal).map_err(|e| format!("creating the CUDA context: {e:?}"))?;
        // We order work ourselves; cudarc's per-launch event tracking only costs time.
        unsafe { ctx.disable_event_tracking() };
        Ok(Gpu { ctx })
    }

    pub fn bind(&self) -> Result<(), String> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| format!("binding the CUDA context: {e:?}"))
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), String> {
        self.bind()?;
        let (mut free, mut total) = (0, 0);
        ck("cuMemGetInfo", unsafe {
            sys::cuMemGetInfo_v2(&mut free, &mut total)
        })?;
        Ok((free, total))
    }
}

/// Device memory, freed on drop.
pub struct DevBuf {
    pub ptr: sys::CUdeviceptr,
    pub bytes: usize,
}

impl DevBuf {
    pub fn alloc(bytes: usize) -> Result<DevBuf, String> {
        let mut ptr = 0;
        ck(&format!("cuMemAlloc({bytes} bytes)"), unsafe {
            sys::cuMemAlloc_v2(&mut ptr, bytes.max(1))
        })?;
        Ok(DevBuf { ptr, bytes })
    }

    /// `alloc`, every byte 0 once this returns (a memset is asynchronous to the host, and the
    /// non-blocking streams do not wait for it: the context is synchronised).
    pub fn zeroed(bytes: usize) -> Result<DevBuf, String> {
        let b = DevBuf::alloc(bytes)?;
        ck("cuMemsetD8", unsafe {
            sys::cuMemsetD8_v2(b.ptr, 0, bytes.max(1))
        })?;
        ck("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })?;
        Ok(b)
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

// Device pointers are plain addresses; ordering is done with streams and events.
unsafe impl Send for DevBuf {}
unsafe impl Sync for DevBuf {}

/// Page-locked host memory, freed on drop. `write_combined` suits host → device staging (fast to
/// copy from, very slow for the CPU to read); plain suits results the CPU reads.
pub struct Pinned {
    pub ptr: *mut u8,
    pub bytes: usize,
}

impl Pinned {
    pub fn alloc(bytes: usize, write_combined: bool) -> Result<Pinned, String> {
        let mut p: *mut c_void = std::ptr::null_mut();
        let flags = if write_combined {
            sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        ck(&format!("cuMemHostAlloc({bytes} bytes)"), unsafe {
            sys::cuMemHostAlloc(&mut p, bytes.max(1), flags)
        })?;
        Ok(Pinned {
            ptr: p.cast(),
            bytes,
        })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // The allocation is `bytes` long and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    pub fn as_slice(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        unsafe { sys::cuMemFreeHost(self.ptr.cast()) };
    }
}

unsafe impl Send for Pinned {}
unsafe impl Sync for Pinned {}

/// A non-blocking stream (no implicit ordering with the legacy default stream).
pub struct Stream(pub sys::CUstream);

impl Stream {
    pub fn new() -> Result<Stream, String> {
        let mut s = std::ptr::null_mut();
        ck("cuStreamCreate", unsafe {
            sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
        })?;
        Ok(Stream(s))
    }

    pub fn sync(&self) -> Result<(), String> {
        ck("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(self.0)
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        unsafe { sys::cuStreamDestroy_v2(self.0) };
    }
}

unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

/// An event without timing (cheapest to record and wait on), or with timing for benchmarks.
pub struct Event(pub sys::CUevent);

impl Event {
    pub fn new(timing: bool) -> Result<Event, String> {
        let mut e = std::ptr::null_mut();
        let flags = if timing {
            0
        } else {
            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32
        };
        ck("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut e, flags)
        })?;
        Ok(Event(e))
    }

    pub fn record(&self, s: &Stream) -> Result<(), String> {
        ck("cuEventRecord", unsafe { sys::cuEventRecord(self.0, s.0) })
    }

    pub fn sync(&self) -> Result<(), String> {
        ck("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(self.0)
        })
    }

    /// True once the work before the last record is done.
    pub fn done(&self) -> Result<bool, String> {
        match unsafe { sys::cuEventQuery(self.0) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            r => Err(format!("cuEventQuery failed: {r:?}")),
        }
    }

    /// Milliseconds between two recorded timing events.
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32, String> {
        let mut ms = 0.0;
        ck("cuEventElapsedTime", unsafe {
            sys::cuEventElapsedTime_v2(&mut ms, self.0, end.0)
        })?;
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        unsafe { sys::cuEventDestroy_v2(self.0) };
    }
}

unsafe impl Send for Event {}
unsafe impl Sync for Event {}

/// Host → device copy on `s`; `src` must stay valid (and unchanged) until the copy is done.
pub unsafe fn copy_htod(
    dst: sys::CUdeviceptr,
    src: *const u8,
    bytes: usize,
    s: &Stream,
) -> Result<(), String> {
    ck(
        "cuMemcpyHtoDAsync",
        sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), bytes, s.0),
    )
}

/// Device → host copy on `s`; `dst` must stay valid until the copy is done.
pub unsafe fn copy_dtoh(
    dst: *mut u8,
    src: sys::CUdeviceptr,
    bytes: usize,
    s: &Stream,
) -> Result<(), String> {
    ck(
        "cuMemcpyDtoHAsync",
        sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, bytes, s.0),
    )
}

/// `s` waits (on the device) until the 32-bit word at `addr` is >= `value`.
pub fn wait_value(s: &Stream, addr: sys::CUdeviceptr, value: u32) -> Result<(), String> {
    ck("cuStreamWaitValue32", unsafe {
        sys::cuStreamWaitValue32_v2(
            s.0,
            addr,
            value,
            sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32,
        )
    })
}

/// `s` writes `value` to the 32-bit word at `addr` once the work before it is done.
pub fn write_value(s: &Stream, addr: sys::CUdeviceptr, value: u32) -> Result<(), String> {
    ck("cuStreamWriteValue32", unsafe {
        sys::cuStreamWriteValue32_v2(
            s.0,
            addr,
            value,
            sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32,
        )
    })
}

/// `s` waits (on the device) for the work before `e`'s last record.
pub fn wait_event(s: &Stream, e: &Event) -> Result<(), String> {
    ck("cuStreamWaitEvent", unsafe {
        sys::cuStreamWaitEvent(s.0, e.0, 0)
    })
}

/// The loaded kernel image: functions are looked up by name.
pub struct Module(pub sys::CUmodule);

impl Module {
    pub fn load(image: &[u8]) -> Result<Module, String> {
        let mut m = std::ptr::null_mut();
        ck("cuModuleLoadData (kernel fatbin)", unsafe {
            sys::cuModuleLoadData(&mut m, image.as_ptr().cast())
        })?;
        Ok(Module(m))
    }

    pub fn function(&self, name: &str) -> Result<sys::CUfunction, String> {
        let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
        let mut f = std::ptr::null_mut();
        ck(&format!("cuModuleGetFunction({name})"), unsafe {
            sys::cuModuleGetFunction(&mut f, self.0, c.as_ptr())
        })?;
        Ok(f)
    }
}

unsafe impl Send for Module {}
unsafe impl Sync for Module {}
