//! The CPU's paged KV cache and causal grouped-query attention over it: each sequence's keys and
//! values live in fixed-size blocks of one pool, found through the sequence's block table.

use std::cell::RefCell;

use rayon::prelude::*;

use super::ops::softmax;
use super::simd::WeightElem;
use crate::backend::step::{pool_row, KvGeometry};

/// K and V of every layer for a pool of blocks: `[layer][block][slot][kv_dim]`, F32.
#[derive(Debug)]
pub struct PagedKv {
    pub geometry: KvGeometry,
    pub kv_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl PagedKv {
    /// Reserve the pool (zeroed pages: the memory is committed as blocks are first written).
    pub fn new(n_layer: usize, geometry: KvGeometry, kv_dim: usize) -> PagedKv {
        let n = geometry.tokens() * kv_dim;
        PagedKv {
            geometry,
            kv_dim,
            k: (0..n_layer).map(|_| vec![0.0; n]).collect(),
            v: (0..n_layer).map(|_| vec![0.0; n]).collect(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.len() * 4).sum()
    }

    fn offset(&self, blocks: &[u32], pos: usize) -> usize {
        let bs = self.geometry.block_size;
        pool_row(blocks, pos, bs) * self.kv_dim
    }

    /// Store one position's K and V (`kv_dim` each) of `layer`.
    pub fn store(&mut self, layer: usize, blocks: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(blocks, pos);
        self.k[layer][o..o + self.kv_dim].copy_from_slice(k);
        self.v[layer][o..o + self.kv_dim].copy_from_slice(v);
    }

    /// The K and V pools of `layer`.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// What scores are multiplied by (`HParams::attn_scale`).
    pub scale: f32,
    /// A local layer's window: a query at position p reads keys p - window + 1 ..= p.
    pub window: Option<usize>,
}

/// Where one query row reads its keys: the sequence's block table and its position.
#[derive(Clone, Copy, Debug)]
pub struct QueryRow<'a> {
    pub blocks: &'a [u32],
    pub pos: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[r][h] = softmax(q[r][h] · K[first..=pos_r]ᵀ · scale) · V` (scale 1/√d but for Gemma 3 27B) (`first` 0, or the start of a
/// local layer's window) for every row `r`, each over its own
/// sequence's blocks; query head `h` reads KV head `h / (n_head / n_kv_head)`. Each (row, head)
/// is reduced in position order on its own, so a row's result does not depend on the others.
pub fn paged_attention(
    q: &[f32],
    kv: &PagedKv,
    layer: usize,
    rows: &[QueryRow<'_>],
    s: AttnShape,
    out: &mut [f32],
) {
    let (hd, kv_dim, bs) = (s.head_dim, kv.kv_dim, kv.geometry.block_size);
    let group = s.n_head / s.n_kv_head;
    let scale = s.scale;
    let (kl, vl) = kv.layer(layer);
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let (row, h) = (rows[i / s.n_head], i % s.n_head);
        let g = h / group;
        let qh = &q[i * hd..(i + 1) * hd];
        let len = row.pos + 1;
        let first = s.window.map_or(0, |w| len.saturating_sub(w));
        // Offset of position p's head-g vector in the layer's pool.
        let at = |p: usize| pool_row(row.blocks, p, bs) * kv_dim + g * hd;
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            scores.extend((first..len).map(|p| f32::dot1(&kl[at(p)..at(p) + hd], qh) * scale));
            softmax(&mut scores);
            o.fill(0.0);
            for (p, &w) in (first..).zip(scores.iter()) {
                for (a, &b) in o.iter_mut().zip(&vl[at(p)..at(p) + hd]) {
                    *a += w * b;
                }
            }
        });
    });
}
