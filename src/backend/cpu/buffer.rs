//! Weight storage: one anonymous memory map per weight, zero-filled lazily by the kernel, so
//! reserving a whole model's memory before the first copy costs no memset, and advised for
//! transparent huge pages, so filling it costs one page fault per 2 MiB instead of per 4 KiB.

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
        // Huge pages where the kernel allows them: a 4 KiB page fault per 4 KiB of weights would
        // cap the loader near 1 GB/s here; with 2 MiB pages it copies at ~2.5 GB/s.
        #[cfg(target_os = "linux")]
        {
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
