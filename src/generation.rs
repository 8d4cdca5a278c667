//! The generation loop shared by the CLI and the service: prompt → prefill → sample/decode until
//! EOS, a stop string, `max_tokens`, or the caller cancels.

use std::time::Instant;

use serde::Serialize;

use crate::backend::BackendError;
use crate::chat_template::ChatTemplate;
use crate::request::{Input, Limits, RequestError, ValidRequest};
use crate::sampler::Sampler;
use crate::stop::StopMatcher;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Something that turns tokens into next-token logits for one sequence.
pub trait Evaluator {
    /// Append `tokens` to the sequence; return the logits after the last one.
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError>;
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller went away.
    Cancelled,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    pub prompt_ms: f64,
    pub ttft_ms: f64,
    pub decode_ms: f64,
    pub decode_tok_per_s: f64,
    pub total_ms: f64,
}

/// The outcome of one request.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub seed: u64,
    pub timings: Timings,
    /// Text released after the last token event (already part of `text`).
    #[serde(skip)]
    pub tail: String,
}

/// One generated token as streamed: its index, id, and the text it releases (may be empty
/// while a multi-byte character or a possible stop string is incomplete).
#[derive(Clone, Debug, Serialize)]
pub struct TokenEvent {
    pub i: usize,
    pub id: u32,
    pub t: String,
}

/// Tokenize the request's input and fit `max_tokens` to the context.
pub fn prepare(
    tok: &Tokenizer,
    tmpl: &ChatTemplate,
    req: &mut ValidRequest,
    limits: Limits,
) -> Result<Vec<u32>, GenerationError> {
    // The input is the client's: a template that raises, or content the tokenizer refuses, is a
    // bad request, not a server fault.
    let (ids, field) = match &req.input {
        Input::Prompt(p) => (tok.encode_prompt(p), "prompt"),
        Input::Messages(m) => (tok.encode_chat(tmpl, m), "messages"),
    };
    let ids = ids.map_err(|e| RequestError {
        field: field.into(),
        message: format!("{field} cannot be tokenized: {e}"),
    })?;
    req.fit_context(ids.len(), limits)?;
    Ok(ids)
}

/// Run one request. `on_token` gets every generated token; returning false cancels.
pub fn generate(
    eval: &mut impl Evaluator,
    tok: &Tokenizer,
    prompt: &[u32],
    req: &ValidRequest,
    mut on_token: impl FnMut(&TokenEvent) -> bool,
) -> Result<Generation, GenerationError> {
    let t0 = Instant::now();
    let mut sampler = Sampler::new(req.sampling.clone());
    let mut history: Vec<u32> = prompt.to_vec();
    let mut logits = eval.eval(prompt)?.to_vec();
    let prompt_ms = ms(t0);
    let mut decoder = IncrementalDecoder::new(tok);
    let mut stops = StopMatcher::new(req.stop.clone());
    let mut token_ids = Vec::new();
    let mut finish = FinishReason::Length;
    let mut ttft_ms = 0.0;
    let t_decode = Instant::now();
    // Embedding rows past the tokenizer's vocabulary (padding) can never be sampled.
    let n_text = tok.vocab_size().min(logits.len());
    while token_ids.len() < req.max_tokens {
        logits[n_text..].fill(f32::NEG_INFINITY);
        let id = sampler.sample(&mut logits, &history);
        if token_ids.is_empty() {
            ttft_ms = ms(t0);
        }
        if tok.eos_ids().contains(&id) {
            finish = FinishReason::Stop;
            break;
        }
        token_ids.push(id);
        history.push(id);
        let piece = decoder
            .push(id)
            .map_err(|e| GenerationError::Tokenize(e.to_string()))?;
        let (text, stopped) = stops.push(&piece);
        if !on_token(&TokenEvent {
            i: token_ids.len() - 1,
            id,
            t: text,
        }) {
            finish = FinishReason::Cancelled;
            break;
        }
        if stopped {
            finish = FinishReason::Stop;
            break;
        }
        if token_ids.len() < req.max_tokens {
            logits.copy_from_slice(eval.eval(&[id])?);
        }
    }
    // Release what was held back (an incomplete character or a partial stop string).
    let mut tail = String::new();
    if !stops.stopped() {
        let (out, _) = stops.push(&decoder.finish());
        tail.push_str(&out);
        if !stops.stopped() {
            tail.push_str(&stops.finish());
        }
    }
    let decode_ms = ms(t_decode);
    let n = token_ids.len();
    Ok(Generation {
        text: stops.text().to_string(),
        token_ids,
        finish_reason: finish,
        usage: Usage {
            prompt_tokens: prompt.len(),
            completion_tokens: n,
        },
        seed: req.sampling.seed,
        timings: Timings {
            prompt_ms,
            ttft_ms,
            decode_ms,
            decode_tok_per_s: if n > 1 && decode_ms > 0.0 {
                (n - 1) as f64 / (decode_ms / 1000.0)
            } else {
                0.0
            },
            total_ms: ms(t0),
        },
        tail,
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
