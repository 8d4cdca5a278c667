//! After a step: each planned sequence's new K/V is counted (and its full blocks offered to the
//! prefix cache); each sequence whose logits came back samples its next token (rows in
//! parallel where there are many), queues it for its client, and is retired when it ends.

use std::time::Instant;

use rayon::prelude::*;

use super::outbox::Outbox;
use super::scheduler::{Planned, Scheduler};
use super::sequence::Sequence;
use super::{EngineError, EngineEvent, Finished};
use crate::backend::step::{RowResult, StepRunner};
use crate::generation::{self, Advance, FinishReason, GenerationError};
use crate::tokenizer::Tokenizer;

/// How a sequence leaves the batch (its end is counted where it happens, in `Outcomes`).
enum Retired {
    Finished(FinishReason),
    /// Failed, or its client left.
    Ended,
}

type Step = Option<Result<Advance, GenerationError>>;

/// Rows from which the device's answers are taken in parallel: below, handing them to the
/// thread pool costs more (tens of microseconds to wake it) than they do (a microsecond or two
/// each).
const PARALLEL_ROWS: usize = 32;

/// Count the step's work, sample, stream; the sequences that end are removed from `running`,
/// their blocks released. `logits`: one whole row per sequence that asked.
pub fn apply(
    sched: &mut Scheduler,
    plan: &[Planned],
    logits: &mut [f32],
    vocab: usize,
    tok: &Tokenizer,
    waited_ms: f64,
    out: &mut Outbox,
) {
    let now = Instant::now();
    let row_idx = account(sched, plan, waited_ms);
    let mut rows: Vec<Option<&mut [f32]>> = logits.chunks_mut(vocab.max(1)).map(Some).collect();
    let row_of: Vec<Option<&mut [f32]>> = row_idx
        .iter()
        .map(|i| i.and_then(|i| rows.get_mut(i).and_then(Option::take)))
        .collect();
    // Every row is sampled on its own, so rows run in parallel.
    let advances: Vec<Step> = sched
        .running
        .par_iter_mut()
        .zip(row_of.into_par_iter())
        .map(|(seq, row)| row.map(|r| seq.out.advance(tok, r)))
        .collect();
    retire(sched, advances, now, out)
}

/// As [`apply`], from what the backend answered per row ([`RowResult`]); a row whose answer does
/// not settle the draw is read whole from `runner`.
#[allow(clippy::too_many_arguments)]
pub fn apply_rows(
    sched: &mut Scheduler,
    plan: &[Planned],
    results: &[RowResult],
    runner: &mut dyn StepRunner,
    vocab: usize,
    tok: &Tokenizer,
    waited_ms: f64,
    out: &mut Outbox,
) {
    let now = Instant::now();
    let row_idx = account(sched, plan, waited_ms);
    let answer = |seq: &mut Sequence, i: &Option<usize>| {
        i.map(|i| seq.out.advance_row(tok, &results[i], vocab))
    };
    let mut advances: Vec<Option<Step>> = if results.len() >= PARALLEL_ROWS {
        sched
            .running
            .par_iter_mut()
            .zip(row_idx.par_iter())
            .map(|(seq, i)| answer(seq, i))
            .collect()
    } else {
        sched
            .running
            .iter_mut()
            .zip(&row_idx)
            .map(|(seq, i)| answer(seq, i))
            .collect()
    };
    for ((adv, i), seq) in advances.iter_mut().zip(&row_idx).zip(&mut sched.running) {
        if let (Some(None), Some(i)) = (&adv, i) {
            let whole = runner.full_row(*i).map_err(GenerationError::from);
            *adv = Some(Some(whole.and_then(|row| seq.out.advance(tok, row))));
        }
    }
    retire(
        sched,
        advances.into_iter().map(Option::flatten).collect(),
        now,
        out,
    )
}

/// The step's K/V counted per planned sequence (full blocks offered to the prefix cache); for
/// each running sequence, the index of its logits row when it has one.
fn account(sched: &mut Scheduler, plan: &[Planned], waited_ms: f64) -> Vec<Option<usize>> {
    let mut row_idx = vec![None; sched.running.len()];
    let mut next = 0;
    for p in plan {
        let seq = &mut sched.running[p.seq];
        let wants = p.n == seq.pending();
        seq.computed += p.n;
        seq.waited_for_load_ms += waited_ms;
        seq.register_full_blocks(&mut sched.pool);
        if wants {
            row_idx[p.seq] = Some(next);
            next += 1;
        }
    }
    row_idx
}

/// Queue each sampled token; retire the sequences that ended, failed or lost their client.
fn retire(sched: &mut Scheduler, advances: Vec<Step>, now: Instant, out: &mut Outbox) {
    for i in (0..advances.len()).rev() {
        let Some(adv) = &advances[i] else { continue };
        let seq = &mut sched.running[i];
        seq.first_token.get_or_insert(now);
        let outcome = match adv {
            Ok(a) => stream(seq, a, out),
            Err(GenerationError::NonFinite) => {
                fail(seq, EngineError::NonFinite, out);
                Some(Retired::Ended)
            }
            Err(e) => {
                fail(seq, EngineError::Internal(e.to_string()), out);
                Some(Retired::Ended)
            }
        };
        if let Some(r) = outcome {
            let mut seq = sched.running.remove(i);
            seq.release(&mut sched.pool);
            if let Retired::Finished(reason) = r {
                finish(seq, reason, out);
            }
        }
    }
}

/// Queue the token; Some when the sequence leaves (ended, or its client is gone).
fn stream(seq: &mut Sequence, a: &Advance, out: &mut Outbox) -> Option<Retired> {
    if let Some(ev) = &a.event {
        let now = Instant::now();
        match seq.last_token {
            None => crate::metrics::first_token(now.duration_since(seq.job.enqueued)),
            Some(t) => crate::metrics::token_gap(now.duration_since(t)),
        }
        seq.last_token = Some(now);
        if seq.is_abandoned() {
            seq.cancelled();
            return Some(Retired::Ended);
        }
        out.push(&seq.job.events, EngineEvent::Token(ev.clone()));
    }
    a.finish.map(Retired::Finished)
}

fn fail(seq: &Sequence, e: EngineError, out: &mut Outbox) {
    tracing::warn!(id = %seq.job.id, "request failed: {e}");
    seq.outcomes.failed(e.kind());
    out.push(&seq.job.events, EngineEvent::Error(e));
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

/// Queue the finished generation.
pub fn finish(seq: Sequence, reason: FinishReason, out: &mut Outbox) {
    let now = Instant::now();
    let start = seq.admitted.unwrap_or(seq.job.enqueued);
    let at = |t: Option<Instant>| ms(start, t.unwrap_or(now));
    let n = seq.out.generated().len();
    // The prompt is done when the first token is sampled.
    let first = at(seq.first_token);
    let timings = generation::timings(first, first, ms(start, now), n);
    let (seq_enqueued, queued_ms) = (seq.job.enqueued, ms(seq.job.enqueued, start));
    let cached = seq.cached_tokens.unwrap_or(0);
    let (id, events, waited) = (
        seq.job.id.clone(),
        seq.job.events.clone(),
        seq.waited_for_load_ms,
    );
    let mut generation = seq.out.finish(reason, timings);
    generation.usage.prompt_tokens_details.cached_tokens = cached;
    seq.outcomes.finished(reason.as_str());
    crate::metrics::finished(n, now.duration_since(seq_enqueued));
    tracing::info!(
        id = %id,
        prompt_tokens = generation.usage.prompt_tokens,
        cached_tokens = cached,
        completion_tokens = generation.usage.completion_tokens,
        ms = generation.timings.total_ms as u64,
        "request done"
    );
    let done = EngineEvent::Done(Box::new(Finished {
        generation,
        queued_ms,
        waited_for_load_ms: waited,
    }));
    out.push(&events, done);
}
