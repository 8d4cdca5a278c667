//! Weight matrices kept in their file's quantized blocks (Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q5_K, Q6_K),
//! multiplied with integer dot products on quantized activations (`qdot`): memory ≈ the file's
//! bytes, and decode reads 4.5–8.5 bits a weight instead of 16. A stacked matrix (Q/K/V, gate/up)
//! keeps each source tensor's type as a segment of rows.
//!
//! Each product quantizes the activation rows once, then tasks of rows unpack each weight row once
//! (`quant::unpack_row`) and dot it with every token's row: each output depends only on its row
//! and its token, so results are the same at any token count (batch-invariant, as the F16 path).

use std::cell::RefCell;

use rayon::prelude::*;

use super::buffer::WeightBuf;
use super::qdot::{self, QRow, Scales};
use crate::gguf::GgmlType;
use crate::quant::{self, GROUP};

/// Rows of one source tensor inside a stacked matrix.
#[derive(Clone, Debug)]
pub struct Segment {
    pub first_row: usize,
    pub rows: usize,
    pub ty: GgmlType,
    pub row_bytes: usize,
    /// Byte offset of its first row.
    pub off: usize,
}

/// A quantized `[rows][cols]` matrix: its segments in row order over one buffer.
#[derive(Debug)]
pub struct QuantMat {
    pub bytes: WeightBuf<u8>,
    pub segments: Vec<Segment>,
}

/// Whether a tensor of `ty` with rows of `cols` can stay quantized on the CPU.
pub fn keeps(ty: GgmlType, cols: usize) -> bool {
    quant::unpackable(ty)
        && cols.is_multiple_of(ty.block_elems() as usize)
        && cols.is_multiple_of(32)
}

/// Whether quantized tensors stay quantized (unless `LAYERSTREAM_CPU_DEQUANT` is set, which
/// dequantizes them to F16 at load as before, for comparison).
pub fn enabled() -> bool {
    std::env::var_os("LAYERSTREAM_CPU_DEQUANT").is_none()
}

/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 16;

thread_local! {
    /// A task's unpacked weight row: values, scales, offsets.
    static UNPACKED: RefCell<(Vec<i8>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Raw output pointer shared by tasks that write disjoint rows' outputs.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the outputs of its own rows.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl QuantMat {
    /// The segment holding row `r`.
    fn segment(&self, r: usize) -> &Segment {
        let i = self.segments.partition_point(|s| s.first_row + s.rows <= r);
        &self.segments[i]
    }

    /// The bytes of row `r`, and its type.
    fn row(&self, r: usize) -> (&[u8], GgmlType) {
        let s = self.segment(r);
        let at = s.off + (r - s.first_row) * s.row_bytes;
        (&self.bytes[at..at + s.row_bytes], s.ty)
    }

    /// Row `r` dequantized into `out` (embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let (bytes, ty) = self.row(r);
        // The segment was checked at load: whole blocks of a type the dequantizer knows.
        if quant::dequantize(ty, bytes, out).is_err() {
            out.fill(f32::NAN);
        }
    }

    /// `Y[t] = W X[t]` for `n_tok` tokens (`x`: `[n_tok][cols]`, `y`: `[n_tok][rows]`).
    pub fn matmul(&self, rows: usize, cols: usize, x: &[f32], n_tok: usize, y: &mut [f32]) {
        assert!(x.len() >= n_tok * cols && y.len() >= n_tok * rows);
        let mut acts: Vec<QRow> = (0..n_tok).map(|_| QRow::default()).collect();
        acts.par_iter_mut()
            .zip(x.par_chunks(cols))
            .for_each(|(a, xr)| a.quantize(xr));
        let out = OutPtr(y.as_mut_ptr());
        let acts = &acts[..];
        (0..rows.div_ceil(ROWS_PER_TASK))
            .into_par_iter()
            .for_each(|task| {
                let r = task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(rows);
                self.rows_task(r, cols, acts, out, rows);
            });
    }

    /// Unpack each row of `r` once and dot it with every token's activations (`qdot::TOKENS` at
    /// a time, each computed as if alone).
    fn rows_task(
        &self,
        r: std::ops::Range<usize>,
        cols: usize,
        acts: &[QRow],
        out: OutPtr,
        rows: usize,
    ) {
        UNPACKED.with(|cell| {
            let (q, a, b) = &mut *cell.borrow_mut();
            q.resize(cols, 0);
            a.resize(cols / GROUP, 0.0);
            b.resize(cols / GROUP, 0.0);
            for row in r {
                let (bytes, ty) = self.row(row);
                // One token: decode the blocks in registers where a kernel does (same sums).
                if let [x] = acts {
                    if let Some(v) = qdot::dot_blocks(ty, bytes, x) {
                        // SAFETY: as below.
                        unsafe { *out.0.add(row) = v };
                        continue;
                    }
                }
                if quant::unpack_row(ty, bytes, q, a, b).is_err() {
                    a.fill(f32::NAN);
                }
                let offsets = has_offsets(ty);
                let scales = match ty {
                    GgmlType::Q6K => Scales::Per16,
                    _ => Scales::Per32,
                };
                let mut v = [0f32; qdot::TOKENS];
                for (c, chunk) in acts.chunks(qdot::TOKENS).enumerate() {
                    let xs: [&QRow; qdot::TOKENS] =
                        std::array::from_fn(|k| &chunk[k.min(chunk.len() - 1)]);
                    qdot::dot(q, (a, b), scales, &xs[..chunk.len()], offsets, &mut v);
                    for (k, val) in v[..chunk.len()].iter().enumerate() {
                        let t = c * qdot::TOKENS + k;
                        // SAFETY: `y` holds `n_tok * rows` (asserted by the caller); this task
                        // alone writes row `row`'s outputs.
                        unsafe { *out.0.add(t * rows + row) = *val };
                    }
                }
            }
        });
    }
}

/// Whether the type's values carry an offset (a minimum) besides their scale.
fn has_offsets(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random blocks of `ty` with finite, moderate scales: `rows` rows of `cols`.
    fn random_rows(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut r = crate::rng::Rng::new(seed);
        let (elems, bytes) = (ty.block_elems() as usize, ty.block_bytes() as usize);
        let mut out = vec![0u8; rows * cols / elems * bytes];
        out.iter_mut().for_each(|b| *b = r.next_u64() as u8);
        let scale = half::f16::from_f32(0.02).to_bits().to_le_bytes();
        let fields: &[usize] = match ty {
            GgmlType::Q6K => &[208],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            _ => &[0],
        };
        for blk in out.chunks_exact_mut(bytes) {
            for &at in fields {
                blk[at..at + 2].copy_from_slice(&scale);
            }
        }
        out
    }

    fn mat(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QuantMat {
        let data = random_rows(ty, rows, cols, seed);
        let row_bytes = data.len() / rows;
        QuantMat {
            bytes: WeightBuf::from_slice(&data).unwrap(),
            segments: vec![Segment {
                first_row: 0,
                rows,
                ty,
                row_bytes,
                off: 0,
            }],
        }
    }

    #[test]
    fn products_match_the_dequantized_weights_within_activation_rounding() {
        let types = [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        let (rows, cols, n) = (24, 512, 5);
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0)
            .collect();
        for (k, ty) in types.into_iter().enumerate() {
            let m = mat(ty, rows, cols, 11 + k as u64);
            let mut w = vec![0f32; rows * cols];
            quant::dequantize(ty, &m.bytes, &mut w).unwrap();
            let mut y = vec![f32::NAN; n * rows];
            m.matmul(rows, cols, &x, n, &mut y);
            for t in 0..n {
                for r in 0..rows {
                    let xr = &x[t * cols..(t + 1) * cols];
                    let wr = &w[r * cols..(r + 1) * cols];
                    let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    // |Σ w e| with activation errors e up to half a step (max|x| / 65534) each,
                    // random in sign: a few times sqrt(cols) times the typical term.
                    let scale: f64 =
                        wr.iter().map(|v| (*v as f64).abs()).sum::<f64>() / cols as f64;
                    let tol = 4.0 * (cols as f64).sqrt() * scale * (1.7 / 65534.0) + 1e-5;
                    let got = y[t * rows + r] as f64;
                    assert!(
                        (got - exact).abs() <= tol,
                        "{} row {r} token {t}: {got} vs {exact} (tol {tol})",
                        ty.name()
                    );
                }
            }
            // Each token's outputs alone are bit-identical to those among the others.
            let mut one = vec![0f32; rows];
            m.matmul(rows, cols, &x[2 * cols..3 * cols], 1, &mut one);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&y[2 * rows..3 * rows]), "{}", ty.name());
            // Rows dequantize for the embedding lookup.
            let mut row = vec![0f32; cols];
            m.row_into(rows - 1, &mut row);
            assert_eq!(row, w[(rows - 1) * cols..]);
        }
    }
}
