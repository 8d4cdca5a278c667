//! Q8_0: 32 elements per block, `d: f16` then 32 signed bytes; x = q * d.

use super::float::f16_bits_to_f32;

/// Q8_0 block.
pub(super) fn q8_0(b: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = f32::from(q as i8) * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_reads_signed_bytes() {
        let mut b = [0u8; 34];
        b[..2].copy_from_slice(&0x3800u16.to_le_bytes()); // d = 0.5
        b[2] = 0x80;
        b[33] = 0x7f;
        let mut out = [f32::NAN; 32];
        q8_0(&b, &mut out);
        assert_eq!(out[0], -64.0);
        assert_eq!(out[31], 63.5);
        assert_eq!(out[1], 0.0);
    }
}
