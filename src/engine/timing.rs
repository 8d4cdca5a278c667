//! Where the engine's steps spend their time, with `LAYERSTREAM_ENGINE_TIMING` set: the mean
//! time of scheduling, the backend's step and emitting (sampling, detokenizing, sending) per
//! step, logged every `EVERY` steps with the mean rows and sequences a step held.

use std::time::{Duration, Instant};

const EVERY: u32 = 500;

#[derive(Default)]
pub struct StepTimer {
    on: bool,
    steps: u32,
    rows: usize,
    seqs: usize,
    parts: [Duration; 3],
}

/// The parts of a step.
#[derive(Clone, Copy)]
pub enum Part {
    Schedule = 0,
    Backend = 1,
    Emit = 2,
}

impl StepTimer {
    pub fn from_env() -> StepTimer {
        StepTimer {
            on: std::env::var_os("LAYERSTREAM_ENGINE_TIMING").is_some(),
            ..StepTimer::default()
        }
    }

    /// A clock for a part, when timing is on.
    pub fn start(&self) -> Option<Instant> {
        self.on.then(Instant::now)
    }

    pub fn add(&mut self, part: Part, since: Option<Instant>) {
        if let Some(t) = since {
            self.parts[part as usize] += t.elapsed();
        }
    }

    /// The backend's part of a step of `rows` rows over `seqs` sequences (each traced).
    pub fn add_backend(&mut self, since: Option<Instant>, rows: usize, seqs: usize) {
        if let Some(t) = since {
            let us = t.elapsed().as_micros() as u64;
            tracing::trace!(rows, seqs, us, "step");
        }
        self.add(Part::Backend, since);
    }

    /// One step of `rows` rows over `seqs` sequences is done.
    pub fn step_done(&mut self, rows: usize, seqs: usize) {
        if !self.on {
            return;
        }
        self.steps += 1;
        self.rows += rows;
        self.seqs += seqs;
        if self.steps < EVERY {
            return;
        }
        let n = self.steps as f64;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
        tracing::info!(
            steps = self.steps,
            "engine step (means): {:.1} rows, {:.1} sequences; schedule {:.0} us, backend {:.0} us, emit {:.0} us",
            self.rows as f64 / n,
            self.seqs as f64 / n,
            us(self.parts[0]),
            us(self.parts[1]),
            us(self.parts[2])
        );
        *self = StepTimer {
            on: true,
            ..StepTimer::default()
        };
    }
}
