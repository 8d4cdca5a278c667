//! The runner's answers to the engine: the logit rows wanted whole copied back, each row's
//! answer read from `logits_rows`'s output, and the lone decode row answered on the device.

use super::{CudaRunner, HeadBufs};
use crate::backend::cuda::driver::{copy_dtoh, copy_htod};
use crate::backend::cuda::graph_steps::HeadStage;
use crate::backend::cuda::kernels::HEAD_ROW_WORDS;
use crate::backend::cuda::pass::Pass;
use crate::backend::step::{LogitHead, RowResult, RowWant, StepBatch};

impl CudaRunner {
    /// After the step's kernels: the rows wanted whole (every row when `wants` is empty or all
    /// whole) to the host.
    pub(super) fn copy_whole_rows(
        &mut self,
        pass: &Pass,
        wants: &[RowWant],
        m: usize,
    ) -> Result<(), String> {
        let row_bytes = self.model.hp.vocab * 4;
        self.whole.clear();
        if wants.is_empty() || wants.iter().all(|w| *w == RowWant::Full) {
            unsafe {
                copy_dtoh(
                    self.logits_host.ptr,
                    self.logits_dev.ptr,
                    m * row_bytes,
                    pass.s,
                )?
            };
            self.whole.resize(m, true);
            return Ok(());
        }
        for (i, w) in wants.iter().enumerate().take(m) {
            let full = *w == RowWant::Full;
            if full {
                let (dst, src) = (i * row_bytes, self.logits_dev.ptr + (i * row_bytes) as u64);
                unsafe { copy_dtoh(self.logits_host.ptr.add(dst), src, row_bytes, pass.s)? };
            }
            self.whole.push(full);
        }
        Ok(())
    }

    /// The answers of the last step's logit rows, from `logits_rows`'s output.
    pub(super) fn row_results(&self, wants: &[RowWant]) -> Vec<RowResult> {
        let words = bytemuck::cast_slice::<u8, u32>(self.rows_host.as_slice());
        wants
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = &words[i * HEAD_ROW_WORDS..(i + 1) * HEAD_ROW_WORDS];
                match (w, o[0]) {
                    (RowWant::Full, _) => RowResult::Full,
                    (_, 1) => RowResult::NonFinite,
                    (_, 2) => RowResult::Full,
                    (RowWant::Argmax, _) => RowResult::Token(o[1]),
                    (RowWant::Draw { .. }, _) => RowResult::Token(o[2]),
                    (RowWant::Head { .. }, _) => RowResult::Head(LogitHead {
                        max: f32::from_bits(o[4]),
                        total: f32::from_bits(o[5]) as f64,
                        cand: (0..o[3] as usize)
                            .map(|j| (f32::from_bits(o[8 + 2 * j]), o[9 + 2 * j]))
                            .collect(),
                    }),
                }
            })
            .collect()
    }

    /// The lone decode row's answer from its logits on the device (left there by the decode
    /// step), and its copy back; the row stays on the device for `full_row`.
    pub(super) fn lone_answers(
        &mut self,
        batch: &StepBatch<'_>,
        pass: &Pass,
        wants: &[RowWant],
        n_text: usize,
    ) -> Result<(), String> {
        let head = HeadStage { m: 1 };
        let hbuf = bytemuck::cast_slice_mut::<u8, u32>(self.head_host.as_mut_slice());
        head.stage(hbuf, batch, wants);
        let logits = pass.dev.ptr(pass.dev.layout.scratch.logits);
        let bufs = HeadBufs {
            logits,
            ..self.head_bufs()
        };
        unsafe { copy_htod(bufs.head_dev, self.head_host.ptr, head.words() * 4, pass.s)? };
        bufs.answers(pass, 1, n_text)?;
        unsafe { copy_dtoh(self.rows_host.ptr, bufs.out, HEAD_ROW_WORDS * 4, pass.s)? };
        self.whole = vec![false];
        self.whole_src = logits;
        Ok(())
    }
}
