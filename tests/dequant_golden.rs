//! Dequantization is bit-exact against gguf-py (numpy float32): on seeded random blocks of every
//! supported type, and on every tensor of the real Q4_K_M model. Golden data comes from
//! scripts/golden/dequant.py.

mod common;

use std::path::PathBuf;

use half::f16;
use layerstream::gguf::{GgmlType, GgufFile};
use layerstream::quant::{dequantize, dequantize_f16, supported};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Blocks {
    bin: String,
    bin_sha256: String,
    types: Vec<BlockCase>,
}

#[derive(Deserialize)]
struct BlockCase {
    #[serde(rename = "type")]
    name: String,
    id: u32,
    n_elems: usize,
    src: [usize; 2],
    f32: [usize; 2],
    f16: [usize; 2],
}

#[derive(Deserialize)]
struct ModelGolden {
    model_bytes: u64,
    tensors: Vec<TensorGolden>,
}

#[derive(Deserialize)]
struct TensorGolden {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    dims: Vec<u64>,
    sha256_f32: String,
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load_blocks() -> (Blocks, Vec<u8>) {
    let index = std::fs::read_to_string(golden_dir().join("dequant-blocks.json")).unwrap();
    let index: Blocks = serde_json::from_str(&index).unwrap();
    let bin = std::fs::read(golden_dir().join(&index.bin)).unwrap();
    assert_eq!(
        hex(&Sha256::digest(&bin)),
        index.bin_sha256,
        "golden .bin does not match its index"
    );
    (index, bin)
}

fn slice(bin: &[u8], range: [usize; 2]) -> &[u8] {
    &bin[range[0]..range[0] + range[1]]
}

fn case_type(case: &BlockCase) -> GgmlType {
    let ty = GgmlType::from_id(case.id).unwrap();
    assert_eq!(ty.name(), case.name);
    ty
}

/// sha256 of little-endian f32s, encoded a chunk at a time.
fn sha256_f32(values: &[f32]) -> String {
    let mut hasher = Sha256::new();
    let mut buf = Vec::with_capacity(4 * 4096);
    for chunk in values.chunks(4096) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
        hasher.update(&buf);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Index and both values of the first element whose bits differ, if any.
fn first_mismatch(ours: impl Iterator<Item = u32>, golden: &[u8], width: usize) -> Option<String> {
    let want = golden.chunks_exact(width).map(|c| {
        let mut b = [0u8; 4];
        b[..width].copy_from_slice(c);
        u32::from_le_bytes(b)
    });
    ours.zip(want)
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("element {i}: ours {a:#010x}, gguf-py {b:#010x}"))
}

#[test]
fn golden_blocks_cover_every_supported_type() {
    let (index, _) = load_blocks();
    let covered: Vec<GgmlType> = index.types.iter().map(case_type).collect();
    for ty in GgmlType::ALL {
        assert_eq!(supported(ty), covered.contains(&ty), "{ty}");
    }
}

#[test]
fn random_blocks_dequantize_bit_exact_to_f32() {
    let (index, bin) = load_blocks();
    for case in &index.types {
        let ty = case_type(case);
        let golden = slice(&bin, case.f32);
        assert_eq!(golden.len(), case.n_elems * 4);
        let mut out = vec![0f32; case.n_elems];
        dequantize(ty, slice(&bin, case.src), &mut out).unwrap();
        let bad = first_mismatch(out.iter().map(|x| x.to_bits()), golden, 4);
        assert_eq!(bad, None, "{ty}");
    }
}

#[test]
fn random_blocks_dequantize_bit_exact_to_f16() {
    let (index, bin) = load_blocks();
    for case in &index.types {
        let ty = case_type(case);
        let golden = slice(&bin, case.f16);
        assert_eq!(golden.len(), case.n_elems * 2);
        let mut out = vec![f16::ZERO; case.n_elems];
        dequantize_f16(ty, slice(&bin, case.src), &mut out).unwrap();
        let bad = first_mismatch(out.iter().map(|x| u32::from(x.to_bits())), golden, 2);
        assert_eq!(bad, None, "{ty}");
    }
}

#[test]
fn every_tensor_of_the_real_model_dequantizes_to_the_golden_hash() {
    let golden = std::fs::read_to_string(golden_dir().join("dequant-q4km.json")).unwrap();
    let golden: ModelGolden = serde_json::from_str(&golden).unwrap();
    let path = common::real_model_q4();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), golden.model_bytes);
    let file = GgufFile::open(&path).unwrap();
    let tensors = file.tensors();
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let want: Vec<&str> = golden.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, want);

    let mut spent = std::time::Duration::ZERO;
    let mut out = Vec::new();
    let mut wrong = Vec::new();
    for (t, g) in tensors.iter().zip(&golden.tensors) {
        assert_eq!(
            (t.ty.name(), &t.dims),
            (g.ty.as_str(), &g.dims),
            "{}",
            t.name
        );
        out.clear();
        out.resize(t.n_elems as usize, 0f32);
        let start = std::time::Instant::now();
        dequantize(t.ty, file.tensor_bytes(t), &mut out).unwrap();
        spent += start.elapsed();
        if sha256_f32(&out) != g.sha256_f32 {
            wrong.push(format!("{} ({})", t.name, t.ty));
        }
    }
    eprintln!("dequantized {} tensors in {spent:?}", tensors.len());
    assert!(
        wrong.is_empty(),
        "tensors differing from gguf-py: {wrong:?}"
    );
}
