//! Fuzz target: everything a user-supplied model file reaches before the service reports READY
//! (`serve::start`, `LoadedModel::open_on`), on arbitrary bytes:
//!
//! 1. `GgufFile::open` (mmap + header, metadata, tensor index, data layout validation);
//! 2. every metadata key and tensor info, the `inspect` dump, and each tensor's bytes read back
//!    (`read_tensor_at`, `tensor_bytes`) and dequantized as the CPU loader does;
//! 3. `ModelSpec::from_file` (hyper-parameters and every tensor shape) and the `LoadPlan`;
//! 4. `ChatTemplate::from_metadata` when the file has its own template (compile only; rendering
//!    happens per request, after READY; without one the built-in ChatML is compiled, the same work
//!    for every input, so it is skipped);
//! 5. `Tokenizer::from_metadata` only with `LAYERSTREAM_FUZZ_TOKENIZER=1`: building the BPE model
//!    and its split regex takes ~80 ms an input under ASan (vs ~0.1–1 ms for everything else), which
//!    would cut the run ~100-fold, so the default run leaves it out.
//!
//! Every step may refuse the file with an error; a panic, abort, OOM or timeout is a finding, and
//! so is an accepted file that breaks one of the reader's promises (asserted below).
//!
//! The reader opens paths (`ModelSpec::from_file` needs a `GgufFile`), so each input is written to a
//! per-process scratch file, on tmpfs when there is one (`LAYERSTREAM_FUZZ_TMP` overrides the dir).
//! With `LAYERSTREAM_FUZZ_VERBOSE=1` each step's outcome is printed (to triage or check seeds:
//! `target/x86_64-unknown-linux-gnu/release/gguf_open seeds/gguf_open/*`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use layerstream::chat_template::{ChatTemplate, CHAT_TEMPLATE_KEY};
use layerstream::gguf::{inspect, GgufFile};
use layerstream::load::plan::LoadPlan;
use layerstream::model::{computable, ModelSpec};
use layerstream::quant;
use layerstream::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::var_os("LAYERSTREAM_FUZZ_TMP")
            .map(PathBuf::from)
            .or_else(|| {
                let shm = PathBuf::from("/dev/shm");
                shm.is_dir().then_some(shm)
            })
            .unwrap_or_else(std::env::temp_dir);
        dir.join(format!("layerstream-fuzz-{}.gguf", std::process::id()))
    })
}

fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("LAYERSTREAM_FUZZ_VERBOSE").is_some_and(|v| v != "0"))
}

fn with_tokenizer() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LAYERSTREAM_FUZZ_TOKENIZER").is_some_and(|v| v != "0"))
}

/// Print a step's outcome when verbose.
fn report<T, E: std::fmt::Display>(step: &str, r: &Result<T, E>) {
    if verbose() {
        match r {
            Ok(_) => eprintln!("  {step}: ok"),
            Err(e) => eprintln!("  {step}: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("writing the scratch file");
    let file = GgufFile::open(path);
    // The open file (and its map) outlives the name; nothing is left behind when the run ends.
    let _ = std::fs::remove_file(path);
    report("open", &file);
    let Ok(file) = file else {
        return;
    };
    check_index(&file, data);
    let spec = ModelSpec::from_file(&file);
    report("model", &spec);
    let spec = spec.ok();
    if let Some(spec) = &spec {
        let hp = &spec.hp;
        assert_eq!(hp.n_head * hp.head_dim, hp.hidden);
        assert!(hp.n_kv_head >= 1 && hp.n_head % hp.n_kv_head == 0);
        let plan = LoadPlan::new(&file, spec);
        assert_eq!(plan.units.len(), hp.n_layer + 2);
        // Units hold distinct, non-overlapping tensors of this file.
        assert!(plan.total_bytes() <= file.file_size());
    }
    let meta = file.metadata();
    if meta.contains_key(CHAT_TEMPLATE_KEY) {
        report("template", &ChatTemplate::from_metadata(meta));
    }
    if !with_tokenizer() {
        return;
    }
    let tok = Tokenizer::from_metadata(meta);
    report("tokenizer", &tok);
    if let Ok(tok) = tok {
        assert!(tok
            .eos_ids()
            .iter()
            .all(|&id| (id as usize) < tok.vocab_size()));
        assert!(tok
            .bos_id()
            .is_none_or(|id| (id as usize) < tok.vocab_size()));
        // loaded.rs / serve.rs refuse this pairing; computing it must not panic.
        let _ = spec.as_ref().map(|s| tok.vocab_size() > s.hp.vocab);
    }
});

/// Walk the metadata and the tensor index, checking what the reader promises about accepted files.
fn check_index(file: &GgufFile, data: &[u8]) {
    let size = data.len() as u64;
    assert_eq!(file.file_size(), size);
    assert!(file.alignment().is_power_of_two());
    assert_eq!(file.data_offset() % file.alignment(), 0);
    let meta = file.metadata();
    for (key, value) in meta.iter() {
        assert!(!key.is_empty());
        assert!(meta.get(key).is_some());
        let _ = (
            value.type_name(),
            value.preview(),
            value.as_u64(),
            value.as_f32(),
        );
    }
    let _ = inspect::describe(file);
    let mut buf = Vec::new();
    for t in file.tensors() {
        assert_eq!(file.tensor(&t.name), Some(t));
        assert!(!t.dims.is_empty() && t.dims.len() <= 4);
        assert_eq!(t.dims.iter().product::<u64>(), t.n_elems);
        assert_eq!(t.ty.bytes_for(t.n_elems), Some(t.n_bytes));
        assert_eq!(t.rows() * t.row_len(), t.n_elems);
        assert!(t.offset >= file.data_offset());
        assert_eq!((t.offset - file.data_offset()) % file.alignment(), 0);
        assert!(t.end() <= size, "{t:?} ends past the file ({size} bytes)");
        let view = file.tensor_bytes(t);
        assert_eq!(view.len() as u64, t.n_bytes);
        // The load path reads with pread; both views of the bytes must agree.
        buf.clear();
        buf.resize(view.len(), 0);
        file.read_tensor_at(t, 0, &mut buf)
            .expect("reading an accepted tensor");
        assert_eq!(buf.as_slice(), view);
        assert!(file.read_tensor_at(t, 1, &mut buf).is_err());
        if computable(t.ty) {
            // Bounded by the file size: at most 8 f32 per 1 byte (Q4), so a few pages here.
            let mut out = vec![0f32; t.n_elems as usize];
            quant::dequantize(t.ty, view, &mut out).expect("dequantizing an accepted tensor");
        }
    }
}
