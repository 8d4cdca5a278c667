//! Q4_0 and Q4_1: 32 elements per block, 4-bit quants. Element i < 16 is the low nibble of quant
//! byte i, element i + 16 its high nibble. Float operations follow gguf-py's order exactly.

use super::float::f16_bits_to_f32;

/// Q4_0 block: `d: f16`, 16 quant bytes; x = d * (q - 8).
pub(super) fn q4_0(b: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    for i in 0..16 {
        let q = b[2 + i];
        out[i] = d * f32::from((q & 0x0f) as i8 - 8);
        out[i + 16] = d * f32::from((q >> 4) as i8 - 8);
    }
}

/// Q4_1 block: `d: f16`, `m: f16`, 16 quant bytes; x = d * q + m (two roundings, no fused add).
pub(super) fn q4_1(b: &[u8; 20], out: &mut [f32; 32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    let m = f16_bits_to_f32(u16::from_le_bytes([b[2], b[3]]));
    for i in 0..16 {
        let q = b[4 + i];
        out[i] = d * f32::from(q & 0x0f) + m;
        out[i + 16] = d * f32::from(q >> 4) + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_centres_quants_on_eight() {
        let mut b = [0u8; 18];
        b[..2].copy_from_slice(&0x4000u16.to_le_bytes()); // d = 2.0
        b[2] = 0xf0; // element 0: q = 0 -> -16; element 16: q = 15 -> 14
        b[17] = 0x8a; // element 15: q = 10 -> 4; element 31: q = 8 -> 0
        let mut out = [f32::NAN; 32];
        q4_0(&b, &mut out);
        assert_eq!(out[0], -16.0);
        assert_eq!(out[16], 14.0);
        assert_eq!(out[15], 4.0);
        assert_eq!(out[31], 0.0);
        assert_eq!(out[1], -16.0);
    }

    #[test]
    fn q4_1_adds_the_minimum_after_scaling() {
        let mut b = [0u8; 20];
        b[..2].copy_from_slice(&0x3800u16.to_le_bytes()); // d = 0.5
        b[2..4].copy_from_slice(&0xbc00u16.to_le_bytes()); // m = -1.0
        b[4] = 0x3f;
        let mut out = [f32::NAN; 32];
        q4_1(&b, &mut out);
        assert_eq!(out[0], 6.5);
        assert_eq!(out[16], 0.5);
        assert_eq!(out[1], -1.0);
    }
}
