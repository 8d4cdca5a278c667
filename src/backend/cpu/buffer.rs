//! Weight storage: anonymous memory maps advised for transparent huge pages.
//!
//! Decode streams the whole model through the cores once per token; with 4 KiB pages that is a
//! TLB miss every 4 KiB. Huge pages (where the kernel allows them) remove most of those walks.
//! The map is zero-filled lazily by the kernel, so reserving a model's memory costs no memset.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use memmap2::{MmapMut, MmapOptions};

/// A zero-initialised slice of plain-old-data elements in its own memory map.
pub struct WeightBuf<T: bytemuck::Pod> {
    map: MmapMut,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: bytemuck::Pod> WeightBuf<T> {
    /// `len` zeroed elements.
    pub fn zeroed(len: usize) -> std::io::Result<WeightBuf<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            std::io::Error::other(format!("{len} elements overflow the address space"))
        })?;
        let map = MmapOptions::new().len(bytes.max(1)).map_anon()?;
        #[cfg(target_os = "linux")]
        {
            // Best effort: the kernel may refuse (THP disabled); then 4 KiB pages are used.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        Ok(WeightBuf {
            map,
            len,
            _elem: PhantomData,
        })
    }

    /// A copy of `src` (tests and small tensors).
    pub fn from_slice(src: &[T]) -> std::io::Result<WeightBuf<T>> {
        let mut b = WeightBuf::zeroed(src.len())?;
        b.copy_from_slice(src);
        Ok(b)
    }
}

impl<T: bytemuck::Pod> Deref for WeightBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let bytes = self.len * std::mem::size_of::<T>();
        bytemuck::cast_slice(&self.map[..bytes])
    }
}

impl<T: bytemuck::Pod> DerefMut for WeightBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let bytes = self.len * std::mem::size_of::<T>();
        bytemuck::cast_slice_mut(&mut self.map[..bytes])
    }
}

impl<T: bytemuck::Pod> std::fmt::Debug for WeightBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightBuf<{}>[{}]", std::any::type_name::<T>(), self.len)
    }
}
