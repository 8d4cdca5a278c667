//! Causal grouped-query attention over one sequence's KV cache, on the CPU.

use std::cell::RefCell;

use rayon::prelude::*;

use super::ops::softmax;
use super::simd::WeightElem;

/// One sequence's keys and values for every layer: `[layer][position][kv_dim]`, F32.
#[derive(Debug)]
pub struct KvCache {
    pub n_layer: usize,
    pub capacity: usize,
    pub kv_dim: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    pub fn new(n_layer: usize, capacity: usize, kv_dim: usize) -> KvCache {
        let n = n_layer * capacity * kv_dim;
        KvCache {
            n_layer,
            capacity,
            kv_dim,
            k: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }

    fn range(&self, layer: usize, pos: usize, n: usize) -> std::ops::Range<usize> {
        let base = (layer * self.capacity + pos) * self.kv_dim;
        base..base + n * self.kv_dim
    }

    /// Store `n` positions of K and V (`[n][kv_dim]` each) at `pos..pos+n` of `layer`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.kv_dim;
        let r = self.range(layer, pos, n);
        self.k[r.clone()].copy_from_slice(k);
        self.v[r].copy_from_slice(v);
    }

    /// K and V of `layer` for positions `0..len`.
    pub fn layer(&self, layer: usize, len: usize) -> (&[f32], &[f32]) {
        let r = self.range(layer, 0, len);
        (&self.k[r.clone()], &self.v[r])
    }
}

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[t][h] = softmax(q[t][h] · K[0..=start+t]ᵀ / √d) · V` for `n_tok` tokens at positions
/// `start..start+n_tok`; query head `h` reads KV head `h / (n_head / n_kv_head)`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], start: usize, s: AttnShape, out: &mut [f32]) {
    let (hd, kv_dim) = (s.head_dim, s.n_kv_head * s.head_dim);
    let group = s.n_head / s.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let (t, h) = (i / s.n_head, i % s.n_head);
        let g = h / group;
        let qh = &q[i * hd..(i + 1) * hd];
        let len = start + t + 1;
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            scores.extend((0..len).map(|p| {
                let kp = &k[p * kv_dim + g * hd..p * kv_dim + (g + 1) * hd];
                f32::dot1(kp, qh) * scale
            }));
            softmax(&mut scores);
            o.fill(0.0);
            for (p, &w) in scores.iter().enumerate() {
                let vp = &v[p * kv_dim + g * hd..p * kv_dim + (g + 1) * hd];
                for (a, &b) in o.iter_mut().zip(vp) {
                    *a += w * b;
                }
            }
        });
    });
}
