//! The batched step for a backend that runs one sequence at a time in a session of its own (the
//! CUDA backend until its paged attention lands): a step holds exactly one sequence, whose
//! position must continue the session's (or start at 0, which starts it afresh).

use super::step::{StepBatch, StepRunner};
use super::{BackendError, Session};

pub struct SessionRunner {
    session: Box<dyn Session>,
    logits: Vec<f32>,
}

impl SessionRunner {
    pub fn new(session: Box<dyn Session>) -> SessionRunner {
        SessionRunner {
            session,
            logits: Vec::new(),
        }
    }
}

impl StepRunner for SessionRunner {
    fn step(&mut self, batch: &StepBatch<'_>) -> Result<&mut [f32], BackendError> {
        let [seq] = batch.seqs else {
            return Err(BackendError::Device(format!(
                "a step of {} sequences on a backend that runs one at a time",
                batch.seqs.len()
            )));
        };
        if seq.pos == 0 {
            self.session.reset();
        } else if seq.pos != self.session.len() {
            return Err(BackendError::Device(format!(
                "the step continues position {} but the sequence holds {}",
                seq.pos,
                self.session.len()
            )));
        }
        let logits = self.session.eval(&batch.tokens[seq.rows.clone()])?;
        self.logits.clear();
        if seq.logits {
            self.logits.extend_from_slice(logits);
        }
        Ok(&mut self.logits)
    }

    fn prepare(&mut self) -> Result<(), BackendError> {
        self.session.prepare()
    }

    fn reset(&mut self) {
        self.session.reset();
    }
}
