//! A GGUF file written again from another with our writer: metadata keys set or replaced, tensors
//! dropped or added (zero-filled F32 vectors) — bad or changed inputs made from good ones.

use std::path::{Path, PathBuf};

use layerstream::gguf::{GgmlType, GgufFile, GgufWriter, Value};

/// `src` rewritten to `out` with `set` keys replaced (or added), `drop` tensors left out and `add`
/// zero F32 vectors `(name, length)` appended.
pub fn rewrite(
    src: &Path,
    out: PathBuf,
    drop: &[&str],
    set: &[(&str, Value)],
    add: &[(&str, usize)],
) -> PathBuf {
    let file = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata().iter() {
        if !set.iter().any(|(key, _)| *key == k) {
            w.add_kv(k, v.clone()).unwrap();
        }
    }
    for (k, v) in set {
        w.add_kv(*k, v.clone()).unwrap();
    }
    for t in file.tensors() {
        if !drop.contains(&t.name.as_str()) {
            let bytes = file.tensor_bytes(t).to_vec();
            w.add_tensor(&t.name, t.ty, &t.dims, bytes).unwrap();
        }
    }
    for (n, len) in add {
        w.add_tensor(*n, GgmlType::F32, &[*len as u64], vec![0u8; len * 4])
            .unwrap();
    }
    w.write_file(&out).unwrap();
    out
}
