//! K-quants Q4_K, Q5_K and Q6_K: 256-element super-blocks split into sub-blocks that carry their
//! own 6-bit (Q4_K/Q5_K) or 8-bit (Q6_K) scales. Float operations follow gguf-py's order exactly:
//! the sub-block scale `d * sc` (and minimum `dmin * m`) is rounded to f32 first, then applied.

use super::float::f16_bits_to_f32;

/// Unpacks the 12 scale bytes of Q4_K/Q5_K into eight 6-bit scales and eight 6-bit minimums.
/// Bytes 0..4 hold scales 0..4 (low 6 bits) and the top 2 bits of scales 4..8; bytes 4..8 the same
/// for minimums; bytes 8..12 the low 4 bits of scale (low nibble) and minimum (high nibble) 4..8.
#[inline]
pub(super) fn scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[j + 4] & 0x3f;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// The header shared by Q4_K and Q5_K: `d`, `dmin` and the per-sub-block factors d*sc, dmin*m.
#[inline]
fn k4_factors(b: &[u8]) -> ([f32; 8], [f32; 8]) {
    let mut s = [0u8; 12];
    s.copy_from_slice(&b[4..16]);
    let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    let dmin = f16_bits_to_f32(u16::from_le_bytes([b[2], b[3]]));
    let (sc, mn) = scales_mins(&s);
    (
        sc.map(|v| d * f32::from(v)),
        mn.map(|v| dmin * f32::from(v)),
    )
}

/// Q4_K block (144 bytes): `d`, `dmin`, 12 scale bytes, 128 quant bytes. Sub-block 2c takes the
/// low nibbles of quant bytes 32c..32c+32, sub-block 2c+1 their high nibbles; x = ds * q - dm.
pub(super) fn q4_k(b: &[u8; 144], out: &mut [f32; 256]) {
    let (ds, dm) = k4_factors(b);
    for (c, (chunk, o)) in b[16..]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (lo, hi) = o.split_at_mut(32);
        let (d_lo, m_lo, d_hi, m_hi) = (ds[2 * c], dm[2 * c], ds[2 * c + 1], dm[2 * c + 1]);
        for ((&q, l), h) in chunk.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
            *l = d_lo * f32::from(q & 0x0f) - m_lo;
            *h = d_hi * f32::from(q >> 4) - m_hi;
        }
    }
}

/// Q5_K block (176 bytes): `d`, `dmin`, 12 scale bytes, 32 high-bit bytes, 128 quant bytes. The
/// low 4 bits are laid out as in Q4_K; bit 4 of element l of sub-block j is bit j of `qh[l]`.
pub(super) fn q5_k(b: &[u8; 176], out: &mut [f32; 256]) {
    let (ds, dm) = k4_factors(b);
    let qh = &b[16..48];
    for (c, (chunk, o)) in b[48..]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (lo, hi) = o.split_at_mut(32);
        let (j_lo, j_hi) = (2 * c, 2 * c + 1);
        let (d_lo, m_lo, d_hi, m_hi) = (ds[j_lo], dm[j_lo], ds[j_hi], dm[j_hi]);
        for (((&q, &h), l), u) in chunk.iter().zip(qh).zip(lo.iter_mut()).zip(hi.iter_mut()) {
            let q_lo = (q & 0x0f) | (((h >> j_lo) & 1) << 4);
            let q_hi = (q >> 4) | (((h >> j_hi) & 1) << 4);
            *l = d_lo * f32::from(q_lo) - m_lo;
            *u = d_hi * f32::from(q_hi) - m_hi;
        }
    }
}

/// Q6_K block (210 bytes): 128 low-nibble bytes `ql`, 64 high-bit bytes `qh`, 16 signed scales,
/// `d`. Each 128-element half n uses ql[64n..64n+64] and qh[32n..32n+32]: element 32k + l of the
/// half (k < 4, l < 32) is nibble k/2 of ql[64n + 32(k%2) + l] with bits 2k..2k+2 of qh[32n + l]
/// on top; x = (d * scale[e/16]) * (q - 32).
pub(super) fn q6_k(b: &[u8; 210], out: &mut [f32; 256]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([b[208], b[209]]));
    let mut ds = [0f32; 16];
    for (f, &s) in ds.iter_mut().zip(&b[192..208]) {
        *f = d * f32::from(s as i8);
    }
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        for k in 0..4 {
            let ql_part = &ql[32 * (k % 2)..32 * (k % 2) + 32];
            let shift_lo = 4 * (k / 2);
            let base = 128 * n + 32 * k;
            let o = &mut out[base..base + 32];
            for (l, ((&lo, &hi), x)) in ql_part.iter().zip(qh).zip(o.iter_mut()).enumerate() {
                let q = ((lo >> shift_lo) & 0x0f) | (((hi >> (2 * k)) & 0x03) << 4);
                *x = ds[(base + l) / 16] * f32::from(q as i8 - 32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k4_scales_and_mins_unpack_six_bit_fields() {
        let mut s = [0u8; 12];
        s[0] = 0b11_000101; // sc0 = 5, top bits of sc4 = 3
        s[4] = 0b01_111111; // m0 = 63, top bits of m4 = 1
        s[8] = 0xa7; // sc4 low = 7, m4 low = 10
        let (sc, mn) = scales_mins(&s);
        assert_eq!(sc[0], 5);
        assert_eq!(mn[0], 63);
        assert_eq!(sc[4], 0x37);
        assert_eq!(mn[4], 0x1a);
        assert_eq!(sc[1..4], [0, 0, 0]);
    }

    #[test]
    fn q4_k_puts_low_nibbles_before_high_nibbles_per_chunk() {
        let mut b = [0u8; 144];
        b[..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // d = 1
        b[2..4].copy_from_slice(&0x3c00u16.to_le_bytes()); // dmin = 1
        b[4..8].copy_from_slice(&[1, 2, 3, 4]); // scales 0..4
        b[8..12].copy_from_slice(&[0, 0, 0, 1]); // min 3 = 1
        b[16 + 32 + 5] = 0x9c; // chunk 1, element 5: low 12 (sub-block 2), high 9 (sub-block 3)
        b[16 + 96] = 0x21; // chunk 3, element 0: sub-blocks 6 and 7 (scales 0, mins 0)
        let mut out = [f32::NAN; 256];
        q4_k(&b, &mut out);
        assert_eq!(out[64 + 5], 36.0);
        assert_eq!(out[96 + 5], 9.0 * 4.0 - 1.0);
        assert_eq!(out[96], -1.0);
        assert_eq!(out[192], 0.0);
        assert_eq!(out[224], 0.0);
    }

    #[test]
    fn q6_k_element_layout_matches_reference_loop() {
        // ggml's reference: y[128n + l + 32k] from ql[64n + l (+32)] and qh[32n + l] >> 2k.
        let mut b = [0u8; 210];
        for (i, v) in b.iter_mut().enumerate().take(192) {
            *v = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        for (i, v) in b[192..208].iter_mut().enumerate() {
            *v = (i as i8 - 8) as u8;
        }
        b[208..].copy_from_slice(&0x3c00u16.to_le_bytes());
        let mut out = [f32::NAN; 256];
        q6_k(&b, &mut out);
        for n in 0..2 {
            for l in 0..32 {
                let (ql, qh) = (&b[64 * n..], &b[128 + 32 * n..]);
                let q = [
                    (ql[l] & 0xf) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (k, q) in q.into_iter().enumerate() {
                    let e = 128 * n + 32 * k + l;
                    let sc = f32::from(b[192 + e / 16] as i8);
                    assert_eq!(out[e], sc * f32::from(q as i8 - 32), "element {e}");
                }
            }
        }
    }
}
