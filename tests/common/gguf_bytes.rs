//! A raw little-endian byte builder for GGUF files, valid or deliberately malformed: it writes exactly
//! what it is told, so tests can produce any header, key, value or tensor record.
#![allow(dead_code)]

/// GGUF value type ids.
pub const T_U8: u32 = 0;
pub const T_U32: u32 = 4;
pub const T_I32: u32 = 5;
pub const T_F32: u32 = 6;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;
pub const T_U64: u32 = 10;

/// ggml type ids.
pub const G_F32: u32 = 0;
pub const G_F16: u32 = 1;
pub const G_Q8_0: u32 = 8;
pub const G_Q4_K: u32 = 12;

#[derive(Clone, Debug, Default)]
pub struct GgufBytes {
    pub buf: Vec<u8>,
}

impl GgufBytes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Magic "GGUF", the version and both counts.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        Self::new()
            .raw(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }

    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn u8(self, v: u8) -> Self {
        self.raw(&[v])
    }

    pub fn u32(self, v: u32) -> Self {
        self.raw(&v.to_le_bytes())
    }

    pub fn u64(self, v: u64) -> Self {
        self.raw(&v.to_le_bytes())
    }

    /// A GGUF string: u64 length, then the bytes.
    pub fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }

    /// Key, value type U32, value.
    pub fn kv_u32(self, key: &str, v: u32) -> Self {
        self.str(key).u32(T_U32).u32(v)
    }

    /// Key, value type U64, value.
    pub fn kv_u64(self, key: &str, v: u64) -> Self {
        self.str(key).u32(T_U64).u64(v)
    }

    /// Key, value type STRING, value.
    pub fn kv_str(self, key: &str, v: &str) -> Self {
        self.str(key).u32(T_STRING).str(v)
    }

    /// A tensor info record: name, n_dims, dims, ggml type id, offset relative to the data section.
    pub fn tensor(self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Self {
        let mut b = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            b = b.u64(d);
        }
        b.u32(ggml_type).u64(offset)
    }

    /// Zero padding up to the next multiple of `align`.
    pub fn pad(mut self, align: usize) -> Self {
        let len = self.buf.len().next_multiple_of(align);
        self.buf.resize(len, 0);
        self
    }

    /// `n` bytes of tensor data.
    pub fn data(mut self, n: usize) -> Self {
        self.buf.extend((0..n).map(|i| (i % 251) as u8));
        self
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}
