//! A unit's tensors in the CPU backend's compute layout: allocated first (so all weight memory is
//! reserved before any byte is copied), then filled from the GGUF file.
//!
//! Bytes come in with `pread` in bounded chunks (never by touching the mmap, which would SIGBUS if
//! the file were truncated under us), and every chunk passes through a `ReadHook` that throttles,
//! reports progress, or injects faults. Matrices whose tensors are all of a quantized type the
//! integer kernels take stay in their blocks (`qmat`); others become F16 (F16 and other quantized
//! sources) or F32 (F32/BF16 sources); Q/K/V are stacked into one matrix and gate/up into another, so each layer
//! needs fewer parallel products per token. Norms and biases are F32. A family whose files pair
//! RoPE dimensions interleaved has each head's Q and K rows permuted into NeoX order here, so the
//! layer math has one RoPE.

use super::buffer::WeightBuf;
use super::matrix::{MatData, Matrix};
use super::qmat::{self, QuantMat, Segment};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::load::plan::UnitKind;
use crate::model::arch::RopeStyle;
use crate::model::names::{LayerTensor, OUTPUT, OUTPUT_NORM, TOKEN_EMBD};
use crate::model::{HParams, ModelError, ModelSpec};

/// Largest single read; keeps throttling smooth and progress fine-grained.
const READ_CHUNK: usize = 4 << 20;

/// One decoder layer.
#[derive(Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,      // (hidden)
    pub wqkv: Matrix,             // (q_dim + 2 kv_dim, hidden)
    pub bqkv: Vec<f32>,           // (q_dim + 2 kv_dim), empty when the family has no biases
    pub q_norm: Vec<f32>,         // (head_dim), empty when the family has no q/k norms
    pub k_norm: Vec<f32>,         // (head_dim), empty likewise
    pub attn_post_norm: Vec<f32>, // (hidden), empty when the family has no post norms
    pub ffn_post_norm: Vec<f32>,  // (hidden), empty likewise
    pub wo: Matrix,               // (hidden, q_dim)
    pub ffn_norm: Vec<f32>,       // (hidden)
    pub w_gate_up: Matrix,        // (2 ffn, hidden): gate rows, then up rows
    pub w_down: Matrix,           // (hidden, ffn)
}

/// Final norm and LM head (`output` is None when tied to the embeddings).
#[derive(Debug)]
pub struct HeadWeights {
    pub norm: Vec<f32>,         // (hidden)
    pub output: Option<Matrix>, // (vocab, hidden)
}

/// The weights of one load unit.
#[derive(Debug)]
pub enum UnitWeights {
    Embed(Matrix), // (vocab, hidden)
    Layer(Box<LayerWeights>),
    Head(HeadWeights),
}

impl UnitWeights {
    /// Memory held (the reservation for this unit).
    pub fn bytes(&self) -> usize {
        match self {
            UnitWeights::Embed(m) => m.bytes(),
            UnitWeights::Layer(l) => l.bytes(),
            UnitWeights::Head(h) => h.norm.len() * 4 + h.output.as_ref().map_or(0, |m| m.bytes()),
        }
    }
}

impl LayerWeights {
    pub fn bytes(&self) -> usize {
        let vectors = [
            &self.attn_norm,
            &self.bqkv,
            &self.q_norm,
            &self.k_norm,
            &self.attn_post_norm,
            &self.ffn_norm,
            &self.ffn_post_norm,
        ];
        let v = vectors.iter().map(|x| x.len()).sum::<usize>() * 4;
        v + self.wqkv.bytes() + self.wo.bytes() + self.w_gate_up.bytes() + self.w_down.bytes()
    }
}

/// Called around every read of the load path.
pub trait ReadHook {
    /// Before reading `bytes` of `tensor` (throttle, inject faults).
    fn before_read(&mut self, tensor: &str, bytes: u64) -> Result<(), ModelError>;
    /// After they arrived (progress).
    fn after_read(&mut self, bytes: u64);
}

/// A hook that does nothing (tools and tests).
pub struct NoHook;

impl ReadHook for NoHook {
    fn before_read(&mut self, _: &str, _: u64) -> Result<(), ModelError> {
        Ok(())
    }
    fn after_read(&mut self, _: u64) {}
}

fn info<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

fn data_err(t: &TensorInfo, e: impl std::fmt::Display) -> ModelError {
    ModelError::TensorData {
        name: t.name.clone(),
        message: e.to_string(),
    }
}

/// Read `dst.len()` bytes of `t` from `start`, chunk by chunk through the hook. With `floats`
/// (the element width, 2 or 4), each chunk is checked for NaN/infinity before it counts as read.
fn read_into(
    file: &GgufFile,
    t: &TensorInfo,
    dst: &mut [u8],
    floats: Option<usize>,
    hook: &mut dyn ReadHook,
) -> Result<(), ModelError> {
    let mut done = 0usize;
    for chunk in dst.chunks_mut(READ_CHUNK) {
        hook.before_read(&t.name, chunk.len() as u64)?;
        file.read_tensor_at(t, done as u64, chunk)?;
        if let Some(width) = floats {
            check_finite(t, chunk, width)?;
        }
        done += chunk.len();
        hook.after_read(chunk.len() as u64);
    }
    Ok(())
}

fn read_raw(
    file: &GgufFile,
    t: &TensorInfo,
    hook: &mut dyn ReadHook,
) -> Result<Vec<u8>, ModelError> {
    let mut buf = vec![0u8; t.n_bytes as usize];
    read_into(file, t, &mut buf, None, hook)?;
    Ok(buf)
}

/// Stacked rows of several 2-D tensors, allocated (zeroed) but not filled.
fn alloc_stacked(file: &GgufFile, names: &[&str]) -> Result<Matrix, ModelError> {
    let infos = names
        .iter()
        .map(|n| info(file, n))
        .collect::<Result<Vec<_>, _>>()?;
    let cols = infos.first().map(|t| t.row_len() as usize).unwrap_or(0);
    let rows: usize = infos.iter().map(|t| t.rows() as usize).sum();
    if qmat::enabled() && infos.iter().all(|t| qmat::keeps(t.ty, cols)) {
        return alloc_quant(&infos, names, rows, cols);
    }
    let wide = infos
        .iter()
        .any(|t| matches!(t.ty, GgmlType::F32 | GgmlType::BF16));
    // Zeroed allocations map fresh pages lazily: reserving the whole model costs no memset.
    let data = if wide {
        MatData::F32(WeightBuf::zeroed(rows * cols).map_err(|e| reserve_err(names, e))?)
    } else {
        MatData::F16(WeightBuf::zeroed(rows * cols).map_err(|e| reserve_err(names, e))?)
    };
    Ok(Matrix { rows, cols, data })
}

/// The tensors' blocks one after the other, a segment each.
fn alloc_quant(
    infos: &[&TensorInfo],
    names: &[&str],
    rows: usize,
    cols: usize,
) -> Result<Matrix, ModelError> {
    let (mut segments, mut first_row, mut off) = (Vec::new(), 0, 0);
    for t in infos {
        let n = t.rows() as usize;
        segments.push(Segment {
            first_row,
            rows: n,
            ty: t.ty,
            row_bytes: t.n_bytes as usize / n.max(1),
            off,
        });
        first_row += n;
        off += t.n_bytes as usize;
    }
    let bytes = WeightBuf::zeroed(off).map_err(|e| reserve_err(names, e))?;
    let data = MatData::Quant(QuantMat { bytes, segments });
    Ok(Matrix { rows, cols, data })
}

fn reserve_err(names: &[&str], e: std::io::Error) -> ModelError {
    ModelError::TensorData {
        name: names.join("+"),
        message: format!("cannot reserve memory: {e}"),
    }
}

fn fill_stacked(
    file: &GgufFile,
    names: &[&str],
    m: &mut Matrix,
    hook: &mut dyn ReadHook,
) -> Result<(), ModelError> {
    let mut at = 0usize;
    for name in names {
        let t = info(file, name)?;
        let n = t.n_elems as usize;
        match &mut m.data {
            MatData::F16(out) => fill_rows(
                file,
                t,
                &mut out[at..at + n],
                GgmlType::F16,
                crate::quant::dequantize_f16,
                hook,
            )?,
            MatData::F32(out) => fill_rows(
                file,
                t,
                &mut out[at..at + n],
                GgmlType::F32,
                crate::quant::dequantize,
                hook,
            )?,
            MatData::Quant(q) => {
                let seg = q.segments.iter().find(|s| s.first_row * m.cols == at);
                let seg = seg.ok_or_else(|| data_err(t, "no segment for this tensor"))?;
                let bytes = &mut q.bytes[seg.off..seg.off + t.n_bytes as usize];
                read_into(file, t, bytes, None, hook)?;
                if !crate::quant::scales_finite(t.ty, bytes) {
                    return Err(data_err(t, "holds NaN or infinite block scales"));
                }
            }
        }
        at += n;
    }
    Ok(())
}

/// `quant::dequantize` or `quant::dequantize_f16`.
type Dequantizer<T> = fn(GgmlType, &[u8], &mut [T]) -> Result<(), crate::quant::QuantError>;

/// Fill `out` with tensor `t`: read straight in when `t` is stored as `native`, else dequantize.
fn fill_rows<T: bytemuck::Pod>(
    file: &GgufFile,
    t: &TensorInfo,
    out: &mut [T],
    native: GgmlType,
    convert: Dequantizer<T>,
    hook: &mut dyn ReadHook,
) -> Result<(), ModelError> {
    if t.ty == native {
        return read_into(
            file,
            t,
            bytemuck::cast_slice_mut(out),
            Some(size_of::<T>()),
            hook,
        );
    }
    let raw = read_raw(file, t, hook)?;
    convert(t.ty, &raw, out).map_err(|e| data_err(t, e))?;
    check_finite(t, bytemuck::cast_slice(out), size_of::<T>())
}

/// Refuse a tensor holding NaN or infinity (a corrupt file, or one overwritten while loading):
/// `values` are F16 (`width` 2) or F32 (`width` 4) as raw bits. A branch-free pass over the
/// exponent bits, so it keeps up with the reads.
fn check_finite(t: &TensorInfo, values: &[u8], width: usize) -> Result<(), ModelError> {
    let bad = match width {
        2 => bytemuck::cast_slice::<u8, u16>(values)
            .iter()
            .fold(false, |a, &b| a | (b & 0x7c00 == 0x7c00)),
        _ => bytemuck::cast_slice::<u8, u32>(values)
            .iter()
            .fold(false, |a, &b| a | (b & 0x7f80_0000 == 0x7f80_0000)),
    };
    if bad {
        return Err(data_err(t, "holds NaN or infinite values"));
    }
    Ok(())
}

fn alloc_vector(file: &GgufFile, names: &[&str]) -> Result<Vec<f32>, ModelError> {
    let n = names
        .iter()
        .map(|n| info(file, n).map(|t| t.n_elems as usize))
        .sum::<Result<usize, _>>()?;
    Ok(vec![0.0; n])
}

fn fill_vector(
    file: &GgufFile,
    names: &[&str],
    out: &mut [f32],
    hook: &mut dyn ReadHook,
) -> Result<(), ModelError> {
    let mut at = 0usize;
    for name in names {
        let t = info(file, name)?;
        let n = t.n_elems as usize;
        let raw = read_raw(file, t, hook)?;
        crate::quant::dequantize(t.ty, &raw, &mut out[at..at + n]).map_err(|e| data_err(t, e))?;
        check_finite(t, bytemuck::cast_slice(&out[at..at + n]), 4)?;
        at += n;
    }
    Ok(())
}

/// The GGUF tensor groups that make up each field of a layer, in file-name form.
struct LayerNames {
    attn_norm: [String; 1],
    qkv: [String; 3],
    /// Empty when the model has no Q/K/V biases.
    bqkv: Vec<String>,
    /// Empty when the family has no q/k norms.
    q_norm: Vec<String>,
    k_norm: Vec<String>,
    /// Empty when the family has no post norms.
    attn_post_norm: Vec<String>,
    ffn_post_norm: Vec<String>,
    wo: [String; 1],
    ffn_norm: [String; 1],
    gate_up: [String; 2],
    down: [String; 1],
}

impl LayerNames {
    fn new(spec: &ModelSpec, i: usize) -> LayerNames {
        use LayerTensor as T;
        // The optional tensors this model's layers hold (`ModelSpec::layer_tensors` decides).
        let present = spec.layer_tensors();
        let names = |ts: &[T]| -> Vec<String> {
            ts.iter()
                .filter(|t| present.contains(t))
                .map(|t| t.name(i))
                .collect()
        };
        LayerNames {
            attn_norm: [T::AttnNorm.name(i)],
            qkv: [T::AttnQ.name(i), T::AttnK.name(i), T::AttnV.name(i)],
            bqkv: names(&[T::AttnQBias, T::AttnKBias, T::AttnVBias]),
            q_norm: names(&[T::AttnQNorm]),
            k_norm: names(&[T::AttnKNorm]),
            attn_post_norm: names(&[T::AttnPostNorm]),
            ffn_post_norm: names(&[T::FfnPostNorm]),
            wo: [T::AttnOut.name(i)],
            ffn_norm: [T::FfnNorm.name(i)],
            gate_up: [T::FfnGate.name(i), T::FfnUp.name(i)],
            down: [T::FfnDown.name(i)],
        }
    }
}

fn refs<const N: usize>(a: &[String; N]) -> [&str; N] {
    a.each_ref().map(|s| s.as_str())
}

fn names_of(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// Put each head's rows `[0, 2, 4, …, 1, 3, 5, …]` first-half-then-second: the interleaved RoPE
/// pairs (2i, 2i+1) of the file become NeoX pairs (i, i + head_dim/2). `x` holds `heads` heads of
/// `head_dim` rows of `width` elements each.
fn interleaved_to_neox<T: Copy>(x: &mut [T], heads: usize, head_dim: usize, width: usize) {
    let half = head_dim / 2;
    let mut head_copy = Vec::with_capacity(head_dim * width);
    for h in x.chunks_mut(head_dim * width).take(heads) {
        head_copy.clear();
        head_copy.extend_from_slice(h);
        for j in 0..half {
            for (dst, src) in [(j, 2 * j), (half + j, 2 * j + 1)] {
                h[dst * width..(dst + 1) * width]
                    .copy_from_slice(&head_copy[src * width..(src + 1) * width]);
            }
        }
    }
}

/// The Q and K parts of a layer in NeoX order, for a family whose files interleave them.
fn permute_rope(hp: &HParams, l: &mut LayerWeights) {
    if hp.family.info().rope != RopeStyle::Interleaved {
        return;
    }
    let (d, cols) = (hp.head_dim, l.wqkv.cols);
    let (q, k) = (hp.q_dim(), hp.kv_dim());
    let both = |x: &mut dyn FnMut(usize, usize, usize)| {
        x(0, hp.n_head, q);
        x(q, hp.n_kv_head, k);
    };
    match &mut l.wqkv.data {
        MatData::F16(w) => both(&mut |at, heads, n| {
            interleaved_to_neox(&mut w[at * cols..(at + n) * cols], heads, d, cols)
        }),
        MatData::F32(w) => both(&mut |at, heads, n| {
            interleaved_to_neox(&mut w[at * cols..(at + n) * cols], heads, d, cols)
        }),
        // Whole rows of blocks move as bytes: Q's segment, then K's.
        MatData::Quant(qm) => {
            let segs = qm.segments.clone();
            both(&mut |at, heads, _| {
                if let Some(s) = segs.iter().find(|s| s.first_row == at) {
                    let rows = &mut qm.bytes[s.off..s.off + s.rows * s.row_bytes];
                    interleaved_to_neox(rows, heads, d, s.row_bytes);
                }
            })
        }
    }
    if !l.bqkv.is_empty() {
        let b = &mut l.bqkv;
        both(&mut |at, heads, n| interleaved_to_neox(&mut b[at..at + n], heads, d, 1));
    }
    // A head's norm weights follow its rows.
    for norm in [&mut l.q_norm, &mut l.k_norm] {
        if !norm.is_empty() {
            interleaved_to_neox(norm, 1, d, 1);
        }
    }
}

/// Reserve the memory of one unit (zeroed, not yet read).
pub fn alloc_unit(
    file: &GgufFile,
    spec: &ModelSpec,
    kind: UnitKind,
) -> Result<UnitWeights, ModelError> {
    Ok(match kind {
        UnitKind::Embed => UnitWeights::Embed(alloc_stacked(file, &[TOKEN_EMBD])?),
        UnitKind::Layer(i) => {
            let n = LayerNames::new(spec, i);
            UnitWeights::Layer(Box::new(LayerWeights {
                attn_norm: alloc_vector(file, &refs(&n.attn_norm))?,
                wqkv: alloc_stacked(file, &refs(&n.qkv))?,
                bqkv: alloc_vector(file, &names_of(&n.bqkv))?,
                q_norm: alloc_vector(file, &names_of(&n.q_norm))?,
                k_norm: alloc_vector(file, &names_of(&n.k_norm))?,
                attn_post_norm: alloc_vector(file, &names_of(&n.attn_post_norm))?,
                ffn_post_norm: alloc_vector(file, &names_of(&n.ffn_post_norm))?,
                wo: alloc_stacked(file, &refs(&n.wo))?,
                ffn_norm: alloc_vector(file, &refs(&n.ffn_norm))?,
                w_gate_up: alloc_stacked(file, &refs(&n.gate_up))?,
                w_down: alloc_stacked(file, &refs(&n.down))?,
            }))
        }
        UnitKind::Head => UnitWeights::Head(HeadWeights {
            norm: alloc_vector(file, &[OUTPUT_NORM])?,
            output: if spec.tied {
                None
            } else {
                Some(alloc_stacked(file, &[OUTPUT])?)
            },
        }),
    })
}

/// Read one unit's bytes into its reserved memory.
pub fn fill_unit(
    file: &GgufFile,
    spec: &ModelSpec,
    kind: UnitKind,
    w: &mut UnitWeights,
    hook: &mut dyn ReadHook,
) -> Result<(), ModelError> {
    match (kind, w) {
        (UnitKind::Embed, UnitWeights::Embed(m)) => fill_stacked(file, &[TOKEN_EMBD], m, hook),
        (UnitKind::Layer(i), UnitWeights::Layer(l)) => {
            let n = LayerNames::new(spec, i);
            fill_vector(file, &refs(&n.attn_norm), &mut l.attn_norm, hook)?;
            fill_stacked(file, &refs(&n.qkv), &mut l.wqkv, hook)?;
            fill_vector(file, &names_of(&n.bqkv), &mut l.bqkv, hook)?;
            fill_vector(file, &names_of(&n.q_norm), &mut l.q_norm, hook)?;
            fill_vector(file, &names_of(&n.k_norm), &mut l.k_norm, hook)?;
            permute_rope(&spec.hp, l);
            fill_stacked(file, &refs(&n.wo), &mut l.wo, hook)?;
            fill_vector(
                file,
                &names_of(&n.attn_post_norm),
                &mut l.attn_post_norm,
                hook,
            )?;
            fill_vector(file, &refs(&n.ffn_norm), &mut l.ffn_norm, hook)?;
            fill_stacked(file, &refs(&n.gate_up), &mut l.w_gate_up, hook)?;
            fill_stacked(file, &refs(&n.down), &mut l.w_down, hook)?;
            fill_vector(
                file,
                &names_of(&n.ffn_post_norm),
                &mut l.ffn_post_norm,
                hook,
            )
        }
        (UnitKind::Head, UnitWeights::Head(h)) => {
            fill_vector(file, &[OUTPUT_NORM], &mut h.norm, hook)?;
            match &mut h.output {
                Some(m) => fill_stacked(file, &[OUTPUT], m, hook),
                None => Ok(()),
            }
        }
        (kind, _) => Err(ModelError::Shape(format!(
            "unit {kind:?} was given another unit's memory"
        ))),
    }
}

/// Allocate and fill one unit in one go.
pub fn load_unit(
    file: &GgufFile,
    spec: &ModelSpec,
    kind: UnitKind,
    hook: &mut dyn ReadHook,
) -> Result<UnitWeights, ModelError> {
    let mut w = alloc_unit(file, spec, kind)?;
    fill_unit(file, spec, kind, &mut w, hook)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::interleaved_to_neox;

    #[test]
    fn interleaved_pairs_become_neox_pairs_head_by_head() {
        // Two heads of four rows, rows two wide: head 0 rows 0..4, head 1 rows 4..8.
        let mut x: Vec<u32> = (0..16).collect();
        interleaved_to_neox(&mut x, 2, 4, 2);
        // Row order per head: 0, 2, 1, 3.
        assert_eq!(
            x,
            vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
        );
    }
}
