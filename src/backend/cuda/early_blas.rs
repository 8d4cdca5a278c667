//! The process's first cuBLAS handle, made beside the CUDA context at startup: creating it costs
//! ~100 ms (cuBLAS initialises itself), which the engine's preparation would otherwise pay after
//! the device is set up, when a request sent at READY may already be waiting for it.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::blas::Blas;
use super::driver::Stream;

/// How long a session waits for a handle still being made before making its own.
const WAIT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Early {
    /// Handles being made (by `cuda-init` threads).
    pending: usize,
    /// (device ordinal, stream, handle issuing on it) made and not yet taken.
    ready: Vec<(usize, Stream, Blas)>,
}

static EARLY: Mutex<Early> = Mutex::new(Early {
    pending: 0,
    ready: Vec::new(),
});
static CHANGED: Condvar = Condvar::new();

/// Announce a handle that a setup thread is about to make (`make` or `abandon` follows).
pub fn announce() {
    EARLY.lock().pending += 1;
}

/// Make the announced handle (the context is current on the calling thread); on failure nothing
/// is kept and a session makes its own.
pub fn make(ordinal: usize) {
    let made = Stream::new().and_then(|s| Blas::new(&s).map(|b| (s, b)));
    let mut e = EARLY.lock();
    e.pending -= 1;
    match made {
        Ok((s, b)) => e.ready.push((ordinal, s, b)),
        Err(why) => tracing::debug!("no early cuBLAS handle: {why}"),
    }
    CHANGED.notify_all();
}

/// Give up on an announced handle (its setup thread failed before making it).
pub fn abandon() {
    EARLY.lock().pending -= 1;
    CHANGED.notify_all();
}

/// The early stream and handle for `ordinal`, waiting for one still being made; `None` when
/// none was made (no setup thread ran, it failed, or it was taken).
pub fn take(ordinal: usize) -> Option<(Stream, Blas)> {
    let deadline = Instant::now() + WAIT;
    let mut e = EARLY.lock();
    while e.pending > 0 && !e.ready.iter().any(|r| r.0 == ordinal) {
        if CHANGED.wait_until(&mut e, deadline).timed_out() {
            break;
        }
    }
    let at = e.ready.iter().position(|r| r.0 == ordinal)?;
    let (_, s, b) = e.ready.swap_remove(at);
    Some((s, b))
}
