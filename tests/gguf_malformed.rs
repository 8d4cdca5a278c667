//! The malformed-file corpus: one hand-built file per failure class, each refused with its own
//! error variant whose message names the key or tensor; plus files cut short at several points,
//! valid v2/v3 files, the real vocabulary file, and a seeded mutation run that must never panic.

mod common;
#[path = "common/gguf_bytes.rs"]
mod gguf_bytes;

use gguf_bytes::*;
use layerstream::gguf::{parse, Array, GgmlType, GgufError, GgufFile, GgufWriter, Value};

fn err(bytes: &[u8]) -> GgufError {
    match parse(bytes) {
        Ok(p) => panic!("parse accepted a malformed file: {p:?}"),
        Err(e) => e,
    }
}

fn assert_names(e: &GgufError, needle: &str) {
    let msg = e.to_string();
    assert!(
        msg.contains(needle),
        "message {msg:?} does not name {needle:?}"
    );
}

/// A file with no keys, the given tensor records, padding to 32, then `data` bytes.
fn tensor_file(
    n_tensors: u64,
    records: impl FnOnce(GgufBytes) -> GgufBytes,
    data: usize,
) -> Vec<u8> {
    records(GgufBytes::header(3, n_tensors, 0))
        .pad(32)
        .data(data)
        .build()
}

/// A file with no tensors and the given key/value records, padded so count checks pass.
fn kv_file(n_kv: u64, records: impl FnOnce(GgufBytes) -> GgufBytes) -> Vec<u8> {
    records(GgufBytes::header(3, 0, n_kv)).pad(32).build()
}

/// A valid file from the writer: a few keys, then three tensors.
fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("qwen2".into()))
        .unwrap();
    w.add_kv(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(vec!["a".into(), "bc".into()])),
    )
    .unwrap();
    w.add_kv("qwen2.block_count", Value::U32(2)).unwrap();
    w.add_tensor("token_embd.weight", GgmlType::F16, &[4, 2], vec![1; 16])
        .unwrap();
    w.add_tensor("blk.0.attn_q.weight", GgmlType::Q8_0, &[32, 2], vec![2; 68])
        .unwrap();
    w.add_tensor("output_norm.weight", GgmlType::F32, &[4], vec![3; 16])
        .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn bad_magic_is_refused() {
    let bytes = GgufBytes::new().raw(b"GGML").u32(3).u64(0).u64(0).build();
    match err(&bytes) {
        GgufError::BadMagic { found } => assert_eq!(&found, b"GGML"),
        other => panic!("expected BadMagic, got {other:?}"),
    }
}

#[test]
fn versions_other_than_2_and_3_are_refused() {
    for version in [0u32, 1, 4, 99] {
        let e = err(&GgufBytes::header(version, 0, 0).pad(32).build());
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: v, .. } if v == version),
            "{e:?}"
        );
        assert_names(&e, &format!("version {version}"));
    }
}

#[test]
fn big_endian_version_is_refused_with_a_hint() {
    let e = err(&GgufBytes::header(3u32.swap_bytes(), 0, 0).build());
    assert!(matches!(e, GgufError::UnsupportedVersion { .. }), "{e:?}");
    assert_names(&e, "big-endian");
}

#[test]
fn tensor_count_u64_max_is_refused_before_allocating() {
    let e = err(&GgufBytes::header(3, u64::MAX, 0).pad(64).build());
    match &e {
        GgufError::CountTooLarge { what, count, .. } => {
            assert_eq!(*count, u64::MAX);
            assert_eq!(*what, "tensor infos");
        }
        other => panic!("expected CountTooLarge, got {other:?}"),
    }
    assert_names(&e, "tensor infos");
}

#[test]
fn kv_count_u64_max_is_refused_before_allocating() {
    let e = err(&GgufBytes::header(3, 0, u64::MAX).pad(64).build());
    match &e {
        GgufError::CountTooLarge { what, count, .. } => {
            assert_eq!(*count, u64::MAX);
            assert_eq!(*what, "key-value pairs");
        }
        other => panic!("expected CountTooLarge, got {other:?}"),
    }
}

#[test]
fn kv_count_larger_than_the_file_can_hold_is_refused() {
    let e = err(&GgufBytes::header(3, 0, 1000).kv_u32("a", 1).build());
    assert!(
        matches!(e, GgufError::CountTooLarge { count: 1000, .. }),
        "{e:?}"
    );
}

#[test]
fn key_length_u64_max_is_refused() {
    let bytes = kv_file(1, |b| b.u64(u64::MAX).raw(b"general.name"));
    match err(&bytes) {
        GgufError::StringTooLong { len, what, .. } => {
            assert_eq!(len, u64::MAX);
            assert!(what.contains("key #0"), "{what}");
        }
        other => panic!("expected StringTooLong, got {other:?}"),
    }
}

#[test]
fn string_value_length_u64_max_is_refused_naming_the_key() {
    let bytes = kv_file(1, |b| b.str("general.name").u32(T_STRING).u64(u64::MAX));
    let e = err(&bytes);
    assert!(
        matches!(e, GgufError::StringTooLong { len: u64::MAX, .. }),
        "{e:?}"
    );
    assert_names(&e, "'general.name'");
}

#[test]
fn string_longer_than_the_file_is_refused() {
    let bytes = GgufBytes::header(3, 0, 1)
        .str("general.name")
        .u32(T_STRING)
        .u64(1000)
        .raw(b"short")
        .build();
    let e = err(&bytes);
    match &e {
        GgufError::StringTooLong { len, have, .. } => {
            assert_eq!(*len, 1000);
            assert_eq!(*have, 5);
        }
        other => panic!("expected StringTooLong, got {other:?}"),
    }
    assert_names(&e, "'general.name'");
}

#[test]
fn array_count_times_element_size_overflow_is_refused() {
    let bytes = kv_file(1, |b| {
        b.str("tokenizer.scores")
            .u32(T_ARRAY)
            .u32(T_U64)
            .u64(u64::MAX / 4)
    });
    let e = err(&bytes);
    match &e {
        GgufError::ArrayTooLarge {
            key,
            count,
            elem_bytes,
            ..
        } => {
            assert_eq!(key, "tokenizer.scores");
            assert_eq!((*count, *elem_bytes), (u64::MAX / 4, 8));
        }
        other => panic!("expected ArrayTooLarge, got {other:?}"),
    }
    assert_names(&e, "'tokenizer.scores'");
}

#[test]
fn string_array_longer_than_the_file_is_refused() {
    // 1000 strings need at least 8000 bytes for their lengths alone.
    let bytes = kv_file(1, |b| {
        b.str("tokenizer.ggml.tokens")
            .u32(T_ARRAY)
            .u32(T_STRING)
            .u64(1000)
            .str("a")
    });
    let e = err(&bytes);
    assert!(
        matches!(&e, GgufError::ArrayTooLarge { key, count: 1000, .. } if key == "tokenizer.ggml.tokens"),
        "{e:?}"
    );
}

#[test]
fn bad_value_types_are_refused() {
    for type_id in [13u32, 99, u32::MAX] {
        let e = err(&kv_file(1, |b| b.str("general.weird").u32(type_id).u64(0)));
        assert!(
            matches!(e, GgufError::BadValueType { type_id: t, .. } if t == type_id),
            "{e:?}"
        );
        assert_names(&e, "'general.weird'");
    }
}

#[test]
fn bad_array_element_type_is_refused() {
    let e = err(&kv_file(1, |b| {
        b.str("general.list").u32(T_ARRAY).u32(13).u64(1).u32(0)
    }));
    assert!(
        matches!(e, GgufError::BadValueType { type_id: 13, .. }),
        "{e:?}"
    );
    assert_names(&e, "'general.list'");
}

#[test]
fn arrays_nested_too_deep_are_refused() {
    let mut b = GgufBytes::header(3, 0, 1).str("general.deep").u32(T_ARRAY);
    for _ in 0..20 {
        b = b.u32(T_ARRAY).u64(1);
    }
    let e = err(&b.u32(T_U8).u64(0).pad(32).build());
    assert!(
        matches!(&e, GgufError::ArrayTooDeep { key, .. } if key == "general.deep"),
        "{e:?}"
    );
}

#[test]
fn empty_key_is_refused() {
    let e = err(&kv_file(2, |b| b.kv_u32("general.ok", 1).kv_u32("", 1)));
    assert!(matches!(e, GgufError::EmptyKey { index: 1 }), "{e:?}");
}

#[test]
fn duplicate_key_is_refused() {
    let e = err(&kv_file(2, |b| {
        b.kv_u32("qwen2.block_count", 24)
            .kv_u32("qwen2.block_count", 25)
    }));
    assert!(
        matches!(&e, GgufError::DuplicateKey { key } if key == "qwen2.block_count"),
        "{e:?}"
    );
    assert_names(&e, "'qwen2.block_count'");
}

#[test]
fn invalid_utf8_in_key_or_string_is_refused() {
    let e = err(&kv_file(1, |b| {
        b.u64(4).raw(&[b'k', 0xff, 0xfe, b'y']).u32(T_U32).u32(1)
    }));
    assert!(
        matches!(&e, GgufError::InvalidUtf8 { what, .. } if what.contains("key #0")),
        "{e:?}"
    );
    let e = err(&kv_file(1, |b| {
        b.str("general.name")
            .u32(T_STRING)
            .u64(2)
            .raw(&[0xc3, 0x28])
    }));
    assert!(matches!(e, GgufError::InvalidUtf8 { .. }), "{e:?}");
    assert_names(&e, "'general.name'");
}

#[test]
fn bool_other_than_0_or_1_is_refused() {
    let e = err(&kv_file(1, |b| {
        b.str("tokenizer.ggml.add_bos_token").u32(T_BOOL).u8(2)
    }));
    assert!(
        matches!(&e, GgufError::InvalidBool { key, byte: 2 } if key == "tokenizer.ggml.add_bos_token"),
        "{e:?}"
    );
}

#[test]
fn alignment_zero_and_thirteen_are_refused() {
    for value in [0u32, 13] {
        let e = err(&kv_file(1, |b| b.kv_u32("general.alignment", value)));
        assert!(
            matches!(e, GgufError::InvalidAlignment { value: v } if v == u64::from(value)),
            "{e:?}"
        );
        assert_names(&e, "general.alignment");
    }
}

#[test]
fn alignment_of_wrong_type_is_refused() {
    let e = err(&kv_file(1, |b| b.kv_str("general.alignment", "32")));
    assert!(
        matches!(e, GgufError::AlignmentType { found: "STRING" }),
        "{e:?}"
    );
    let e = err(&kv_file(1, |b| b.kv_u64("general.alignment", 32)));
    assert!(
        matches!(e, GgufError::AlignmentType { found: "U64" }),
        "{e:?}"
    );
    assert_names(&e, "general.alignment");
}

#[test]
fn five_or_zero_dims_are_refused() {
    for dims in [&[1u64, 1, 1, 1, 1][..], &[][..]] {
        let bytes = tensor_file(
            1,
            |b| b.tensor("blk.0.ffn_up.weight", dims, G_F32, 0).u64(0),
            64,
        );
        let e = err(&bytes);
        assert!(
            matches!(&e, GgufError::BadDimCount { tensor, n_dims } if tensor == "blk.0.ffn_up.weight" && *n_dims == dims.len() as u64),
            "{e:?}"
        );
        assert_names(&e, "'blk.0.ffn_up.weight'");
    }
}

#[test]
fn zero_dim_is_refused() {
    let bytes = tensor_file(
        1,
        |b| b.tensor("token_embd.weight", &[896, 0], G_F32, 0),
        64,
    );
    let e = err(&bytes);
    assert!(
        matches!(&e, GgufError::ZeroDim { tensor, index: 1 } if tensor == "token_embd.weight"),
        "{e:?}"
    );
}

#[test]
fn dims_whose_product_overflows_are_refused() {
    for dims in [[1u64 << 32, 1 << 32], [1 << 32, 1 << 31], [u64::MAX, 2]] {
        let bytes = tensor_file(1, |b| b.tensor("output.weight", &dims, G_F32, 0), 64);
        let e = err(&bytes);
        assert!(
            matches!(&e, GgufError::ElementCountOverflow { tensor, .. } if tensor == "output.weight"),
            "{e:?}"
        );
    }
    // Element count fits, byte size (4 bytes each) does not.
    let bytes = tensor_file(
        1,
        |b| b.tensor("output.weight", &[1 << 31, 1 << 31], G_F32, 0),
        64,
    );
    assert!(matches!(
        err(&bytes),
        GgufError::ElementCountOverflow { .. }
    ));
}

#[test]
fn unknown_ggml_type_is_refused() {
    let bytes = tensor_file(1, |b| b.tensor("blk.3.attn_q.weight", &[32], 99, 0), 128);
    let e = err(&bytes);
    assert!(
        matches!(&e, GgufError::UnknownType { tensor, type_id: 99 } if tensor == "blk.3.attn_q.weight"),
        "{e:?}"
    );
    assert_names(&e, "99");
}

#[test]
fn row_not_a_multiple_of_the_block_is_refused() {
    let bytes = tensor_file(
        1,
        |b| b.tensor("blk.0.ffn_down.weight", &[100], G_Q4_K, 0),
        512,
    );
    let e = err(&bytes);
    match &e {
        GgufError::RowNotBlockMultiple {
            tensor,
            row_len,
            block,
            ..
        } => {
            assert_eq!(tensor, "blk.0.ffn_down.weight");
            assert_eq!((*row_len, *block), (100, 256));
        }
        other => panic!("expected RowNotBlockMultiple, got {other:?}"),
    }
}

#[test]
fn misaligned_offset_is_refused() {
    let bytes = tensor_file(1, |b| b.tensor("output_norm.weight", &[4], G_F32, 4), 64);
    let e = err(&bytes);
    assert!(
        matches!(&e, GgufError::MisalignedOffset { tensor, offset: 4, alignment: 32 } if tensor == "output_norm.weight"),
        "{e:?}"
    );
}

#[test]
fn data_past_end_of_file_is_refused() {
    let bytes = tensor_file(1, |b| b.tensor("token_embd.weight", &[8, 8], G_F32, 0), 255);
    let e = err(&bytes);
    match &e {
        GgufError::TensorOutOfBounds {
            tensor,
            start,
            end,
            file_size,
        } => {
            assert_eq!(tensor, "token_embd.weight");
            assert_eq!(end - start, 256);
            assert_eq!(u128::from(*file_size), start + 255);
        }
        other => panic!("expected TensorOutOfBounds, got {other:?}"),
    }
    // An offset near u64::MAX must not wrap around into the file.
    let huge = u64::MAX - 31;
    let bytes = tensor_file(1, |b| b.tensor("token_embd.weight", &[8], G_F32, huge), 64);
    assert!(matches!(err(&bytes), GgufError::TensorOutOfBounds { .. }));
}

#[test]
fn overlapping_tensors_are_refused() {
    let bytes = tensor_file(
        2,
        |b| {
            b.tensor("a.weight", &[16], G_F32, 0)
                .tensor("b.weight", &[16], G_F32, 32)
        },
        128,
    );
    let e = err(&bytes);
    match &e {
        GgufError::TensorOverlap {
            first,
            second,
            first_end,
            second_start,
        } => {
            assert_eq!((first.as_str(), second.as_str()), ("a.weight", "b.weight"));
            assert_eq!(first_end - second_start, 32);
        }
        other => panic!("expected TensorOverlap, got {other:?}"),
    }
}

#[test]
fn duplicate_tensor_names_are_refused() {
    let bytes = tensor_file(
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
    );
    let e = err(&bytes);
    assert!(
        matches!(&e, GgufError::DuplicateTensor { name } if name == "blk.0.attn_k.weight"),
        "{e:?}"
    );
}

#[test]
fn file_cut_inside_the_header_is_truncated() {
    let bytes = valid_file();
    for cut in [0, 3, 6, 12, 20] {
        match err(&bytes[..cut]) {
            GgufError::Truncated {
                offset, need, have, ..
            } => {
                assert_eq!(offset + have, cut as u64);
                assert!(need > have);
            }
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
}

/// Offset of the first occurrence of `needle` in `bytes`.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn file_cut_inside_a_key_is_refused() {
    let bytes = valid_file();
    // A cut that leaves less than the 3 tensor records' minimum (3 × 32 bytes) trips the count first.
    let cut = find(&bytes, b"general.architecture") + 5;
    let e = err(&bytes[..cut]);
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "tensor infos",
                count: 3,
                ..
            }
        ),
        "{e:?}"
    );
    let cut = find(&bytes, b"qwen2.block_count") + 5;
    let e = err(&bytes[..cut]);
    assert!(
        matches!(&e, GgufError::StringTooLong { what, .. } if what == "key #2"),
        "{e:?}"
    );
    let cut = find(&bytes, b"qwen2.block_count") + "qwen2.block_count".len() + 6;
    let e = err(&bytes[..cut]);
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("'qwen2.block_count'")),
        "{e:?}"
    );
}

#[test]
fn file_cut_inside_the_tensor_infos_is_refused() {
    let bytes = valid_file();
    let name = b"output_norm.weight";
    let cut = find(&bytes, name) + name.len() + 10;
    let e = err(&bytes[..cut]);
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("'output_norm.weight'")),
        "{e:?}"
    );
    let cut = find(&bytes, b"token_embd.weight") + 1;
    let e = err(&bytes[..cut]);
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "tensor infos",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn file_cut_inside_the_data_is_refused() {
    let bytes = valid_file();
    let full = parse(&bytes).unwrap();
    let last = full
        .tensors
        .iter()
        .max_by_key(|t| t.offset)
        .unwrap()
        .clone();
    for cut in [
        full.data_offset as usize + 1,
        last.offset as usize + 3,
        bytes.len() - 32 + 15,
    ] {
        let e = err(&bytes[..cut]);
        assert!(
            matches!(&e, GgufError::TensorOutOfBounds { file_size, .. } if *file_size == cut as u64),
            "cut {cut}: {e:?}"
        );
    }
}

#[test]
fn every_prefix_of_a_valid_file_is_refused_without_panicking() {
    let bytes = valid_file();
    // The trailing padding after the last tensor is not needed to read it.
    let needed = parse(&bytes)
        .unwrap()
        .tensors
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    for cut in 0..needed {
        assert!(
            parse(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes was accepted"
        );
    }
    assert!(parse(&bytes[..needed]).is_ok());
}

#[test]
fn valid_v3_file_parses() {
    let bytes = valid_file();
    let p = parse(&bytes).unwrap();
    assert_eq!(p.version, 3);
    assert_eq!(p.alignment, 32);
    assert_eq!(p.metadata.len(), 3);
    let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_embd.weight",
            "blk.0.attn_q.weight",
            "output_norm.weight"
        ]
    );
    assert_eq!(p.tensors[1].n_bytes, 68);
    assert_eq!(p.tensors[1].offset % 32, 0);
}

#[test]
fn valid_v2_file_parses() {
    let mut bytes = valid_file();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let p = parse(&bytes).unwrap();
    assert_eq!(p.version, 2);
    assert_eq!(p.tensors.len(), 3);
    assert_eq!(p.metadata.str("general.architecture").unwrap(), "qwen2");
}

#[test]
fn hand_built_file_with_tensor_parses() {
    let bytes = GgufBytes::header(3, 2, 1)
        .kv_u32("general.alignment", 64)
        .tensor("a", &[32, 2], G_Q8_0, 0)
        .tensor("b", &[3], G_F16, 128)
        .pad(64)
        .data(134)
        .build();
    let p = parse(&bytes).unwrap();
    assert_eq!(p.alignment, 64);
    assert_eq!(p.data_offset % 64, 0);
    assert_eq!(p.tensors[0].n_bytes, 68);
    assert_eq!(p.tensors[1].offset, p.data_offset + 128);
    assert_eq!((p.tensors[0].rows(), p.tensors[0].row_len()), (2, 32));
}

#[test]
fn open_reports_parse_errors_and_missing_files() {
    let dir =
        std::env::temp_dir().join(format!("layerstream-gguf-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty),
        Err(GgufError::Truncated { .. })
    ));
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, kv_file(2, |b| b.kv_u32("k", 1).kv_u32("k", 2))).unwrap();
    assert!(matches!(
        GgufFile::open(&bad),
        Err(GgufError::DuplicateKey { .. })
    ));
    let missing = dir.join("missing.gguf");
    let e = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
    assert_names(&e, "missing.gguf");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn real_vocab_file_parses() {
    let f = GgufFile::open(&common::vocab_gguf()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert!(f.tensors().is_empty());
    let m = f.metadata();
    assert_eq!(m.len(), 21);
    assert_eq!(m.str("general.architecture").unwrap(), "qwen2");
    assert_eq!(m.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(m.strings("tokenizer.ggml.tokens").unwrap().len(), 151_936);
    assert_eq!(m.i32s("tokenizer.ggml.token_type").unwrap().len(), 151_936);
    assert_eq!(m.strings("tokenizer.ggml.merges").unwrap().len(), 151_387);
    assert_eq!(m.strings("tokenizer.ggml.merges").unwrap()[0], "Ġ Ġ");
    assert_eq!(m.u32("tokenizer.ggml.eos_token_id").unwrap(), 151_645);
    assert_eq!(m.u64("qwen2.block_count").unwrap(), 24);
    assert_eq!(
        m.opt_bool("tokenizer.ggml.add_bos_token").unwrap(),
        Some(false)
    );
    assert!((m.f32("qwen2.rope.freq_base").unwrap() - 1e6).abs() < 1.0);
    assert!(m
        .str("tokenizer.chat_template")
        .unwrap()
        .contains("<|im_start|>"));
}

/// xorshift64*: a fixed-seed generator so the mutation run is reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_and_truncated_files_never_panic() {
    let base = valid_file();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for round in 0..2000 {
        let mut bytes = base.clone();
        match round % 4 {
            0 => bytes.truncate(rng.below(base.len() + 1)),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next() as u8;
                }
            }
            2 => {
                // Overwrite an aligned u64 with an extreme value: counts, lengths and offsets live there.
                let i = rng.below(bytes.len() - 8);
                let v = [u64::MAX, u64::MAX / 2, 1 << 40, 0, rng.next()][rng.below(5)];
                bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
                bytes.truncate(rng.below(base.len() + 1));
            }
        }
        if let Ok(p) = parse(&bytes) {
            accepted += 1;
            for t in &p.tensors {
                assert!(
                    t.offset + t.n_bytes <= bytes.len() as u64,
                    "round {round}: {t:?} outside the file"
                );
            }
        }
    }
    // Some mutations only touch data or string bytes, so a few files stay valid; most must not.
    assert!(accepted < 2000, "every mutated file was accepted");
}
