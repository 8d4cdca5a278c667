//! `layerstream bench --batch N`: N sequences through the engine's batched step — the prompts
//! computed together (in chunks when they exceed the rows a step may hold), then every decode
//! step carrying one token of each sequence — and the total prefill and decode rates, median of
//! several repetitions. `--batch-invariant` chooses the products (and sends even one sequence
//! through the batched step).

use std::process::ExitCode;
use std::time::Instant;

use super::bench::median;
use super::{fail, BenchArgs};
use crate::backend::step::{BatchRequest, SeqStep, StepBatch, StepRunner};
use crate::backend::BackendError;
use crate::loaded::{LoadedModel, Placement};
use crate::rng::Rng;
use crate::sampler::argmax;

const BLOCK: usize = 16;

pub fn run(a: BenchArgs) -> ExitCode {
    let n = a.batch as usize;
    let per_seq = a.prompt_tokens.max(1) + a.gen_tokens + 1;
    let at = Placement {
        device: a.at.device,
        gpu: a.at.gpu_device,
        ctx: per_seq,
    };
    let model = match LoadedModel::open_on(&a.model, at) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let want = BatchRequest {
        max_seqs: n,
        max_batch_tokens: n * a.prompt_tokens.max(1),
        kv_tokens: n * per_seq.next_multiple_of(BLOCK),
        block_size: BLOCK,
        ctx: per_seq,
        prefix_cache: false,
        batch_invariant: a.batch_invariant.unwrap_or(false),
        gpu_memory_fraction: None,
    };
    let limits = model.backend.batch_limits(&want);
    if limits.max_seqs < n {
        return fail(format!(
            "the {} backend runs {} sequences at a time, not {n}",
            model.backend.name(),
            limits.max_seqs
        ));
    }
    let mut runner = match model.backend.clone().new_runner(&limits) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let vocab = model.spec.hp.vocab.min(100_000) as u64;
    let mut rng = Rng::new(42);
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|_| {
            (0..a.prompt_tokens.max(1))
                .map(|_| (rng.next_u64() % vocab) as u32)
                .collect()
        })
        .collect();
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..a.reps.max(1) + 1 {
        match one_run(
            runner.as_mut(),
            &prompts,
            a.gen_tokens,
            per_seq,
            limits.max_batch_tokens,
        ) {
            Ok((pp, tg)) => {
                prefill.push(pp);
                decode.push(tg);
            }
            Err(e) => return fail(e),
        }
    }
    let (pp, tg) = (median(&prefill[1..]), median(&decode[1..]));
    if a.json {
        let j = serde_json::json!({"commit": env!("LAYERSTREAM_COMMIT"), "model": a.model, "device": model.backend.name(),
            "batch": n, "batch_invariant": want.batch_invariant, "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens,
            "prefill_tok_per_s": pp, "decode_tok_per_s": tg});
        println!("{j}");
    } else {
        println!("model       {}", a.model.display());
        println!("device      {}", model.backend.name());
        println!("batch       {n} sequences");
        println!(
            "prefill     {pp:.1} tok/s in all  ({} tokens each)",
            a.prompt_tokens
        );
        println!(
            "decode      {tg:.1} tok/s in all  ({} tokens each, median of {})",
            a.gen_tokens, a.reps
        );
    }
    ExitCode::SUCCESS
}

/// Every prompt, a chunk of each per step (at most `max_rows` rows a step); the greedy tokens
/// after the last chunk.
fn prefill(
    runner: &mut dyn StepRunner,
    prompts: &[Vec<u32>],
    tables: &[Vec<u32>],
    max_rows: usize,
) -> Result<Vec<u32>, BackendError> {
    let (n, plen) = (prompts.len(), prompts[0].len());
    let each = (max_rows / n).max(1);
    let (mut done, mut next) = (0, Vec::new());
    while done < plen {
        let take = each.min(plen - done);
        let last = done + take == plen;
        let tokens: Vec<u32> = prompts
            .iter()
            .flat_map(|p| p[done..done + take].iter().copied())
            .collect();
        let seqs: Vec<SeqStep<'_>> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| SeqStep {
                rows: i * take..(i + 1) * take,
                pos: done,
                blocks: t,
                logits: last,
            })
            .collect();
        let logits = runner.step(&StepBatch {
            tokens: &tokens,
            seqs: &seqs,
        })?;
        if last {
            let vocab = logits.len() / n;
            next = logits.chunks(vocab).map(argmax).collect();
        }
        done += take;
    }
    Ok(next)
}

/// One repetition: the prompts, then `gen` decode steps of all sequences; returns the total
/// prefill and decode rates.
fn one_run(
    runner: &mut dyn StepRunner,
    prompts: &[Vec<u32>],
    gen: usize,
    per_seq: usize,
    max_rows: usize,
) -> Result<(f64, f64), BackendError> {
    let blocks_each = per_seq.div_ceil(BLOCK);
    let tables: Vec<Vec<u32>> = (0..prompts.len())
        .map(|i| ((i * blocks_each) as u32..((i + 1) * blocks_each) as u32).collect())
        .collect();
    let plen = prompts[0].len();
    let t = Instant::now();
    let mut next = prefill(runner, prompts, &tables, max_rows)?;
    let pp = (plen * prompts.len()) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for step in 0..gen {
        let seqs: Vec<SeqStep<'_>> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| SeqStep {
                rows: i..i + 1,
                pos: plen + step,
                blocks: t,
                logits: true,
            })
            .collect();
        let logits = runner.step(&StepBatch {
            tokens: &next,
            seqs: &seqs,
        })?;
        let vocab = logits.len() / prompts.len();
        next = logits.chunks(vocab).map(argmax).collect();
    }
    Ok((pp, (gen * prompts.len()) as f64 / t.elapsed().as_secs_f64()))
}
