//! `POST /generate`: body → `ValidRequest` → tokens → engine job → JSON or SSE.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::access_log::{Exchange, TokenCount};
use super::body::{json, sse, sse_event, ResBody};
use super::error::ApiError;
use super::state::{AppState, Runtime};
use crate::engine::{EngineEvent, Finished, Job, SubmitError};
use crate::generation::{prepare, GenerationError, Usage};
use crate::load::progress::LoadState;
use crate::request::{ValidRequest, MAX_BODY_BYTES};

pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    ex: &Exchange,
) -> Result<Response<ResBody>, ApiError> {
    let (rt, body, arrived) = accept(&state, req).await?;
    let valid = ValidRequest::parse(&body, rt.limits, crate::request::clock_seed())
        .map_err(ApiError::Invalid)?;
    let stream = valid.stream;
    let events = submit(rt, valid, arrived, ex).await?;
    if stream {
        Ok(stream_response(ex.id.clone(), events))
    } else {
        whole_response(events).await
    }
}

/// The checks before a body is read (loaded, queue not full), then the body.
pub(super) async fn accept(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<(&Runtime, Bytes, Instant), ApiError> {
    let arrived = Instant::now();
    match state.progress.state() {
        LoadState::Loading => return Err(ApiError::Loading),
        LoadState::Failed => {
            return Err(ApiError::LoadFailed(
                state.progress.snapshot().error.unwrap_or_default(),
            ))
        }
        LoadState::Ready | LoadState::Resident => {}
    }
    let rt = state.runtime.get().ok_or(ApiError::Loading)?;
    if rt.engine.is_full() {
        return Err(ApiError::QueueFull);
    }
    let body = read_body(state, req).await?;
    Ok((rt, body, arrived))
}

/// Tokenize (off the async threads) and hand the request to the engine as job `ex.id`; returns
/// the engine's events for it.
pub(super) async fn submit(
    rt: &Runtime,
    valid: ValidRequest,
    arrived: Instant,
    ex: &Exchange,
) -> Result<Events, ApiError> {
    submit_n(rt, valid, 1, arrived, ex).await
}

/// As [`submit`], `n` jobs from one tokenization: job `i` draws with seed + `i` and is named
/// `ex.id` (i = 0) or `ex.id.i`. They share the prompt's full KV blocks through the prefix cache
/// once one of them has computed them (jobs admitted in the same step compute their own).
pub(super) async fn submit_n(
    rt: &Runtime,
    mut valid: ValidRequest,
    n: usize,
    arrived: Instant,
    ex: &Exchange,
) -> Result<Events, ApiError> {
    let (tok, tmpl, limits) = (rt.tokenizer.clone(), rt.template.clone(), rt.limits);
    let (valid, prompt) = tokio::task::spawn_blocking(move || {
        prepare(&tok, &tmpl, &mut valid, limits).map(|p| (valid, p))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?
    .map_err(|e| match e {
        GenerationError::Request(r) => ApiError::Invalid(r),
        other => ApiError::Internal(other.to_string()),
    })?;
    let (mut rxs, mut jobs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let mut request = valid.clone();
        request.sampling.seed = valid.sampling.seed.wrapping_add(i as u64);
        let (events_tx, events) = mpsc::unbounded_channel();
        let job = Job {
            group: 0,
            id: if i == 0 {
                ex.id.clone()
            } else {
                format!("{}.{i}", ex.id)
            },
            request,
            prompt: prompt.clone(),
            enqueued: arrived,
            events: events_tx,
        };
        jobs.push(job);
        rxs.push(Some(events));
    }
    rt.engine.submit_all(jobs).map_err(|e| match e {
        SubmitError::QueueFull => ApiError::QueueFull,
        SubmitError::ShuttingDown => ApiError::ShuttingDown,
    })?;
    ex.submitted();
    Ok(Events {
        rxs,
        tokens: ex.tokens.clone(),
        done: 0,
        usage: Usage::default(),
    })
}

/// The engine's events for one request's jobs; the finished generations' token counts (the
/// prompt once, completions summed) are noted for the access log once every job is done.
pub(super) struct Events {
    /// One per job; None once its channel closed.
    rxs: Vec<Option<mpsc::UnboundedReceiver<EngineEvent>>>,
    tokens: Arc<TokenCount>,
    done: usize,
    usage: Usage,
}

impl Events {
    /// How many jobs (choices) the events are of.
    pub(super) fn jobs(&self) -> usize {
        self.rxs.len()
    }

    /// The next event of the (first) job (cancel-safe, like the channel's `recv`).
    pub(super) async fn recv(&mut self) -> Option<EngineEvent> {
        self.recv_indexed().await.map(|(_, ev)| ev)
    }

    /// The next event of any job, with the job's index; None once every job's channel closed.
    pub(super) async fn recv_indexed(&mut self) -> Option<(usize, EngineEvent)> {
        let (i, ev) = std::future::poll_fn(|cx| self.poll_any(cx)).await?;
        if let EngineEvent::Done(f) = &ev {
            let u = &f.generation.usage;
            self.usage.prompt_tokens = u.prompt_tokens;
            self.usage.completion_tokens += u.completion_tokens;
            self.done += 1;
            if self.done == self.rxs.len() {
                self.tokens.record(&self.usage);
            }
        }
        Some((i, ev))
    }

    fn poll_any(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, EngineEvent)>> {
        let mut open = false;
        for (i, slot) in self.rxs.iter_mut().enumerate() {
            let Some(rx) = slot else { continue };
            match rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => return Poll::Ready(Some((i, ev))),
                Poll::Ready(None) => *slot = None,
                Poll::Pending => open = true,
            }
        }
        if open {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

/// The whole body, within the body timeout; a shutdown ends the wait at once (a half-sent body
/// must not hold the drain).
async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = state.body_timeout;
    let mut stopping = state.stopping.clone();
    tokio::select! {
        r = tokio::time::timeout(limit, collect_body(req)) => r.map_err(|_| ApiError::BodyTimeout {
            secs: limit.as_secs_f64().ceil() as u64,
        })?,
        _ = stopping.wait_for(|s| *s) => Err(ApiError::ShuttingDown),
    }
}

async fn collect_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::TooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge {
                limit: MAX_BODY_BYTES,
            })
        }
        Err(e) => Err(ApiError::Invalid(crate::request::RequestError {
            field: "body".into(),
            message: format!("could not read the request body: {e}"),
        })),
    }
}

fn timings(f: &Finished) -> Value {
    let t = &f.generation.timings;
    json!({
        "queued_ms": f.queued_ms,
        "waited_for_load_ms": f.waited_for_load_ms,
        "prompt_ms": t.prompt_ms,
        "ttft_ms": f.queued_ms + t.ttft_ms,
        "decode_tok_per_s": t.decode_tok_per_s,
        "total_ms": f.queued_ms + t.total_ms,
    })
}

/// The JSON document of a finished request (also the `end` event's data).
fn finished_json(f: &Finished) -> Value {
    let g = &f.generation;
    json!({
        "text": g.text,
        "token_ids": g.token_ids,
        "finish_reason": g.finish_reason,
        "usage": g.usage,
        "seed": g.seed,
        "timings": timings(f),
    })
}

async fn whole_response(mut events: Events) -> Result<Response<ResBody>, ApiError> {
    while let Some(ev) = events.recv().await {
        match ev {
            EngineEvent::Started { .. } | EngineEvent::Token(_) => {}
            EngineEvent::Done(f) => return Ok(json(StatusCode::OK, &finished_json(&f))),
            EngineEvent::Error(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal("the engine dropped the request".into()))
}

/// What a stream gets next.
pub(super) enum Next {
    /// An event of the job with this index.
    Event(usize, EngineEvent),
    /// The engine dropped the request without a terminal event.
    EngineGone,
    /// The client left (its body was dropped, or a write failed): returning drops `events`,
    /// which cancels the job.
    ClientGone,
}

/// The next engine event for a stream, writing a comment line (`: ping`) every `SSE_PING` of
/// silence meanwhile.
pub(super) async fn next_or_ping(events: &mut Events, tx: &mpsc::Sender<Bytes>) -> Next {
    loop {
        tokio::select! {
            ev = events.recv_indexed() => {
                return ev.map_or(Next::EngineGone, |(i, ev)| Next::Event(i, ev))
            }
            _ = tx.closed() => return Next::ClientGone,
            _ = tokio::time::sleep(SSE_PING) => {
                if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                    return Next::ClientGone;
                }
            }
        }
    }
}

/// How long a stream stays silent before a comment line is written: a prompt being computed (or
/// a wait in the queue or on the loader) sends no events, and only a write finds out that the
/// client has gone, so that its request is dropped at the engine's next step.
const SSE_PING: std::time::Duration = std::time::Duration::from_millis(500);

fn stream_response(id: String, mut events: Events) -> Response<ResBody> {
    let (tx, resp) = sse();
    tokio::spawn(async move {
        loop {
            let ev = match next_or_ping(&mut events, &tx).await {
                Next::Event(_, ev) => ev,
                Next::EngineGone => break,
                Next::ClientGone => return,
            };
            let (frame, last) = match ev {
                EngineEvent::Started { queued_ms } => (
                    sse_event("started", &json!({"id": id, "queued_ms": queued_ms})),
                    false,
                ),
                EngineEvent::Token(t) => (sse_event("token", &json!(t)), false),
                EngineEvent::Done(f) => {
                    let mut data = finished_json(&f);
                    data["tail"] = json!(f.generation.tail);
                    (sse_event("end", &data), true)
                }
                EngineEvent::Error(e) => {
                    let e = ApiError::from(e);
                    (
                        sse_event("error", &json!({"code": e.kind(), "message": e.message()})),
                        true,
                    )
                }
            };
            // A failed send means the client left: dropping `events` cancels the job.
            if tx.send(frame).await.is_err() || last {
                return;
            }
        }
        let lost = json!({"code": "internal", "message": "the engine dropped the request"});
        let _ = tx.send(sse_event("error", &lost)).await;
    });
    resp
}
