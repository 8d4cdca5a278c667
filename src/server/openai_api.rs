//! The OpenAI-compatible routes: `GET /v1/models`, `POST /v1/chat/completions`,
//! `POST /v1/completions` — the same engine as `/generate` (one job per choice when `n` > 1),
//! OpenAI's JSON and stream shapes, and
//! errors as `{"error": {"message", "type", "param", "code"}}`. With tools, tool-call blocks in
//! the text become `tool_calls` (`openai_tools`); asked-for log-probabilities ride on the choices
//! (`openai_logprobs`).

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::access_log::Exchange;
use super::body::{json, json_bytes, sse, ResBody};
use super::error::ApiError;
use super::generate::{accept, next_or_ping, submit_n, Events, Next};
use super::openai_logprobs::{self, Pending};
use super::openai_tools::{self, ToolDeltas};
use super::state::AppState;
use crate::engine::{EngineEvent, Finished};
use crate::generation::FinishReason;
use crate::openai::{self, Route};
use crate::tokenizer::Tokenizer;

/// `GET /v1/models`.
pub fn models(state: &AppState) -> Response<ResBody> {
    let m = &state.model;
    json(
        StatusCode::OK,
        &json!({"object": "list", "data": [{
            "id": m.id, "object": "model", "created": m.created, "owned_by": "layerstream",
            "max_model_len": m.ctx, "context_length": m.ctx,
        }]}),
    )
}

/// What every response of one request shares.
struct Meta {
    id: String,
    route: Route,
    /// The served model's id (never the client's `model` text).
    model: String,
    created: u64,
    include_usage: bool,
    /// The request's tool names when it gave tools: tool calls in the text are parsed out.
    tools: Option<Vec<String>>,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
    /// Resolves log-probability records' token texts and bytes.
    tok: Arc<Tokenizer>,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.route, chunk) {
            (Route::Chat, false) => "chat.completion",
            (Route::Chat, true) => "chat.completion.chunk",
            (Route::Completions, _) => "text_completion",
        }
    }

    /// Choice `index` carrying `text` (a message, a delta or a completion's text).
    fn choice(&self, index: usize, text: Option<&str>, finish: Option<&str>, chunk: bool) -> Value {
        let mut c = json!({"index": index, "logprobs": null, "finish_reason": finish});
        match (self.route, chunk) {
            (Route::Chat, false) => {
                c["message"] = json!({"role": "assistant", "content": text.unwrap_or("")})
            }
            (Route::Chat, true) => c["delta"] = text.map_or(json!({}), |t| json!({"content": t})),
            (Route::Completions, _) => c["text"] = json!(text.unwrap_or("")),
        }
        c
    }

    /// A stream chunk with choice `index` holding `delta`.
    fn delta_chunk(&self, index: usize, delta: Value) -> Bytes {
        let mut c = self.choice(index, None, None, true);
        c["delta"] = delta;
        data(&self.envelope(vec![c], true))
    }

    /// A stream chunk's envelope around `choices` (`usage: null` when the last chunk will carry it).
    fn envelope(&self, choices: Vec<Value>, chunk: bool) -> Value {
        let usage = (chunk && self.include_usage).then_some(Value::Null);
        serde_json::to_value(self.wrap(choices, chunk, usage)).unwrap_or(Value::Null)
    }

    /// What every response holds around its choices: one definition for chunks and whole answers.
    fn wrap<C: serde::Serialize>(
        &self,
        choices: C,
        chunk: bool,
        usage: Option<Value>,
    ) -> Envelope<'_, C> {
        Envelope {
            id: &self.id,
            object: self.object(chunk),
            created: self.created,
            model: &self.model,
            choices,
            system_fingerprint: FINGERPRINT,
            usage,
        }
    }
}

/// A response's fields around its choices.
#[derive(serde::Serialize)]
struct Envelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    system_fingerprint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
}

const FINGERPRINT: &str = concat!("layerstream-", env!("LAYERSTREAM_COMMIT"));

/// OpenAI's finish reasons: a time limit reads as `length` (generation was cut short).
fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::TimeLimit | FinishReason::Cancelled => "length",
    }
}

/// `tool_calls` when the model ended its turn after calling tools; a cut-short turn keeps `length`.
fn finish_with_calls(r: FinishReason, called: bool) -> &'static str {
    match r {
        FinishReason::Stop if called => "tool_calls",
        r => finish_reason(r),
    }
}

/// The choices' usage: the prompt counted once (its cached tokens as the first choice found
/// them), completion tokens summed.
fn usage(finished: &[Finished]) -> Value {
    let first = finished.first().map(|f| &f.generation.usage);
    let prompt = first.map_or(0, |u| u.prompt_tokens);
    let cached = first.map_or(0, |u| u.prompt_tokens_details.cached_tokens);
    let completion: usize = finished
        .iter()
        .map(|f| f.generation.usage.completion_tokens)
        .sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub async fn completions(
    state: Arc<AppState>,
    req: Request<Incoming>,
    route: Route,
    ex: &Exchange,
) -> Result<Response<ResBody>, ApiError> {
    let (rt, body, arrived) = accept(&state, req).await?;
    let parsed = openai::parse(&body, route, rt.limits, crate::request::clock_seed())
        .map_err(ApiError::Invalid)?;
    let stream = parsed.request.stream;
    if !stream {
        let r = &parsed.request;
        rt.answer_cap
            .check(route, parsed.n, r.max_tokens, r.logprobs)
            .map_err(ApiError::Invalid)?;
    }
    let tools = parsed.request.tools.as_deref().map(openai::tools::names);
    let logprobs = parsed.request.logprobs.is_some();
    let tok = rt.tokenizer.clone();
    let events = submit_n(rt, parsed.request, parsed.n, arrived, ex).await?;
    let prefix = match route {
        Route::Chat => "chatcmpl-",
        Route::Completions => "cmpl-",
    };
    let meta = Meta {
        id: format!("{prefix}{}", ex.id),
        route,
        model: state.model.id.clone(),
        created: state.model.created,
        include_usage: parsed.include_usage,
        tools,
        logprobs,
        tok,
    };
    if stream {
        Ok(stream_response(meta, events))
    } else {
        whole_response(meta, events).await
    }
}

async fn whole_response(meta: Meta, mut events: Events) -> Result<Response<ResBody>, ApiError> {
    let mut done: Vec<Option<Finished>> = (0..events.jobs()).map(|_| None).collect();
    while let Some((i, ev)) = events.recv_indexed().await {
        match ev {
            EngineEvent::Started { .. } | EngineEvent::Token(_) => {}
            EngineEvent::Done(f) => {
                if let Some(slot) = done.get_mut(i) {
                    *slot = Some(*f);
                }
                if done.iter().all(Option::is_some) {
                    let finished: Vec<Finished> = done.into_iter().flatten().collect();
                    return whole_body(&meta, &finished).map(|b| json_bytes(StatusCode::OK, b));
                }
            }
            EngineEvent::Error(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal("the engine dropped the request".into()))
}

/// A whole response's bytes, written in one pass: the choices' texts and log-probability
/// records go straight from the generations into the buffer.
fn whole_body(meta: &Meta, finished: &[Finished]) -> Result<Bytes, ApiError> {
    let choices: Vec<WholeChoice<'_>> = finished
        .iter()
        .enumerate()
        .map(|(i, f)| whole_choice(meta, i, f))
        .collect();
    let body = meta.wrap(choices, false, Some(usage(finished)));
    let mut out = Vec::new();
    serde_json::to_writer(&mut out, &body)
        .map_err(|e| ApiError::Internal(format!("cannot write the response: {e}")))?;
    Ok(Bytes::from(out))
}

/// Choice `index` of a whole response: its small fields as a `Value`, its log-probabilities
/// as a view written by the serializer.
#[derive(serde::Serialize)]
struct WholeChoice<'a> {
    #[serde(flatten)]
    fields: Value,
    logprobs: Option<openai_logprobs::Logprobs<'a>>,
}

fn whole_choice<'a>(meta: &'a Meta, index: usize, f: &'a Finished) -> WholeChoice<'a> {
    let g = &f.generation;
    let finish = finish_reason(g.finish_reason);
    let mut fields = meta.choice(index, Some(&g.text), Some(finish), false);
    if let Some(names) = &meta.tools {
        let (message, called) = openai_tools::message(&g.text, names);
        fields["message"] = message;
        fields["finish_reason"] = json!(finish_with_calls(g.finish_reason, called));
    }
    if let Some(o) = fields.as_object_mut() {
        o.remove("logprobs");
    }
    let lps = g.logprobs.as_deref().unwrap_or_default();
    WholeChoice {
        fields,
        logprobs: meta
            .logprobs
            .then(|| openai_logprobs::whole(&meta.tok, lps, meta.route)),
    }
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// One choice's stream state between events.
#[derive(Default)]
struct ChoiceState {
    /// Present when the request gave tools.
    tools: Option<ToolDeltas>,
    /// Present when the request asked for log-probabilities: those not yet sent.
    logprobs: Option<Pending>,
}

/// A stream's state: each choice's, and the choices finished so far.
struct StreamState {
    choices: Vec<ChoiceState>,
    finished: Vec<Finished>,
}

/// The frames an event of choice `i` becomes; `true` once the stream is over.
fn frames(meta: &Meta, i: usize, ev: EngineEvent, all: &mut StreamState) -> (Vec<Bytes>, bool) {
    let mut out = Vec::new();
    let Some(st) = all.choices.get_mut(i) else {
        return (out, false);
    };
    match ev {
        EngineEvent::Started { .. } => {
            if meta.route == Route::Chat {
                out.push(meta.delta_chunk(i, json!({"role": "assistant", "content": ""})));
            }
            return (out, false);
        }
        EngineEvent::Token(t) => {
            if let (Some(p), Some(lp)) = (&mut st.logprobs, t.logprobs) {
                p.push(lp);
            }
            out.extend(text_frames(meta, i, st, &t.t));
            return (out, false);
        }
        EngineEvent::Done(f) => {
            out.extend(last_frames(meta, i, st, &f));
            all.finished.push(*f);
            if all.finished.len() < all.choices.len() {
                return (out, false);
            }
            if meta.include_usage {
                let mut u = meta.envelope(Vec::new(), true);
                u["usage"] = usage(&all.finished);
                out.push(data(&u));
            }
        }
        EngineEvent::Error(e) => out.push(data(&ApiError::from(e).openai_body())),
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    (out, true)
}

/// A finished choice's last frames: its held-back text and calls, then its `finish_reason`.
fn last_frames(meta: &Meta, i: usize, st: &mut ChoiceState, f: &Finished) -> Vec<Bytes> {
    let g = &f.generation;
    let mut out = text_frames(meta, i, st, &g.tail);
    let called = match &mut st.tools {
        Some(tools) => {
            out.extend(tools.finish().into_iter().map(|d| meta.delta_chunk(i, d)));
            tools.called()
        }
        None => false,
    };
    let reason = finish_with_calls(g.finish_reason, called);
    let mut last = meta.choice(i, None, Some(reason), true);
    if let Some(p) = &mut st.logprobs {
        last["logprobs"] = p.take(&meta.tok, meta.route);
    }
    out.push(data(&meta.envelope(vec![last], true)));
    out
}

/// Generated text as chunks: as it is (with the log-probabilities of the tokens it completes), or
/// through the tool-call parser (log-probabilities then wait for the last chunk).
fn text_frames(meta: &Meta, i: usize, st: &mut ChoiceState, text: &str) -> Vec<Bytes> {
    if text.is_empty() {
        return Vec::new();
    }
    match &mut st.tools {
        Some(tools) => tools
            .feed(text)
            .into_iter()
            .map(|d| meta.delta_chunk(i, d))
            .collect(),
        None => {
            let mut c = meta.choice(i, Some(text), None, true);
            if let Some(p) = &mut st.logprobs {
                c["logprobs"] = p.take(&meta.tok, meta.route);
            }
            vec![data(&meta.envelope(vec![c], true))]
        }
    }
}

fn stream_response(meta: Meta, mut events: Events) -> Response<ResBody> {
    let (tx, resp) = sse();
    tokio::spawn(async move {
        let choices = (0..events.jobs())
            .map(|_| ChoiceState {
                tools: meta.tools.clone().map(ToolDeltas::new),
                logprobs: meta.logprobs.then(Pending::default),
            })
            .collect();
        let mut st = StreamState {
            choices,
            finished: Vec::new(),
        };
        loop {
            let (i, ev) = match next_or_ping(&mut events, &tx).await {
                Next::Event(i, ev) => (i, ev),
                Next::EngineGone => break,
                Next::ClientGone => return,
            };
            let (out, last) = frames(&meta, i, ev, &mut st);
            for f in out {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
            if last {
                return;
            }
        }
        let lost = ApiError::Internal("the engine dropped the request".into()).openai_body();
        let _ = tx.send(data(&lost)).await;
    });
    resp
}
