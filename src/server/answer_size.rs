//! The size of a whole (not streamed) OpenAI answer, bounded before any of it is generated: every
//! choice's text, and with log-probabilities each token's record and its alternatives, are
//! counted at the most a token of this vocabulary can take in the response's JSON. A request
//! whose bound exceeds `--max-answer-bytes` is refused with a 400 naming the parameters that
//! multiply it (`n`, `max_tokens`, `logprobs` / `top_logprobs`), so memory for the answer is
//! known, and capped, up front. Streamed answers are sent chunk by chunk and need no bound.

use crate::openai::Route;
use crate::request::RequestError;
use crate::tokenizer::Tokenizer;

/// Default `--max-answer-bytes`.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 64 << 20;

/// Bytes a log-probability record takes beyond its token's text and bytes at most: the keys,
/// a float written in full (`-1.2345678901234567e-300`), brackets and separators.
const RECORD_OVERHEAD: usize = 72;
/// A choice's fixed part (index, role, finish reason, the empty lists) at most.
const CHOICE_OVERHEAD: usize = 256;
/// The envelope and usage at most.
const ENVELOPE: usize = 1024;

/// The largest JSON a single token of one vocabulary can take, measured once at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerBounds {
    /// A token's text inside a JSON string (escaped), doubled: tool-call arguments are JSON
    /// written inside a JSON string.
    text: usize,
    /// One log-probability record: its escaped text, its `bytes` list and the rest.
    record: usize,
}

/// `s` as JSON writes it between quotes.
fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// `[195,169]`: at most four characters a byte.
fn byte_list_len(bytes: &[u8]) -> usize {
    2 + bytes.len() * 4
}

impl AnswerBounds {
    /// Measure every token of `tok`'s vocabulary.
    pub fn of(tok: &Tokenizer) -> AnswerBounds {
        let (mut text, mut record) = (0, 0);
        for id in 0..tok.vocab_size() as u32 {
            let bytes = tok.token_bytes(id).unwrap_or_default();
            let t = escaped_len(&String::from_utf8_lossy(bytes));
            text = text.max(t);
            // Completions write the text three times (token, top map key, offset's source);
            // chat writes it once with its byte list: take the larger.
            record = record.max((t + byte_list_len(bytes)).max(3 * t));
        }
        AnswerBounds {
            text: 2 * text,
            record: record + RECORD_OVERHEAD,
        }
    }

    /// The most bytes a whole answer of `n` choices of `max_tokens` tokens can take, reporting
    /// `alternatives` per token when log-probabilities are asked for.
    pub fn bound(&self, n: usize, max_tokens: usize, alternatives: Option<usize>) -> usize {
        let per_token = match alternatives {
            Some(k) => self.text + (1 + k) * self.record,
            None => self.text,
        };
        let choice = per_token.saturating_mul(max_tokens) + CHOICE_OVERHEAD;
        choice.saturating_mul(n).saturating_add(ENVELOPE)
    }
}

/// The limit on a whole answer and the vocabulary's bounds.
#[derive(Clone, Copy, Debug)]
pub struct AnswerCap {
    pub bounds: AnswerBounds,
    pub max_bytes: usize,
}

impl AnswerCap {
    /// Refuse a whole answer that could exceed the limit, naming what multiplies its size.
    pub fn check(
        &self,
        route: Route,
        n: usize,
        max_tokens: usize,
        alternatives: Option<usize>,
    ) -> Result<(), RequestError> {
        let bound = self.bounds.bound(n, max_tokens, alternatives);
        if bound <= self.max_bytes {
            return Ok(());
        }
        let mut named = vec![format!("n ({n})"), format!("max_tokens ({max_tokens})")];
        let field = match (route, alternatives) {
            (_, None) => "max_tokens",
            (Route::Chat, Some(k)) => {
                named.push(format!("logprobs with top_logprobs ({k})"));
                "top_logprobs"
            }
            (Route::Completions, Some(k)) => {
                named.push(format!("logprobs ({k})"));
                "logprobs"
            }
        };
        Err(RequestError {
            field: field.into(),
            message: format!(
                "a whole answer with {} could take up to {bound} bytes; the limit is {} bytes \
                 (--max-answer-bytes): lower them, or set \"stream\": true",
                named.join(", "),
                self.max_bytes
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_counts_what_json_writes() {
        assert_eq!(escaped_len("ab"), 2);
        assert_eq!(escaped_len("\"\\\n"), 6);
        assert_eq!(escaped_len("\u{1}"), 6);
        assert_eq!(escaped_len("é"), 2);
    }

    #[test]
    fn bounds_grow_with_every_factor_and_name_them() {
        let cap = AnswerCap {
            bounds: AnswerBounds {
                text: 10,
                record: 100,
            },
            max_bytes: 1 << 20,
        };
        let b = cap.bounds;
        assert!(b.bound(2, 100, None) > b.bound(1, 100, None));
        assert!(b.bound(1, 200, None) > b.bound(1, 100, None));
        assert!(b.bound(1, 100, Some(5)) > b.bound(1, 100, Some(0)));
        assert!(b.bound(1, 100, Some(0)) > b.bound(1, 100, None));
        assert!(cap.check(Route::Chat, 1, 100, Some(20)).is_ok());
        let e = cap.check(Route::Chat, 16, 4000, Some(20)).unwrap_err();
        assert_eq!(e.field, "top_logprobs");
        for part in [
            "n (16)",
            "max_tokens (4000)",
            "top_logprobs (20)",
            "1048576",
        ] {
            assert!(e.message.contains(part), "{}", e.message);
        }
        let e = cap.check(Route::Completions, 16, 40000, None).unwrap_err();
        assert_eq!(e.field, "max_tokens");
        let huge = b.bound(usize::MAX, usize::MAX, Some(20));
        assert_eq!(huge, usize::MAX);
    }
}
