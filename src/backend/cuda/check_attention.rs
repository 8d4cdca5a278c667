//! `check-cuda`'s attention checks on a contiguous cache: rows (with and without a window), the
//! split decode with its merge launched apart, and merged by each head's last block — against an
//! f64 reference (also used by the paged checks).

use half::f16;

use super::check::{
    download, f16s, hp_for, poisoned, randh, randn, upload, Report, TOL_F16, TOL_F32,
};
use super::driver::Stream;
use super::kernels::{Kernels, Paged, RowsAt};
use crate::model::HParams;
use crate::rng::Rng;

/// Causal attention of query rows at positions `pos[i]` over cache rows `0..=pos[i]`, in f64.
pub(super) fn attention_ref(
    q: &[f32],
    kc: &[f16],
    vc: &[f16],
    pos: &[usize],
    hp: &HParams,
) -> Vec<f64> {
    attention_ref_window(q, kc, vc, pos, hp, 0)
}

/// [`attention_ref`] over the last `window` keys of each row (all with 0).
pub(super) fn attention_ref_window(
    q: &[f32],
    kc: &[f16],
    vc: &[f16],
    pos: &[usize],
    hp: &HParams,
    window: usize,
) -> Vec<f64> {
    let (d, qd, kvd) = (hp.head_dim, hp.q_dim(), hp.kv_dim());
    let group = hp.n_head / hp.n_kv_head;
    let mut out = vec![0f64; pos.len() * qd];
    for (t, &p) in pos.iter().enumerate() {
        let lo = if window > 0 {
            (p + 1).saturating_sub(window)
        } else {
            0
        };
        for h in 0..hp.n_head {
            let off = (h / group) * d;
            let scores: Vec<f64> = (lo..=p)
                .map(|j| {
                    (0..d)
                        .map(|e| q[t * qd + h * d + e] as f64 * kc[j * kvd + off + e].to_f64())
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = w.iter().sum();
            for e in 0..d {
                out[t * qd + h * d + e] = (lo..=p)
                    .map(|j| w[j - lo] * vc[j * kvd + off + e].to_f64())
                    .sum::<f64>()
                    / z;
            }
        }
    }
    out
}

pub(super) fn check_attention(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
    n_head: usize,
    n_kv: usize,
    d: usize,
) -> Result<(), String> {
    let hp = hp_for(n_head, n_kv, d);
    let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
    // Prefill: 37 rows after 20 cached positions.
    let (n, pos0) = (37usize, 20usize);
    let len = pos0 + n;
    let q = randn(rng, n * qd, 1.0);
    let kc = randh(rng, len * kvd, 1.0);
    let vc = randh(rng, len * kvd, 1.0);
    let (qb, kb, vb, ob) = (
        upload(&q)?,
        upload(&kc)?,
        upload(&vc)?,
        poisoned::<f16>(n * qd)?,
    );
    let at = RowsAt::contiguous(pos0);
    let pos: Vec<usize> = (pos0..len).collect();
    for window in [0, 16] {
        k.attn_rows(s, qb.ptr, kb.ptr, vb.ptr, ob.ptr, n, &at, &hp, window)?;
        s.sync()?;
        r.err(
            &format!("attn_rows contiguous {n_head}/{n_kv}x{d} window {window}"),
            &f16s(&download::<f16>(&ob, n * qd)?),
            &attention_ref_window(&q, &kc, &vc, &pos, &hp, window),
            TOL_F16,
        );
    }
    check_attention_decode(k, s, rng, r, &hp)
}

/// The split decode attention (merge launched apart, then merged by each head's last block) of
/// one query over up to 1000 cached rows, against the f64 reference.
fn check_attention_decode(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
    hp: &HParams,
) -> Result<(), String> {
    let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
    let (n_head, n_kv, d) = (hp.n_head, hp.n_kv_head, hp.head_dim);
    // Decode: one query at position 999 over 1000 cached rows, split 64 keys at a time.
    let (len, split, max_splits) = (1000usize, 64usize, 64usize);
    let q = randn(rng, qd, 1.0);
    let kc = randh(rng, len * kvd, 1.0);
    let vc = randh(rng, len * kvd, 1.0);
    let p = [(len - 1) as i32];
    let (qb, kb, vb, pb) = (upload(&q)?, upload(&kc)?, upload(&vc)?, upload(&p)?);
    let (pa, pm, ob) = (
        poisoned::<f32>(n_head * max_splits * d)?,
        poisoned::<f32>(n_head * max_splits * 2)?,
        poisoned::<f32>(qd)?,
    );
    k.attn_decode(
        s,
        qb.ptr,
        kb.ptr,
        vb.ptr,
        Paged::CONTIGUOUS,
        pa.ptr,
        pm.ptr,
        ob.ptr,
        pb.ptr,
        split,
        max_splits,
        hp,
        0,
    )?;
    s.sync()?;
    r.err(
        &format!("attn_decode {n_head}/{n_kv}x{d} len {len}"),
        &download::<f32>(&ob, qd)?,
        &attention_ref(&q, &kc, &vc, &[len - 1], hp),
        TOL_F32,
    );
    check_attention_merged(k, s, r, hp, (&q, &kc, &vc), (split, max_splits))
}

/// [`check_attention_decode`]'s merged variant (`attn_decode_merge`) on the same cache.
fn check_attention_merged(
    k: &Kernels,
    s: &Stream,
    r: &mut Report,
    hp: &HParams,
    (q, kc, vc): (&[f32], &[f16], &[f16]),
    (split, max_splits): (usize, usize),
) -> Result<(), String> {
    let (qd, kvd) = (hp.q_dim(), hp.kv_dim());
    let (n_head, n_kv, d) = (hp.n_head, hp.n_kv_head, hp.head_dim);
    let (qb, kb, vb) = (upload(q)?, upload(kc)?, upload(vc)?);
    // The same with the merge in each head's last block: three launches in a row at different
    // lengths (the per-head counts must come back to zero after each), on poisoned partials.
    let count = upload(&vec![0i32; n_head])?;
    for (len, window) in [
        (1000usize, 0usize),
        (37, 0),
        (700, 0),
        (700, 100),
        (37, 100),
    ] {
        let pb = upload(&[(len - 1) as i32])?;
        let (pa, pm, ob) = (
            poisoned::<f32>(n_head * max_splits * d)?,
            poisoned::<f32>(n_head * max_splits * 2)?,
            poisoned::<f32>(qd)?,
        );
        k.attn_decode_merged(
            s,
            qb.ptr,
            kb.ptr,
            vb.ptr,
            Paged::CONTIGUOUS,
            pa.ptr,
            pm.ptr,
            ob.ptr,
            count.ptr,
            pb.ptr,
            split,
            max_splits,
            hp,
            window,
        )?;
        s.sync()?;
        let (kw, vw) = (&kc[..len * kvd], &vc[..len * kvd]);
        r.err(
            &format!("attn_decode_merge {n_head}/{n_kv}x{d} len {len} window {window}"),
            &download::<f32>(&ob, qd)?,
            &attention_ref_window(q, kw, vw, &[len - 1], hp, window),
            TOL_F32,
        );
    }
    let counts = download::<i32>(&count, n_head)?;
    r.line(
        &format!("attn_decode_merge {n_head}/{n_kv}x{d} counts"),
        format!("after 5 launches {counts:?} (all 0 expected)"),
        counts.iter().all(|&c| c == 0),
    );
    Ok(())
}
