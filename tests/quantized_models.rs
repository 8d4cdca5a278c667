//! Models generated with quantized weights (`gen-model --dtype q8_0 … q6_k`, our quantizer) on
//! the CPU backend, which keeps the blocks quantized: their logits against those of the same
//! model with every quantized tensor written out as its F32 dequantization (the dense F32 path),
//! for the prompt and greedy decode steps. The only difference allowed is the rounding of the
//! activations to 16 bits in the integer products.

mod common;

use std::path::{Path, PathBuf};

use layerstream::backend::cpu::{CpuModel, CpuSession};
use layerstream::gguf::{GgmlType, GgufFile, GgufWriter};
use layerstream::model::arch::Family;
use layerstream::model::random::{write_random_model, RandomModelSpec, VocabSource, WeightDtype};
use layerstream::model::ModelSpec;

/// Largest `max|quantized - dense| / max|dense|` over the steps. Measured: at most 5.7e-5.
const REL_TOL: f32 = 2e-4;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quantized-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn generate(dtype: WeightDtype, family: Family, name: &str) -> PathBuf {
    let path = scratch(name);
    let spec = RandomModelSpec {
        family,
        layers: 2,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 512,
        vocab: VocabSource::Size(512),
        tied: false,
        dtype,
        seed: 17,
        context: 128,
        rope_base: 10_000.0,
        head_dim: None,
        sliding_window: None,
        rope_scaling: Default::default(),
    };
    write_random_model(&spec, &path).unwrap();
    path
}

/// `src` with each quantized tensor replaced by its F32 dequantization.
fn dense_twin(src: &Path, name: &str) -> PathBuf {
    let file = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata().iter() {
        w.add_kv(k, v.clone()).unwrap();
    }
    let mut quantized = 0;
    for t in file.tensors() {
        let bytes = file.tensor_bytes(t);
        if t.ty.is_quantized() {
            let mut x = vec![0f32; t.n_elems as usize];
            layerstream::quant::dequantize(t.ty, bytes, &mut x).unwrap();
            w.add_tensor(
                &t.name,
                GgmlType::F32,
                &t.dims,
                bytemuck::cast_slice(&x).to_vec(),
            )
            .unwrap();
            quantized += 1;
        } else {
            w.add_tensor(&t.name, t.ty, &t.dims, bytes.to_vec())
                .unwrap();
        }
    }
    assert!(quantized >= 15, "{} quantized tensors", quantized);
    let out = scratch(name);
    w.write_file(&out).unwrap();
    out
}

/// Logits of the prompt, then of four tokens fed one by one.
fn logits(path: &Path) -> Vec<Vec<f32>> {
    let file = GgufFile::open(path).unwrap();
    let spec = ModelSpec::from_file(&file).unwrap();
    let model = CpuModel::load(&file, &spec).unwrap();
    let mut s = CpuSession::new(&spec.hp, 64, 64);
    let prompt: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 512).collect();
    let mut out = vec![s.eval(&spec.hp, &model, &prompt).unwrap().to_vec()];
    for t in [3u32, 99, 400, 7] {
        out.push(s.eval(&spec.hp, &model, &[t]).unwrap().to_vec());
    }
    out
}

#[test]
fn quantized_weights_compute_what_their_dequantized_values_do() {
    let types = [
        ("q8_0", WeightDtype::Q8_0),
        ("q4_0", WeightDtype::Q4_0),
        ("q4_1", WeightDtype::Q4_1),
        ("q5_0", WeightDtype::Q5_0),
        ("q5_1", WeightDtype::Q5_1),
        ("q4_k", WeightDtype::Q4K),
        ("q5_k", WeightDtype::Q5K),
        ("q6_k", WeightDtype::Q6K),
    ];
    for (i, (name, dtype)) in types.into_iter().enumerate() {
        // Llama's interleaved Q/K rows move as whole quantized rows at load; Qwen2 has biases.
        let family = if i % 2 == 0 {
            Family::Llama
        } else {
            Family::Qwen2
        };
        let q = generate(dtype, family, &format!("{name}.gguf"));
        let d = dense_twin(&q, &format!("{name}-f32.gguf"));
        let (a, b) = (logits(&q), logits(&d));
        let mut worst = 0f32;
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
            assert!(err <= REL_TOL, "{name} step {step}: relative error {err}");
            worst = worst.max(err);
        }
        // The dense path would give the same logits bit for bit: the integer products ran.
        assert!(worst > 0.0, "{name}: identical to the dense model");
    }
}

#[test]
fn a_row_that_is_not_whole_blocks_is_refused_naming_the_tensor() {
    let path = scratch("bad.gguf");
    let spec = RandomModelSpec {
        family: Family::Qwen2,
        layers: 1,
        hidden: 96,
        heads: 2,
        kv_heads: 2,
        ffn: 128,
        vocab: VocabSource::Size(64),
        tied: true,
        dtype: WeightDtype::Q4K,
        seed: 1,
        context: 64,
        rope_base: 10_000.0,
        head_dim: None,
        sliding_window: None,
        rope_scaling: Default::default(),
    };
    let e = write_random_model(&spec, &path).unwrap_err().to_string();
    assert!(e.contains("token_embd.weight") && e.contains("256"), "{e}");
}

/// A block scale that is NaN (a corrupt file) is refused at load, naming the tensor, as the
/// F16 path refuses non-finite values.
#[test]
fn a_nan_block_scale_is_refused_naming_the_tensor() {
    let src = generate(WeightDtype::Q8_0, Family::Llama, "nan-src.gguf");
    let file = GgufFile::open(&src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata().iter() {
        w.add_kv(k, v.clone()).unwrap();
    }
    for t in file.tensors() {
        let mut bytes = file.tensor_bytes(t).to_vec();
        if t.name == "blk.1.ffn_up.weight" {
            // Block 3's f16 scale: a quiet NaN.
            bytes[3 * 34..3 * 34 + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        }
        w.add_tensor(&t.name, t.ty, &t.dims, bytes).unwrap();
    }
    let path = scratch("nan.gguf");
    w.write_file(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let spec = ModelSpec::from_file(&file).unwrap();
    let e = match CpuModel::load(&file, &spec) {
        Ok(_) => panic!("a NaN block scale was loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("blk.1.ffn_up.weight") && e.contains("NaN"),
        "{e}"
    );
}
