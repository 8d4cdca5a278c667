//! A bounds-checked little-endian cursor over the bytes of a GGUF file: every read either succeeds
//! or returns `Truncated` / `StringTooLong` naming what was being read, never panics.

use std::fmt;

use super::error::GgufError;

/// What is being read, for error messages; formatted only when an error is built.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ctx<'a> {
    Header(&'static str),
    Key {
        index: u64,
    },
    KeyType {
        key: &'a str,
    },
    Value {
        key: &'a str,
    },
    TensorName {
        index: u64,
    },
    TensorField {
        tensor: &'a str,
        field: &'static str,
    },
}

impl fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ctx::Header(field) => write!(f, "header field {field}"),
            Ctx::Key { index } => write!(f, "key #{index}"),
            Ctx::KeyType { key } => write!(f, "value type of key '{key}'"),
            Ctx::Value { key } => write!(f, "value of key '{key}'"),
            Ctx::TensorName { index } => write!(f, "name of tensor #{index}"),
            Ctx::TensorField { tensor, field } => write!(f, "{field} of tensor '{tensor}'"),
        }
    }
}

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Current offset from the start of the buffer.
    pub(crate) fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left after the current offset.
    pub(crate) fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    /// The next `n` bytes, or `Truncated` when fewer are left.
    pub(crate) fn take(&mut self, n: u64, what: Ctx<'_>) -> Result<&'a [u8], GgufError> {
        let have = self.remaining();
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.offset(),
                need: n,
                have,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: Ctx<'_>) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: Ctx<'_>) -> Result<u8, GgufError> {
        let [byte] = self.array::<1>(what)?;
        Ok(byte)
    }

    pub(crate) fn u16(&mut self, what: Ctx<'_>) -> Result<u16, GgufError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, what: Ctx<'_>) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: Ctx<'_>) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length, then that many UTF-8 bytes (length checked before anything else).
    pub(crate) fn string(&mut self, what: Ctx<'_>) -> Result<String, GgufError> {
        let len_offset = self.offset();
        let len = self.u64(what)?;
        let have = self.remaining();
        if len > have {
            return Err(GgufError::StringTooLong {
                what: what.to_string(),
                offset: len_offset,
                len,
                have,
            });
        }
        let start = self.offset();
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                what: what.to_string(),
                offset: start,
            }),
        }
    }
}
