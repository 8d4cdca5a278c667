//! The loader's NaN/infinity check on the device: after each piece of a unit lands (and after each
//! dequantization), a kernel scans its F16 or F32 elements and tags a device flag with the first
//! bad tensor; before a unit's host callback the flag is copied to pinned memory, where the
//! callback reads it — a unit holding a bad value fails the load, naming the tensor, instead of
//! becoming resident.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys;

use super::chunks::{Chunk, Piece, Route};
use super::driver::{ck, copy_dtoh, DevBuf, Pinned, Stream};
use super::kernels::Kernels;
use crate::gguf::GgmlType;

/// No bad value seen.
const CLEAN: u32 = u32::MAX;

pub struct FiniteCheck {
    flag: DevBuf,
    host: Pinned,
    tags: HashMap<String, u32>,
    names: Arc<Vec<String>>,
}

/// What a unit's host callback reads: the pinned copy of the flag and the names of the tags.
#[derive(Clone)]
pub struct Verdict {
    host: usize,
    names: Arc<Vec<String>>,
}

impl Verdict {
    /// The error of the first tensor found holding NaN or infinity, if any.
    pub fn error(&self) -> Option<String> {
        // SAFETY: 4 bytes of pinned memory owned by the loader, written by a copy that completed
        // in stream order before the callback that reads it.
        let tag = unsafe { std::ptr::read_volatile(self.host as *const u32) };
        (tag != CLEAN).then(|| {
            let name = self.names.get(tag as usize).map_or("?", |s| s.as_str());
            format!("tensor '{name}': holds NaN or infinite values")
        })
    }
}

impl FiniteCheck {
    /// One tag per tensor of the plan.
    pub fn new(chunks: &[Chunk]) -> Result<FiniteCheck, String> {
        let mut names = Vec::new();
        let mut tags = HashMap::new();
        for p in chunks.iter().flat_map(|c| &c.pieces) {
            tags.entry(p.tensor.name.clone()).or_insert_with(|| {
                names.push(p.tensor.name.clone());
                (names.len() - 1) as u32
            });
        }
        let flag = DevBuf::alloc(4)?;
        ck("cuMemsetD32 (finite flag)", unsafe {
            sys::cuMemsetD32_v2(flag.ptr, CLEAN, 1)
        })?;
        let mut host = Pinned::alloc(4, false)?;
        host.as_mut_slice().copy_from_slice(&CLEAN.to_le_bytes());
        Ok(FiniteCheck {
            flag,
            host,
            tags,
            names: Arc::new(names),
        })
    }

    fn tag(&self, name: &str) -> u32 {
        self.tags.get(name).copied().unwrap_or(CLEAN - 1)
    }

    /// Check a piece copied as it is (`Direct`: F16 or F32) or staged as F32 (`HostF32`).
    pub fn piece(&self, k: &Kernels, s: &Stream, arena: u64, p: &Piece) -> Result<(), String> {
        let wide = match p.route {
            Route::Dequant => return Ok(()), // checked after its dequantization
            Route::HostF32 => true,
            Route::Direct => p.tensor.ty == GgmlType::F32,
        };
        let n = (p.staged_len / if wide { 4 } else { 2 }) as u64;
        let tag = self.tag(&p.tensor.name);
        k.check_finite(s, arena + p.dst_off as u64, n, wide, self.flag.ptr, tag)
    }

    /// Check a dequantized tensor's `n` F16 elements at `dst`.
    pub fn dequantized(
        &self,
        k: &Kernels,
        s: &Stream,
        dst: u64,
        n: u64,
        name: &str,
    ) -> Result<(), String> {
        k.check_finite(s, dst, n, false, self.flag.ptr, self.tag(name))
    }

    /// Bring the flag to the host, in stream order, ahead of a unit's callback.
    pub fn publish(&self, s: &Stream) -> Result<(), String> {
        // SAFETY: 4 bytes of pinned memory owned by self, alive until the stream is drained.
        unsafe { copy_dtoh(self.host.ptr, self.flag.ptr, 4, s) }
    }

    pub fn verdict(&self) -> Verdict {
        Verdict {
            host: self.host.ptr as usize,
            names: self.names.clone(),
        }
    }
}
