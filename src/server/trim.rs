//! Returning a large answer's memory to the system once it is sent. glibc's allocator keeps
//! freed memory in its arenas (the per-thread ones are trimmed only from their top), so a process
//! that once built a 100 MB answer on a worker thread would keep most of it resident; a body at
//! least `TRIM_AFTER` long asks the allocator to give free pages back when it is dropped.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Bodies this large trim the allocator when dropped (sending them dominates the cost).
pub const TRIM_AFTER: usize = 4 << 20;

/// A whole body that trims the allocator once it is gone.
pub struct TrimmingBody {
    data: Option<Bytes>,
}

impl TrimmingBody {
    pub fn new(data: Bytes) -> TrimmingBody {
        TrimmingBody { data: Some(data) }
    }
}

impl Body for TrimmingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl Drop for TrimmingBody {
    fn drop(&mut self) {
        // The bytes may still be queued in the connection's write buffer; they are freed soon
        // after, and the next large answer trims again.
        drop(self.data.take());
        release_free_memory();
    }
}

/// Give the allocator's free pages back to the system (glibc; a no-op elsewhere).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers of ours.
        unsafe {
            malloc_trim(0);
        }
    }
}
