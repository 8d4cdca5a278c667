//! Element-wise and row-wise operations of the Qwen2 forward pass on the CPU, in F32.

/// `out = x / sqrt(mean(x²) + eps) * w` (RMSNorm, as in HF's Qwen2RMSNorm).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// RMSNorm of each head of `x` (heads of `w.len()`) in place, with the one weight vector `w`
/// (Qwen3's q/k norms).
pub fn rms_norm_heads(x: &mut [f32], w: &[f32], eps: f32) {
    for head in x.chunks_mut(w.len()) {
        let ms = head.iter().map(|v| v * v).sum::<f32>() / head.len() as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for (v, &g) in head.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// `x += b` row by row (`x` holds whole rows of `b.len()`).
pub fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_mut(b.len()) {
        for (v, &bb) in row.iter_mut().zip(b) {
            *v += bb;
        }
    }
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// SwiGLU: `out[i] = silu(gate[i]) * up[i]`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    super::simd::silu_mul(gate, up, out);
}

/// GeGLU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`, as Gemma uses):
/// `out[i] = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) * up[i]`.
pub fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let inner = SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g);
        *o = 0.5 * g * (1.0 + inner.tanh()) * u;
    }
}

/// Rotary tables for one position: `cos[i]`, `sin[i]` for each inverse frequency `inv_freq[i]`
/// (`HParams::inv_freq`: `1 / base^(2i/d)` in F32 as HF computes it, scaled where the file says).
/// The angle is `pos * inv_freq` in F32, as HF's; both are then multiplied by `mscale`
/// (`HParams::rope_mscale`: YaRN's attention factor, else 1), as HF scales them.
pub fn rope_table(pos: usize, inv_freq: &[f32], mscale: f32, cos: &mut [f32], sin: &mut [f32]) {
    for (i, f) in inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        cos[i] = angle.cos() * mscale;
        sin[i] = angle.sin() * mscale;
    }
}

/// Rotate each head of `x` (heads of `head_dim`) in the NeoX / half-rotation layout that Qwen2 uses:
/// element `i` pairs with `i + head_dim/2`.
pub fn rope_apply(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x0, x1) = (a[i], b[i]);
            a[i] = x0 * cos[i] - x1 * sin[i];
            b[i] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let (mut c, mut s) = (vec![0.0; 4], vec![0.0; 4]);
        let inv: Vec<f32> = (0..4)
            .map(|i| 1.0 / 10_000f32.powf(i as f32 / 4.0))
            .collect();
        rope_table(0, &inv, 1.0, &mut c, &mut s);
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let orig = x.clone();
        rope_apply(&mut x, 8, &c, &s);
        assert_eq!(x, orig);
        rope_table(17, &inv, 1.0, &mut c, &mut s);
        rope_apply(&mut x, 8, &c, &s);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
    }

    #[test]
    fn gelu_tanh_matches_its_reference_values() {
        // torch.nn.functional.gelu(x, approximate="tanh") at -2, -0.5, 0, 1, 3.
        let x = [-2.0f32, -0.5, 0.0, 1.0, 3.0];
        let want = [-0.045_402_3, -0.154_285_9, 0.0, 0.841_192, 2.996_363_7];
        let mut out = [0.0; 5];
        gelu_tanh_mul(&x, &[1.0; 5], &mut out);
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-5, "{o} vs {w}");
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0, -1e9];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
    }
}
