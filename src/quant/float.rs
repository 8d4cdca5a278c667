//! Unquantized element types (F32, F16, BF16) and the f16 <-> f32 conversions every block format
//! uses, written to match numpy's bit for bit — NaN payloads included — because numpy (through
//! gguf-py) is the reference the golden tests compare against.

use half::f16;

/// f16 bits -> f32, exact. NaNs keep their payload (shifted up) and are not quieted, as in numpy.
#[inline]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x03ff);
    let bits = match exp {
        0 if man == 0 => sign,
        // Subnormal: man * 2^-24 is a normal f32 and the product is exact.
        0 => sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits(),
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 -> f16 bits, round to nearest even; overflow gives infinity. A NaN keeps the top 10 bits of
/// its payload (and stays a NaN), as numpy's `npy_floatbits_to_halfbits` does. Every case is
/// computed and one selected, without branches, so loops over it vectorize.
#[inline]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let f = x.to_bits();
    let sign = (f >> 16) & 0x8000;
    let abs = f & 0x7fff_ffff;
    // Normal range: rebias the exponent, round the 13 dropped bits to nearest even; a carry out of
    // the mantissa bumps the exponent (up to infinity).
    let odd = (abs >> 13) & 1;
    let normal = abs.wrapping_sub(0x3800_0000).wrapping_add(0x0fff + odd) >> 13;
    // |x| < 2^-14: adding 0.5 aligns the f16 subnormal grid with the low mantissa bits of an f32,
    // and the hardware add rounds to nearest even.
    let subnormal = (f32::from_bits(abs) + 0.5)
        .to_bits()
        .wrapping_sub(0x3f00_0000);
    let payload = (abs & 0x007f_ffff) >> 13;
    let nan = 0x7c00 | payload | u32::from(payload == 0);
    let h = if abs > 0x7f80_0000 {
        nan
    } else if abs >= 0x4780_0000 {
        0x7c00
    } else if abs < 0x3880_0000 {
        subnormal
    } else {
        normal
    };
    (sign | h) as u16
}

/// Little-endian F32 elements, copied.
pub(super) fn f32_to_f32(src: &[u8], dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

/// Little-endian F32 elements rounded to f16.
pub(super) fn f32_to_f16(src: &[u8], dst: &mut [f16]) {
    for (s, d) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *d = f16::from_bits(f32_to_f16_bits(f32::from_le_bytes([
            s[0], s[1], s[2], s[3],
        ])));
    }
}

/// Little-endian F16 elements widened to f32.
pub(super) fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *d = f16_bits_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

/// Little-endian F16 elements, copied bit for bit.
pub(super) fn f16_to_f16(src: &[u8], dst: &mut [f16]) {
    for (s, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *d = f16::from_bits(u16::from_le_bytes([s[0], s[1]]));
    }
}

/// Little-endian BF16 elements: the top half of an f32, so widening is a shift.
pub(super) fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *d = f32::from_bits(u32::from(u16::from_le_bytes([s[0], s[1]])) << 16);
    }
}

/// Little-endian BF16 elements, widened to f32 then rounded to f16.
pub(super) fn bf16_to_f16(src: &[u8], dst: &mut [f16]) {
    for (s, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
        let x = f32::from_bits(u32::from(u16::from_le_bytes([s[0], s[1]])) << 16);
        *d = f16::from_bits(f32_to_f16_bits(x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_matches_half_for_every_non_nan() {
        for h in 0..=u16::MAX {
            let ours = f16_bits_to_f32(h);
            let theirs = f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn f16_widening_keeps_nan_payload_unquieted() {
        assert_eq!(f16_bits_to_f32(0x7c01).to_bits(), 0x7f80_2000);
        assert_eq!(f16_bits_to_f32(0x7d55).to_bits(), 0x7faa_a000);
        assert_eq!(f16_bits_to_f32(0xfe01).to_bits(), 0xffc0_2000);
        assert_eq!(f16_bits_to_f32(0x0001).to_bits(), 0x3380_0000);
        assert_eq!(f16_bits_to_f32(0x8001).to_bits(), 0xb380_0000);
    }

    #[test]
    fn f16_round_trip_is_identity_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            assert_eq!(f32_to_f16_bits(f16_bits_to_f32(h)), h, "{h:#06x}");
        }
    }

    #[test]
    fn f16_narrowing_nan_rules_match_numpy() {
        let cases = [
            (0x7f80_0001u32, 0x7c01u16),
            (0x7fa0_0001, 0x7d00),
            (0xff80_0101, 0xfc01),
            (0x7fc0_0000, 0x7e00),
            (0x7f80_2000, 0x7c01),
            (0x7f80_0000, 0x7c00),
            (0xff80_0000, 0xfc00),
        ];
        for (f, h) in cases {
            assert_eq!(f32_to_f16_bits(f32::from_bits(f)), h, "{f:#010x}");
        }
    }

    #[test]
    fn f16_narrowing_matches_half_on_a_sweep_of_all_f32() {
        // Every 251st pattern plus every pattern around the f16 range edges and rounding ties.
        let strided = (0..=u32::MAX).step_by(251);
        let edges = [0x3300_0000u32, 0x3880_0000, 0x4780_0000, 0x477f_e000]
            .into_iter()
            .flat_map(|e| (e - 0x4000..e + 0x4000).flat_map(|b| [b, b | 0x8000_0000]));
        for bits in strided.chain(edges) {
            let x = f32::from_bits(bits);
            if x.is_nan() {
                continue;
            }
            let want = f16::from_f32(x).to_bits();
            assert_eq!(f32_to_f16_bits(x), want, "{bits:#010x}");
        }
    }
}
