//! `check-cuda`'s check of the per-row logits kernel (`sample.cu`) against the host: the argmax,
//! the head of 256 sorted logits and the normaliser (by the histogram, and by the radix select
//! for a row spread too wide for the histogram), a draw over ids in order, the vocabulary
//! cut (ids past `n_text` never chosen), a NaN row flagged, and a row of ties too wide for the
//! head sent back whole.

use std::fmt::Write as _;

use super::check::{download, median_us, poisoned, randn, upload, Report};
use super::driver::{DevBuf, Event, Stream};
use super::kernels::{Kernels, HEAD_K, HEAD_ROW_WORDS, LOGITS_SCRATCH_WORDS};
use crate::rng::Rng;
use crate::sampler::argmax;

const VOCAB: usize = 151_936;
const N_TEXT: usize = 151_665;

pub(super) fn check_logits_rows(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
) -> Result<(), String> {
    // Rows: argmax, head, draw, NaN, all equal (ties beyond the head), head of a wide row.
    let mut l = randn(rng, 6 * VOCAB, 3.0);
    for row in 0..3 {
        // Past the tokenizer's vocabulary: larger than anything, and never chosen.
        l[row * VOCAB + N_TEXT..(row + 1) * VOCAB].fill(1e4);
    }
    l[3 * VOCAB + 777] = f32::NAN;
    l[4 * VOCAB..5 * VOCAB].fill(0.5);
    // Spread so that fewer than 256 logits lie within 32 of the max.
    l[5 * VOCAB..].iter_mut().for_each(|v| *v *= 10.0);
    let (modes, inv_t, u) = (
        [0i32, 2, 1, 2, 2, 2],
        [0.0f32, 1.25, 1.0, 1.0, 1.0, 0.1],
        [0.0f32, 0.0, 0.3, 0.0, 0.0, 0.0],
    );
    let (lb, mb, tb, ub, ob) = (
        upload(&l)?,
        upload(&modes)?,
        upload(&inv_t)?,
        upload(&u)?,
        poisoned::<u32>(6 * HEAD_ROW_WORDS)?,
    );
    let sc = DevBuf::zeroed(6 * LOGITS_SCRATCH_WORDS * 4)?;
    let modes_at = (mb.ptr, tb.ptr, ub.ptr);
    k.logits_rows(s, lb.ptr, 6, VOCAB, N_TEXT, modes_at, sc.ptr, ob.ptr)?;
    s.sync()?;
    let o = download::<u32>(&ob, 6 * HEAD_ROW_WORDS)?;
    // The same rows again over the scratch as the first launch left it: the same answers.
    let ob2 = poisoned::<u32>(6 * HEAD_ROW_WORDS)?;
    k.logits_rows(s, lb.ptr, 6, VOCAB, N_TEXT, modes_at, sc.ptr, ob2.ptr)?;
    s.sync()?;
    let again = download::<u32>(&ob2, 6 * HEAD_ROW_WORDS)?;
    r.line(
        "logits_rows twice",
        format!(
            "{} of {} words differ the second time (0 required)",
            o.iter().zip(&again).filter(|(a, b)| a != b).count(),
            o.len()
        ),
        o == again,
    );
    let row = |i: usize| &o[i * HEAD_ROW_WORDS..(i + 1) * HEAD_ROW_WORDS];
    let text = |i: usize| &l[i * VOCAB..i * VOCAB + N_TEXT];
    let want = argmax(text(0));
    r.line(
        "logits_rows argmax",
        format!("device {} host {want} (status {})", row(0)[1], row(0)[0]),
        row(0)[0] == 0 && row(0)[1] == want,
    );
    check_head("logits_rows head", row(1), text(1), inv_t[1], r);
    check_head("logits_rows head (wide row)", row(5), text(5), inv_t[5], r);
    check_draw(row(2), text(2), u[2], r);
    r.line(
        "logits_rows NaN row",
        format!("status {} (1 expected)", row(3)[0]),
        row(3)[0] == 1,
    );
    r.line(
        "logits_rows ties beyond the head",
        format!("status {} (2 expected: read whole)", row(4)[0]),
        row(4)[0] == 2,
    );
    Ok(())
}

fn check_head(name: &str, o: &[u32], l: &[f32], inv_t: f32, r: &mut Report) {
    let mut cand: Vec<(f32, u32)> = l.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
    cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    cand.truncate(HEAD_K);
    let max = cand[0].0;
    let total: f64 = l.iter().map(|&v| ((v - max) * inv_t).exp() as f64).sum();
    let got: Vec<(f32, u32)> = (0..o[3] as usize)
        .map(|j| (f32::from_bits(o[8 + 2 * j]), o[9 + 2 * j]))
        .collect();
    let dev_total = f32::from_bits(o[5]) as f64;
    let rel = (dev_total - total).abs() / total;
    r.line(
        name,
        format!(
            "{} candidates, {} as the host's; max {} vs {max}; sum {dev_total:.6e} vs {total:.6e} (rel {rel:.1e})",
            got.len(),
            if got == cand { "the same" } else { "NOT the same" },
            f32::from_bits(o[4])
        ),
        o[0] == 0 && got == cand && f32::from_bits(o[4]) == max && rel < 1e-4,
    );
}

/// The device's draw must sit where the running sum over ids in order passes `u` times the sum
/// (within float rounding of the host's f64 sums).
fn check_draw(o: &[u32], l: &[f32], u: f32, r: &mut Report) {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let p: Vec<f64> = l.iter().map(|&v| (v - max).exp() as f64).collect();
    let total: f64 = p.iter().sum();
    let target = u as f64 * total;
    let id = o[2] as usize;
    let before: f64 = p[..id.min(p.len())].iter().sum();
    let slack = 1e-5 * total;
    let ok =
        o[0] == 0 && id < l.len() && before <= target + slack && before + p[id] >= target - slack;
    r.line(
        "logits_rows draw",
        format!(
            "id {id}: running sum {before:.6e} .. {:.6e} around u*sum {target:.6e}",
            before + p.get(id).unwrap_or(&0.0)
        ),
        ok,
    );
}

/// `logits_rows`'s time for 1 and 64 rows in each mode (argmax, draw, head), over logits spread
/// as N(0, 3²), median of 50.
pub(super) fn time_logits_rows(k: &Kernels, s: &Stream, rng: &mut Rng) -> Result<String, String> {
    let (e0, e1) = (Event::new(true)?, Event::new(true)?);
    let l = randn(rng, 64 * VOCAB, 3.0);
    let (lb, ob) = (upload(&l)?, poisoned::<u32>(64 * HEAD_ROW_WORDS)?);
    let sc = DevBuf::zeroed(64 * LOGITS_SCRATCH_WORDS * 4)?;
    let (tb, ub) = (upload(&[1.25f32; 64])?, upload(&[0.3f32; 64])?);
    let mut out = String::from("logits_rows (rows, mode)        us\n");
    for m in [1usize, 64] {
        for (mode, name) in [(0i32, "argmax"), (1, "draw"), (2, "head")] {
            let mb = upload(&vec![mode; m])?;
            let us = median_us(s, (&e0, &e1), 50, &mut || {
                let modes_at = (mb.ptr, tb.ptr, ub.ptr);
                k.logits_rows(s, lb.ptr, m, VOCAB, N_TEXT, modes_at, sc.ptr, ob.ptr)
            })?;
            let _ = writeln!(out, "{:<30} {us:>6.1}", format!("{m}, {name}"));
        }
    }
    Ok(out)
}
