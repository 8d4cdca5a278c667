//! Log-probabilities of generated tokens, as OpenAI's `logprobs` option reports them: the
//! log-softmax of the logits after penalties and logit bias, before temperature, top-k, top-p and
//! min-p — the model's distribution as the request shaped it, not the truncated one a draw used.
//! So a token drawn at temperature 1.5 reports what the model gave it, and greedy decoding's
//! token is always the first alternative. Records are compact (an id and a log-probability each):
//! a token's text and bytes are looked up in the vocabulary only when a response is written.

/// Most alternatives reported per token (`top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One token with its log-probability (8 bytes: a whole answer's records stay small).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alternative {
    pub id: u32,
    pub logprob: f32,
}

/// A generated token's log-probability and the most probable tokens at its position (most
/// probable first; ties: lower id first).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub chosen: Alternative,
    pub top: Vec<Alternative>,
}

/// A row's log-softmax normaliser and its `n` largest logits, taken before a draw changes the row.
#[derive(Clone, Debug)]
pub struct RowLogprobs {
    /// log(sum(exp(logit))) over the row.
    lse: f64,
    /// (logit, id), largest first.
    top: Vec<(f32, u32)>,
}

impl RowLogprobs {
    /// Measure `logits` (finite or -inf, at least one finite: checked by the caller).
    pub fn measure(logits: &[f32], n: usize) -> RowLogprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        RowLogprobs {
            lse: max as f64 + sum.ln(),
            top: largest(logits, n),
        }
    }

    /// The log-probability of a token whose logit was `logit`.
    pub fn logprob(&self, logit: f32) -> f32 {
        (logit as f64 - self.lse) as f32
    }

    /// The report for token `id`, whose logit was `logit`.
    pub fn report(&self, id: u32, logit: f32) -> TokenLogprob {
        let alt = |id: u32, logit: f32| Alternative {
            id,
            logprob: self.logprob(logit),
        };
        TokenLogprob {
            chosen: alt(id, logit),
            top: self.top.iter().map(|&(l, id)| alt(id, l)).collect(),
        }
    }
}

/// The `n` largest logits (NaN skipped) as (logit, id), largest first, ties by lower id; one
/// pass with a small sorted buffer (`n` is at most [`MAX_TOP_LOGPROBS`]).
fn largest(logits: &[f32], n: usize) -> Vec<(f32, u32)> {
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return top;
    }
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || (top.len() == n && l <= top[n - 1].0) {
            continue;
        }
        let at = top.partition_point(|c| c.0 >= l);
        top.insert(at, (l, i as u32));
        top.truncate(n);
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_and_the_top_is_ordered() {
        let logits = [1.0f32, 3.0, f32::NEG_INFINITY, 3.0, 2.0];
        let m = RowLogprobs::measure(&logits, 3);
        assert_eq!(m.top, vec![(3.0, 1), (3.0, 3), (2.0, 4)]);
        let total: f64 = logits.iter().map(|&l| (m.logprob(l) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        let z = (1f64.exp() + 2.0 * 3f64.exp() + 2f64.exp()).ln();
        assert!((m.logprob(3.0) as f64 - (3.0 - z)).abs() < 1e-6);
        assert_eq!(m.logprob(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(RowLogprobs::measure(&logits, 0).top.is_empty());
        assert_eq!(RowLogprobs::measure(&logits, 9).top.len(), 5);
    }

    #[test]
    fn large_rows_keep_their_largest_logits() {
        let logits: Vec<f32> = (0..151_936u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) % 100_000) as f32)
            .collect();
        let mut sorted: Vec<(f32, u32)> = logits.iter().copied().zip(0..).collect();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        sorted.truncate(MAX_TOP_LOGPROBS);
        assert_eq!(largest(&logits, MAX_TOP_LOGPROBS), sorted);
    }
}
