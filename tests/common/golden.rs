//! Comparing our logits with golden data from transformers: top-k lists, logit tolerances, and
//! the file a golden record was made from.

/// The top `k` (id, logit) of `logits`, best first (ties: lower id first, as torch.topk here).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    ids.into_iter()
        .take(k)
        .map(|id| (id, logits[id as usize]))
        .collect()
}

/// Same ids as a set; same order wherever transformers' neighbouring logits are more than
/// `2 * tol` apart; every logit within `tol`.
pub fn check_top5(what: &str, logits: &[f32], golden: &[(u32, f32)], tol: f32) {
    let ours = top_k(logits, golden.len());
    let mut ours_ids: Vec<u32> = ours.iter().map(|p| p.0).collect();
    let mut want_ids: Vec<u32> = golden.iter().map(|p| p.0).collect();
    ours_ids.sort_unstable();
    want_ids.sort_unstable();
    assert_eq!(
        ours_ids, want_ids,
        "{what}: top-5 ids differ; ours {ours:?}, transformers {golden:?}"
    );
    for &(id, want) in golden {
        let got = logits[id as usize];
        assert!(
            (got - want).abs() <= tol,
            "{what}: logit of token {id} is {got}, transformers {want}"
        );
    }
    let rank = |id: u32| ours.iter().position(|p| p.0 == id);
    for pair in golden.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.1 - b.1 > 2.0 * tol {
            assert!(
                rank(a.0) < rank(b.0),
                "{what}: token {} must rank above {}; ours {ours:?}",
                a.0,
                b.0
            );
        }
    }
}

pub fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open model");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).expect("read model");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every listed (id, logit) within `tol` of ours, and ours in the same order wherever the listed
/// neighbours are more than `2 * tol` apart; returns the largest difference seen. (No set
/// comparison: with quantized weights the 5th and 6th can trade places within the tolerance.)
pub fn check_listed(what: &str, logits: &[f32], golden: &[(u32, f32)], tol: f32) -> f32 {
    let mut worst = 0f32;
    for &(id, want) in golden {
        let got = logits[id as usize];
        worst = worst.max((got - want).abs());
        assert!(
            (got - want).abs() <= tol,
            "{what}: logit of token {id} is {got}, transformers {want} (tolerance {tol})"
        );
    }
    for pair in golden.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.1 - b.1 > 2.0 * tol {
            assert!(
                logits[a.0 as usize] > logits[b.0 as usize],
                "{what}: token {} must rank above {}",
                a.0,
                b.0
            );
        }
    }
    worst
}
