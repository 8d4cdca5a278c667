//! `check-cuda`'s batched-step check: the engine's runners of both backends (the CPU's and the
//! GPU's paged pool) driven through the same steps — three sequences on shuffled KV blocks, two
//! prompts in one step, then decode rows of those two beside the third sequence's prompt, then
//! decode rows of all three — every row's logits compared, greedy tokens fed from the CPU. Also
//! measures how far the GPU's logits for one sequence move when other sequences share its steps.

use std::sync::Arc;

use super::check::Report;
use crate::backend::step::{BatchLimits, KvGeometry, SeqStep, StepBatch, StepRunner};
use crate::backend::Backend;
use crate::rng::Rng;
use crate::sampler::argmax;

const BS: usize = 16;
/// Worst relative logit error allowed, as for whole-model sessions.
const TOL: f64 = 3e-2;

/// A sequence of the check: all its tokens so far, how many are in its blocks, its blocks.
pub(super) struct Seq {
    pub ids: Vec<u32>,
    pub done: usize,
    pub blocks: Vec<u32>,
}

fn limits(ctx: usize, blocks: usize) -> BatchLimits {
    BatchLimits {
        max_seqs: 4,
        max_batch_tokens: 512,
        kv: KvGeometry {
            block_size: BS,
            num_blocks: blocks,
        },
        shared_blocks: false,
        ctx,
        batch_invariant: false,
    }
}

/// The step over `which` sequences' pending tokens; logits for each.
pub(super) fn batch_of<'a>(seqs: &'a [Seq], which: &[usize]) -> (Vec<u32>, Vec<SeqStep<'a>>) {
    let mut tokens = Vec::new();
    let mut steps = Vec::new();
    for &i in which {
        let s = &seqs[i];
        let start = tokens.len();
        tokens.extend_from_slice(&s.ids[s.done..]);
        steps.push(SeqStep {
            rows: start..tokens.len(),
            pos: s.done,
            blocks: &s.blocks,
            logits: true,
        });
    }
    (tokens, steps)
}

fn step<'a>(
    r: &'a mut dyn StepRunner,
    seqs: &[Seq],
    which: &[usize],
) -> Result<&'a mut [f32], String> {
    let (tokens, steps) = batch_of(seqs, which);
    let batch = StepBatch {
        tokens: &tokens,
        seqs: &steps,
    };
    r.step(&batch).map_err(|e| e.to_string())
}

/// Three prompts of different lengths from the first case's ids (repeated as needed).
fn prompts(ids: &[u32], vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(11);
    PROMPTS
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| match ids.get(i) {
                    Some(&t) if i % 3 != 2 => t,
                    _ => (rng.next_u64() % vocab as u64) as u32,
                })
                .collect()
        })
        .collect()
}

/// Shuffled block lists: each sequence gets blocks for `ctx` positions, none shared.
fn assign_blocks(n: usize, per_seq: usize, rng: &mut Rng) -> (Vec<Vec<u32>>, usize) {
    let total = n * per_seq + 5;
    let mut all: Vec<u32> = (0..total as u32).collect();
    for i in (1..all.len()).rev() {
        all.swap(i, rng.next_u64() as usize % (i + 1));
    }
    let lists = (0..n)
        .map(|i| all[i * per_seq..(i + 1) * per_seq].to_vec())
        .collect();
    (lists, total)
}

/// Outcome of the driven steps.
#[derive(Default)]
struct Tally {
    worst: f64,
    rows: usize,
    greedy_diffs: usize,
    bad: Option<String>,
}

pub(super) fn check_batched(
    label: &str,
    cpu: &Arc<dyn Backend>,
    gpu: &Arc<dyn Backend>,
    ids: &[u32],
    decode_steps: usize,
    r: &mut Report,
) -> Result<(), String> {
    let vocab = cpu.hp().vocab;
    let ctx = 128;
    let mut rng = Rng::new(5);
    let (lists, total) = assign_blocks(3, ctx / BS, &mut rng);
    let lim = limits(ctx, total);
    let mut cr = cpu.clone().new_runner(&lim).map_err(|e| e.to_string())?;
    let mut gr = gpu.clone().new_runner(&lim).map_err(|e| e.to_string())?;
    let mut seqs: Vec<Seq> = prompts(ids, vocab)
        .into_iter()
        .zip(lists)
        .map(|(ids, blocks)| Seq {
            ids,
            done: 0,
            blocks,
        })
        .collect();
    let mut t = Tally::default();
    let mut beside = Vec::new();
    let schedule: Vec<Vec<usize>> = std::iter::once(vec![0, 1])
        .chain(std::iter::once(vec![0, 1, 2]))
        .chain((0..decode_steps.max(2)).map(|_| vec![0, 1, 2]))
        .collect();
    for (n, which) in schedule.iter().enumerate() {
        let c = step(&mut *cr, &seqs, which)?.to_vec();
        let g = step(&mut *gr, &seqs, which)?.to_vec();
        compare(&c, &g, vocab, n, &mut t);
        beside.push(g[..vocab.min(g.len())].to_vec());
        for (j, &i) in which.iter().enumerate() {
            let s = &mut seqs[i];
            s.done = s.ids.len();
            s.ids.push(argmax(&c[j * vocab..(j + 1) * vocab]));
        }
    }
    let text = format!(
        "{} steps, {} rows: worst logits error {:.2e} (limit {TOL:.0e}), {} greedy token(s) differ beyond a near-tie",
        schedule.len(),
        t.rows,
        t.worst,
        t.greedy_diffs
    );
    match t.bad {
        Some(b) => r.line(&format!("{label} batched step"), b, false),
        None => r.line(
            &format!("{label} batched step"),
            text,
            t.worst <= TOL && t.greedy_diffs == 0,
        ),
    }
    drop(gr);
    super::check_answers::check_answers(label, cpu, gpu, &lim, &seqs, &schedule, r)?;
    batch_variance(label, gpu, &lim, &seqs, &schedule, &beside, r)
}

/// Compare one step's rows; a greedy difference counts unless the CPU's gap between the two
/// tokens is within twice the largest logit difference of that row.
fn compare(c: &[f32], g: &[f32], vocab: usize, step: usize, t: &mut Tally) {
    if c.len() != g.len() || c.is_empty() || !c.len().is_multiple_of(vocab) {
        t.bad.get_or_insert(format!(
            "step {step}: logits lengths differ: GPU {}, CPU {} (vocabulary {vocab})",
            g.len(),
            c.len()
        ));
        return;
    }
    for (cr, gr) in c.chunks(vocab).zip(g.chunks(vocab)) {
        t.rows += 1;
        if let Some(i) = gr.iter().position(|x| !x.is_finite()) {
            t.bad
                .get_or_insert(format!("step {step}: GPU logit {i} is {}", gr[i]));
            continue;
        }
        let scale = cr
            .iter()
            .fold(0f64, |m, v| m.max(v.abs() as f64))
            .max(1e-30);
        let noise = cr
            .iter()
            .zip(gr)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        t.worst = t.worst.max(noise as f64 / scale);
        let (a, b) = (argmax(cr), argmax(gr));
        if a != b && cr[a as usize] - cr[b as usize] > 2.0 * noise {
            t.greedy_diffs += 1;
        }
    }
}

/// Replay the schedule over the sequences' final tokens on `r` (each sequence's prompt first,
/// then one token a step); returns the first sequence's logits row of each step.
pub(super) fn replay(
    r: &mut dyn StepRunner,
    last: &[Seq],
    prompt: &[usize],
    schedule: &[Vec<usize>],
    vocab: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let mut seqs: Vec<Seq> = last
        .iter()
        .zip(prompt)
        .map(|(q, &n)| Seq {
            ids: q.ids[..n].to_vec(),
            done: 0,
            blocks: q.blocks.clone(),
        })
        .collect();
    let mut rows = Vec::new();
    for which in schedule {
        let out = step(r, &seqs, which)?;
        rows.push(out[..vocab].to_vec());
        for &i in which {
            let s = &mut seqs[i];
            s.done = s.ids.len();
            if let Some(&t) = last[i].ids.get(s.ids.len()) {
                s.ids.push(t);
            }
        }
    }
    Ok(rows)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Prompt lengths of the check's three sequences.
pub(super) const PROMPTS: [usize; 3] = [37, 5, 70];

/// The first sequence alone on a fresh GPU runner against its rows beside the other two, in
/// the default mode (measured, not judged) and with `batch_invariant` (must be identical).
fn batch_variance(
    label: &str,
    gpu: &Arc<dyn Backend>,
    lim: &BatchLimits,
    seqs: &[Seq],
    schedule: &[Vec<usize>],
    beside: &[Vec<f32>],
    r: &mut Report,
) -> Result<(), String> {
    let vocab = gpu.hp().vocab;
    let prompt = PROMPTS;
    let alone_schedule = vec![vec![0usize]; schedule.len()];
    let run = |lim: &BatchLimits, sched: &[Vec<usize>], seqs: &[Seq]| {
        let mut rn = gpu.clone().new_runner(lim).map_err(|e| e.to_string())?;
        replay(&mut *rn, seqs, &prompt, sched, vocab)
    };
    let alone = run(lim, &alone_schedule, &seqs[..1])?;
    let worst = max_diff(&alone, beside);
    r.line(
        &format!("{label} batch variance"),
        format!("largest logit difference of a sequence alone vs beside others over {} steps: {worst:.3e} (measured, not judged)", beside.len()),
        true,
    );
    let inv = BatchLimits {
        batch_invariant: true,
        ..*lim
    };
    let mixed = run(&inv, schedule, seqs)?;
    let alone = run(&inv, &alone_schedule, &seqs[..1])?;
    let worst = max_diff(&alone, &mixed);
    r.line(
        &format!("{label} batch-invariant"),
        format!("--batch-invariant: largest logit difference alone vs beside others {worst:.3e} (0 required)"),
        worst == 0.0 && alone.len() == mixed.len(),
    );
    Ok(())
}
