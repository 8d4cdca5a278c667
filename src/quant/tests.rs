//! Unit tests of the dispatch layer: length validation, type coverage, f16 output and the parallel
//! split. Bit-exactness against gguf-py is in tests/dequant_golden.rs.

use super::*;

fn supported_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL.into_iter().filter(|&t| supported(t))
}

/// Deterministic bytes (splitmix64) so failures reproduce.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn bytes_per(ty: GgmlType, n_elems: usize) -> usize {
    let (b, e) = layout(ty).unwrap();
    n_elems / e * b
}

#[test]
fn exactly_the_documented_types_are_supported() {
    let names: Vec<_> = supported_types().map(|t| t.name().to_string()).collect();
    assert_eq!(names.len(), 11, "{names:?}");
    for ty in [GgmlType::Q8_1, GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q8K] {
        assert!(!supported(ty));
        let mut dst = [0f32; 256];
        let err = dequantize(ty, &[0u8; 1024], &mut dst).unwrap_err();
        assert_eq!(err, QuantError::Unsupported { ty });
        let mut dst = [f16::ZERO; 256];
        let err = dequantize_f16(ty, &[0u8; 1024], &mut dst).unwrap_err();
        assert_eq!(err, QuantError::Unsupported { ty });
    }
}

#[test]
fn block_layouts_agree_with_the_gguf_type_table() {
    for ty in supported_types() {
        let (bytes, elems) = layout(ty).unwrap();
        assert_eq!(ty.block_bytes(), bytes as u64, "{}", ty.name());
        assert_eq!(ty.block_elems(), elems as u64, "{}", ty.name());
        assert_eq!(ty.bytes_for(elems as u64 * 3), Some(bytes as u64 * 3));
    }
}

#[test]
fn partial_blocks_are_refused_and_dst_is_untouched() {
    for ty in supported_types().filter(|t| layout(*t).unwrap().1 > 1) {
        let (bytes, elems) = layout(ty).unwrap();
        let mut dst = vec![7.0f32; elems + 1];
        let err = dequantize(ty, &vec![0u8; bytes * 2], &mut dst).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { n_elems, .. } if n_elems == elems + 1));
        assert!(dst.iter().all(|&x| x == 7.0), "{}", ty.name());
        let mut dst16 = vec![f16::ONE; elems - 1];
        let err = dequantize_f16(ty, &vec![0u8; bytes], &mut dst16).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { .. }));
        assert!(dst16.iter().all(|&x| x == f16::ONE));
    }
}

#[test]
fn source_one_byte_short_or_long_is_refused() {
    for ty in supported_types() {
        let (bytes, elems) = layout(ty).unwrap();
        let n = elems * 4;
        let good = random_bytes(bytes * 4, 1);
        let mut dst = vec![0f32; n];
        dequantize(ty, &good, &mut dst).unwrap();
        for len in [bytes * 4 - 1, bytes * 4 + 1, bytes * 3, 0] {
            let mut src = good.clone();
            src.resize(len, 0);
            let err = dequantize(ty, &src, &mut dst).unwrap_err();
            let want = QuantError::SourceLength {
                ty,
                n_elems: n,
                expected: bytes * 4,
                got: len,
            };
            assert_eq!(err, want, "{}", ty.name());
            let mut dst16 = vec![f16::ZERO; n];
            assert_eq!(dequantize_f16(ty, &src, &mut dst16).unwrap_err(), want);
        }
    }
}

#[test]
fn zero_elements_from_zero_bytes_is_fine() {
    for ty in supported_types() {
        dequantize(ty, &[], &mut []).unwrap();
        dequantize_f16(ty, &[], &mut []).unwrap();
    }
}

#[test]
fn errors_name_the_type_and_the_sizes() {
    let err = dequantize(GgmlType::Q4K, &[0u8; 10], &mut [0f32; 256]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(GgmlType::Q4K.name()), "{msg}");
    assert!(msg.contains("144") && msg.contains("10"), "{msg}");
    let err = dequantize(GgmlType::Q2K, &[], &mut []).unwrap_err();
    assert!(err.to_string().contains(GgmlType::Q2K.name()));
}

/// Large inputs are split over threads; the split must not change a single bit, nor write past
/// the blocks it was given (the sentinel tail checks the latter).
#[test]
fn parallel_split_matches_block_by_block_decoding() {
    for ty in supported_types() {
        let (bytes, elems) = layout(ty).unwrap();
        let n_blocks = (3 * ELEMS_PER_TASK) / elems + 7;
        let n = n_blocks * elems;
        let mut src = random_bytes(n_blocks * bytes, ty.id() as u64);
        keep_scales_finite(ty, &mut src);
        let mut whole = vec![0f32; n + 64];
        whole[n..].fill(-3.0);
        dequantize(ty, &src, &mut whole[..n]).unwrap();
        assert!(whole[n..].iter().all(|&x| x == -3.0));
        for (i, (s, d)) in src.chunks(bytes).zip(whole.chunks(elems)).enumerate() {
            let mut one = vec![0f32; elems];
            dequantize(ty, s, &mut one).unwrap();
            let same = one.iter().zip(d).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{} block {i}", ty.name());
        }
    }
}

#[test]
fn f16_output_is_the_rounded_f32_output() {
    for ty in supported_types() {
        let (bytes, elems) = layout(ty).unwrap();
        let n_blocks = ELEMS_PER_TASK / elems * 2 + 3;
        let n = n_blocks * elems;
        let mut src = random_bytes(n_blocks * bytes, 99 + ty.id() as u64);
        keep_scales_finite(ty, &mut src);
        let mut wide = vec![0f32; n];
        dequantize(ty, &src, &mut wide).unwrap();
        let mut narrow = vec![f16::ZERO; n + 16];
        narrow[n..].fill(f16::NEG_ONE);
        dequantize_f16(ty, &src, &mut narrow[..n]).unwrap();
        assert!(narrow[n..].iter().all(|&x| x == f16::NEG_ONE));
        for (i, (w, h)) in wide.iter().zip(&narrow).enumerate() {
            assert_eq!(
                f32_to_f16_bits(*w),
                h.to_bits(),
                "{} element {i}",
                ty.name()
            );
        }
        if ty == GgmlType::F16 {
            let copied = narrow[..n].iter().zip(src.chunks(2));
            assert!(copied
                .into_iter()
                .all(|(h, s)| h.to_bits().to_le_bytes() == s));
        }
    }
}

#[test]
fn every_block_element_is_written() {
    // NaN sentinels survive only where a kernel skipped an element.
    for ty in supported_types() {
        if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            continue;
        }
        let n = layout(ty).unwrap().1 * 5;
        let mut src = random_bytes(bytes_per(ty, n), 5);
        keep_scales_finite(ty, &mut src);
        let mut dst = vec![f32::NAN; n];
        dequantize(ty, &src, &mut dst).unwrap();
        assert!(dst.iter().all(|x| x.is_finite()), "{}", ty.name());
    }
}

/// Random bytes make scale fields NaN or infinite now and then; pin their exponent below 31.
fn keep_scales_finite(ty: GgmlType, src: &mut [u8]) {
    let (bytes, _) = layout(ty).unwrap();
    let offsets: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => &[],
    };
    for block in src.chunks_mut(bytes) {
        for &o in offsets {
            block[o + 1] &= 0xbb; // clears one exponent bit: the exponent field can't be 31
        }
    }
}

/// Any pairing of element count and source length either decodes or is refused; nothing panics
/// and nothing outside `dst` is written.
#[test]
fn arbitrary_lengths_are_decoded_or_refused() {
    let pool = random_bytes(4096, 17);
    for ty in GgmlType::ALL {
        let lengths = (0..600).step_by(7).chain([1024, 2048, 4096]);
        for n in (0..520).step_by(13).chain([256, 512, 1024]) {
            for len in lengths.clone() {
                let mut guard = vec![1.5f32; n + 8];
                let ok = dequantize(ty, &pool[..len], &mut guard[..n]).is_ok();
                assert!(
                    guard[n..].iter().all(|&x| x == 1.5),
                    "{} n={n} len={len}",
                    ty.name()
                );
                let want_ok = layout(ty).is_some_and(|(b, e)| n % e == 0 && n / e * b == len);
                assert_eq!(ok, want_ok, "{} n={n} len={len}", ty.name());
                let mut guard16 = vec![f16::ONE; n + 8];
                let ok16 = dequantize_f16(ty, &pool[..len], &mut guard16[..n]).is_ok();
                assert!(guard16[n..].iter().all(|&x| x == f16::ONE));
                assert_eq!(ok16, want_ok);
            }
        }
    }
}

/// Every unpackable type, reconstructed as `a * q + b` per group, equals the dequantizer bit for
/// bit (NaN where it gives NaN: random bytes make some scales NaN or infinite).
#[test]
fn unpacked_rows_reconstruct_the_dequantized_values_exactly() {
    for ty in supported_types().filter(|&t| unpackable(t)) {
        let n = 512;
        let src = random_bytes(bytes_per(ty, n), 77 + ty.id() as u64);
        let mut want = vec![0f32; n];
        dequantize(ty, &src, &mut want).unwrap();
        let (mut q, mut a, mut b) = (vec![0i8; n], vec![0f32; n / GROUP], vec![0f32; n / GROUP]);
        unpack_with(ty, &src, &mut q, &mut a, &mut b, false).unwrap();
        // The AVX2 unpackers (where the CPU and the type have one) give the same values.
        let (mut q2, mut a2, mut b2) = (vec![0i8; n], vec![0f32; n / GROUP], vec![0f32; n / GROUP]);
        unpack_with(ty, &src, &mut q2, &mut a2, &mut b2, true).unwrap();
        assert_eq!(q, q2, "{}", ty.name());
        // (NaN payloads may differ: F16C quiets signalling NaNs; such blocks are refused at load.)
        let bits = |v: &[f32]| {
            v.iter()
                .map(|f| if f.is_nan() { u32::MAX } else { f.to_bits() })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            (bits(&a), bits(&b)),
            (bits(&a2), bits(&b2)),
            "{}",
            ty.name()
        );
        for e in 0..n {
            let g = e / GROUP;
            let got = a[g] * f32::from(q[e]) + b[g];
            let same = got.to_bits() == want[e].to_bits() || (got.is_nan() && want[e].is_nan());
            // -0 and +0 differ only where the dequantizer multiplies zero by a negative scale.
            assert!(
                same || got == want[e],
                "{} element {e}: {got} vs {}",
                ty.name(),
                want[e]
            );
        }
    }
    let mut q = [0i8; 32];
    let err = unpack_row(
        GgmlType::F16,
        &[0u8; 64],
        &mut q,
        &mut [0.0; 2],
        &mut [0.0; 2],
    );
    assert_eq!(err, Err(QuantError::Unsupported { ty: GgmlType::F16 }));
}

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 blocks bit-identical to gguf-py's quantizer on rows with ties,
/// zeros, outliers and tiny values (tests/golden/quantize.json, scripts/golden/quantize.py).
#[test]
fn legacy_quantizers_match_gguf_py_bit_for_bit() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/quantize.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 15);
    for case in cases {
        let ty = GgmlType::ALL
            .into_iter()
            .find(|t| t.name() == case["type"].as_str().unwrap())
            .unwrap();
        let x: Vec<f32> = from_hex(case["x_hex"].as_str().unwrap())
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let want = from_hex(case["blocks_hex"].as_str().unwrap());
        assert_eq!(quantize(ty, &x).unwrap(), want, "{}", ty.name());
    }
}

/// The K-quantizers' round trip: every value within half a step of its sub-block (plus the
/// rounding of the 6-bit scales and minimums, or Q6_K's 8-bit scales) of the original.
#[test]
fn k_quantizers_round_trip_within_their_steps() {
    let mut state = 7u64;
    let mut normal = || {
        // Box-Muller over splitmix64.
        let mut u = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (a, b) = (u().max(1e-12), u());
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    };
    let mut x: Vec<f32> = (0..4096).map(|_| normal()).collect();
    x[300] = 12.0; // an outlier in one sub-block
    x[1024..1056].fill(0.0); // a zero sub-block
    for (ty, levels) in [
        (GgmlType::Q4K, 15.0f32),
        (GgmlType::Q5K, 31.0),
        (GgmlType::Q6K, 63.0),
    ] {
        let q = quantize(ty, &x).unwrap();
        let mut y = vec![0f32; x.len()];
        dequantize(ty, &q, &mut y).unwrap();
        let (mut worst, mut sq) = (0f32, 0f64);
        for (blk, (xs, ys)) in x.chunks(256).zip(y.chunks(256)).enumerate() {
            // The coarsest step any sub-block may get: the block's range over the levels, twice
            // (the 6-bit scale rounding and clamping), plus what the minimum's rounding shifts.
            let range = xs.iter().fold(0f32, |m, v| m.max(v.abs())) * 2.0;
            let bound = range / levels + range / 63.0 + 1e-6;
            for (a, b) in xs.iter().zip(ys) {
                let e = (a - b).abs();
                worst = worst.max(e / bound);
                sq += f64::from(e * e);
                assert!(
                    e <= bound,
                    "{} block {blk}: {a} became {b} (bound {bound})",
                    ty.name()
                );
            }
        }
        let rms = (sq / x.len() as f64).sqrt();
        // Typical error: about a step / sqrt(12) of a unit normal's sub-block range.
        assert!(
            rms < 4.0 / f64::from(levels),
            "{} rms error {rms}",
            ty.name()
        );
    }
    assert!(matches!(
        quantize(GgmlType::Q4K, &x[..100]),
        Err(QuantError::PartialBlock { .. })
    ));
    assert!(!quantizable(GgmlType::F16));
}
