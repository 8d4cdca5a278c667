//! Log-probabilities in OpenAI's two response shapes: chat's `logprobs.content[]` of
//! `{token, logprob, bytes, top_logprobs}`, and legacy completions' parallel arrays `tokens`,
//! `token_logprobs`, `top_logprobs` (`{token: logprob}` per position) and `text_offset`.
//! A log-probability that is not finite (a token masked out) reads as -9999.0, as OpenAI writes it.
//!
//! Both shapes are `Serialize` views over the compact records and the vocabulary, so a whole
//! answer is written straight into its response bytes (no JSON tree of every token's
//! alternatives), and a stream chunk becomes a small `Value` through the same code.

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct, Serializer};
use serde::Serialize;
use serde_json::Value;

use crate::logprobs::{Alternative, TokenLogprob};
use crate::openai::Route;
use crate::tokenizer::Tokenizer;

fn finite(lp: f32) -> f64 {
    if lp.is_finite() {
        lp as f64
    } else {
        -9999.0
    }
}

/// A token's text on its own (lossy where it is part of a UTF-8 character).
fn text(tok: &Tokenizer, id: u32) -> String {
    tok.token_text(id).unwrap_or_default()
}

/// One alternative as chat writes it: `{token, logprob, bytes}` (+ `top_logprobs` for a chosen one).
struct ChatAlt<'a> {
    tok: &'a Tokenizer,
    alt: Alternative,
    top: Option<&'a [Alternative]>,
}

impl Serialize for ChatAlt<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fields = if self.top.is_some() { 4 } else { 3 };
        let mut m = s.serialize_struct("TopLogprob", fields)?;
        m.serialize_field("token", &text(self.tok, self.alt.id))?;
        m.serialize_field("logprob", &finite(self.alt.logprob))?;
        let bytes = self.tok.token_bytes(self.alt.id).unwrap_or_default();
        m.serialize_field("bytes", bytes)?;
        if let Some(top) = self.top {
            m.serialize_field("top_logprobs", &Alts { tok: self.tok, top })?;
        }
        m.end()
    }
}

/// A token's alternatives as chat lists them.
struct Alts<'a> {
    tok: &'a Tokenizer,
    top: &'a [Alternative],
}

impl Serialize for Alts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.top.len()))?;
        for &alt in self.top {
            seq.serialize_element(&ChatAlt {
                tok: self.tok,
                alt,
                top: None,
            })?;
        }
        seq.end()
    }
}

/// Chat's `choices[].logprobs`: `{content: [...], refusal: null}`.
pub struct Chat<'a> {
    tok: &'a Tokenizer,
    lps: &'a [TokenLogprob],
}

impl Serialize for Chat<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Content<'a>(&'a Chat<'a>);
        impl Serialize for Content<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.lps.len()))?;
                for lp in self.0.lps {
                    seq.serialize_element(&ChatAlt {
                        tok: self.0.tok,
                        alt: lp.chosen,
                        top: Some(&lp.top),
                    })?;
                }
                seq.end()
            }
        }
        let mut m = s.serialize_struct("ChatLogprobs", 2)?;
        m.serialize_field("content", &Content(self))?;
        m.serialize_field("refusal", &Value::Null)?;
        m.end()
    }
}

/// Completions' `choices[].logprobs`, the first token starting at character `offset` of the
/// choice's text.
pub struct Completion<'a> {
    tok: &'a Tokenizer,
    lps: &'a [TokenLogprob],
    offset: usize,
}

/// A closure serialised as a sequence of what it yields.
struct SeqOf<F>(F);

impl<T: Serialize, I: Iterator<Item = T>, F: Fn() -> I> Serialize for SeqOf<F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

/// One position's `{token: logprob}` (the most probable first; a text shared by several tokens
/// keeps its most probable one).
struct TopMap<'a> {
    tok: &'a Tokenizer,
    top: &'a [Alternative],
}

impl Serialize for TopMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = self.top.iter().map(|a| text(self.tok, a.id)).collect();
        let mut m = s.serialize_map(None)?;
        for (i, (t, a)) in texts.iter().zip(self.top).enumerate() {
            if !texts[..i].contains(t) {
                m.serialize_entry(t, &finite(a.logprob))?;
            }
        }
        m.end()
    }
}

impl Completion<'_> {
    /// The offset after the last token.
    fn end(&self) -> usize {
        let chars = |lp: &TokenLogprob| text(self.tok, lp.chosen.id).chars().count();
        self.offset + self.lps.iter().map(chars).sum::<usize>()
    }
}

impl Serialize for Completion<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (tok, lps) = (self.tok, self.lps);
        let mut m = s.serialize_struct("CompletionLogprobs", 4)?;
        m.serialize_field(
            "tokens",
            &SeqOf(|| lps.iter().map(|lp| text(tok, lp.chosen.id))),
        )?;
        m.serialize_field(
            "token_logprobs",
            &SeqOf(|| lps.iter().map(|lp| finite(lp.chosen.logprob))),
        )?;
        m.serialize_field(
            "top_logprobs",
            &SeqOf(|| lps.iter().map(|lp| TopMap { tok, top: &lp.top })),
        )?;
        let offsets = || {
            lps.iter().scan(self.offset, |at, lp| {
                let here = *at;
                *at += text(tok, lp.chosen.id).chars().count();
                Some(here)
            })
        };
        m.serialize_field("text_offset", &SeqOf(offsets))?;
        m.end()
    }
}

/// A choice's `logprobs` value as a view: written straight into a response by the serializer.
pub enum Logprobs<'a> {
    Chat(Chat<'a>),
    Completion(Completion<'a>),
}

impl Serialize for Logprobs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Logprobs::Chat(c) => c.serialize(s),
            Logprobs::Completion(c) => c.serialize(s),
        }
    }
}

/// The `logprobs` value of a whole response's choice.
pub fn whole<'a>(tok: &'a Tokenizer, lps: &'a [TokenLogprob], route: Route) -> Logprobs<'a> {
    match route {
        Route::Chat => Logprobs::Chat(Chat { tok, lps }),
        Route::Completions => Logprobs::Completion(Completion {
            tok,
            lps,
            offset: 0,
        }),
    }
}

/// Tokens' log-probabilities on their way into one choice's stream chunks.
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
    pub fn take(&mut self, tok: &Tokenizer, route: Route) -> Value {
        if self.tokens.is_empty() {
            return Value::Null;
        }
        let lps = std::mem::take(&mut self.tokens);
        let v = match route {
            Route::Chat => serde_json::to_value(Chat { tok, lps: &lps }),
            Route::Completions => {
                let c = Completion {
                    tok,
                    lps: &lps,
                    offset: self.offset,
                };
                self.offset = c.end();
                serde_json::to_value(c)
            }
        };
        v.unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The real Qwen2 vocabulary.
    fn tokenizer() -> Tokenizer {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-vocab.gguf");
        let file = crate::gguf::GgufFile::open(&path).unwrap();
        Tokenizer::from_metadata(file.metadata()).unwrap()
    }

    /// The token that decodes to exactly `text`.
    fn id(tok: &Tokenizer, text: &str) -> u32 {
        (0..tok.vocab_size() as u32)
            .find(|&i| tok.token_bytes(i) == Some(text.as_bytes()))
            .unwrap()
    }

    fn lps(tok: &Tokenizer) -> Vec<TokenLogprob> {
        let alt = |t: &str, logprob: f32| Alternative {
            id: id(tok, t),
            logprob,
        };
        vec![
            TokenLogprob {
                chosen: alt("é", -0.5),
                top: vec![alt("é", -0.5), alt("x", f32::NEG_INFINITY)],
            },
            TokenLogprob {
                chosen: alt("!", -1.0),
                top: vec![],
            },
        ]
    }

    fn value(l: Logprobs<'_>) -> Value {
        let bytes = serde_json::to_vec(&l).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn both_shapes_carry_tokens_logprobs_and_alternatives() {
        let tok = tokenizer();
        let lps = lps(&tok);
        let c = value(whole(&tok, &lps, Route::Chat));
        assert_eq!(c["content"][0]["token"], "é");
        assert_eq!(c["content"][0]["bytes"], json!([195, 169]));
        assert_eq!(c["content"][0]["top_logprobs"][1]["logprob"], -9999.0);
        assert_eq!(c["content"][1]["logprob"], -1.0);
        assert_eq!(c["refusal"], Value::Null);
        let l = value(whole(&tok, &lps, Route::Completions));
        assert_eq!(l["tokens"], json!(["é", "!"]));
        assert_eq!(l["token_logprobs"], json!([-0.5, -1.0]));
        assert_eq!(l["top_logprobs"][0]["é"], -0.5);
        assert_eq!(l["text_offset"], json!([0, 1]));
    }

    #[test]
    fn streamed_offsets_continue_across_chunks() {
        let tok = tokenizer();
        let mut p = Pending::default();
        let [a, b] = <[TokenLogprob; 2]>::try_from(lps(&tok)).unwrap();
        assert_eq!(p.take(&tok, Route::Completions), Value::Null);
        p.push(a);
        assert_eq!(p.take(&tok, Route::Completions)["text_offset"], json!([0]));
        p.push(b);
        assert_eq!(p.take(&tok, Route::Completions)["text_offset"], json!([1]));
    }
}
