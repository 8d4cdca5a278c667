//! The GGUF writer (version 3): metadata and tensors in insertion order, each tensor's data placed at
//! the next multiple of the alignment. Used for test fixtures, generated models and conversions.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::decode::MAX_ARRAY_DEPTH;
use super::dtype::GgmlType;
use super::error::GgufError;
use super::metadata::Metadata;
use super::reader::{align_up, alignment_of, ALIGNMENT_KEY, MAGIC};
use super::tensor_info::check_shape;
use super::value::{Array, Value};

/// The version this writer emits.
const VERSION: u32 = 3;

struct PendingTensor {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory, then writes it out.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Metadata,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the data alignment and the `general.alignment` key (replacing an earlier value).
    /// An alignment that is not a power of two fitting in a U32 is refused by `write_to`.
    pub fn set_alignment(&mut self, a: u64) {
        let value = u32::try_from(a).map(Value::U32).unwrap_or(Value::U64(a));
        self.metadata.set(ALIGNMENT_KEY, value);
    }

    /// Append a key; empty or duplicate keys and arrays nested too deep for the reader are refused.
    pub fn add_kv(&mut self, key: impl Into<String>, v: Value) -> Result<(), GgufError> {
        let key = key.into();
        if key.is_empty() {
            return Err(GgufError::EmptyKey {
                index: self.metadata.len() as u64,
            });
        }
        if let Value::Array(a) = &v {
            if depth(a) > MAX_ARRAY_DEPTH {
                return Err(GgufError::ArrayTooDeep {
                    key,
                    limit: MAX_ARRAY_DEPTH,
                });
            }
        }
        self.metadata.insert(key, v)
    }

    /// Append a tensor; checks the shape and that data.len() == ty.bytes_for(product of dims).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(GgufError::DuplicateTensor { name });
        }
        let (_, n_bytes) = check_shape(&name, ty, dims)?;
        if data.len() as u64 != n_bytes {
            return Err(GgufError::DataSizeMismatch {
                tensor: name,
                ty: ty.name(),
                dims: dims.to_vec(),
                expected: n_bytes,
                got: data.len() as u64,
            });
        }
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            ty,
            dims: dims.to_vec(),
            data,
        });
        Ok(())
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Write the whole file: header, metadata, tensor infos, padding, then each tensor's data padded
    /// to the alignment.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), GgufError> {
        let alignment = alignment_of(&self.metadata)?;
        let (head, offsets) = self.header(alignment)?;
        let io = |e| GgufError::io("writing GGUF data", e);
        w.write_all(&head).map_err(io)?;
        let mut written = 0u64;
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            write_zeros(w, offset - written).map_err(io)?;
            w.write_all(&t.data).map_err(io)?;
            written = offset + t.data.len() as u64;
        }
        write_zeros(w, align_up(written, alignment)? - written).map_err(io)?;
        Ok(())
    }

    /// Write to `path.tmp`, sync, then rename over `path`, so readers never see a partial file.
    pub fn write_file(&self, path: &Path) -> Result<(), GgufError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = Path::new(&tmp);
        let result = self.write_tmp(tmp).and_then(|()| {
            std::fs::rename(tmp, path).map_err(|e| {
                GgufError::io(
                    format!("renaming {} to {}", tmp.display(), path.display()),
                    e,
                )
            })
        });
        if result.is_err() {
            // Best effort: the original error is the one worth reporting.
            let _ = std::fs::remove_file(tmp);
        }
        result
    }

    fn write_tmp(&self, tmp: &Path) -> Result<(), GgufError> {
        let ctx = |what: &str| format!("{what} {}", tmp.display());
        let file = File::create(tmp).map_err(|e| GgufError::io(ctx("creating"), e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        self.write_to(&mut out)?;
        let file = out
            .into_inner()
            .map_err(|e| GgufError::io(ctx("writing"), e.into_error()))?;
        file.sync_all()
            .map_err(|e| GgufError::io(ctx("syncing"), e))
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Everything before the data section, padded to the alignment, and each tensor's offset
    /// relative to the data section.
    fn header(&self, alignment: u64) -> Result<(Vec<u8>, Vec<u64>), GgufError> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        put_u32(&mut out, VERSION);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in self.metadata.iter() {
            put_str(&mut out, key);
            put_u32(&mut out, value.value_type().id());
            put_value(&mut out, value);
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut next = 0u64;
        for t in &self.tensors {
            let offset = align_up(next, alignment)?;
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            t.dims.iter().for_each(|&d| put_u64(&mut out, d));
            put_u32(&mut out, t.ty.id());
            put_u64(&mut out, offset);
            offsets.push(offset);
            next = offset + t.data.len() as u64;
        }
        let padded = align_up(out.len() as u64, alignment)?;
        out.resize(padded as usize, 0);
        Ok((out, offsets))
    }
}

fn depth(a: &Array) -> usize {
    match a {
        Array::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn write_zeros(w: &mut impl Write, n: u64) -> std::io::Result<()> {
    std::io::copy(&mut std::io::Read::take(std::io::repeat(0), n), w).map(|_| ())
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    put_u32(out, a.elem_type().id());
    put_u64(out, a.len() as u64);
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => v.iter().for_each(|&x| out.push(u8::from(x))),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}
