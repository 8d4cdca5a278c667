//! Human-readable dump of a GGUF file for the `inspect` command: header facts, every key with a
//! short value preview, and every tensor with its type, dims, offset and size.

use std::fmt::Write;

use super::reader::GgufFile;

/// Version, alignment, data offset, every key (arrays as `[TYPE; len]` plus their first items) and
/// every tensor in file order.
pub fn describe(f: &GgufFile) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "file: {}", f.path().display());
    let _ = writeln!(
        out,
        "GGUF version {}, alignment {}, data section at offset {}, file size {} bytes",
        f.version(),
        f.alignment(),
        f.data_offset(),
        f.file_size()
    );
    let meta = f.metadata();
    let _ = writeln!(out, "\nmetadata ({} keys):", meta.len());
    let key_width = meta.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in meta.iter() {
        let _ = writeln!(
            out,
            "  {key:<key_width$}  {:<6}  {}",
            value.type_name(),
            value.preview()
        );
    }
    let tensors = f.tensors();
    let total: u64 = tensors.iter().map(|t| t.n_bytes).sum();
    let _ = writeln!(
        out,
        "\ntensors ({}, {} bytes of data):",
        tensors.len(),
        total
    );
    let name_width = tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in tensors {
        let dims = t
            .dims
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "  {:<name_width$}  {:<5}  [{dims}]  offset {}  bytes {}",
            t.name,
            t.ty.name(),
            t.offset,
            t.n_bytes
        );
    }
    out
}
