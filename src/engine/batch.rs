//! A step's batch built from the plan: the flattened pending tokens of each planned sequence,
//! its position and block table, and whether its chunk reaches the end (then its logits are due).

use super::scheduler::Planned;
use super::sequence::Sequence;
use crate::backend::step::SeqStep;

/// Fill `tokens` with the planned sequences' tokens and describe each one's rows.
pub fn build<'a>(
    running: &'a [Sequence],
    plan: &[Planned],
    tokens: &mut Vec<u32>,
) -> Vec<SeqStep<'a>> {
    tokens.clear();
    plan.iter()
        .map(|p| {
            let seq = &running[p.seq];
            let start = tokens.len();
            let from = seq.computed;
            tokens.extend_from_slice(&seq.out.all_tokens()[from..from + p.n]);
            SeqStep {
                rows: start..tokens.len(),
                pos: from,
                blocks: &seq.blocks,
                logits: p.n == seq.pending(),
            }
        })
        .collect()
}
