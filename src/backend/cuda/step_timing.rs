//! With `LAYERSTREAM_CUDA_TIMING` set, where a batched step's device time goes: events around
//! its parts (layers, LM head, the results' copy), medians logged when the runner ends.

use super::driver::{Event, Stream};

/// With `LAYERSTREAM_CUDA_TIMING` set: events around a step of several rows (start, layers done,
/// LM head done, logits copied) and the times between them (µs), logged when the runner ends.
pub struct StepTiming {
    events: [Event; 4],
    /// (rows, layers, head, results copy) per step.
    steps: Vec<(usize, f64, f64, f64)>,
}

impl StepTiming {
    pub fn from_env() -> Result<Option<StepTiming>, String> {
        if std::env::var_os("LAYERSTREAM_CUDA_TIMING").is_none() {
            return Ok(None);
        }
        let e = || Event::new(true);
        Ok(Some(StepTiming {
            events: [e()?, e()?, e()?, e()?],
            steps: Vec::new(),
        }))
    }

    /// After the step completed.
    pub fn collect(&mut self, rows: usize) -> Result<(), String> {
        let ev = &self.events;
        let us = |a: usize, b: usize| ev[a].elapsed_ms(&ev[b]).map(|m| m as f64 * 1e3);
        self.steps.push((rows, us(0, 1)?, us(1, 2)?, us(2, 3)?));
        Ok(())
    }

    /// One line per row count that at least a tenth of the steps had (decode steps and prompt
    /// chunks apart), with that count's medians.
    pub fn log(&mut self) {
        let mut by_rows: std::collections::BTreeMap<usize, Vec<[f64; 3]>> = Default::default();
        for &(rows, a, b, c) in &self.steps {
            by_rows.entry(rows).or_default().push([a, b, c]);
        }
        for (rows, v) in by_rows {
            if v.len() * 10 < self.steps.len() {
                continue;
            }
            let med = |i: usize| {
                let mut x: Vec<f64> = v.iter().map(|s| s[i]).collect();
                x.sort_by(f64::total_cmp);
                x[x.len() / 2]
            };
            tracing::info!(
                steps = v.len(),
                "batched step (medians): {rows} rows; layers {:.0} us, LM head {:.0} us, results copy {:.0} us",
                med(0),
                med(1),
                med(2)
            );
        }
    }
}

impl StepTiming {
    /// Mark point `i` (0 start, 1 layers done, 2 head done, 3 results copied) on `s`.
    pub fn mark(t: &Option<StepTiming>, i: usize, s: &Stream) -> Result<(), String> {
        match t {
            Some(t) => t.events[i].record(s),
            None => Ok(()),
        }
    }
}
