//! Log-probabilities in OpenAI's two response shapes: chat's `logprobs.content[]` of
//! `{token, logprob, bytes, top_logprobs}`, and legacy completions' parallel arrays `tokens`,
//! `token_logprobs`, `top_logprobs` (`{token: logprob}` per position) and `text_offset`.
//! A log-probability that is not finite (a token masked out) reads as -9999.0, as OpenAI writes it.

use serde_json::{json, Map, Value};

use crate::logprobs::{Alternative, TokenLogprob};
use crate::openai::Route;

fn finite(lp: f32) -> f64 {
    if lp.is_finite() {
        lp as f64
    } else {
        -9999.0
    }
}

fn chat_alt(a: &Alternative) -> Value {
    json!({"token": a.token, "logprob": finite(a.logprob), "bytes": a.bytes})
}

fn chat_entry(lp: &TokenLogprob) -> Value {
    let mut v = chat_alt(&lp.chosen);
    v["top_logprobs"] = lp.top.iter().map(chat_alt).collect();
    v
}

/// Chat's `choices[].logprobs` for `lps`.
fn chat(lps: &[TokenLogprob]) -> Value {
    json!({"content": lps.iter().map(chat_entry).collect::<Vec<_>>(), "refusal": null})
}

/// Completions' `choices[].logprobs` for `lps`, the first token starting at character `offset`
/// of the choice's text; returns it and the offset after the last token.
fn completion(lps: &[TokenLogprob], mut offset: usize) -> (Value, usize) {
    let mut text_offset = Vec::with_capacity(lps.len());
    for lp in lps {
        text_offset.push(offset);
        offset += lp.chosen.token.chars().count();
    }
    let top: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let m: Map<String, Value> = lp
                .top
                .iter()
                .map(|a| (a.token.clone(), json!(finite(a.logprob))))
                .collect();
            Value::Object(m)
        })
        .collect();
    let v = json!({
        "tokens": lps.iter().map(|lp| lp.chosen.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|lp| finite(lp.chosen.logprob)).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    });
    (v, offset)
}

/// Tokens' log-probabilities on their way into one choice's responses.
#[derive(Debug, Default)]
pub struct Pending {
    tokens: Vec<TokenLogprob>,
    /// Characters of the completion's text the reported tokens covered.
    offset: usize,
}

impl Pending {
    pub fn push(&mut self, lp: TokenLogprob) {
        self.tokens.push(lp);
    }

    /// The `logprobs` value for what is pending (then nothing is), null when nothing is.
    pub fn take(&mut self, route: Route) -> Value {
        if self.tokens.is_empty() {
            return Value::Null;
        }
        let lps = std::mem::take(&mut self.tokens);
        match route {
            Route::Chat => chat(&lps),
            Route::Completions => {
                let (v, end) = completion(&lps, self.offset);
                self.offset = end;
                v
            }
        }
    }
}

/// The `logprobs` value of a whole response's choice.
pub fn whole(lps: &[TokenLogprob], route: Route) -> Value {
    match route {
        Route::Chat => chat(lps),
        Route::Completions => completion(lps, 0).0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alt(id: u32, token: &str, logprob: f32) -> Alternative {
        Alternative {
            id,
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob,
        }
    }

    fn lps() -> Vec<TokenLogprob> {
        vec![
            TokenLogprob {
                chosen: alt(1, "Hé", -0.5),
                top: vec![alt(1, "Hé", -0.5), alt(2, "x", f32::NEG_INFINITY)],
            },
            TokenLogprob {
                chosen: alt(3, "!", -1.0),
                top: vec![],
            },
        ]
    }

    #[test]
    fn both_shapes_carry_tokens_logprobs_and_alternatives() {
        let c = whole(&lps(), Route::Chat);
        assert_eq!(c["content"][0]["token"], "Hé");
        assert_eq!(c["content"][0]["bytes"], json!([72, 195, 169]));
        assert_eq!(c["content"][0]["top_logprobs"][1]["logprob"], -9999.0);
        assert_eq!(c["content"][1]["logprob"], -1.0);
        let l = whole(&lps(), Route::Completions);
        assert_eq!(l["tokens"], json!(["Hé", "!"]));
        assert_eq!(l["token_logprobs"], json!([-0.5, -1.0]));
        assert_eq!(l["top_logprobs"][0]["Hé"], -0.5);
        assert_eq!(l["text_offset"], json!([0, 2]));
    }

    #[test]
    fn streamed_offsets_continue_across_chunks() {
        let mut p = Pending::default();
        let [a, b] = <[TokenLogprob; 2]>::try_from(lps()).unwrap();
        assert_eq!(p.take(Route::Completions), Value::Null);
        p.push(a);
        assert_eq!(p.take(Route::Completions)["text_offset"], json!([0]));
        p.push(b);
        assert_eq!(p.take(Route::Completions)["text_offset"], json!([2]));
    }
}
