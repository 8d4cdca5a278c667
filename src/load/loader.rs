//! The loader thread: reserves every unit's memory, then reads units in plan order, installing
//! each into the model and marking it resident. Optional bandwidth limit (for co-located
//! services and for tests) and a test-only fault injection.
//!
//! Test-only fault injection: with `LAYERSTREAM_TEST_FAIL_UNIT=<unit name>` (e.g. `layer.5`) the
//! loader fails with an I/O-style error when it reaches that unit, as a disk error would.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::cpu::weights::{self, ReadHook, UnitWeights};
use crate::backend::cpu::CpuModel;
use crate::gguf::GgufFile;
use crate::load::memory::{self, MemorySources};
use crate::load::plan::{LoadPlan, UnitKind, READY_UNITS};
use crate::load::progress::Progress;
use crate::model::{ModelError, ModelSpec};
use crate::panic_message::panic_message;

/// The environment variable that injects a load fault (tests only).
pub const FAULT_ENV: &str = "LAYERSTREAM_TEST_FAIL_UNIT";

/// How the loader behaves.
#[derive(Clone, Debug, Default)]
pub struct LoaderOptions {
    /// Throttle reads to this many MB/s (10^6 bytes).
    pub bandwidth_limit_mb_s: Option<f64>,
    /// Fail when this unit is reached (from `FAULT_ENV`).
    pub fail_unit: Option<String>,
    /// After the READY units, pause until the tokenizer is built (at most this long), so that
    /// on a machine with few cores the bulk copy does not slow the last step before READY.
    pub yield_to_startup: Option<Duration>,
}

impl LoaderOptions {
    pub fn with_env_fault(mut self) -> LoaderOptions {
        self.fail_unit = std::env::var(FAULT_ENV).ok().filter(|s| !s.is_empty());
        self
    }
}

/// Everything the loader thread needs.
pub struct LoadJob {
    pub file: Arc<GgufFile>,
    pub spec: ModelSpec,
    pub plan: LoadPlan,
    pub model: Arc<CpuModel>,
    pub progress: Arc<Progress>,
    pub options: LoaderOptions,
}

/// Start the loader thread.
pub fn spawn(job: LoadJob) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("loader".into())
        .spawn(move || {
            // A panic on this thread must still reach waiters and the API as a failed load.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job)));
            let error = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("loader thread panicked: {}", panic_message(&*panic)),
            };
            tracing::error!("model load failed: {error}");
            job.model.residency().fail(error.clone());
            job.progress.fail(error);
        })
}

struct Hook<'a> {
    progress: &'a Progress,
    slot: usize,
    unit: &'a str,
    fail_unit: Option<&'a str>,
    rate: Option<f64>,
    t0: Instant,
    bytes: u64,
}

impl ReadHook for Hook<'_> {
    fn before_read(&mut self, tensor: &str, bytes: u64) -> Result<(), ModelError> {
        if self.fail_unit == Some(self.unit) {
            return Err(ModelError::TensorData {
                name: tensor.to_string(),
                message: format!(
                    "read failed: injected fault in unit '{}' ({FAULT_ENV})",
                    self.unit
                ),
            });
        }
        if let Some(rate) = self.rate {
            // Sleep until the bytes read so far fit the budget, counting the chunk about to be read.
            let due = Duration::from_secs_f64((self.bytes + bytes) as f64 / rate);
            if let Some(wait) = due.checked_sub(self.t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }

    fn after_read(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.progress.add_bytes(self.slot, bytes);
    }
}

fn run(job: &LoadJob) -> Result<(), ModelError> {
    job.progress.load_started();
    // Reserve all weight memory before the first copy: a model that cannot fit fails here.
    let mut reserved: Vec<(UnitKind, UnitWeights)> = Vec::with_capacity(job.plan.units.len());
    for u in &job.plan.units {
        reserved.push((u.kind, weights::alloc_unit(&job.file, &job.spec, u.kind)?));
    }
    check_memory(&reserved)?;
    let started = Instant::now();
    let rate = job.options.bandwidth_limit_mb_s.map(|mb| mb * 1e6);
    // The throttle's budget: bytes read since `t0`.
    let (mut t0, mut budget_bytes) = (started, 0u64);
    let mut total = 0u64;
    for (slot, ((kind, mut w), unit)) in reserved.into_iter().zip(&job.plan.units).enumerate() {
        let mut hook = Hook {
            progress: &job.progress,
            slot,
            unit: &unit.name,
            fail_unit: job.options.fail_unit.as_deref(),
            rate,
            t0,
            bytes: budget_bytes,
        };
        weights::fill_unit(&job.file, &job.spec, kind, &mut w, &mut hook)?;
        total += hook.bytes - budget_bytes;
        budget_bytes = hook.bytes;
        job.model.install(kind, w);
        job.progress.unit_resident(slot);
        if slot + 1 == READY_UNITS {
            if let Some(limit) = job.options.yield_to_startup {
                let until = Instant::now() + limit;
                while !job.progress.is_tokenizer_built() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // The throttle budget restarts: the pause is not bandwidth to catch up on.
                t0 = Instant::now();
                budget_bytes = 0;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "fully resident in {:.0} ms: {} units, {:.1} MB at {:.0} MB/s",
        job.progress.snapshot().resident_ms.unwrap_or(0.0),
        job.plan.units.len(),
        total as f64 / 1e6,
        total as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}

/// Refuse a model whose reserved memory exceeds what this process may use (the host's available
/// memory, or the room under its cgroup limit when that is smaller).
fn check_memory(units: &[(UnitKind, UnitWeights)]) -> Result<(), ModelError> {
    let needed: u64 = units.iter().map(|(_, w)| w.bytes() as u64).sum();
    let Some(avail) = memory::available(&MemorySources::default()) else {
        tracing::warn!("no memory limit could be read; loading {needed} bytes unchecked");
        return Ok(());
    };
    tracing::info!(
        "memory check: {needed} bytes needed, {} available (limit: {})",
        avail.bytes,
        avail.limit
    );
    if needed > avail.bytes {
        return Err(ModelError::Memory {
            needed,
            available: avail.bytes,
            limit: avail.limit.to_string(),
        });
    }
    Ok(())
}
