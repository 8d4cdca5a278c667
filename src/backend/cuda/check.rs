//! `layerstream check-cuda`: every CUDA kernel against the CPU backend (or an f64 reference of
//! the same inputs) on fresh random inputs with poisoned outputs; device dequantization bit for
//! bit against the CPU's; whole models (last-position and decode logits, greedy tokens) against
//! the CPU backend (`check_model`); and the decode GEMV timed against cuBLAS at the model's shapes.

use std::fmt::Write as _;
use std::path::Path;

use half::f16;

use super::blas::Blas;
use super::driver::{ck, DevBuf, Event, Gpu, Stream};
use super::kernels::Kernels;
use crate::backend::cpu::ops;
use crate::cli::CheckCudaArgs;
use crate::gguf::{GgmlType, GgufFile};
use crate::model::HParams;
use crate::rng::Rng;

/// Max-norm relative error allowed: F32 outputs, and outputs stored as F16.
pub(super) const TOL_F32: f64 = 1e-3;
pub(super) const TOL_F16: f64 = 4e-3;

#[derive(Default)]
pub(super) struct Report {
    rows: Vec<(String, String, bool)>,
}

impl Report {
    pub(super) fn err(&mut self, name: &str, got: &[f32], want: &[f64], tol: f64) {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        let mut worst = 0f64;
        let mut bad = got.len() != want.len();
        for (g, w) in got.iter().zip(want) {
            if !g.is_finite() {
                bad = true;
            }
            worst = worst.max((*g as f64 - w).abs() / scale);
        }
        let pass = !bad && worst <= tol;
        self.rows.push((
            name.into(),
            format!(
                "max rel err {worst:.2e} (limit {tol:.0e}){}",
                if bad { ", unwritten/NaN outputs" } else { "" }
            ),
            pass,
        ));
    }
    pub(super) fn line(&mut self, name: &str, text: String, pass: bool) {
        self.rows.push((name.into(), text, pass));
    }
    fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.2)
    }
    fn render(&self) -> String {
        let mut out = String::new();
        for (n, t, p) in &self.rows {
            let _ = writeln!(out, "{} {n:<34} {t}", if *p { "PASS" } else { "FAIL" });
        }
        out
    }
}

pub(super) fn upload<T: bytemuck::Pod>(v: &[T]) -> Result<DevBuf, String> {
    let bytes: &[u8] = bytemuck::cast_slice(v);
    let b = DevBuf::alloc(bytes.len())?;
    ck("cuMemcpyHtoD", unsafe {
        cudarc::driver::sys::cuMemcpyHtoD_v2(b.ptr, bytes.as_ptr().cast(), bytes.len())
    })?;
    // From pageable memory the copy returns once the bytes are staged, not when they have
    // landed, and the checks' streams do not wait for the legacy stream: a kernel launched next
    // could read the buffer's old contents (seen on a 9 MB `+=` operand).
    ck("cuCtxSynchronize", unsafe {
        cudarc::driver::sys::cuCtxSynchronize()
    })?;
    Ok(b)
}

/// A buffer of `n` elements of `T`, every byte 0xFF (NaN as F32 and F16): unwritten outputs show.
pub(super) fn poisoned<T: bytemuck::Pod>(n: usize) -> Result<DevBuf, String> {
    upload(&vec![0xFFu8; n * std::mem::size_of::<T>()])
}

pub(super) fn download<T: bytemuck::Pod + bytemuck::Zeroable>(
    b: &DevBuf,
    n: usize,
) -> Result<Vec<T>, String> {
    let mut v = vec![T::zeroed(); n];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
    ck("cuMemcpyDtoH", unsafe {
        cudarc::driver::sys::cuMemcpyDtoH_v2(bytes.as_mut_ptr().cast(), b.ptr, bytes.len())
    })?;
    Ok(v)
}

pub(super) fn f16s(v: &[f16]) -> Vec<f32> {
    v.iter().map(|h| h.to_f32()).collect()
}

pub(super) fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

pub(super) fn randh(rng: &mut Rng, n: usize, scale: f32) -> Vec<f16> {
    (0..n)
        .map(|_| f16::from_f32(rng.normal() * scale))
        .collect()
}

pub fn run(args: &CheckCudaArgs) -> Result<String, String> {
    let seed = args.seed.unwrap_or_else(crate::request::clock_seed);
    let gpu = Gpu::new(args.gpu_device)?;
    gpu.bind()?;
    let k = Kernels::load()?;
    let s = Stream::new()?;
    let mut rng = Rng::new(seed);
    let mut r = Report::default();
    check_ops(&k, &s, &mut rng, &mut r)?;
    check_dequant_random(&k, &s, &mut rng, &mut r)?;
    let mut text = format!("seed {seed}\n");
    text.push_str(&time_gemv(&k, &s, &mut rng)?);
    text.push_str(&super::check_gemm_fixed::time_fixed(&k, &s, &mut rng)?);
    text.push_str(&super::check_sample::time_logits_rows(&k, &s, &mut rng)?);
    for m in &args.model {
        let name = m.display().to_string();
        if let Err(e) = check_file_dequant(&k, &s, m, &mut r)
            .and_then(|_| super::check_model::check_model(m, args, &mut r))
        {
            r.line(&name, e, false);
        }
    }
    text.push_str(&r.render());
    if r.passed() {
        Ok(text)
    } else {
        Err(format!("{text}CUDA checks failed"))
    }
}

/// silu(g), or GELU with the tanh approximation, in f64.
fn gated_ref(g: f64, gelu: bool) -> f64 {
    match gelu {
        true => {
            0.5 * g
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh())
        }
        false => g / (1.0 + (-g).exp()),
    }
}

fn gemv_ref(w: &[f16], x: &[f64], n: usize, kk: usize) -> Vec<f64> {
    (0..n)
        .map(|i| (0..kk).map(|j| w[i * kk + j].to_f64() * x[j]).sum())
        .collect()
}

fn check_ops(k: &Kernels, s: &Stream, rng: &mut Rng, r: &mut Report) -> Result<(), String> {
    let (h, f) = (896usize, 4864usize);
    // embedding gather
    let vocab = 1000;
    let table = randh(rng, vocab * h, 1.0);
    let ids: Vec<u32> = (0..7)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();
    let (tb, ib, xb) = (upload(&table)?, upload(&ids)?, poisoned::<f32>(7 * h)?);
    k.embed_gather(s, tb.ptr, ib.ptr, xb.ptr, 7, h, 1.5)?;
    s.sync()?;
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&i| {
            table[i as usize * h..(i as usize + 1) * h]
                .iter()
                .map(|v| (v.to_f32() * 1.5) as f64)
        })
        .collect();
    r.err("embed_gather", &download::<f32>(&xb, 7 * h)?, &want, 0.0);
    check_norms_and_gates(k, s, rng, r, h, f)?;
    // The decode products both ways: weight rows fetched into registers first, and streamed.
    for (fetch, tag) in [(true, ""), (false, " streamed")] {
        k.set_fetch(fetch);
        check_gemv(k, s, rng, r, tag)?;
        for (heads, kv, d) in [(14, 2, 64), (28, 4, 128), (5, 1, 8)] {
            check_fused_decode(k, s, rng, r, heads, kv, d, tag)?;
        }
    }
    k.set_fetch(true);
    super::check_rope::check_rope(k, s, rng, r)?;
    for (heads, kv, d) in [(14, 2, 64), (28, 4, 128), (5, 1, 8)] {
        super::check_attention::check_attention(k, s, rng, r, heads, kv, d)?;
        super::check_paged::check_paged(k, s, rng, r, heads, kv, d)?;
    }
    super::check_paged::check_rope_slots(k, s, rng, r)?;
    super::check_sample::check_logits_rows(k, s, rng, r)?;
    super::check_gemm_fixed::check_gemm_fixed(k, s, rng, r)?;
    check_gemm(s, rng, r)
}

/// RMSNorm to F16, the post-norm residual, SwiGLU and GeGLU on rows of `h` and `f`.
fn check_norms_and_gates(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
    h: usize,
    f: usize,
) -> Result<(), String> {
    // rmsnorm to F16
    let rows = 5;
    let x = randn(rng, rows * h, 2.0);
    let w = randn(rng, h, 1.0);
    let (xb, wb, yb) = (upload(&x)?, upload(&w)?, poisoned::<f16>(rows * h)?);
    k.rmsnorm_f16(s, xb.ptr, wb.ptr, yb.ptr, 0, rows, h, 1e-6)?;
    s.sync()?;
    let mut want = vec![0f32; rows * h];
    for i in 0..rows {
        ops::rms_norm(
            &x[i * h..(i + 1) * h],
            &w,
            1e-6,
            &mut want[i * h..(i + 1) * h],
        );
    }
    r.err(
        "rmsnorm_f16",
        &f16s(&download::<f16>(&yb, rows * h)?),
        &want.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        TOL_F16,
    );
    // The post-norm residual: x += rmsnorm(y) ⊙ w.
    let y = randn(rng, rows * h, 3.0);
    let (yb, xb) = (upload(&y)?, upload(&x)?);
    k.rmsnorm_add(s, yb.ptr, wb.ptr, xb.ptr, rows, h, 1e-6)?;
    s.sync()?;
    let mut want = vec![0f32; rows * h];
    for i in 0..rows {
        ops::rms_norm(
            &y[i * h..(i + 1) * h],
            &w,
            1e-6,
            &mut want[i * h..(i + 1) * h],
        );
    }
    let want: Vec<f64> = want.iter().zip(&x).map(|(a, b)| (a + b) as f64).collect();
    r.err(
        "rmsnorm_add",
        &download::<f32>(&xb, rows * h)?,
        &want,
        TOL_F32,
    );
    // SwiGLU and GeGLU
    let gu = randn(rng, rows * 2 * f, 2.0);
    for gelu in [false, true] {
        let (gb, ab) = (upload(&gu)?, poisoned::<f16>(rows * f)?);
        k.gated_mul(s, gb.ptr, ab.ptr, rows, f, gelu)?;
        s.sync()?;
        let want: Vec<f64> = (0..rows * f)
            .map(|i| {
                let (t, c) = (i / f, i % f);
                gated_ref(gu[t * 2 * f + c] as f64, gelu) * gu[t * 2 * f + f + c] as f64
            })
            .collect();
        r.err(
            &format!("gated_mul gelu={gelu}"),
            &f16s(&download::<f16>(&ab, rows * f)?),
            &want,
            TOL_F16,
        );
    }
    Ok(())
}

fn check_gemv(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
    tag: &str,
) -> Result<(), String> {
    for (mode, n, kk) in [
        ("plain", 896, 896),
        ("plain", 520, 1536),
        ("norm", 8200, 2048),
        ("norm", 1152, 896),
        ("norm", 9728, 896),
        ("silu", 896, 4864),
        ("gelu", 640, 2048),
        ("plain", 3000, 18944),
    ] {
        let w = randh(rng, n * kk, 0.05);
        let gated = mode == "silu" || mode == "gelu";
        let xin = randn(rng, if gated { 2 * kk } else { kk }, 1.0);
        let nw = randn(rng, kk, 1.0);
        let bias = randn(rng, n, 0.5);
        let y0 = randn(rng, n, 1.0);
        let (wb, xb, nb, bb, yb) = (
            upload(&w)?,
            upload(&xin)?,
            upload(&nw)?,
            upload(&bias)?,
            upload(&y0)?,
        );
        let x: Vec<f64> = match mode {
            "norm" => {
                let mut o = vec![0f32; kk];
                ops::rms_norm(&xin, &nw, 1e-6, &mut o);
                o.iter().map(|&v| v as f64).collect()
            }
            "silu" | "gelu" => (0..kk)
                .map(|i| gated_ref(xin[i] as f64, mode == "gelu") * xin[kk + i] as f64)
                .collect(),
            _ => xin.iter().map(|&v| v as f64).collect(),
        };
        let dot = gemv_ref(&w, &x, n, kk);
        // With bias, accumulating into y.
        match mode {
            "norm" => k.gemv_norm(s, wb.ptr, xb.ptr, nb.ptr, 1e-6, bb.ptr, yb.ptr, n, kk, true)?,
            "silu" | "gelu" => k.gemv_silu(
                s,
                wb.ptr,
                xb.ptr,
                bb.ptr,
                yb.ptr,
                n,
                kk,
                true,
                mode == "gelu",
            )?,
            _ => k.gemv_plain(s, wb.ptr, xb.ptr, bb.ptr, yb.ptr, n, kk, true)?,
        }
        s.sync()?;
        let want: Vec<f64> = (0..n)
            .map(|i| y0[i] as f64 + bias[i] as f64 + dot[i])
            .collect();
        r.err(
            &format!("gemv_{mode} {n}x{kk}{tag} acc+bias"),
            &download::<f32>(&yb, n)?,
            &want,
            TOL_F32,
        );
        // Plain store into a poisoned output.
        let yb = poisoned::<f32>(n)?;
        match mode {
            "norm" => k.gemv_norm(s, wb.ptr, xb.ptr, nb.ptr, 1e-6, 0, yb.ptr, n, kk, false)?,
            "silu" | "gelu" => {
                k.gemv_silu(s, wb.ptr, xb.ptr, 0, yb.ptr, n, kk, false, mode == "gelu")?
            }
            _ => k.gemv_plain(s, wb.ptr, xb.ptr, 0, yb.ptr, n, kk, false)?,
        }
        s.sync()?;
        r.err(
            &format!("gemv_{mode} {n}x{kk}{tag}"),
            &download::<f32>(&yb, n)?,
            &dot,
            TOL_F32,
        );
    }
    Ok(())
}

pub(super) fn hp_for(n_head: usize, n_kv: usize, d: usize) -> HParams {
    HParams {
        family: crate::model::arch::Family::Qwen2,
        n_layer: 1,
        hidden: n_head * d,
        ffn: 8,
        n_head,
        n_kv_head: n_kv,
        head_dim: d,
        vocab: 8,
        context: 4096,
        rope_base: 1e6,
        rms_eps: 1e-6,
        sliding_window: None,
        rope_scaling: crate::model::hparams::RopeScaling::None,
    }
}

/// The fused decode kernels against the same steps done separately on the CPU (f64 products).
#[allow(clippy::too_many_arguments)]
fn check_fused_decode(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
    n_head: usize,
    n_kv: usize,
    d: usize,
    tag: &str,
) -> Result<(), String> {
    let mut hp = hp_for(n_head, n_kv, d);
    hp.hidden = hp.hidden.max(64);
    let (h, q, kv) = (hp.hidden, hp.q_dim(), hp.kv_dim());
    let rows = q + 2 * kv;
    // QKV with RMSNorm, biases, RoPE and the KV append, at position 777.
    let (pos, ctx) = (777usize, 800usize);
    let w = randh(rng, rows * h, 0.05);
    let x = randn(rng, h, 1.0);
    let nw = randn(rng, h, 1.0);
    let bias = randn(rng, rows, 0.3);
    let (wb, xb, nb, bb, pb) = (
        upload(&w)?,
        upload(&x)?,
        upload(&nw)?,
        upload(&bias)?,
        upload(&[pos as i32])?,
    );
    let (qo, kc, vc) = (
        poisoned::<f32>(q)?,
        poisoned::<f16>(ctx * kv)?,
        poisoned::<f16>(ctx * kv)?,
    );
    let (post, inv, _ib) = super::check_rope::biased_post(&hp, bb.ptr)?;
    k.gemv_qkv_rope(
        s, wb.ptr, xb.ptr, nb.ptr, &post, qo.ptr, kc.ptr, vc.ptr, pb.ptr, 0, &hp,
    )?;
    s.sync()?;
    let mut xn = vec![0f32; h];
    ops::rms_norm(&x, &nw, hp.rms_eps, &mut xn);
    let xn64: Vec<f64> = xn.iter().map(|&v| v as f64).collect();
    let mut y: Vec<f32> = gemv_ref(&w, &xn64, rows, h)
        .iter()
        .zip(&bias)
        .map(|(a, b)| (*a + *b as f64) as f32)
        .collect();
    let (mut cs, mut sn) = (vec![0f32; d / 2], vec![0f32; d / 2]);
    ops::rope_table(pos, &inv, 1.0, &mut cs, &mut sn);
    ops::rope_apply(&mut y[..q + kv], d, &cs, &sn);
    let as64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let name = format!("gemv_qkv_rope {n_head}/{n_kv}x{d}{tag}");
    r.err(
        &format!("{name} q"),
        &download::<f32>(&qo, q)?,
        &as64(&y[..q]),
        TOL_F32,
    );
    let kh = download::<f16>(&kc, ctx * kv)?;
    let vh = download::<f16>(&vc, ctx * kv)?;
    r.err(
        &format!("{name} k row"),
        &f16s(&kh[pos * kv..(pos + 1) * kv]),
        &as64(&y[q..q + kv]),
        TOL_F16,
    );
    r.err(
        &format!("{name} v row"),
        &f16s(&vh[pos * kv..(pos + 1) * kv]),
        &as64(&y[q + kv..]),
        TOL_F16,
    );
    Ok(())
}

fn check_gemm(s: &Stream, rng: &mut Rng, r: &mut Report) -> Result<(), String> {
    let blas = Blas::new(s)?;
    let (n, out, kk) = (37usize, 1152usize, 896usize);
    let x = randh(rng, n * kk, 1.0);
    let w = randh(rng, out * kk, 0.05);
    let y0 = randn(rng, n * out, 1.0);
    let (xb, wb, yb) = (upload(&x)?, upload(&w)?, upload(&y0)?);
    blas.gemm(xb.ptr, wb.ptr, yb.ptr, n, out, kk, true)?;
    s.sync()?;
    let want: Vec<f64> = (0..n * out)
        .map(|i| {
            let (t, o) = (i / out, i % out);
            y0[i] as f64
                + (0..kk)
                    .map(|j| x[t * kk + j].to_f64() * w[o * kk + j].to_f64())
                    .sum::<f64>()
        })
        .collect();
    r.err(
        "cublas gemm 37x1152x896 (+=)",
        &download::<f32>(&yb, n * out)?,
        &want,
        TOL_F32,
    );
    Ok(())
}

/// Device dequantization of `raw` (type `ty`, `n` elements) vs the CPU's, bit for bit.
fn dequant_mismatches(
    k: &Kernels,
    s: &Stream,
    ty: GgmlType,
    raw: &[u8],
    n: usize,
) -> Result<usize, String> {
    let mut want = vec![f16::ZERO; n];
    crate::quant::dequantize_f16(ty, raw, &mut want).map_err(|e| e.to_string())?;
    let (src, dst) = (upload(raw)?, poisoned::<f16>(n)?);
    k.dequant(s, ty, src.ptr, dst.ptr, n as u64)?;
    s.sync()?;
    let got = download::<u16>(&dst, n)?;
    Ok(got
        .iter()
        .zip(&want)
        .filter(|(g, w)| **g != w.to_bits())
        .count())
}

fn check_dequant_random(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
) -> Result<(), String> {
    use GgmlType::*;
    for ty in [F32, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4K, Q5K, Q6K] {
        let n = 256 * 1031;
        let bytes = ty.bytes_for(n as u64).ok_or("size overflow")? as usize;
        // Random blocks; scales drawn as moderate f16 values so most outputs are finite.
        let mut raw: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
        if matches!(ty, Q8_0 | Q4_0 | Q5_0) {
            let block = bytes / (n / 32);
            for b in raw.chunks_mut(block) {
                b[..2].copy_from_slice(&f16::from_f32(rng.normal() * 0.01).to_le_bytes());
            }
        }
        let bad = dequant_mismatches(k, s, ty, &raw, n)?;
        r.line(
            &format!("dequant {} random", ty.name()),
            format!("{bad} of {n} elements differ from the CPU"),
            bad == 0,
        );
    }
    Ok(())
}

fn check_file_dequant(k: &Kernels, s: &Stream, path: &Path, r: &mut Report) -> Result<(), String> {
    let file = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut tensors, mut bad) = (0usize, 0usize);
    for t in file
        .tensors()
        .iter()
        .filter(|t| !matches!(t.ty, GgmlType::F16 | GgmlType::F32))
    {
        let mut raw = vec![0u8; t.n_bytes as usize];
        file.read_tensor_at(t, 0, &mut raw)
            .map_err(|e| e.to_string())?;
        bad += dequant_mismatches(k, s, t.ty, &raw, t.n_elems as usize)?;
        tensors += 1;
    }
    if tensors > 0 {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        r.line(
            &format!("dequant {name}"),
            format!("{tensors} quantized tensors, {bad} elements differ from the CPU"),
            bad == 0,
        );
    }
    Ok(())
}

/// The real 0.5B model's products (N, K): QKV, attention output, gate and up, down, LM head.
pub(super) const MODEL_PRODUCTS: [(usize, usize); 5] = [
    (1152, 896),
    (896, 896),
    (9728, 896),
    (896, 4864),
    (151936, 896),
];

/// Median over `reps` runs of `f` on `s` (after 20 unmeasured), in microseconds between events.
pub(super) fn median_us(
    s: &Stream,
    (e0, e1): (&Event, &Event),
    reps: usize,
    f: &mut dyn FnMut() -> Result<(), String>,
) -> Result<f64, String> {
    for _ in 0..20 {
        f()?;
    }
    let mut v = Vec::new();
    for _ in 0..reps {
        e0.record(s)?;
        f()?;
        e1.record(s)?;
        e1.sync()?;
        v.push(e0.elapsed_ms(e1)? as f64 * 1e3);
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// Decode products at the real model's shapes: our GEMV vs cuBLAS (n = 1), median of 200.
fn time_gemv(k: &Kernels, s: &Stream, rng: &mut Rng) -> Result<String, String> {
    let blas = Blas::new(s)?;
    let (e0, e1) = (Event::new(true)?, Event::new(true)?);
    let mut out = String::from(
        "decode product (N x K)   fetched us   GB/s  streamed us   GB/s   cuBLAS us   GB/s\n",
    );
    for (n, kk) in MODEL_PRODUCTS {
        let w = randh(rng, n * kk, 0.05);
        let x = randn(rng, kk, 1.0);
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let (wb, xb, xhb, yb) = (upload(&w)?, upload(&x)?, upload(&xh)?, poisoned::<f32>(n)?);
        let time = |f: &mut dyn FnMut() -> Result<(), String>| median_us(s, (&e0, &e1), 200, f);
        let ours = time(&mut || k.gemv_plain(s, wb.ptr, xb.ptr, 0, yb.ptr, n, kk, false))?;
        k.set_fetch(false);
        let streamed = time(&mut || k.gemv_plain(s, wb.ptr, xb.ptr, 0, yb.ptr, n, kk, false));
        k.set_fetch(true);
        let streamed = streamed?;
        let theirs = time(&mut || blas.gemm(xhb.ptr, wb.ptr, yb.ptr, 1, n, kk, false))?;
        let gb = (n * kk * 2) as f64 / 1e3;
        let _ = writeln!(
            out,
            "{:<22} {ours:>12.1} {:>6.0} {streamed:>12.1} {:>6.0} {theirs:>11.1} {:>6.0}",
            format!("{n} x {kk}"),
            gb / ours,
            gb / streamed,
            gb / theirs
        );
    }
    Ok(out)
}
