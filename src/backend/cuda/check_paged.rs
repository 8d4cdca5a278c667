//! `check-cuda`'s paged KV checks: attention of rows of several sequences over their own block
//! tables in a shared pool (a prompt chunk and decode rows in one launch), the decode attention
//! through a block table, and RoPE's KV append into given pool rows — each against an f64
//! reference over the same sequences gathered into contiguous rows.

use half::f16;

use super::check::{
    download, f16s, hp_for, poisoned, randh, randn, upload, Report, TOL_F16, TOL_F32,
};
use super::check_attention::attention_ref;
use super::driver::Stream;
use super::kernels::{Kernels, Paged, RowsAt, RowsSplit};
use crate::backend::cpu::ops;
use crate::rng::Rng;

const BS: usize = 16;
const POOL_BLOCKS: usize = 40;

/// One sequence of the batch: first new position, new rows, its blocks in the pool.
struct Seq {
    pos: usize,
    rows: usize,
    blocks: Vec<i32>,
}

impl Seq {
    fn len(&self) -> usize {
        self.pos + self.rows
    }
    /// The pool rows of positions 0..len, gathered.
    fn gather(&self, pool: &[f16], kvd: usize) -> Vec<f16> {
        (0..self.len())
            .flat_map(|p| {
                let row = self.blocks[p / BS] as usize * BS + p % BS;
                pool[row * kvd..(row + 1) * kvd].iter().copied()
            })
            .collect()
    }
}

/// Three sequences on shuffled blocks: a prompt chunk after 20 cached positions and two decode
/// rows (one a block's first position, one deep in its sequence).
fn batch(rng: &mut Rng) -> Vec<Seq> {
    let mut free: Vec<i32> = (0..POOL_BLOCKS as i32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.next_u64() as usize % (i + 1));
    }
    [(20usize, 17usize), (16, 1), (99, 1)]
        .into_iter()
        .map(|(pos, rows)| {
            let n = (pos + rows).div_ceil(BS);
            let blocks = free.split_off(free.len() - n);
            Seq { pos, rows, blocks }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn check_paged(
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
    let seqs = batch(rng);
    let n: usize = seqs.iter().map(|q| q.rows).sum();
    let kc = randh(rng, POOL_BLOCKS * BS * kvd, 1.0);
    let vc = randh(rng, POOL_BLOCKS * BS * kvd, 1.0);
    let q = randn(rng, n * qd, 1.0);
    let (mut row_pos, mut row_tab, mut tables) = (Vec::new(), Vec::new(), Vec::<i32>::new());
    let mut want = Vec::new();
    for sq in &seqs {
        let (ks, vs) = (sq.gather(&kc, kvd), sq.gather(&vc, kvd));
        for j in 0..sq.rows {
            let t = row_pos.len();
            row_pos.push((sq.pos + j) as i32);
            row_tab.push(tables.len() as i32);
            let qr = &q[t * qd..(t + 1) * qd];
            want.extend(attention_ref(qr, &ks, &vs, &[sq.pos + j], &hp));
        }
        tables.extend(&sq.blocks);
    }
    let (qb, kb, vb, ob) = (
        upload(&q)?,
        upload(&kc)?,
        upload(&vc)?,
        poisoned::<f16>(n * qd)?,
    );
    let (pb, tb, tab) = (upload(&row_pos)?, upload(&row_tab)?, upload(&tables)?);
    let at = RowsAt {
        row_pos: pb.ptr,
        row_tab: tb.ptr,
        tables: tab.ptr,
        bs: BS,
        ..RowsAt::default()
    };
    k.attn_rows(s, qb.ptr, kb.ptr, vb.ptr, ob.ptr, n, &at, &hp, 0)?;
    s.sync()?;
    let plain = download::<f16>(&ob, n * qd)?;
    r.err(
        &format!("attn_rows paged {n_head}/{n_kv}x{d}"),
        &f16s(&plain),
        &want,
        TOL_F16,
    );
    let ops = (qb.ptr, kb.ptr, vb.ptr);
    check_split(k, s, r, &hp, ops, &at, &row_pos, &plain, &want)?;
    let qrow = &q[(n - 1) * qd..];
    check_decode_table(
        k,
        s,
        r,
        &hp,
        (kb.ptr, vb.ptr),
        &seqs[2],
        qrow,
        &want[(n - 1) * qd..],
    )
}

/// The last sequence's decode row (`qrow`) through its block table, split 32 keys at a time.
#[allow(clippy::too_many_arguments)]
fn check_decode_table(
    k: &Kernels,
    s: &Stream,
    r: &mut Report,
    hp: &crate::model::HParams,
    (kc, vc): (u64, u64),
    last: &Seq,
    qrow: &[f32],
    want: &[f64],
) -> Result<(), String> {
    let (qd, d, n_head, n_kv) = (hp.q_dim(), hp.head_dim, hp.n_head, hp.n_kv_head);
    let (split, max_splits) = (32usize, 8usize);
    let (qb, posb, tblb) = (
        upload(qrow)?,
        upload(&[last.pos as i32])?,
        upload(&last.blocks)?,
    );
    let count = upload(&vec![0i32; n_head])?;
    let (pa, pm, out) = (
        poisoned::<f32>(n_head * max_splits * d)?,
        poisoned::<f32>(n_head * max_splits * 2)?,
        poisoned::<f32>(qd)?,
    );
    let pg = Paged {
        table: tblb.ptr,
        bs: BS,
    };
    k.attn_decode_merged(
        s, qb.ptr, kc, vc, pg, pa.ptr, pm.ptr, out.ptr, count.ptr, posb.ptr, split, max_splits, hp,
        0,
    )?;
    s.sync()?;
    r.err(
        &format!("attn_decode_merge paged {n_head}/{n_kv}x{d}"),
        &download::<f32>(&out, qd)?,
        want,
        TOL_F32,
    );
    Ok(())
}

/// The rows of `check_paged` split over their keys, 32 at a time (a grid of 8 splits; the deepest
/// row has 100 keys, so 4, the others 17 to 37 keys, so 1 or 2): against the reference, and rows
/// of at most 32 keys bit-identical to the plain kernel's `plain` (one split is its sum).
#[allow(clippy::too_many_arguments)]
fn check_split(
    k: &Kernels,
    s: &Stream,
    r: &mut Report,
    hp: &crate::model::HParams,
    (q, kc, vc): (u64, u64, u64),
    at: &RowsAt,
    row_pos: &[i32],
    plain: &[f16],
    want: &[f64],
) -> Result<(), String> {
    let (n, qd, d, n_head, n_kv) = (
        row_pos.len(),
        hp.q_dim(),
        hp.head_dim,
        hp.n_head,
        hp.n_kv_head,
    );
    let (chunk, splits) = (32usize, 8usize);
    let parts = n * n_head * splits;
    let (sa, sm, so) = (
        poisoned::<f32>(parts * d)?,
        poisoned::<f32>(parts * 2)?,
        poisoned::<f16>(n * qd)?,
    );
    let sp = RowsSplit {
        acc: sa.ptr,
        ml: sm.ptr,
        chunk,
        splits,
    };
    // A window across the splits: the split rows against attn_rows with the same window (itself
    // checked against the f64 reference in check.rs).
    let window = chunk + 3;
    k.attn_rows_split(s, q, kc, vc, so.ptr, n, at, &sp, hp, window)?;
    let wo = poisoned::<f16>(n * qd)?;
    k.attn_rows(s, q, kc, vc, wo.ptr, n, at, hp, window)?;
    s.sync()?;
    r.err(
        &format!("attn_rows_split paged window {window} {n_head}/{n_kv}x{d}"),
        &f16s(&download::<f16>(&so, n * qd)?),
        &f16s(&download::<f16>(&wo, n * qd)?)
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>(),
        TOL_F16,
    );
    k.attn_rows_split(s, q, kc, vc, so.ptr, n, at, &sp, hp, 0)?;
    s.sync()?;
    let split_out = download::<f16>(&so, n * qd)?;
    r.err(
        &format!("attn_rows_split paged {n_head}/{n_kv}x{d}"),
        &f16s(&split_out),
        want,
        TOL_F16,
    );
    let short: Vec<usize> = (0..n).filter(|&t| row_pos[t] < chunk as i32).collect();
    let same = short.iter().all(|&t| {
        let row = t * qd..(t + 1) * qd;
        plain[row.clone()]
            .iter()
            .zip(&split_out[row])
            .all(|(a, b)| a.to_bits() == b.to_bits())
    });
    r.line(
        &format!("attn_rows_split one split {n_head}/{n_kv}x{d}"),
        format!(
            "{} row(s) of at most {chunk} keys identical to attn_rows",
            short.len()
        ),
        same && !short.is_empty(),
    );
    Ok(())
}

/// RoPE + KV append of rows at scattered positions into given pool rows.
pub(super) fn check_rope_slots(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
) -> Result<(), String> {
    let hp = hp_for(14, 2, 64);
    let (q, kv, d) = (hp.q_dim(), hp.kv_dim(), hp.head_dim);
    let row = q + 2 * kv;
    let (pos, slots) = ([5i32, 17, 40, 333], [99i32, 3, 640, 17]);
    let n = pos.len();
    let pool_rows = 700;
    let qkv = randn(rng, n * row, 1.0);
    let bias = randn(rng, row, 0.3);
    let (qb, bb, pb, sb) = (
        upload(&qkv)?,
        upload(&bias)?,
        upload(&pos)?,
        upload(&slots)?,
    );
    let (qo, kc, vc) = (
        poisoned::<f32>(n * q)?,
        poisoned::<f16>(pool_rows * kv)?,
        poisoned::<f16>(pool_rows * kv)?,
    );
    let at = RowsAt {
        row_pos: pb.ptr,
        slots: sb.ptr,
        bs: BS,
        ..RowsAt::default()
    };
    let (post, inv, _ib) = super::check_rope::biased_post(&hp, bb.ptr)?;
    k.rope_qkv(s, qb.ptr, &post, qo.ptr, kc.ptr, vc.ptr, &at, n, &hp)?;
    s.sync()?;
    let (kh, vh) = (
        download::<f16>(&kc, pool_rows * kv)?,
        download::<f16>(&vc, pool_rows * kv)?,
    );
    let (mut wq, mut wk, mut wv, mut gk, mut gv) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut cs, mut sn) = (vec![0f32; d / 2], vec![0f32; d / 2]);
    for t in 0..n {
        let mut x: Vec<f32> = (0..row).map(|c| qkv[t * row + c] + bias[c]).collect();
        ops::rope_table(pos[t] as usize, &inv, 1.0, &mut cs, &mut sn);
        ops::rope_apply(&mut x[..q + kv], d, &cs, &sn);
        wq.extend(x[..q].iter().map(|&v| v as f64));
        wk.extend(x[q..q + kv].iter().map(|&v| v as f64));
        wv.extend(x[q + kv..].iter().map(|&v| v as f64));
        let at = slots[t] as usize * kv;
        gk.extend(f16s(&kh[at..at + kv]));
        gv.extend(f16s(&vh[at..at + kv]));
    }
    r.err(
        "rope_qkv rows q",
        &download::<f32>(&qo, n * q)?,
        &wq,
        TOL_F32,
    );
    r.err("rope_qkv rows k into slots", &gk, &wk, TOL_F16);
    r.err("rope_qkv rows v into slots", &gv, &wv, TOL_F16);
    Ok(())
}
