//! Decoding of the variable-length parts of a GGUF file — key/value pairs (arrays included) and
//! tensor info records — with every count checked against the bytes left before allocating.

use super::cursor::{Ctx, Cursor};
use super::error::GgufError;
use super::value::{Array, Value, ValueType};

/// Deepest nesting of arrays accepted (a plain array is depth 1); bounds recursion on hostile input.
pub(crate) const MAX_ARRAY_DEPTH: usize = 8;

/// Most dimensions a ggml tensor has.
pub(crate) const MAX_DIMS: u64 = 4;

/// Smallest key/value record: u64 key length, a 1-byte key, u32 type, a 1-byte value.
pub(crate) const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;

/// Smallest tensor info record: u64 name length, u32 n_dims, one u64 dim, u32 type, u64 offset.
pub(crate) const MIN_TENSOR_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// A tensor info record as read, before its type, shape and placement are validated.
pub(crate) struct RawTensor {
    pub(crate) name: String,
    pub(crate) dims: Vec<u64>,
    pub(crate) type_id: u32,
    pub(crate) rel_offset: u64,
}

/// Read key/value pair number `index`.
pub(crate) fn read_kv(c: &mut Cursor<'_>, index: u64) -> Result<(String, Value), GgufError> {
    let key = c.string(Ctx::Key { index })?;
    if key.is_empty() {
        return Err(GgufError::EmptyKey { index });
    }
    let type_id = c.u32(Ctx::KeyType { key: &key })?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::BadValueType {
        what: format!("key '{key}'"),
        type_id,
    })?;
    let value = read_value(c, &key, ty)?;
    Ok((key, value))
}

fn read_value(c: &mut Cursor<'_>, key: &str, ty: ValueType) -> Result<Value, GgufError> {
    let what = Ctx::Value { key };
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8(what)?),
        ValueType::I8 => Value::I8(i8::from_le_bytes([c.u8(what)?])),
        ValueType::U16 => Value::U16(c.u16(what)?),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.u16(what)?.to_le_bytes())),
        ValueType::U32 => Value::U32(c.u32(what)?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.u32(what)?.to_le_bytes())),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32(what)?)),
        ValueType::Bool => Value::Bool(to_bool(key, c.u8(what)?)?),
        ValueType::String => Value::String(c.string(what)?),
        ValueType::Array => Value::Array(read_array(c, key, 1)?),
        ValueType::U64 => Value::U64(c.u64(what)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.u64(what)?.to_le_bytes())),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64(what)?)),
    })
}

fn to_bool(key: &str, byte: u8) -> Result<bool, GgufError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(GgufError::InvalidBool {
            key: key.to_string(),
            byte,
        }),
    }
}

/// Read an array header and body; `depth` is 1 for an array directly under a key.
fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array, GgufError> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayTooDeep {
            key: key.to_string(),
            limit: MAX_ARRAY_DEPTH,
        });
    }
    let what = Ctx::Value { key };
    let type_id = c.u32(what)?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::BadValueType {
        what: format!("array element type of key '{key}'"),
        type_id,
    })?;
    let count = c.u64(what)?;
    let have = c.remaining();
    let too_large = || GgufError::ArrayTooLarge {
        key: key.to_string(),
        elem_type: ty.name(),
        count,
        elem_bytes: ty.min_bytes(),
        have,
    };
    // Every element takes at least min_bytes, so this bounds every allocation below by the file size.
    let need = count.checked_mul(ty.min_bytes()).ok_or_else(too_large)?;
    if need > have {
        return Err(too_large());
    }
    let n = usize::try_from(count).map_err(|_| too_large())?;
    Ok(match ty {
        ValueType::U8 => Array::U8(c.take(count, what)?.to_vec()),
        ValueType::I8 => Array::I8(fixed(c, n, what, |b: [u8; 1]| i8::from_le_bytes(b))?),
        ValueType::U16 => Array::U16(fixed(c, n, what, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(fixed(c, n, what, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(fixed(c, n, what, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(fixed(c, n, what, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(fixed(c, n, what, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(fixed(c, n, what, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(fixed(c, n, what, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(fixed(c, n, what, f64::from_le_bytes)?),
        ValueType::Bool => {
            let bytes = c.take(count, what)?;
            Array::Bool(
                bytes
                    .iter()
                    .map(|&b| to_bool(key, b))
                    .collect::<Result<_, _>>()?,
            )
        }
        ValueType::String => {
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(c.string(what)?);
            }
            Array::String(items)
        }
        ValueType::Array => {
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(items)
        }
    })
}

/// `n` fixed-size little-endian elements.
fn fixed<const N: usize, T>(
    c: &mut Cursor<'_>,
    n: usize,
    what: Ctx<'_>,
    decode: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>, GgufError> {
    let total = (n as u64).saturating_mul(N as u64);
    let bytes = c.take(total, what)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut raw = [0u8; N];
            raw.copy_from_slice(chunk);
            decode(raw)
        })
        .collect())
}

/// Read tensor info record number `index`; the dim count is checked before the dims are read.
pub(crate) fn read_tensor_info(c: &mut Cursor<'_>, index: u64) -> Result<RawTensor, GgufError> {
    let name = c.string(Ctx::TensorName { index })?;
    let n_dims = c.u32(Ctx::TensorField {
        tensor: &name,
        field: "n_dims",
    })?;
    if n_dims == 0 || u64::from(n_dims) > MAX_DIMS {
        return Err(GgufError::BadDimCount {
            tensor: name,
            n_dims: n_dims.into(),
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64(Ctx::TensorField {
            tensor: &name,
            field: "dims",
        })?);
    }
    let type_id = c.u32(Ctx::TensorField {
        tensor: &name,
        field: "type",
    })?;
    let rel_offset = c.u64(Ctx::TensorField {
        tensor: &name,
        field: "offset",
    })?;
    Ok(RawTensor {
        name,
        dims,
        type_id,
        rel_offset,
    })
}
