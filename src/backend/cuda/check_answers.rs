//! `check-cuda`'s check of the per-row answers through the runner: the batched steps of
//! `check_batch` replayed with every logit row asking for its argmax on the device, so the
//! head's graphs are run unrecorded, captured and replayed (and the layers' for each bucket);
//! each answer must be the CPU's greedy token, or within the logits tolerance of it. Then the
//! first sequence decodes alone for a few steps (the lone row's fused step, its logits left on the
//! device and answered there).

use std::sync::Arc;

use super::check::Report;
use super::check_batch::{batch_of, Seq, PROMPTS};
use crate::backend::step::{BatchLimits, RowResult, RowWant, StepBatch, StepOut, StepRunner};
use crate::backend::Backend;
use crate::sampler::argmax;

/// Decode steps of the first sequence alone at the end.
const LONE_STEPS: usize = 4;

/// Relative gap under which the device may pick another token than the CPU (a near-tie).
const TIE: f32 = 3e-2;

/// What the answered steps found.
#[derive(Default)]
struct Found {
    rows: usize,
    ties: usize,
    wrong: Vec<String>,
}

/// One step's answers on the GPU and logits on the CPU, tallied into `f`; returns the CPU's
/// greedy token per row.
fn answer_step(
    cr: &mut dyn StepRunner,
    gr: &mut dyn StepRunner,
    seqs: &[Seq],
    which: &[usize],
    vocab: usize,
    f: &mut Found,
) -> Result<Vec<u32>, String> {
    let (tokens, steps) = batch_of(seqs, which);
    let batch = StepBatch {
        tokens: &tokens,
        seqs: &steps,
    };
    let c = cr.step(&batch).map_err(|e| e.to_string())?.to_vec();
    let wants = vec![RowWant::Argmax; which.len()];
    let rows = match gr.step_rows(&batch, &wants, vocab, &mut || {}) {
        Ok(StepOut::Rows(rows)) => rows,
        Ok(StepOut::Logits(_)) => return Err("the GPU answered whole rows for argmax".into()),
        Err(e) => return Err(e.to_string()),
    };
    let mut greedy = Vec::new();
    for (j, row) in rows.iter().enumerate() {
        let cpu = &c[j * vocab..(j + 1) * vocab];
        let best = argmax(cpu);
        greedy.push(best);
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        f.rows += 1;
        match row {
            RowResult::Token(t) if *t == best => {}
            RowResult::Token(t) if cpu[best as usize] - cpu[*t as usize] <= TIE * scale => {
                f.ties += 1
            }
            other => f.wrong.push(format!(
                "{which:?} row {j}: GPU {other:?}, CPU argmax {best}"
            )),
        }
    }
    Ok(greedy)
}

/// Replay `schedule` over the final tokens of `last` on fresh runners of both backends.
pub(super) fn check_answers(
    label: &str,
    cpu: &Arc<dyn Backend>,
    gpu: &Arc<dyn Backend>,
    lim: &BatchLimits,
    last: &[Seq],
    schedule: &[Vec<usize>],
    r: &mut Report,
) -> Result<(), String> {
    let vocab = gpu.hp().vocab;
    let mut cr = cpu.clone().new_runner(lim).map_err(|e| e.to_string())?;
    let mut gr = gpu.clone().new_runner(lim).map_err(|e| e.to_string())?;
    let mut seqs: Vec<Seq> = last
        .iter()
        .zip(PROMPTS)
        .map(|(q, n)| Seq {
            ids: q.ids[..n].to_vec(),
            done: 0,
            blocks: q.blocks.clone(),
        })
        .collect();
    let mut f = Found::default();
    for which in schedule {
        answer_step(&mut *cr, &mut *gr, &seqs, which, vocab, &mut f)?;
        for &i in which {
            let s = &mut seqs[i];
            s.done = s.ids.len();
            if let Some(&t) = last[i].ids.get(s.ids.len()) {
                s.ids.push(t);
            }
        }
    }
    // The first sequence alone: its pending token, then its own greedy tokens.
    for _ in 0..LONE_STEPS {
        let greedy = answer_step(&mut *cr, &mut *gr, &seqs, &[0], vocab, &mut f)?;
        let s = &mut seqs[0];
        s.done = s.ids.len();
        s.ids.extend(greedy);
    }
    let text = match f.wrong.first() {
        Some(w) => format!("{} of {} answers wrong; first: {w}", f.wrong.len(), f.rows),
        None => format!(
            "{} steps, {} rows answered on the device (graphs replayed once every bucket was seen twice; {LONE_STEPS} steps of one sequence alone): every argmax the CPU's ({} near-tie(s))",
            schedule.len() + LONE_STEPS,
            f.rows,
            f.ties
        ),
    };
    r.line(&format!("{label} device answers"), text, f.wrong.is_empty());
    Ok(())
}
