//! Token sampling: penalties (repetition; OpenAI's presence and frequency) and logit bias, then
//! greedy (temperature 0) or temperature → top-k →
//! top-p → min-p → a seeded draw (the order Hugging Face's warpers use).
//!
//! Deterministic: the same logits, history, parameters and seed give the same token sequence.
//! Only the head of the distribution is sorted (grown until it covers what top-p/min-p keep),
//! so a 152k vocabulary costs a partial selection per token, not a full sort.

use crate::rng::Rng;

/// Sampling parameters, already validated.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 = disabled.
    pub top_k: usize,
    /// 1.0 = disabled.
    pub top_p: f32,
    /// 0.0 = disabled.
    pub min_p: f32,
    /// 1.0 = disabled.
    pub repetition_penalty: f32,
    /// OpenAI's, over the generated tokens only: a token's logit loses `presence` once it has
    /// been generated and `frequency` for each time it was. 0.0 = disabled.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Added to a token's logit: (id, bias) with unique ids. Empty = disabled.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }

    /// Whether the logits are changed before sampling (then only the whole row will do).
    pub fn edits_logits(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || !self.logit_bias.is_empty()
    }
}

/// A sequence's tokens so far: the prompt, then the generated ones.
#[derive(Clone, Copy, Debug)]
pub struct History<'a> {
    pub tokens: &'a [u32],
    /// How many of `tokens` are the prompt.
    pub prompt: usize,
}

impl<'a> History<'a> {
    pub const EMPTY: History<'static> = History {
        tokens: &[],
        prompt: 0,
    };

    /// The tokens generated so far.
    pub fn generated(&self) -> &'a [u32] {
        self.tokens.get(self.prompt..).unwrap_or(&[])
    }
}

/// A sampler for one sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    cand: Vec<(f32, u32)>,
    seen: Vec<u32>,
    /// The uniform number `want` drew for a draw over the whole row: the draw uses it whether
    /// the device makes it or the whole row comes back (one number per token either way).
    drawn: Option<f64>,
}

const FIRST_HEAD: usize = 256;
/// Largest logits a backend returns per row when it answers [`RowWant::Head`] (the first head
/// `sample_sorted` takes, so a head settles what that path settles on its first pass).
pub const DEVICE_HEAD: usize = FIRST_HEAD;

/// What a sampler needs from its sequence's next logits row (see `backend::step`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowWant {
    /// The whole row (penalties applied on the host, or a top-k beyond the head).
    Full,
    /// The largest logit's id.
    Argmax,
    /// A draw over the whole distribution at `1 / temperature = inv_t`, `u` uniform in [0, 1)
    /// drawn from the sequence's own generator.
    Draw { inv_t: f32, u: f32 },
    /// The largest logits, sorted, with the distribution's normaliser at `inv_t`.
    Head { inv_t: f32 },
}

/// The largest logits of a row: `cand` sorted descending (ties: lower id first), `max` the row's
/// largest logit, `total` the sum of `exp((l - max) * inv_t)` over the whole row.
#[derive(Clone, Debug, Default)]
pub struct LogitHead {
    pub max: f32,
    pub total: f64,
    pub cand: Vec<(f32, u32)>,
}
/// Up to this top-k, sampling works from the k largest logits alone (see `sample`).
const TOP_K_DIRECT: usize = 1024;

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            cand: Vec::new(),
            seen: Vec::new(),
            drawn: None,
        }
    }

    /// Pick the next token. `logits` may be modified (penalties, temperature).
    pub fn sample(&mut self, logits: &mut [f32], history: History) -> u32 {
        self.penalize(logits, history);
        self.pick(logits)
    }

    /// Pick the next token from logits already penalized (see [`Sampler::penalize`]); `logits`
    /// may be modified (temperature).
    pub fn pick(&mut self, logits: &mut [f32]) -> u32 {
        // Below this, 1/temperature overflows and every draw would be the top token anyway.
        if self.params.temperature < 1e-4 {
            return argmax(logits);
        }
        let k = self.params.top_k;
        if k > 0 && k <= TOP_K_DIRECT && k < logits.len() {
            self.sample_top_k(logits)
        } else {
            self.sample_sorted(logits)
        }
    }

    /// How the next row should be answered for this sampler, over a vocabulary of `vocab`; a
    /// draw over the whole distribution takes its uniform number now (one per token, as
    /// `sample` takes it).
    pub fn want(&mut self, vocab: usize) -> RowWant {
        let p = &self.params;
        if p.edits_logits() {
            return RowWant::Full;
        }
        if p.temperature < 1e-4 {
            return RowWant::Argmax;
        }
        let inv_t = 1.0 / p.temperature;
        let k = p.top_k;
        let top_k_path = k > 0 && k <= TOP_K_DIRECT && k < vocab;
        if top_k_path && k > DEVICE_HEAD || k > TOP_K_DIRECT && k < vocab {
            return RowWant::Full;
        }
        if !top_k_path && p.top_p >= 1.0 && p.min_p <= 0.0 {
            let u = self.rng.next_f64();
            self.drawn = Some(u);
            return RowWant::Draw { inv_t, u: u as f32 };
        }
        RowWant::Head { inv_t }
    }

    /// The token was chosen on the device (with the number `want` drew, if any).
    pub fn forget_drawn(&mut self) {
        self.drawn = None;
    }

    /// Sample from a row's head as `sample` would from the whole row; None when the head does
    /// not settle it (top-p's mass or min-p's cut lies beyond it): then the whole row is needed.
    /// Never asked of a sampler that edits logits (`want` answers `Full` for it); None if it is.
    pub fn sample_head(&mut self, head: &LogitHead, vocab: usize) -> Option<u32> {
        if self.params.edits_logits() {
            return None;
        }
        let inv_t = 1.0 / self.params.temperature;
        let k = self.params.top_k;
        if k > 0 && k <= TOP_K_DIRECT && k < vocab {
            // As `sample_top_k`: the k largest logits.
            let top = head.cand.get(..k)?;
            let max = top.first().map_or(0.0, |c| c.0);
            self.cand.clear();
            self.cand
                .extend(top.iter().map(|&(l, id)| (((l - max) * inv_t).exp(), id)));
            let mass = self.cand.iter().map(|c| c.0 as f64).sum();
            return Some(self.draw(mass));
        }
        // As `sample_sorted`'s first head (no top-k: the denominator is the whole row's).
        self.cand.clear();
        self.cand.extend(
            head.cand
                .iter()
                .map(|&(l, id)| (((l - head.max) * inv_t).exp(), id)),
        );
        let kept_mass: f64 = self.cand.iter().map(|c| c.0 as f64).sum();
        let covers_p = kept_mass >= self.params.top_p as f64 * head.total;
        let last = self.cand.last().map_or(0.0, |c| c.0);
        let first = self.cand.first().map_or(0.0, |c| c.0);
        let min_p_cut = self.params.min_p > 0.0 && last < self.params.min_p * first;
        let whole = self.cand.len() >= vocab;
        (covers_p || min_p_cut || whole).then(|| self.draw(head.total))
    }

    /// Top-k on: the k largest logits are the k most probable tokens, and top-k renormalises over
    /// them, so nothing outside them is needed and only k exponentials are taken. Draws what
    /// `sample_sorted` draws for the same state.
    fn sample_top_k(&mut self, logits: &[f32]) -> u32 {
        let inv_t = 1.0 / self.params.temperature;
        self.top_logits(logits, self.params.top_k);
        let max = self.cand.first().map_or(0.0, |c| c.0);
        let mut mass = 0f64;
        for c in &mut self.cand {
            c.0 = ((c.0 - max) * inv_t).exp();
            mass += c.0 as f64;
        }
        self.draw(mass)
    }

    /// The general path: probabilities over the whole vocabulary, then the smallest sorted head
    /// that settles top-k, top-p and min-p (grown 4× at a time).
    fn sample_sorted(&mut self, logits: &mut [f32]) -> u32 {
        let inv_t = 1.0 / self.params.temperature;
        let vocab = logits.len();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f64;
        for l in logits.iter_mut() {
            *l = ((*l - max) * inv_t).exp();
            total += *l as f64;
        }
        // Now logits hold unnormalised probabilities.
        let k_cap = if self.params.top_k == 0 {
            vocab
        } else {
            self.params.top_k.min(vocab)
        };
        if k_cap == vocab && self.params.top_p >= 1.0 && self.params.min_p <= 0.0 {
            return self.draw_untruncated(logits, total);
        }
        let mut head = FIRST_HEAD.min(k_cap);
        loop {
            self.select_head(logits, head);
            let kept_mass: f64 = self.cand.iter().map(|c| c.0 as f64).sum();
            let denom = if k_cap == vocab {
                total
            } else {
                self.top_k_mass(logits, k_cap, kept_mass)
            };
            let covers_p = kept_mass >= self.params.top_p as f64 * denom;
            let last = self.cand.last().map_or(0.0, |c| c.0);
            let min_p_cut = self.params.min_p > 0.0 && last < self.params.min_p * self.cand[0].0;
            if head >= k_cap || covers_p || min_p_cut {
                return self.draw(denom);
            }
            head = (head * 4).min(k_cap);
        }
    }

    /// Apply the repetition penalty (over prompt and generated tokens), the presence and
    /// frequency penalties (over generated tokens) and the logit bias, in that order.
    pub fn penalize(&mut self, logits: &mut [f32], history: History) {
        self.repeat(logits, history.tokens);
        self.presence_frequency(logits, history.generated());
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
    }

    fn repeat(&mut self, logits: &mut [f32], tokens: &[u32]) {
        let p = self.params.repetition_penalty;
        if p == 1.0 {
            return;
        }
        self.seen.clear();
        self.seen.extend_from_slice(tokens);
        self.seen.sort_unstable();
        self.seen.dedup();
        for &id in &self.seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / p } else { *l * p };
            }
        }
    }

    /// OpenAI's: `logit -= presence * (count > 0) + frequency * count`.
    fn presence_frequency(&mut self, logits: &mut [f32], generated: &[u32]) {
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        if presence == 0.0 && frequency == 0.0 {
            return;
        }
        self.seen.clear();
        self.seen.extend_from_slice(generated);
        self.seen.sort_unstable();
        for run in self.seen.chunk_by(|a, b| a == b) {
            if let Some(l) = logits.get_mut(run[0] as usize) {
                *l -= presence + frequency * run.len() as f32;
            }
        }
    }

    /// `cand` = the `k` largest logits (NaN skipped), sorted descending (ties: lower id first),
    /// in one pass: a sorted buffer of the best `k` so far, and 16-wide blocks whose maximum does
    /// not beat the buffer's last entry skipped whole (most of them, once the buffer is full).
    fn top_logits(&mut self, logits: &[f32], k: usize) {
        const BLOCK: usize = 16;
        self.cand.clear();
        let mut floor = f32::NEG_INFINITY;
        for (b, block) in logits.chunks(BLOCK).enumerate() {
            // Written as a branch-free OR so it compiles to vector compares.
            if self.cand.len() == k && !block.iter().fold(false, |any, &x| any | (x > floor)) {
                continue;
            }
            for (j, &v) in block.iter().enumerate() {
                if v.is_nan() || (self.cand.len() == k && v <= floor) {
                    continue;
                }
                // After every entry of at least the same value: equal values keep id order.
                let at = self.cand.partition_point(|c| c.0 >= v);
                self.cand.insert(at, (v, (b * BLOCK + j) as u32));
                self.cand.truncate(k);
                if self.cand.len() == k {
                    floor = self.cand[k - 1].0;
                }
            }
        }
    }

    /// `cand` = the `n` largest probabilities, sorted descending (ties: lower id first).
    fn select_head(&mut self, probs: &[f32], n: usize) {
        if n <= TOP_K_DIRECT {
            // Probabilities order as their logits do: the one-pass selection applies.
            self.top_logits(probs, n);
            return;
        }
        self.cand.clear();
        self.cand
            .extend(probs.iter().enumerate().map(|(i, &p)| (p, i as u32)));
        let cmp = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if n < self.cand.len() {
            self.cand.select_nth_unstable_by(n, cmp);
            self.cand.truncate(n);
        }
        self.cand.sort_unstable_by(cmp);
    }

    /// Mass of the top-k set (renormalisation denominator when top-k is on).
    fn top_k_mass(&self, probs: &[f32], k: usize, head_mass: f64) -> f64 {
        if self.cand.len() >= k {
            return head_mass;
        }
        let mut all: Vec<f32> = probs.to_vec();
        let cmp = |a: &f32, b: &f32| b.total_cmp(a);
        all.select_nth_unstable_by(k - 1, cmp);
        all[..k].iter().map(|&p| p as f64).sum()
    }

    /// Nothing truncated (no top-k, top-p or min-p): draw from the whole distribution, walking
    /// the ids in order (no sorting needed). `total` is the sum of `probs`.
    fn draw_untruncated(&mut self, probs: &[f32], total: f64) -> u32 {
        let u = self.drawn.take().unwrap_or_else(|| self.rng.next_f64()) * total;
        let mut acc = 0f64;
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                acc += p as f64;
                last = i;
                if u < acc {
                    return i as u32;
                }
            }
        }
        // Only when rounding left u at the very top: the last token with any mass.
        last as u32
    }

    fn draw(&mut self, denom: f64) -> u32 {
        let (top_p, min_p) = (self.params.top_p as f64, self.params.min_p);
        let p_max = self.cand.first().map_or(0.0, |c| c.0);
        let mut kept = 0;
        let mut cum = 0f64;
        for c in &self.cand {
            if kept > 0 && (cum >= top_p * denom || c.0 < min_p * p_max) {
                break;
            }
            cum += c.0 as f64;
            kept += 1;
        }
        let u = self.rng.next_f64() * cum;
        let mut acc = 0f64;
        for c in &self.cand[..kept] {
            acc += c.0 as f64;
            if u < acc {
                return c.1;
            }
        }
        self.cand[kept.saturating_sub(1)].1
    }
}

/// Index of the largest logit (lowest index on ties; NaN never wins; 0 when nothing compares).
/// Two passes written so the compiler vectorises them: the maximum over 16 independent lanes,
/// then the first index holding it (a one-pass index-tracking loop is ~10× slower, and at
/// 151,936 logits it cost ~200 µs a token).
pub fn argmax(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for (m, &x) in lane_max.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let top = lane_max
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    logits.iter().position(|&x| x == top).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: usize, p: f32, m: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            min_p: m,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed,
        }
    }

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima_and_skips_nan() {
        let mut l = vec![0.5f32; 1000];
        l[3] = f32::NAN;
        l[700] = 2.0;
        l[900] = 2.0;
        assert_eq!(argmax(&l), 700);
        l[999] = 3.0; // in the remainder after the 16-wide chunks
        assert_eq!(argmax(&l), 999);
        assert_eq!(argmax(&[f32::NAN, 1.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[]), 0);
        for n in [1usize, 15, 16, 17, 151_936] {
            let v: Vec<f32> = (0..n as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) % 1000) as f32)
                .collect();
            let slow = (0..n).fold(0, |b, i| if v[i] > v[b] { i } else { b });
            assert_eq!(argmax(&v) as usize, slow, "n = {n}");
        }
    }

    #[test]
    fn top_k_path_draws_what_the_sorted_path_draws() {
        let mut rng = Rng::new(7);
        for case in 0..60u64 {
            let vocab = [100usize, 1000, 5000][case as usize % 3];
            // Some repeated values (ties), some -inf (masked rows), spread like real logits.
            let logits: Vec<f32> = (0..vocab)
                .map(|i| match rng.next_f64() {
                    u if u < 0.02 => f32::NEG_INFINITY,
                    u if u < 0.1 => 3.0,
                    u => (u * 20.0 - 10.0) as f32 + (i % 7) as f32 * 0.01,
                })
                .collect();
            for (t, k, p, m) in [
                (0.8, 40, 0.95, 0.05),
                (1.0, 5, 1.0, 0.0),
                (0.3, 300, 0.5, 0.0),
                (2.0, 999, 0.9, 0.1),
            ] {
                if k >= vocab {
                    continue;
                }
                let seed = case * 31 + k as u64;
                let (mut a, mut b) = (
                    Sampler::new(params(t, k, p, m, seed)),
                    Sampler::new(params(t, k, p, m, seed)),
                );
                for _ in 0..5 {
                    let fast = a.sample_top_k(&logits);
                    let slow = b.sample_sorted(&mut logits.clone());
                    assert_eq!(
                        fast, slow,
                        "case {case}, T {t}, k {k}, top_p {p}, min_p {m}"
                    );
                }
            }
        }
    }

    #[test]
    fn untruncated_sampling_follows_the_distribution() {
        // Logits ln(1), ln(2), ln(3), ln(4) and a masked row: probabilities 0.1 .. 0.4, 0.
        let logits = [0.0f32, 2f32.ln(), 3f32.ln(), 4f32.ln(), f32::NEG_INFINITY];
        let mut s = Sampler::new(params(1.0, 0, 1.0, 0.0, 3));
        let mut counts = [0usize; 5];
        let n = 40_000;
        for _ in 0..n {
            counts[s.sample(&mut logits.clone(), History::EMPTY) as usize] += 1;
        }
        assert_eq!(counts[4], 0);
        for (i, &c) in counts[..4].iter().enumerate() {
            let want = (i + 1) as f64 / 10.0;
            let got = c as f64 / n as f64;
            assert!(
                (got - want).abs() < 0.01,
                "token {i}: {got} vs {want} ({counts:?})"
            );
        }
    }

    #[test]
    fn top_logits_keeps_the_k_largest_in_order() {
        let mut s = Sampler::new(params(1.0, 3, 1.0, 0.0, 1));
        let l = [1.0, f32::NAN, 5.0, 5.0, -1.0, 7.0, 5.0, f32::NEG_INFINITY];
        s.top_logits(&l, 3);
        assert_eq!(s.cand, vec![(7.0, 5), (5.0, 2), (5.0, 3)]);
        let long: Vec<f32> = (0..1000).map(|i| ((i * 37) % 1000) as f32).collect();
        s.top_logits(&long, 4);
        let ids: Vec<u32> = s.cand.iter().map(|c| c.1).collect();
        let want: Vec<u32> = [999.0f32, 998.0, 997.0, 996.0]
            .iter()
            .map(|v| long.iter().position(|x| x == v).unwrap() as u32)
            .collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut l = logits();
        let want = argmax(&l);
        assert_eq!(
            Sampler::new(params(0.0, 0, 1.0, 0.0, 1)).sample(&mut l, History::EMPTY),
            want
        );
    }

    #[test]
    fn same_seed_same_tokens_and_seeds_differ() {
        let run = |seed| {
            let mut s = Sampler::new(params(1.5, 0, 1.0, 0.0, seed));
            (0..50)
                .map(|_| s.sample(&mut logits(), History::EMPTY))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let want = argmax(&logits());
        for seed in 0..20 {
            assert_eq!(
                Sampler::new(params(1.0, 1, 1.0, 0.0, seed)).sample(&mut logits(), History::EMPTY),
                want
            );
            assert_eq!(
                Sampler::new(params(1.0, 0, 1e-6, 0.0, seed)).sample(&mut logits(), History::EMPTY),
                want
            );
            assert_eq!(
                Sampler::new(params(1.0, 0, 1.0, 0.999, seed))
                    .sample(&mut logits(), History::EMPTY),
                want
            );
        }
    }

    #[test]
    fn top_k_limits_choices() {
        let mut l = logits();
        let mut sorted: Vec<u32> = (0..1000).collect();
        sorted.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let allowed = &sorted[..5];
        let mut s = Sampler::new(params(5.0, 5, 1.0, 0.0, 9));
        for _ in 0..200 {
            l = logits();
            assert!(allowed.contains(&s.sample(&mut l, History::EMPTY)));
        }
    }

    #[test]
    fn repetition_penalty_discourages_history() {
        let mut l = vec![1.0, 0.9, -1.0];
        let mut p = params(0.0, 0, 1.0, 0.0, 0);
        p.repetition_penalty = 2.0;
        let h = History {
            tokens: &[0],
            prompt: 1,
        };
        assert_eq!(Sampler::new(p).sample(&mut l, h), 1);
    }

    /// The head a device returns for `l` at `inv_t`: the `DEVICE_HEAD` largest logits sorted
    /// (ties: lower id first), the max and the whole row's normaliser.
    fn head_of(l: &[f32], inv_t: f32) -> LogitHead {
        let mut cand: Vec<(f32, u32)> = l.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
        cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        cand.truncate(DEVICE_HEAD);
        let max = cand[0].0;
        let total = l.iter().map(|&v| ((v - max) * inv_t).exp() as f64).sum();
        LogitHead { max, total, cand }
    }

    #[test]
    fn head_answers_draw_what_the_whole_row_draws() {
        let mut rng = Rng::new(3);
        let l: Vec<f32> = (0..2000).map(|_| rng.normal() * 3.0).collect();
        let cases = [
            params(0.8, 0, 0.95, 0.0, 1),
            params(0.7, 40, 1.0, 0.0, 2),
            params(1.0, 0, 1.0, 0.1, 3),
            params(0.5, 0, 0.9, 0.05, 4),
            params(1.2, 0, 1.0, 0.0, 5),
            params(0.0, 0, 1.0, 0.0, 6),
        ];
        let (mut heads, mut draws) = (0, 0);
        for p in cases {
            let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p.clone()));
            for _ in 0..50 {
                let want = b.sample(&mut l.clone(), History::EMPTY);
                let got = match a.want(l.len()) {
                    RowWant::Argmax => argmax(&l),
                    RowWant::Head { inv_t } => {
                        heads += 1;
                        match a.sample_head(&head_of(&l, inv_t), l.len()) {
                            Some(id) => id,
                            None => a.sample(&mut l.clone(), History::EMPTY),
                        }
                    }
                    RowWant::Draw { inv_t, u } => {
                        draws += 1;
                        // As the device draws: ids in order until the running sum passes u * sum.
                        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let p: Vec<f64> = l
                            .iter()
                            .map(|&v| ((v - max) * inv_t).exp() as f64)
                            .collect();
                        let target = u as f64 * p.iter().sum::<f64>();
                        let mut acc = 0.0;
                        p.iter()
                            .position(|&x| {
                                acc += x;
                                target < acc
                            })
                            .unwrap_or(l.len() - 1) as u32
                    }
                    RowWant::Full => a.sample(&mut l.clone(), History::EMPTY),
                };
                assert_eq!(got, want, "{p:?}");
            }
        }
        assert!(heads >= 200 && draws >= 50, "heads {heads}, draws {draws}");
    }

    #[test]
    fn a_whole_row_after_a_draw_want_draws_what_sample_alone_draws() {
        let mut rng = Rng::new(9);
        let l: Vec<f32> = (0..3000).map(|_| rng.normal() * 2.0).collect();
        let p = params(0.9, 0, 1.0, 0.0, 11);
        let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p));
        for _ in 0..40 {
            assert!(matches!(a.want(l.len()), RowWant::Draw { .. }));
            // A backend that answers with whole rows (the CPU): one number per token either way.
            assert_eq!(
                a.sample(&mut l.clone(), History::EMPTY),
                b.sample(&mut l.clone(), History::EMPTY)
            );
        }
    }

    #[test]
    fn penalties_and_wide_top_k_want_the_whole_row() {
        let mut p = params(0.8, 0, 0.9, 0.0, 1);
        p.repetition_penalty = 1.1;
        assert_eq!(Sampler::new(p).want(1000), RowWant::Full);
        assert_eq!(
            Sampler::new(params(0.8, 300, 1.0, 0.0, 1)).want(1000),
            RowWant::Full
        );
        assert_eq!(
            Sampler::new(params(0.8, 2000, 1.0, 0.0, 1)).want(10_000),
            RowWant::Full
        );
        assert!(matches!(
            Sampler::new(params(0.8, 0, 1.0, 0.0, 1)).want(1000),
            RowWant::Draw { .. }
        ));
        assert_eq!(
            Sampler::new(params(0.0, 0, 1.0, 0.0, 1)).want(1000),
            RowWant::Argmax
        );
    }

    #[test]
    fn presence_and_frequency_penalise_generated_tokens_only() {
        let mut p = params(0.0, 0, 1.0, 0.0, 0);
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.25;
        // Prompt [3, 3]; generated [1, 2, 1].
        let h = History {
            tokens: &[3, 3, 1, 2, 1],
            prompt: 2,
        };
        let mut l = vec![1.0f32; 5];
        Sampler::new(p.clone()).penalize(&mut l, h);
        assert_eq!(l, vec![1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25, 1.0, 1.0]);
        // A negative presence penalty lifts generated tokens, not the prompt's token 3.
        p.presence_penalty = -2.0;
        p.frequency_penalty = 0.0;
        let mut l = vec![0.0f32, 0.1, 0.5, 2.4];
        assert_eq!(Sampler::new(p).sample(&mut l, h), 2);
    }

    #[test]
    fn logit_bias_shifts_its_tokens() {
        let mut p = params(0.0, 0, 1.0, 0.0, 0);
        p.logit_bias = vec![(0, -100.0), (2, 3.0), (9, 1.0)];
        let mut l = vec![5.0f32, 1.0, 1.0, f32::NEG_INFINITY];
        let mut s = Sampler::new(p.clone());
        s.penalize(&mut l, History::EMPTY);
        assert_eq!(l, vec![-95.0, 1.0, 4.0, f32::NEG_INFINITY]);
        assert_eq!(s.pick(&mut l), 2);
        // +100 makes a token all but certain at any temperature.
        p.temperature = 1.0;
        p.logit_bias = vec![(1, 100.0)];
        let mut s = Sampler::new(p);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits(), History::EMPTY), 1);
        }
    }

    #[test]
    fn edited_logits_never_take_a_device_answer() {
        let row: Vec<f32> = (0..2000).map(|i| (i % 97) as f32 / 10.0).collect();
        let head = head_of(&row, 1.0);
        for edit in 0..3 {
            for (t, k, top_p) in [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 40, 1.0), (0.8, 0, 0.9)] {
                let mut p = params(t, k, top_p, 0.0, 1);
                match edit {
                    0 => p.presence_penalty = 0.1,
                    1 => p.frequency_penalty = -0.1,
                    _ => p.logit_bias = vec![(5, 0.5)],
                }
                let mut s = Sampler::new(p.clone());
                assert_eq!(s.want(row.len()), RowWant::Full, "{p:?}");
                assert_eq!(s.sample_head(&head, row.len()), None, "{p:?}");
            }
        }
    }
}
