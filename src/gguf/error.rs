//! The one error type of the GGUF module: one variant per failure class, each message naming the key
//! or tensor involved and what was expected, so a refused file tells its owner what to fix.

use std::io;

/// Everything that can go wrong reading, validating, querying or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("I/O error {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("this is {kind}, not a regular file: give the path of a .gguf model file")]
    NotAFile { kind: &'static str },

    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\" (47 47 55 46)")]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {version}: only versions 2 and 3 are supported{hint}")]
    UnsupportedVersion { version: u32, hint: &'static str },

    #[error("file truncated: {what} at offset {offset} needs {need} bytes, only {have} left")]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        have: u64,
    },

    #[error(
        "header declares {count} {what} of at least {min_bytes} bytes each, but only {have} bytes \
         follow: the file is truncated or corrupt"
    )]
    CountTooLarge {
        what: &'static str,
        count: u64,
        min_bytes: u64,
        have: u64,
    },

    #[error("{what} at offset {offset} declares a length of {len} bytes, only {have} left")]
    StringTooLong {
        what: String,
        offset: u64,
        len: u64,
        have: u64,
    },

    #[error(
        "array in key '{key}' declares {count} elements of {elem_type} ({elem_bytes} bytes or more \
         each), only {have} bytes are left"
    )]
    ArrayTooLarge {
        key: String,
        elem_type: &'static str,
        count: u64,
        elem_bytes: u64,
        have: u64,
    },

    #[error("array in key '{key}' nests deeper than {limit} levels")]
    ArrayTooDeep { key: String, limit: usize },

    #[error("{what} has value type {type_id}; expected a GGUF value type 0..=12")]
    BadValueType { what: String, type_id: u32 },

    #[error("key '{key}' holds a bool byte {byte}; expected 0 or 1")]
    InvalidBool { key: String, byte: u8 },

    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },

    #[error("key #{index} is empty; keys must be non-empty")]
    EmptyKey { index: u64 },

    #[error("duplicate key '{key}'")]
    DuplicateKey { key: String },

    #[error("key 'general.alignment' must be U32, found {found}")]
    AlignmentType { found: &'static str },

    #[error("alignment {value} (key 'general.alignment') must be a non-zero power of two")]
    InvalidAlignment { value: u64 },

    #[error("tensor '{tensor}' has {n_dims} dimensions; expected 1 to 4")]
    BadDimCount { tensor: String, n_dims: u64 },

    #[error("tensor '{tensor}' has dimension {index} equal to zero; every dimension must be >= 1")]
    ZeroDim { tensor: String, index: usize },

    #[error("tensor '{tensor}' has dims {dims:?} whose element count or byte size overflows")]
    ElementCountOverflow { tensor: String, dims: Vec<u64> },

    #[error("tensor '{tensor}' has unknown ggml type id {type_id}")]
    UnknownType { tensor: String, type_id: u32 },

    #[error(
        "tensor '{tensor}' of type {ty} has a row length of {row_len}, not a multiple of its block \
         size {block}"
    )]
    RowNotBlockMultiple {
        tensor: String,
        ty: &'static str,
        row_len: u64,
        block: u64,
    },

    #[error(
        "tensor '{tensor}' has data offset {offset}, not a multiple of the alignment {alignment}"
    )]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error(
        "tensor '{tensor}' needs bytes [{start}, {end}) of the file, but the file is {file_size} bytes"
    )]
    TensorOutOfBounds {
        tensor: String,
        start: u128,
        end: u128,
        file_size: u64,
    },

    #[error("tensors '{first}' and '{second}' overlap: '{first}' ends at {first_end}, '{second}' starts at {second_start}")]
    TensorOverlap {
        first: String,
        second: String,
        first_end: u64,
        second_start: u64,
    },

    #[error("duplicate tensor name '{name}'")]
    DuplicateTensor { name: String },

    #[error("read of bytes [{start}, {start}+{len}) of tensor '{tensor}' is outside its {n_bytes} bytes")]
    ReadOutOfRange {
        tensor: String,
        start: u64,
        len: u64,
        n_bytes: u64,
    },

    #[error("metadata key '{key}' is missing; expected {expected}")]
    MissingKey { key: String, expected: &'static str },

    #[error("metadata key '{key}' has the wrong type: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("tensor '{tensor}' of type {ty} with dims {dims:?} needs {expected} bytes of data, got {got}")]
    DataSizeMismatch {
        tensor: String,
        ty: &'static str,
        dims: Vec<u64>,
        expected: u64,
        got: u64,
    },
}

impl GgufError {
    /// Wrap an I/O error with what was being done when it happened.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> GgufError {
        GgufError::Io {
            context: context.into(),
            source,
        }
    }
}
