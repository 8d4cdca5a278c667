//! Converting the real Q4_K_M model to F16 gives the documented file: same metadata (but
//! general.file_type), same tensors in the same order, 2-D+ tensors as F16 and 1-D as F32, with
//! the values gguf-py computes (golden hashes from scripts/golden/dequant.py), and the same content
//! as the cached F16 model that scripts/fetch-test-model makes with `layerstream convert`.

mod common;

use std::path::{Path, PathBuf};

use half::f16;
use layerstream::convert::convert_to_f16;
use layerstream::gguf::{GgmlType, GgufFile, Value};
use layerstream::quant::dequantize;
use serde::Deserialize;
use sha2::{Digest, Sha256};

const F16_BYTES: u64 = 1_266_425_728;
const Q4_BYTES: u64 = 491_400_064;

#[derive(Deserialize)]
struct ModelGolden {
    tensors: Vec<TensorGolden>,
}

#[derive(Deserialize)]
struct TensorGolden {
    name: String,
    sha256_f32: String,
    sha256_f16: String,
}

/// A path in the temp dir, removed when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn golden() -> ModelGolden {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dequant-q4km.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn convert_real_model() -> (GgufFile, GgufFile, TempPath) {
    let input = GgufFile::open(&common::real_model_q4()).unwrap();
    let out =
        TempPath(std::env::temp_dir().join(format!("layerstream-f16-{}.gguf", std::process::id())));
    let report = convert_to_f16(&input, &out.0).unwrap();
    assert_eq!(report.tensors, 291);
    assert_eq!(report.bytes_in, Q4_BYTES);
    assert_eq!(report.bytes_out, F16_BYTES);
    assert_eq!(std::fs::metadata(&out.0).unwrap().len(), F16_BYTES);
    let tmp = PathBuf::from(format!("{}.tmp", out.0.display()));
    assert!(!tmp.exists(), "temporary file left behind");
    let output = GgufFile::open(&out.0).unwrap();
    (input, output, out)
}

fn assert_same_metadata_but_file_type(input: &GgufFile, output: &GgufFile) {
    let a: Vec<_> = input.metadata().iter().collect();
    let b: Vec<_> = output.metadata().iter().collect();
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.into_iter().zip(b) {
        assert_eq!(ka, kb);
        if ka == "general.file_type" {
            assert_eq!(vb, &Value::U32(1));
            assert_ne!(va, vb, "the Q4_K_M input is not mostly F16");
        } else {
            assert_eq!(va, vb, "{ka}");
        }
    }
    assert_eq!(
        input.metadata().get("general.alignment"),
        output.metadata().get("general.alignment")
    );
}

/// Every F16 value is our f32 dequantization rounded by `half`, an implementation independent of
/// the crate's own rounding; NaNs only need to stay NaN.
fn assert_f16_is_rounded_f32(name: &str, f16_bytes: &[u8], f32_values: &[f32]) {
    assert_eq!(f16_bytes.len(), f32_values.len() * 2, "{name}");
    for (i, (b, &x)) in f16_bytes.chunks_exact(2).zip(f32_values).enumerate() {
        let got = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
        let want = f16::from_f32(x);
        let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
        assert!(same, "{name} element {i}: {got:?} is not f16({x:e})");
    }
}

fn assert_tensors_match_golden(input: &GgufFile, output: &GgufFile) {
    let golden = golden();
    let (tin, tout) = (input.tensors(), output.tensors());
    assert_eq!(tin.len(), tout.len());
    assert_eq!(tout.len(), golden.tensors.len());
    let mut counts = (0, 0);
    let mut values = Vec::new();
    for ((a, b), g) in tin.iter().zip(tout).zip(&golden.tensors) {
        assert_eq!((&a.name, &a.dims), (&b.name, &b.dims));
        assert_eq!(b.name, g.name);
        let data = output.tensor_bytes(b);
        if a.dims.len() >= 2 {
            assert_eq!(b.ty, GgmlType::F16, "{}", b.name);
            counts.0 += 1;
            assert_eq!(
                sha256_hex(data),
                g.sha256_f16,
                "{} differs from gguf-py",
                b.name
            );
            values.clear();
            values.resize(a.n_elems as usize, 0f32);
            dequantize(a.ty, input.tensor_bytes(a), &mut values).unwrap();
            assert_f16_is_rounded_f32(&b.name, data, &values);
        } else {
            assert_eq!(b.ty, GgmlType::F32, "{}", b.name);
            counts.1 += 1;
            assert_eq!(
                sha256_hex(data),
                g.sha256_f32,
                "{} differs from gguf-py",
                b.name
            );
        }
    }
    assert_eq!(counts, (170, 121), "(F16, F32) tensors");
}

/// The cached file must hold the same metadata, tensor table and tensor bytes.
fn assert_same_content(ours: &GgufFile, cached: &Path) {
    let cached = GgufFile::open(cached).unwrap();
    assert_eq!(cached.file_size(), F16_BYTES);
    let a: Vec<_> = ours.metadata().iter().collect();
    let b: Vec<_> = cached.metadata().iter().collect();
    assert_eq!(a, b);
    assert_eq!(ours.tensors().len(), cached.tensors().len());
    for (x, y) in ours.tensors().iter().zip(cached.tensors()) {
        assert_eq!((&x.name, x.ty, &x.dims), (&y.name, y.ty, &y.dims));
        assert!(
            ours.tensor_bytes(x) == cached.tensor_bytes(y),
            "{} differs",
            x.name
        );
    }
}

#[test]
fn real_q4_k_m_converts_to_the_f16_model_gguf_py_computes() {
    let (input, output, _out) = convert_real_model();
    assert_same_metadata_but_file_type(&input, &output);
    assert_tensors_match_golden(&input, &output);
    assert_same_content(&output, &common::real_model_f16());
}
