//! Writes the seed corpus of the `gguf_open` fuzz target (fuzz/seeds/gguf_open, committed):
//!
//! - one file per failure class of tests/gguf_malformed.rs, built with the same raw byte builder
//!   (tests/common/gguf_bytes.rs), plus a valid file cut short inside each of its sections;
//! - tiny valid files written by our `GgufWriter`: a tokenizer-only file, random Qwen2 models from
//!   `write_random_model` (F32, F16, BF16; tied and untied; with and without the tokenizer), a model
//!   whose matrices use every dequantizable block type, and one file per other tensor type.
//!
//! Run from fuzz/: `cargo run --example gen_seeds [OUT_DIR]`. Deterministic: the same
//! source writes the same bytes, so a regenerated corpus shows up in `git diff` only if it changed.

#[path = "../../tests/common/gguf_bytes.rs"]
mod gguf_bytes;

use std::path::{Path, PathBuf};

use gguf_bytes::*;
use layerstream::gguf::{Array, GgmlType, GgufWriter, Value};
use layerstream::model::names::{self, LayerTensor};
use layerstream::model::random::{write_random_model, RandomModelSpec, VocabSource, WeightDtype};
use layerstream::model::HParams;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/gguf_open"));
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    let mut seeds = Seeds {
        dir: out,
        n: 0,
        bytes: 0,
    };
    malformed(&mut seeds)?;
    valid(&mut seeds)?;
    println!(
        "wrote {} seeds, {} bytes, to {}",
        seeds.n,
        seeds.bytes,
        seeds.dir.display()
    );
    Ok(())
}

struct Seeds {
    dir: PathBuf,
    n: usize,
    bytes: usize,
}

impl Seeds {
    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        std::fs::write(self.dir.join(format!("{name}.gguf")), bytes)?;
        self.n += 1;
        self.bytes += bytes.len();
        Ok(())
    }
}

/// A file with no keys, the given tensor records, padding to 32, then `data` bytes.
fn tensor_file(n: u64, records: impl FnOnce(GgufBytes) -> GgufBytes, data: usize) -> Vec<u8> {
    records(GgufBytes::header(3, n, 0))
        .pad(32)
        .data(data)
        .build()
}

/// A file with no tensors and the given key/value records.
fn kv_file(n: u64, records: impl FnOnce(GgufBytes) -> GgufBytes) -> Vec<u8> {
    records(GgufBytes::header(3, 0, n)).pad(32).build()
}

/// The malformed-file corpus of tests/gguf_malformed.rs, one file per refused case.
fn malformed(s: &mut Seeds) -> Result<()> {
    s.put(
        "bad-magic",
        &GgufBytes::new().raw(b"GGML").u32(3).u64(0).u64(0).build(),
    )?;
    for v in [1u32, 4] {
        s.put(
            &format!("version-{v}"),
            &GgufBytes::header(v, 0, 0).pad(32).build(),
        )?;
    }
    s.put(
        "version-big-endian",
        &GgufBytes::header(3u32.swap_bytes(), 0, 0).build(),
    )?;
    s.put(
        "tensor-count-max",
        &GgufBytes::header(3, u64::MAX, 0).pad(64).build(),
    )?;
    s.put(
        "kv-count-max",
        &GgufBytes::header(3, 0, u64::MAX).pad(64).build(),
    )?;
    s.put(
        "kv-count-1000",
        &GgufBytes::header(3, 0, 1000).kv_u32("a", 1).build(),
    )?;
    s.put(
        "key-length-max",
        &kv_file(1, |b| b.u64(u64::MAX).raw(b"general.name")),
    )?;
    s.put(
        "string-length-max",
        &kv_file(1, |b| b.str("general.name").u32(T_STRING).u64(u64::MAX)),
    )?;
    s.put(
        "string-past-end",
        &GgufBytes::header(3, 0, 1)
            .str("general.name")
            .u32(T_STRING)
            .u64(1000)
            .raw(b"short")
            .build(),
    )?;
    s.put(
        "array-count-overflow",
        &kv_file(1, |b| {
            b.str("tokenizer.scores")
                .u32(T_ARRAY)
                .u32(T_U64)
                .u64(u64::MAX / 4)
        }),
    )?;
    s.put(
        "string-array-past-end",
        &kv_file(1, |b| {
            b.str("tokenizer.ggml.tokens")
                .u32(T_ARRAY)
                .u32(T_STRING)
                .u64(1000)
                .str("a")
        }),
    )?;
    s.put(
        "value-type-13",
        &kv_file(1, |b| b.str("general.weird").u32(13).u64(0)),
    )?;
    s.put(
        "array-element-type-13",
        &kv_file(1, |b| {
            b.str("general.list").u32(T_ARRAY).u32(13).u64(1).u32(0)
        }),
    )?;
    let mut deep = GgufBytes::header(3, 0, 1).str("general.deep").u32(T_ARRAY);
    for _ in 0..9 {
        deep = deep.u32(T_ARRAY).u64(1);
    }
    s.put("array-too-deep", &deep.u32(T_U8).u64(0).pad(32).build())?;
    s.put(
        "empty-key",
        &kv_file(2, |b| b.kv_u32("general.ok", 1).kv_u32("", 1)),
    )?;
    s.put(
        "duplicate-key",
        &kv_file(2, |b| {
            b.kv_u32("qwen2.block_count", 24)
                .kv_u32("qwen2.block_count", 25)
        }),
    )?;
    s.put(
        "key-not-utf8",
        &kv_file(1, |b| {
            b.u64(4).raw(&[b'k', 0xff, 0xfe, b'y']).u32(T_U32).u32(1)
        }),
    )?;
    s.put(
        "string-not-utf8",
        &kv_file(1, |b| {
            b.str("general.name")
                .u32(T_STRING)
                .u64(2)
                .raw(&[0xc3, 0x28])
        }),
    )?;
    s.put(
        "bool-2",
        &kv_file(1, |b| {
            b.str("tokenizer.ggml.add_bos_token").u32(T_BOOL).u8(2)
        }),
    )?;
    s.put(
        "alignment-13",
        &kv_file(1, |b| b.kv_u32("general.alignment", 13)),
    )?;
    s.put(
        "alignment-string",
        &kv_file(1, |b| b.kv_str("general.alignment", "32")),
    )?;
    s.put(
        "alignment-u64",
        &kv_file(1, |b| b.kv_u64("general.alignment", 32)),
    )?;
    s.put(
        "five-dims",
        &tensor_file(
            1,
            |b| b.tensor("blk.0.ffn_up.weight", &[1, 1, 1, 1, 1], G_F32, 0),
            64,
        ),
    )?;
    s.put(
        "zero-dim",
        &tensor_file(
            1,
            |b| b.tensor("token_embd.weight", &[896, 0], G_F32, 0),
            64,
        ),
    )?;
    s.put(
        "dims-overflow",
        &tensor_file(
            1,
            |b| b.tensor("output.weight", &[1 << 32, 1 << 32], G_F32, 0),
            64,
        ),
    )?;
    s.put(
        "bytes-overflow",
        &tensor_file(
            1,
            |b| b.tensor("output.weight", &[1 << 31, 1 << 31], G_F32, 0),
            64,
        ),
    )?;
    s.put(
        "unknown-type",
        &tensor_file(1, |b| b.tensor("blk.3.attn_q.weight", &[32], 99, 0), 128),
    )?;
    s.put(
        "row-not-block-multiple",
        &tensor_file(
            1,
            |b| b.tensor("blk.0.ffn_down.weight", &[100], G_Q4_K, 0),
            512,
        ),
    )?;
    s.put(
        "misaligned-offset",
        &tensor_file(1, |b| b.tensor("output_norm.weight", &[4], G_F32, 4), 64),
    )?;
    s.put(
        "data-past-end",
        &tensor_file(1, |b| b.tensor("token_embd.weight", &[8, 8], G_F32, 0), 255),
    )?;
    s.put(
        "offset-near-u64-max",
        &tensor_file(
            1,
            |b| b.tensor("token_embd.weight", &[8], G_F32, u64::MAX - 31),
            64,
        ),
    )?;
    s.put(
        "overlapping-tensors",
        &tensor_file(
            2,
            |b| {
                b.tensor("a.weight", &[16], G_F32, 0)
                    .tensor("b.weight", &[16], G_F32, 32)
            },
            128,
        ),
    )?;
    s.put(
        "duplicate-tensor",
        &tensor_file(
            2,
            |b| {
                b.tensor("blk.0.attn_k.weight", &[8], G_F32, 0).tensor(
                    "blk.0.attn_k.weight",
                    &[8],
                    G_F32,
                    32,
                )
            },
            64,
        ),
    )?;
    s.put(
        "hand-built-alignment-64",
        &GgufBytes::header(3, 2, 1)
            .kv_u32("general.alignment", 64)
            .tensor("a", &[32, 2], G_Q8_0, 0)
            .tensor("b", &[3], G_F16, 128)
            .pad(64)
            .data(134)
            .build(),
    )?;
    // The test file's valid_file(), whole, as v2, and cut inside each section.
    let v = valid_file()?;
    s.put("valid-v3", &v)?;
    let mut v2 = v.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    s.put("valid-v2", &v2)?;
    let at = |needle: &[u8]| {
        v.windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or(0)
    };
    let cuts = [
        ("header", 20),
        ("key", at(b"qwen2.block_count") + 5),
        (
            "value",
            at(b"qwen2.block_count") + "qwen2.block_count".len() + 6,
        ),
        ("tensor-info", at(b"output_norm.weight") + 28),
        ("data", v.len() - 17),
    ];
    for (name, cut) in cuts {
        s.put(&format!("cut-in-{name}"), &v[..cut])?;
    }
    Ok(())
}

/// tests/gguf_malformed.rs's valid_file(): a few keys, then three tensors.
fn valid_file() -> Result<Vec<u8>> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("qwen2".into()))?;
    w.add_kv("tokenizer.ggml.tokens", strings(&["a", "bc"]))?;
    w.add_kv("qwen2.block_count", Value::U32(2))?;
    w.add_tensor("token_embd.weight", GgmlType::F16, &[4, 2], vec![1; 16])?;
    w.add_tensor("blk.0.attn_q.weight", GgmlType::Q8_0, &[32, 2], vec![2; 68])?;
    w.add_tensor("output_norm.weight", GgmlType::F32, &[4], vec![3; 16])?;
    Ok(w.to_bytes()?)
}

fn strings(items: &[&str]) -> Value {
    Value::Array(Array::String(items.iter().map(|s| s.to_string()).collect()))
}

/// The tiny vocabulary: byte-level BPE tokens (Ġ is the space), two merges, the two turn-end
/// control tokens; 8 ids, so it fits a random model of vocabulary 8.
const TOKENS: [&str; 8] = [
    "a",
    "b",
    "Ġ",
    "ab",
    "Ġa",
    "c",
    "<|endoftext|>",
    "<|im_end|>",
];

fn tokenizer_keys(w: &mut GgufWriter, template: Option<&str>) -> Result<()> {
    w.add_kv("tokenizer.ggml.model", Value::String("gpt2".into()))?;
    w.add_kv("tokenizer.ggml.pre", Value::String("qwen2".into()))?;
    w.add_kv("tokenizer.ggml.tokens", strings(&TOKENS))?;
    w.add_kv("tokenizer.ggml.merges", strings(&["a b", "Ġ a"]))?;
    w.add_kv(
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(vec![1, 1, 1, 1, 1, 1, 3, 3])),
    )?;
    w.add_kv("tokenizer.ggml.eos_token_id", Value::U32(7))?;
    w.add_kv("tokenizer.ggml.bos_token_id", Value::U32(6))?;
    w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(false))?;
    if let Some(t) = template {
        w.add_kv("tokenizer.chat_template", Value::String(t.into()))?;
    }
    Ok(())
}

const TEMPLATE: &str =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Valid files written by our writer.
fn valid(s: &mut Seeds) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("layerstream-gen-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let vocab = tmp.join("vocab.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("qwen2".into()))?;
    tokenizer_keys(&mut w, Some(TEMPLATE))?;
    w.write_file(&vocab)?;
    s.put("tokenizer-only", &std::fs::read(&vocab)?)?;

    let models = [
        ("model-f32-tied-tokenizer", WeightDtype::F32, true, true, 1),
        (
            "model-f16-untied-tokenizer",
            WeightDtype::F16,
            false,
            true,
            1,
        ),
        (
            "model-bf16-tied-2-layers",
            WeightDtype::Bf16,
            true,
            false,
            2,
        ),
        ("model-f32-untied", WeightDtype::F32, false, false, 1),
    ];
    for (i, (name, dtype, tied, with_tokenizer, layers)) in models.into_iter().enumerate() {
        let spec = RandomModelSpec {
            family: layerstream::model::arch::Family::Qwen2,
            layers,
            hidden: 8,
            heads: 2,
            kv_heads: 1,
            ffn: 16,
            vocab: if with_tokenizer {
                VocabSource::FromFile(vocab.clone())
            } else {
                VocabSource::Size(8)
            },
            tied,
            dtype,
            seed: i as u64 + 1,
            context: 64,
            rope_base: 10_000.0,
            head_dim: None,
            sliding_window: None,
        };
        let path = tmp.join(format!("{name}.gguf"));
        write_random_model(&spec, &path)?;
        s.put(name, &std::fs::read(&path)?)?;
    }
    s.put("model-mixed-quants-tokenizer", &mixed_quant_model()?)?;
    for ty in GgmlType::ALL {
        let mut w = GgufWriter::new();
        w.set_alignment(if ty.is_quantized() { 64 } else { 16 });
        let dims = [ty.block_elems(), 2];
        let n = ty.bytes_for(dims[0] * dims[1]).unwrap_or(0) as usize;
        w.add_tensor("blk.0.ffn_down.weight", ty, &dims, pattern(n))?;
        s.put(&format!("tensor-{}", ty.name()), &w.to_bytes()?)?;
    }
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// A 1-layer Qwen2 model (hidden 32, ffn 32, vocab 8) with the tokenizer and its matrices in every
/// dequantizable block type of 32 elements, norms and biases in F32.
fn mixed_quant_model() -> Result<Vec<u8>> {
    let hp = HParams {
        n_layer: 1,
        hidden: 32,
        ffn: 32,
        n_head: 2,
        n_kv_head: 1,
        head_dim: 16,
        vocab: TOKENS.len(),
        context: 64,
        rope_base: 1e6,
        rms_eps: 1e-6,
    };
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("qwen2".into()))?;
    for (k, v) in [
        ("block_count", hp.n_layer),
        ("context_length", hp.context),
        ("embedding_length", hp.hidden),
        ("feed_forward_length", hp.ffn),
        ("attention.head_count", hp.n_head),
        ("attention.head_count_kv", hp.n_kv_head),
    ] {
        w.add_kv(format!("qwen2.{k}"), Value::U32(v as u32))?;
    }
    w.add_kv("qwen2.rope.freq_base", Value::F32(hp.rope_base))?;
    w.add_kv(
        "qwen2.attention.layer_norm_rms_epsilon",
        Value::F32(hp.rms_eps),
    )?;
    tokenizer_keys(&mut w, None)?;
    let mut add = |name: &str, ty: GgmlType, dims: Vec<u64>| -> Result<()> {
        let n = ty.bytes_for(dims.iter().product()).unwrap_or(0) as usize;
        w.add_tensor(name, ty, &dims, pattern(n))?;
        Ok(())
    };
    let global = |n: &str| names::global_dims(n, &hp).unwrap_or_default();
    add(names::TOKEN_EMBD, GgmlType::Q8_0, global(names::TOKEN_EMBD))?;
    let matrices = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::BF16,
    ];
    let mut next = matrices.iter().cycle();
    for t in LayerTensor::ALL {
        let ty = if t.is_vector() {
            GgmlType::F32
        } else {
            *next.next().unwrap_or(&GgmlType::F32)
        };
        add(&t.name(0), ty, t.dims_in(&hp))?;
    }
    add(
        names::OUTPUT_NORM,
        GgmlType::F32,
        global(names::OUTPUT_NORM),
    )?;
    add(names::OUTPUT, GgmlType::F16, global(names::OUTPUT))?;
    Ok(w.to_bytes()?)
}

/// Deterministic data bytes that are small finite values in every float and block format.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 37 % 61) as u8).collect()
}
