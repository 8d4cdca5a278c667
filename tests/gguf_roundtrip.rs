//! Writer → file → reader round trips: every value type, arrays of each, nested arrays, tensors of
//! several types and ranks, custom alignment; pread equals the mmap view; a file truncated after
//! open makes `read_tensor_at` fail with an error instead of killing the process.

use std::path::PathBuf;

use layerstream::gguf::{inspect, parse, Array, GgmlType, GgufError, GgufFile, GgufWriter, Value};

/// A fresh path under the system temp dir, unique per process and test.
fn temp_path(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("layerstream-gguf-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Deterministic, distinct bytes for tensor number `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn all_values() -> Vec<(String, Value)> {
    let scalars = vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60_000)),
        ("t.i16", Value::I16(-30_000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(1.5e-6)),
        ("t.bool", Value::Bool(true)),
        ("t.string", Value::String("héllo ✓ \"quoted\"\n".into())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(-2.5e300)),
    ];
    let arrays = vec![
        ("a.u8", Array::U8(vec![0, 1, 255])),
        ("a.i8", Array::I8(vec![-128, 0, 127])),
        ("a.u16", Array::U16(vec![1, 65_535])),
        ("a.i16", Array::I16(vec![-1, 32_767])),
        ("a.u32", Array::U32(vec![7; 5])),
        ("a.i32", Array::I32(vec![-5, 5, i32::MAX])),
        ("a.f32", Array::F32(vec![0.25, -1.0, f32::MAX])),
        ("a.bool", Array::Bool(vec![true, false, true])),
        (
            "a.string",
            Array::String(vec!["".into(), "Ġ Ġ".into(), "<|im_end|>".into()]),
        ),
        ("a.u64", Array::U64(vec![u64::MAX, 0])),
        ("a.i64", Array::I64(vec![i64::MIN, -1])),
        ("a.f64", Array::F64(vec![std::f64::consts::PI])),
        ("a.empty", Array::F32(vec![])),
        (
            "a.nested",
            Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::I64(vec![-9]), Array::Bool(vec![])]),
            ]),
        ),
    ];
    let mut out: Vec<(String, Value)> = scalars
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    out.extend(
        arrays
            .into_iter()
            .map(|(k, a)| (k.to_string(), Value::Array(a))),
    );
    out
}

/// (name, type, dims) of the round-tripped tensors: 1 to 4 dims across five types.
fn tensor_specs() -> Vec<(&'static str, GgmlType, Vec<u64>)> {
    vec![
        ("f32.1d", GgmlType::F32, vec![7]),
        ("f16.2d", GgmlType::F16, vec![5, 3]),
        ("bf16.3d", GgmlType::BF16, vec![2, 3, 4]),
        ("q8_0.2d", GgmlType::Q8_0, vec![64, 3]),
        ("q4_k.4d", GgmlType::Q4K, vec![256, 2, 1, 2]),
        ("f32.4d", GgmlType::F32, vec![1, 1, 1, 1]),
    ]
}

fn build(alignment: Option<u64>) -> GgufWriter {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.set_alignment(a);
    }
    for (k, v) in all_values() {
        w.add_kv(k, v).unwrap();
    }
    for (i, (name, ty, dims)) in tensor_specs().into_iter().enumerate() {
        let n = ty.bytes_for(dims.iter().product()).unwrap() as usize;
        w.add_tensor(name, ty, &dims, pattern(n, i as u8)).unwrap();
    }
    w
}

#[test]
fn every_value_type_round_trips_in_order() {
    let bytes = build(None).to_bytes().unwrap();
    let p = parse(&bytes).unwrap();
    let got: Vec<(String, Value)> = p
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(got, all_values());
    assert_eq!(p.metadata.get("t.u8").unwrap().type_name(), "U8");
    assert_eq!(
        p.metadata
            .get("a.nested")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn tensors_round_trip_with_custom_alignment() {
    let path = temp_path("align64.gguf");
    build(Some(64)).write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.metadata().u32("general.alignment").unwrap(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.file_size(), std::fs::metadata(&path).unwrap().len());
    let specs = tensor_specs();
    assert_eq!(f.tensors().len(), specs.len());
    for (i, (name, ty, dims)) in specs.into_iter().enumerate() {
        let t = f.tensor(name).unwrap();
        assert_eq!(&f.tensors()[i], t, "file order");
        assert_eq!((t.ty, &t.dims), (ty, &dims));
        assert_eq!(t.n_elems, dims.iter().product::<u64>());
        assert_eq!(t.offset % 64, 0, "{name} is aligned");
        assert_eq!(
            f.tensor_bytes(t),
            pattern(t.n_bytes as usize, i as u8),
            "{name} data"
        );
    }
    assert!(f.tensor("absent").is_none());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn read_tensor_at_equals_tensor_bytes() {
    let path = temp_path("pread.gguf");
    build(None).write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    for t in f.tensors() {
        let mut whole = vec![0u8; t.n_bytes as usize];
        f.read_tensor_at(t, 0, &mut whole).unwrap();
        assert_eq!(whole, f.tensor_bytes(t), "{}", t.name);
        let mut tail = vec![0u8; (t.n_bytes / 2) as usize];
        f.read_tensor_at(t, t.n_bytes - tail.len() as u64, &mut tail)
            .unwrap();
        assert_eq!(tail, whole[whole.len() - tail.len()..]);
    }
    let t = f.tensor("f32.1d").unwrap();
    let mut too_long = vec![0u8; t.n_bytes as usize + 1];
    let e = f.read_tensor_at(t, 0, &mut too_long).unwrap_err();
    assert!(
        matches!(&e, GgufError::ReadOutOfRange { tensor, .. } if tensor == "f32.1d"),
        "{e:?}"
    );
    assert!(matches!(
        f.read_tensor_at(t, u64::MAX, &mut [0u8; 2]),
        Err(GgufError::ReadOutOfRange { .. })
    ));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn truncating_the_file_after_open_gives_an_error_not_sigbus() {
    let path = temp_path("truncated.gguf");
    build(None).write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let t = f.tensors().iter().max_by_key(|t| t.offset).unwrap().clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(f.data_offset())
        .unwrap();
    let mut dst = vec![0u8; t.n_bytes as usize];
    let e = f.read_tensor_at(&t, 0, &mut dst).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("'{}'", t.name)), "{e}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn write_file_replaces_atomically_and_leaves_no_temp_file() {
    let path = temp_path("atomic.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    build(None).write_file(&path).unwrap();
    assert!(GgufFile::open(&path).is_ok());
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    assert!(!PathBuf::from(tmp).exists());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn writer_refuses_bad_tensors_keys_and_alignment() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("x", GgmlType::F16, &[4], vec![0; 7])
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::DataSizeMismatch { tensor, expected: 8, got: 7, .. } if tensor == "x"),
        "{e:?}"
    );
    assert!(matches!(
        w.add_tensor("q", GgmlType::Q4K, &[100], vec![]),
        Err(GgufError::RowNotBlockMultiple { .. })
    ));
    assert!(matches!(
        w.add_tensor("z", GgmlType::F32, &[0], vec![]),
        Err(GgufError::ZeroDim { .. })
    ));
    assert!(matches!(
        w.add_tensor("d", GgmlType::F32, &[1; 5], vec![0; 4]),
        Err(GgufError::BadDimCount { .. })
    ));
    w.add_tensor("x", GgmlType::F16, &[4], vec![0; 8]).unwrap();
    assert!(matches!(
        w.add_tensor("x", GgmlType::F16, &[4], vec![0; 8]),
        Err(GgufError::DuplicateTensor { .. })
    ));
    assert!(matches!(
        w.add_kv("", Value::U8(1)),
        Err(GgufError::EmptyKey { .. })
    ));
    w.add_kv("k", Value::U8(1)).unwrap();
    assert!(matches!(
        w.add_kv("k", Value::U8(2)),
        Err(GgufError::DuplicateKey { .. })
    ));
    let mut deep = Array::U8(vec![]);
    for _ in 0..20 {
        deep = Array::Array(vec![deep]);
    }
    assert!(matches!(
        w.add_kv("deep", Value::Array(deep)),
        Err(GgufError::ArrayTooDeep { .. })
    ));
    w.set_alignment(48);
    assert!(matches!(
        w.to_bytes(),
        Err(GgufError::InvalidAlignment { value: 48 })
    ));
    w.set_alignment(1 << 40);
    assert!(matches!(
        w.to_bytes(),
        Err(GgufError::AlignmentType { found: "U64" })
    ));
    w.set_alignment(16);
    let p = parse(&w.to_bytes().unwrap()).unwrap();
    assert_eq!(p.alignment, 16);
    assert_eq!(
        p.metadata
            .iter()
            .filter(|(k, _)| *k == "general.alignment")
            .count(),
        1
    );
}

#[test]
fn empty_writer_output_parses() {
    let p = parse(&GgufWriter::new().to_bytes().unwrap()).unwrap();
    assert!(p.metadata.is_empty() && p.tensors.is_empty());
    assert_eq!(p.data_offset, 32);
}

#[test]
fn describe_lists_keys_and_tensors() {
    let path = temp_path("describe.gguf");
    build(Some(64)).write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let text = inspect::describe(&f);
    assert!(text.contains("version 3"), "{text}");
    assert!(text.contains("alignment 64"), "{text}");
    assert!(
        text.contains("[STRING; 3] = [\"\", \"Ġ Ġ\", \"<|im_end|>\"]"),
        "{text}"
    );
    assert!(text.contains("[U32; 5] = [7, 7, 7, 7, 7]"), "{text}");
    assert!(
        text.contains("[ARRAY; 3] = [[U8; 2], [STRING; 1], [ARRAY; 2]]"),
        "{text}"
    );
    let q4 = f.tensor("q4_k.4d").unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("q4_k.4d"))
        .unwrap();
    assert!(
        line.contains("Q4_K") && line.contains("[256, 2, 1, 2]"),
        "{line}"
    );
    assert!(
        line.contains(&format!("offset {}", q4.offset)) && line.contains("bytes 576"),
        "{line}"
    );
    std::fs::remove_file(&path).unwrap();
}
