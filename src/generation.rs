//! The generation loop shared by the CLI and the service: prompt → prefill → sample/decode until
//! EOS, a stop string, `max_tokens`, or the caller cancels.

use std::time::Instant;

use serde::Serialize;

use crate::backend::step::RowResult;
use crate::backend::BackendError;
use crate::chat_template::ChatTemplate;
use crate::logprobs::{RowLogprobs, TokenLogprob};
use crate::request::{Input, Limits, RequestError, ValidRequest};
use crate::sampler::{History, RowWant, Sampler};
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
    #[error("the model produced non-finite logits (NaN or infinity); its weights may be corrupt")]
    NonFinite,
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
    /// The request ran past `--request-timeout`.
    TimeLimit,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::TimeLimit => "time_limit",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// How much of the prompt was not computed again.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt positions whose KV came from the prefix cache.
    pub cached_tokens: usize,
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
    /// Per generated token, when the request asked (the OpenAI routes report them).
    #[serde(skip)]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// One generated token as streamed: its index, id, and the text it releases (may be empty
/// while a multi-byte character or a possible stop string is incomplete).
#[derive(Clone, Debug, Serialize)]
pub struct TokenEvent {
    pub i: usize,
    pub id: u32,
    pub t: String,
    /// When the request asked (the OpenAI routes report them).
    #[serde(skip)]
    pub logprobs: Option<TokenLogprob>,
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
    if req.tools.is_some() && !tmpl.renders_tools() {
        return Err(RequestError {
            field: "tools".into(),
            message: "this model's chat template does not render tools, so it cannot call them; \
                      send the request without tools"
                .into(),
        }
        .into());
    }
    let (ids, field) = match &req.input {
        Input::Prompt(p) => (tok.encode_prompt(p), "prompt"),
        Input::Messages(m) => (
            tok.encode_chat_tools(tmpl, m, req.tools.as_deref())
                .map(|(_, ids)| ids),
            "messages",
        ),
    };
    let ids = ids.map_err(|e| RequestError {
        field: field.into(),
        message: format!("{field} cannot be tokenized: {e}"),
    })?;
    req.fit_context(ids.len(), limits)?;
    let vocab = tok.vocab_size();
    if let Some(&(id, _)) = req
        .sampling
        .logit_bias
        .iter()
        .find(|b| b.0 as usize >= vocab)
    {
        return Err(RequestError {
            field: "logit_bias".into(),
            message: format!("logit_bias names token {id}; the vocabulary has {vocab} tokens"),
        }
        .into());
    }
    Ok(ids)
}

/// One sequence's output side: sampling, detokenization and stop strings, token by token. The
/// CLI's loop and the engine's batched steps both drive it, so both end a request the same way.
pub struct Decoding {
    sampler: Sampler,
    /// The prompt and the tokens generated so far (for the penalties).
    history: Vec<u32>,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    prompt_tokens: usize,
    max_tokens: usize,
    seed: u64,
    /// Alternatives to report per token, when log-probabilities were asked for.
    logprobs: Option<usize>,
    /// Generate past EOS (it is counted, adds no text).
    ignore_eos: bool,
    reported: Vec<TokenLogprob>,
    /// The penalized row, kept while a draw rewrites it (for the drawn token's log-probability).
    row: Vec<f32>,
}

/// What one sampled token did: the event to stream (none for EOS) and whether generation ended.
#[derive(Debug)]
pub struct Advance {
    pub event: Option<TokenEvent>,
    pub finish: Option<FinishReason>,
}

impl Decoding {
    pub fn new(req: &ValidRequest, prompt: &[u32]) -> Decoding {
        Decoding {
            sampler: Sampler::new(req.sampling.clone()),
            history: prompt.to_vec(),
            decoder: IncrementalDecoder::new(),
            stops: StopMatcher::new(req.stop.clone()),
            prompt_tokens: prompt.len(),
            max_tokens: req.max_tokens,
            seed: req.sampling.seed,
            logprobs: req.logprobs,
            ignore_eos: req.ignore_eos,
            reported: Vec::new(),
            row: Vec::new(),
        }
    }

    /// The tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.history[self.prompt_tokens..]
    }

    /// The prompt followed by the generated tokens.
    pub fn all_tokens(&self) -> &[u32] {
        &self.history
    }

    /// Sample the next token from `logits` (modified in place: penalties, temperature).
    pub fn advance(
        &mut self,
        tok: &Tokenizer,
        logits: &mut [f32],
    ) -> Result<Advance, GenerationError> {
        // Embedding rows past the tokenizer's vocabulary (padding) can never be sampled.
        let n_text = tok.vocab_size().min(logits.len());
        logits[n_text..].fill(f32::NEG_INFINITY);
        // NaN or +inf anywhere, or nothing finite at all, means broken weights or activations:
        // the request ends with an error instead of a meaningless (or panicking) draw.
        if !all_finite_or_masked(&logits[..n_text]) {
            return Err(GenerationError::NonFinite);
        }
        let history = History {
            tokens: &self.history,
            prompt: self.prompt_tokens,
        };
        self.sampler.penalize(logits, history);
        let Some(n) = self.logprobs else {
            let id = self.sampler.pick(logits);
            return self.accept(tok, id, None);
        };
        let measured = RowLogprobs::measure(logits, n);
        self.row.clear();
        self.row.extend_from_slice(logits);
        let id = self.sampler.pick(logits);
        let logit = self.row.get(id as usize).copied();
        let report = measured.report(id, logit.unwrap_or(f32::NEG_INFINITY));
        self.accept(tok, id, Some(report))
    }

    /// How the next logits row should be answered for this sequence (see `RowWant`). Reporting
    /// log-probabilities needs the whole row, so on a GPU such a sequence costs a full-row copy
    /// to the host per token.
    pub fn want(&mut self, vocab: usize) -> RowWant {
        if self.logprobs.is_some() {
            return RowWant::Full;
        }
        self.sampler.want(vocab)
    }

    /// Take what a backend answered for this sequence's row; None when the whole row is needed
    /// (then `advance` with it).
    pub fn advance_row(
        &mut self,
        tok: &Tokenizer,
        row: &RowResult,
        vocab: usize,
    ) -> Option<Result<Advance, GenerationError>> {
        match row {
            RowResult::NonFinite => Some(Err(GenerationError::NonFinite)),
            // A device's answer carries no log-probabilities: only the whole row will do.
            _ if self.logprobs.is_some() => None,
            RowResult::Token(id) => {
                // The device drew with the number `want` took (or took the argmax).
                self.sampler.forget_drawn();
                Some(self.accept(tok, *id, None))
            }
            RowResult::Head(h) => {
                let id = self.sampler.sample_head(h, vocab)?;
                Some(self.accept(tok, id, None))
            }
            RowResult::Full => None,
        }
    }

    /// The sampled token: end at EOS, else detokenize, match stops and count.
    fn accept(
        &mut self,
        tok: &Tokenizer,
        id: u32,
        logprobs: Option<TokenLogprob>,
    ) -> Result<Advance, GenerationError> {
        let eos = tok.eos_ids().contains(&id);
        if eos && !self.ignore_eos {
            return Ok(Advance {
                event: None,
                finish: Some(FinishReason::Stop),
            });
        }
        self.history.push(id);
        let piece = if eos {
            String::new()
        } else {
            self.decoder
                .push(tok, id)
                .map_err(|e| GenerationError::Tokenize(e.to_string()))?
        };
        let (text, stopped) = self.stops.push(&piece);
        if let Some(lp) = &logprobs {
            self.reported.push(lp.clone());
        }
        let n = self.generated().len();
        let finish = if stopped {
            Some(FinishReason::Stop)
        } else if n >= self.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        Ok(Advance {
            event: Some(TokenEvent {
                i: n - 1,
                id,
                t: text,
                logprobs,
            }),
            finish,
        })
    }

    /// End the sequence: release what was held back (an incomplete character or a partial stop
    /// string) and build the result; the caller supplies the timings.
    pub fn finish(mut self, finish_reason: FinishReason, timings: Timings) -> Generation {
        let mut tail = String::new();
        if !self.stops.stopped() {
            let (out, _) = self.stops.push(&self.decoder.finish());
            tail.push_str(&out);
            if !self.stops.stopped() {
                tail.push_str(&self.stops.finish());
            }
        }
        let token_ids = self.generated().to_vec();
        Generation {
            text: self.stops.text().to_string(),
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: token_ids.len(),
                prompt_tokens_details: PromptTokensDetails::default(),
            },
            token_ids,
            finish_reason,
            seed: self.seed,
            timings,
            tail,
            logprobs: self.logprobs.map(|_| self.reported),
        }
    }
}

/// Whether `logits` hold no NaN and no +inf, and at least one finite value (-inf masks a token).
/// Branch-free over 64-wide chunks on the bit patterns, so it compiles to vector compares: at
/// 151,936 logits a row, an early-exit loop cost more than the sampling itself.
fn all_finite_or_masked(logits: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    let mut any_finite = false;
    for chunk in logits.chunks(64) {
        let (mut bad, mut finite) = (false, false);
        for &v in chunk {
            let bits = v.to_bits();
            // +inf is exactly EXP; NaN has the exponent all ones and a mantissa (either sign).
            bad |= bits == EXP || (bits & 0x7fff_ffff) > EXP;
            finite |= (bits & EXP) != EXP;
        }
        if bad {
            return false;
        }
        any_finite |= finite;
    }
    any_finite
}

/// Timings of a sequence from its start, its first token and its end.
pub fn timings(prompt_ms: f64, ttft_ms: f64, total_ms: f64, tokens: usize) -> Timings {
    let decode_ms = (total_ms - ttft_ms).max(0.0);
    Timings {
        prompt_ms,
        ttft_ms,
        decode_ms,
        decode_tok_per_s: if tokens > 1 && decode_ms > 0.0 {
            (tokens - 1) as f64 / (decode_ms / 1000.0)
        } else {
            0.0
        },
        total_ms,
    }
}

/// Run one request on one sequence. `on_token` gets every generated token; returning false cancels.
pub fn generate(
    eval: &mut impl Evaluator,
    tok: &Tokenizer,
    prompt: &[u32],
    req: &ValidRequest,
    mut on_token: impl FnMut(&TokenEvent) -> bool,
) -> Result<Generation, GenerationError> {
    let t0 = Instant::now();
    let mut out = Decoding::new(req, prompt);
    let mut logits = eval.eval(prompt)?.to_vec();
    let prompt_ms = ms(t0);
    let mut ttft_ms = None;
    let finish = loop {
        let step = out.advance(tok, &mut logits)?;
        ttft_ms.get_or_insert_with(|| ms(t0));
        if let Some(ev) = &step.event {
            if !on_token(ev) {
                break FinishReason::Cancelled;
            }
        }
        if let Some(f) = step.finish {
            break f;
        }
        if let Some(&id) = out.generated().last() {
            logits.copy_from_slice(eval.eval(&[id])?);
        }
    };
    let n = out.generated().len();
    let t = timings(prompt_ms, ttft_ms.unwrap_or(prompt_ms), ms(t0), n);
    Ok(out.finish(finish, t))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
