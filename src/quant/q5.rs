//! Q5_0 and Q5_1: 32 elements per block, 5-bit quants. The low 4 bits are packed as in Q4 (element
//! i < 16 in the low nibble of byte i, i + 16 in its high nibble); bit 4 of element j is bit j of
//! the little-endian u32 `qh`. Float operations follow gguf-py's order exactly.

use super::float::f16_bits_to_f32;

/// The 32 unsigned 5-bit quants of a block.
#[inline]
fn quants(qh: u32, qs: &[u8; 16]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for i in 0..16 {
        let hi_lo = ((qh >> i) & 1) as u8;
        let hi_hi = ((qh >> (i + 16)) & 1) as u8;
        q[i] = (qs[i] & 0x0f) | (hi_lo << 4);
        q[i + 16] = (qs[i] >> 4) | (hi_hi << 4);
    }
    q
}

/// Q5_0 block: `d: f16`, `qh: u32`, 16 quant bytes; x = d * (q - 16).
pub(super) fn q5_0(b: &[u8; 22], out: &mut [f32; 32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let mut qs = [0u8; 16];
    qs.copy_from_slice(&b[6..22]);
    for (o, q) in out.iter_mut().zip(quants(qh, &qs)) {
        *o = d * f32::from(q as i8 - 16);
    }
}

/// Q5_1 block: `d: f16`, `m: f16`, `qh: u32`, 16 quant bytes; x = d * q + m (no fused add).
pub(super) fn q5_1(b: &[u8; 24], out: &mut [f32; 32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    let m = f16_bits_to_f32(u16::from_le_bytes([b[2], b[3]]));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let mut qs = [0u8; 16];
    qs.copy_from_slice(&b[8..24]);
    for (o, q) in out.iter_mut().zip(quants(qh, &qs)) {
        *o = d * f32::from(q) + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_high_bit_j_comes_from_bit_j_of_qh() {
        let mut qs = [0u8; 16];
        qs[3] = 0x52;
        let q = quants(1 << 3 | 1 << 19 | 1 << 31, &qs);
        assert_eq!(q[3], 0x12);
        assert_eq!(q[19], 0x15);
        assert_eq!(q[31], 0x10);
        assert_eq!(q[0], 0);
    }

    #[test]
    fn q5_0_centres_quants_on_sixteen() {
        let mut b = [0u8; 22];
        b[..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // d = 1.0
        b[2..6].copy_from_slice(&(1u32 << 16).to_le_bytes());
        b[6] = 0xf0;
        let mut out = [f32::NAN; 32];
        q5_0(&b, &mut out);
        assert_eq!(out[0], -16.0);
        assert_eq!(out[16], 15.0);
    }

    #[test]
    fn q5_1_adds_the_minimum_after_scaling() {
        let mut b = [0u8; 24];
        b[..2].copy_from_slice(&0x4000u16.to_le_bytes()); // d = 2.0
        b[2..4].copy_from_slice(&0x3c00u16.to_le_bytes()); // m = 1.0
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8] = 0x01;
        let mut out = [f32::NAN; 32];
        q5_1(&b, &mut out);
        assert_eq!(out[0], 35.0);
        assert_eq!(out[1], 1.0);
    }
}
