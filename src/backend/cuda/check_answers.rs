//! `check-cuda`'s check of the per-row answers through the runner: the batched steps of
//! `check_batch` replayed with every logit row asking for its argmax on the device, so the
//! head's graphs are run unrecorded, captured and replayed (and the layers' for each bucket);
//! each answer must be the CPU's greedy token, or within the logits tolerance of it.

use std::sync::Arc;

use super::check::Report;
use super::check_batch::{batch_of, Seq, PROMPTS};
use crate::backend::step::{BatchLimits, RowResult, RowWant, StepBatch, StepOut, StepRunner};
use crate::backend::Backend;
use crate::sampler::argmax;

/// Relative gap under which the device may pick another token than the CPU (a near-tie).
const TIE: f32 = 3e-2;

/// One step's answers on the GPU and logits on the CPU; returns (rows, near-ties taken, wrong).
fn answer_step(
    cr: &mut dyn StepRunner,
    gr: &mut dyn StepRunner,
    seqs: &[Seq],
    which: &[usize],
    vocab: usize,
) -> Result<(usize, usize, Vec<String>), String> {
    let (tokens, steps) = batch_of(seqs, which);
    let batch = StepBatch {
        tokens: &tokens,
        seqs: &steps,
    };
    let c = cr.step(&batch).map_err(|e| e.to_string())?.to_vec();
    let wants = vec![RowWant::Argmax; which.len()];
    let rows = match gr.step_rows(&batch, &wants, vocab) {
        Ok(StepOut::Rows(rows)) => rows,
        Ok(StepOut::Logits(_)) => return Err("the GPU answered whole rows for argmax".into()),
        Err(e) => return Err(e.to_string()),
    };
    let (mut ties, mut wrong) = (0, Vec::new());
    for (j, row) in rows.iter().enumerate() {
        let cpu = &c[j * vocab..(j + 1) * vocab];
        let best = argmax(cpu);
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        match row {
            RowResult::Token(t) if *t == best => {}
            RowResult::Token(t) if cpu[best as usize] - cpu[*t as usize] <= TIE * scale => {
                ties += 1
            }
            other => wrong.push(format!("row {j}: GPU {other:?}, CPU argmax {best}")),
        }
    }
    Ok((rows.len(), ties, wrong))
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
    let (mut rows, mut ties, mut wrong) = (0, 0, Vec::new());
    for which in schedule {
        let (n, t, w) = answer_step(&mut *cr, &mut *gr, &seqs, which, vocab)?;
        (rows, ties) = (rows + n, ties + t);
        wrong.extend(w);
        for &i in which {
            let s = &mut seqs[i];
            s.done = s.ids.len();
            if let Some(&t) = last[i].ids.get(s.ids.len()) {
                s.ids.push(t);
            }
        }
    }
    let text = match wrong.first() {
        Some(w) => format!("{} of {rows} answers wrong; first: {w}", wrong.len()),
        None => format!(
            "{} steps, {rows} rows answered on the device (graphs replayed once every bucket was seen twice): every argmax the CPU's ({ties} near-tie(s))",
            schedule.len()
        ),
    };
    r.line(&format!("{label} device answers"), text, wrong.is_empty());
    Ok(())
}
