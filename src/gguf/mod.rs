//! GGUF: a hardened zero-copy reader (every count, size and offset checked before use), typed
//! metadata, the tensor index, a writer for fixtures and conversions, and a human-readable dump.
//!
//! `GgufFile::open` maps a file and validates all of it up front; tensor bytes are then read with
//! `read_tensor_at` (pread, safe against a file truncated later) or viewed with `tensor_bytes`.

mod cursor;
mod decode;
mod dtype;
mod error;
pub mod inspect;
mod metadata;
mod reader;
mod tensor_info;
mod value;
mod writer;

pub use dtype::GgmlType;
pub use error::GgufError;
pub use metadata::Metadata;
pub use reader::{parse, GgufFile, Parsed, ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
pub use tensor_info::TensorInfo;
pub use value::{Array, Value};
pub use writer::GgufWriter;
