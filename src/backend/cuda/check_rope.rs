//! `check-cuda`'s checks of the Q/K/V post-processing (`rope_qkv`): biases, per-head q/k norms,
//! NeoX and interleaved RoPE pairs, scaled frequencies (linear, YaRN), against the CPU's ops.

use half::f16;

use super::check::{download, f16s, hp_for, poisoned, randn, upload, Report, TOL_F16, TOL_F32};
use super::driver::{DevBuf, Stream};
use super::kernels::{Kernels, QkvPost, RowsAt};
use crate::backend::cpu::ops;
use crate::model::HParams;
use crate::rng::Rng;

/// The post-processing of a layer with biases at `bias` and the global RoPE table of `hp`
/// (uploaded: the buffer must live while the kernel reads it), and that table on the host.
pub(super) fn biased_post(hp: &HParams, bias: u64) -> Result<(QkvPost, Vec<f32>, DevBuf), String> {
    let inv = hp.inv_freq(false);
    let ib = upload(&inv)?;
    let post = QkvPost {
        bias,
        inv_freq: ib.ptr,
        ..QkvPost::default()
    };
    Ok((post, inv, ib))
}

pub(super) fn check_rope(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
) -> Result<(), String> {
    // Qwen2's biases in NeoX pairs; Qwen3's q/k norms (with YaRN); Llama's interleaved pairs with
    // linearly scaled frequencies.
    let cases = [
        ("bias", true, false, false),
        ("qk-norm", false, true, false),
        ("interleaved", false, false, true),
    ];
    for (tag, with_bias, norms, interleaved) in cases {
        let mut hp = hp_for(14, 2, 64);
        use crate::model::hparams::RopeScaling;
        if interleaved {
            hp.rope_scaling = RopeScaling::Linear(4.0);
        }
        if norms {
            // YaRN: blended frequencies and cos/sin scaled by its attention factor.
            hp.rope_scaling = RopeScaling::Yarn {
                factor: 4.0,
                original_context: 1024,
                beta_fast: 32.0,
                beta_slow: 1.0,
            };
        }
        let case = RopeCase {
            tag,
            with_bias,
            norms,
            interleaved,
        };
        check_rope_case(k, s, rng, r, &hp, &case)?;
    }
    Ok(())
}

/// What one `check_rope_case` applies.
struct RopeCase {
    tag: &'static str,
    with_bias: bool,
    norms: bool,
    interleaved: bool,
}

/// Rotate `x`'s heads with pairs (2i, 2i + 1), as `rope_qkv` does for interleaved files.
fn rope_interleaved(x: &mut [f32], d: usize, cs: &[f32], sn: &[f32]) {
    for head in x.chunks_mut(d) {
        for i in 0..d / 2 {
            let (x0, x1) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = x0 * cs[i] - x1 * sn[i];
            head[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

fn check_rope_case(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
    hp: &HParams,
    c: &RopeCase,
) -> Result<(), String> {
    let (q, kv, d) = (hp.q_dim(), hp.kv_dim(), hp.head_dim);
    let (n, pos0, ctx) = (5usize, 1234usize, 1300usize);
    let row = q + 2 * kv;
    let qkv = randn(rng, n * row, 1.0);
    let bias = match c.with_bias {
        true => randn(rng, row, 0.3),
        false => vec![0.0; row],
    };
    let (qn, kn) = (randn(rng, d, 1.0), randn(rng, d, 1.0));
    let inv = hp.inv_freq(false);
    let (qb, bb, qnb, knb) = (upload(&qkv)?, upload(&bias)?, upload(&qn)?, upload(&kn)?);
    let ib = upload(&inv)?;
    let (qo, kc, vc) = (
        poisoned::<f32>(n * q)?,
        poisoned::<f16>(ctx * kv)?,
        poisoned::<f16>(ctx * kv)?,
    );
    let on = |yes: bool, p: u64| if yes { p } else { 0 };
    let post = QkvPost {
        bias: on(c.with_bias, bb.ptr),
        q_norm: on(c.norms, qnb.ptr),
        k_norm: on(c.norms, knb.ptr),
        inv_freq: ib.ptr,
        mscale: hp.rope_mscale(false),
        interleaved: c.interleaved,
    };
    let at = RowsAt::contiguous(pos0);
    k.rope_qkv(s, qb.ptr, &post, qo.ptr, kc.ptr, vc.ptr, &at, n, hp)?;
    s.sync()?;
    let (mut wq, mut wk, mut wv) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cs, mut sn) = (vec![0f32; d / 2], vec![0f32; d / 2]);
    for t in 0..n {
        let mut x: Vec<f32> = (0..row).map(|j| qkv[t * row + j] + bias[j]).collect();
        if c.norms {
            ops::rms_norm_heads(&mut x[..q], &qn, hp.rms_eps);
            ops::rms_norm_heads(&mut x[q..q + kv], &kn, hp.rms_eps);
        }
        ops::rope_table(pos0 + t, &inv, hp.rope_mscale(false), &mut cs, &mut sn);
        match c.interleaved {
            true => rope_interleaved(&mut x[..q + kv], d, &cs, &sn),
            false => ops::rope_apply(&mut x[..q + kv], d, &cs, &sn),
        }
        wq.extend(x[..q].iter().map(|&v| v as f64));
        wk.extend(x[q..q + kv].iter().map(|&v| v as f64));
        wv.extend(x[q + kv..].iter().map(|&v| v as f64));
    }
    let tag = c.tag;
    let got_q = download::<f32>(&qo, n * q)?;
    r.err(&format!("rope_qkv {tag} q"), &got_q, &wq, TOL_F32);
    let kh = download::<f16>(&kc, ctx * kv)?;
    let vh = download::<f16>(&vc, ctx * kv)?;
    let rows = pos0 * kv..(pos0 + n) * kv;
    r.err(
        &format!("rope_qkv {tag} k cache"),
        &f16s(&kh[rows.clone()]),
        &wk,
        TOL_F16,
    );
    r.err(
        &format!("rope_qkv {tag} v cache"),
        &f16s(&vh[rows]),
        &wv,
        TOL_F16,
    );
    Ok(())
}
