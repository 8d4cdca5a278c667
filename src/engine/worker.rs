//! The engine thread: take new jobs, retire departed and timed-out sequences, schedule a step,
//! run it on the backend's runner (which gates each layer on the loader), emit its tokens.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};

use super::kv_pool::KvPool;
use super::outbox::Outbox;
use super::scheduler::{Planned, SchedLimits, Schedule, Scheduler};
use super::sequence::Sequence;
use super::stats::EngineStats;
use super::timing::{Part, StepTimer};
use super::{batch, emit, Drain, EngineError, EngineEvent, Job};
use crate::backend::step::{BatchLimits, RowWant, StepBatch, StepOut, StepRunner};
use crate::backend::{Backend, BackendError};
use crate::generation::FinishReason;
use crate::panic_message::panic_message;
use crate::tokenizer::Tokenizer;

/// Test-only: with `LAYERSTREAM_TEST_STEP_DELAY_MS=N` every step (so every generated token of
/// each sequence) is held back N ms, so tests of long-running streams (shutdown drains,
/// disconnects, a full queue) do not depend on how fast the device is.
pub const STEP_DELAY_ENV: &str = "LAYERSTREAM_TEST_STEP_DELAY_MS";

/// How often an idle engine asks the runner for idle work while it has some.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(2);

fn step_delay() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(STEP_DELAY_ENV).ok()?.parse().ok()?;
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// Everything the engine thread owns.
pub(super) struct Worker {
    pub model: Arc<dyn Backend>,
    pub tokenizer: Arc<Tokenizer>,
    pub runner: Box<dyn StepRunner>,
    pub sched: Scheduler,
    pub drain: Arc<Drain>,
    pub stats: Arc<EngineStats>,
    pub jobs: Receiver<Job>,
    pub close: Receiver<()>,
    pub request_timeout: Option<std::time::Duration>,
    tokens: Vec<u32>,
    timer: StepTimer,
    /// Events for clients, sent while the next step runs (see outbox.rs).
    outbox: Outbox,
    /// Whether the runner may have idle work (`StepRunner::idle_work`).
    idle_work: bool,
}

impl Worker {
    pub fn new(
        model: Arc<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        runner: Box<dyn StepRunner>,
        limits: &BatchLimits,
        shared: (Arc<Drain>, Arc<EngineStats>),
        channels: (Receiver<Job>, Receiver<()>),
    ) -> Worker {
        let pool = KvPool::new(
            limits.kv.num_blocks,
            limits.kv.block_size,
            limits.shared_blocks,
        );
        let sched = Scheduler::new(
            pool,
            SchedLimits {
                max_seqs: limits.max_seqs,
                max_batch_tokens: limits.max_batch_tokens,
            },
        );
        Worker {
            model,
            tokenizer,
            runner,
            sched,
            drain: shared.0,
            stats: shared.1,
            jobs: channels.0,
            close: channels.1,
            request_timeout: None,
            tokens: Vec::new(),
            timer: StepTimer::from_env(),
            outbox: Outbox::default(),
            idle_work: true,
        }
    }

    /// Run until closed (or every handle is gone), then end whatever is left.
    pub fn run(mut self) {
        self.stats.publish(&self.sched);
        let t0 = Instant::now();
        match self.runner.prepare() {
            Ok(()) => tracing::info!(
                "engine prepared in {:.0} ms",
                t0.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => tracing::warn!("engine preparation failed (the first step will retry): {e}"),
        }
        let delay = step_delay();
        while self.receive() {
            self.retire_departed();
            self.retire_timed_out();
            let stepped = self.step();
            self.stats.publish(&self.sched);
            if stepped {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
            }
        }
        self.end_all(EngineError::ShuttingDown);
        self.stats.publish(&self.sched);
    }

    /// Take new jobs (blocking while idle); false once the engine is closed.
    fn receive(&mut self) -> bool {
        if self.sched.is_idle() {
            self.outbox.flush();
            if !self.wait_for_work() {
                return false;
            }
        }
        if !matches!(self.close.try_recv(), Err(TryRecvError::Empty)) {
            return false;
        }
        loop {
            match self.jobs.try_recv() {
                Ok(job) => self.enqueue(job),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !self.sched.is_idle(),
            }
        }
    }

    /// Block until a job comes (false once closed), doing the runner's idle work meanwhile
    /// while it has some: a piece at a time, so a job waits for one piece at most.
    fn wait_for_work(&mut self) -> bool {
        loop {
            // Without idle work the wait has no end (a timeout past `Instant`'s range blocks).
            let poll = if self.idle_work {
                IDLE_POLL
            } else {
                std::time::Duration::MAX
            };
            crossbeam_channel::select! {
                recv(self.jobs) -> job => return match job {
                    Ok(job) => {
                        self.enqueue(job);
                        true
                    }
                    Err(_) => false,
                },
                recv(self.close) -> _ => return false,
                default(poll) => {
                    self.idle_work = self.runner.idle_work(self.n_text()).unwrap_or_else(|e| {
                        tracing::warn!("idle work stopped: {e}");
                        false
                    });
                }
            }
        }
    }

    /// Ids a step may choose: the tokenizer's text vocabulary, within the model's.
    fn n_text(&self) -> usize {
        self.tokenizer.vocab_size().min(self.model.hp().vocab)
    }

    fn enqueue(&mut self, job: Job) {
        let outcomes = self.stats.outcomes.clone();
        self.sched.waiting.push_back(Sequence::new(job, outcomes));
    }

    /// Drop waiting requests whose client left (freeing their queue slot at once), refuse them
    /// all while draining, end running ones whose client left or whose drain deadline passed.
    fn retire_departed(&mut self) {
        let draining = self.drain.is_draining();
        if draining || self.drain.past_deadline() {
            self.outbox.flush();
        }
        let stats = &self.stats;
        self.sched.waiting.retain_mut(|seq| {
            let keep = !seq.is_abandoned() && !draining;
            if !keep {
                if draining {
                    seq.fail(EngineError::ShuttingDown);
                } else {
                    seq.outcomes.failed(super::outcomes::CANCELLED);
                    tracing::info!(id = %seq.job.id, "queued request dropped: client disconnected");
                }
                seq.leave_queue(stats);
            }
            keep
        });
        let past = self.drain.past_deadline();
        let pool = &mut self.sched.pool;
        self.sched.running.retain_mut(|seq| {
            let gone = seq.is_abandoned();
            if gone {
                seq.cancelled();
            } else if past {
                seq.fail(EngineError::ShuttingDown);
            }
            if gone || past {
                seq.release(pool);
            }
            !(gone || past)
        });
    }

    /// End every request (queued or running) older than `--request-timeout` with what it has.
    fn retire_timed_out(&mut self) {
        let Some(limit) = self.request_timeout else {
            return;
        };
        let late = |seq: &Sequence| seq.job.enqueued.elapsed() >= limit;
        let (mut ended, keep): (Vec<Sequence>, Vec<Sequence>) =
            self.sched.waiting.drain(..).partition(|s| late(s));
        self.sched.waiting = keep.into();
        for seq in &mut ended {
            seq.leave_queue(&self.stats);
        }
        let pool = &mut self.sched.pool;
        let mut i = 0;
        while i < self.sched.running.len() {
            if late(&self.sched.running[i]) {
                let mut seq = self.sched.running.remove(i);
                seq.release(pool);
                ended.push(seq);
            } else {
                i += 1;
            }
        }
        for seq in ended {
            tracing::info!(id = %seq.job.id, tokens = seq.out.generated().len(), "request ended: past --request-timeout");
            emit::finish(seq, FinishReason::TimeLimit, &mut self.outbox);
        }
    }

    /// Schedule and run one step; false when there was nothing to run.
    fn step(&mut self) -> bool {
        let t = self.timer.start();
        let Schedule { plan, unfit } = self.sched.schedule();
        if !unfit.is_empty() || plan.is_empty() {
            self.outbox.flush();
        }
        self.refuse_unfit(unfit);
        self.mark_started();
        if plan.is_empty() {
            return false;
        }
        let vocab = self.model.hp().vocab;
        let wants: Vec<RowWant> = plan
            .iter()
            .filter_map(|p| {
                let seq = &mut self.sched.running[p.seq];
                (p.n == seq.pending()).then(|| seq.out.want(vocab))
            })
            .collect();
        let n_text = self.n_text();
        let seqs = batch::build(&self.sched.running, &plan, &mut self.tokens);
        let (rows, n_seqs) = (self.tokens.len(), seqs.len());
        let batch = StepBatch {
            tokens: &self.tokens,
            seqs: &seqs,
        };
        self.timer.add(Part::Schedule, t);
        let t = self.timer.start();
        self.model.take_waited();
        let (runner, outbox) = (&mut self.runner, &mut self.outbox);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let runner = runner;
            // The last step's events go out while this one runs on the device.
            runner.step_rows(&batch, &wants, n_text, &mut || outbox.flush())
        }));
        self.outbox.flush();
        let waited_ms = self.model.take_waited().as_secs_f64() * 1e3;
        self.timer.add_backend(t, rows, n_seqs);
        let t = self.timer.start();
        let outcome = match result {
            Ok(Ok(logits)) => Ok(logits),
            Ok(Err(e)) => Err(engine_error(e)),
            Err(panic) => Err(EngineError::Internal(format!(
                "internal error: {}",
                panic_message(&*panic)
            ))),
        };
        let tok = &self.tokenizer;
        match outcome {
            Ok(StepOut::Logits(logits)) => {
                let out = &mut self.outbox;
                emit::apply(&mut self.sched, &plan, logits, vocab, tok, waited_ms, out);
            }
            Ok(StepOut::Rows(rows)) => {
                let runner = &mut *self.runner;
                let out = &mut self.outbox;
                emit::apply_rows(
                    &mut self.sched,
                    &plan,
                    &rows,
                    runner,
                    vocab,
                    tok,
                    waited_ms,
                    out,
                );
            }
            Err(e) => self.fail_planned(&plan, e),
        }
        self.timer.add(Part::Emit, t);
        self.timer.step_done(rows, n_seqs);
        true
    }

    /// Fail the sequences that can never fit the pool.
    fn refuse_unfit(&mut self, unfit: Vec<Sequence>) {
        let capacity = self.sched.pool.total() * self.sched.pool.block_size();
        for mut seq in unfit {
            seq.leave_queue(&self.stats);
            let needed = seq.out.all_tokens().len();
            seq.fail(EngineError::TooLarge { needed, capacity });
        }
    }

    /// Send `Started` to every sequence admitted for the first time.
    fn mark_started(&mut self) {
        let now = Instant::now();
        for seq in &mut self.sched.running {
            if seq.admitted.is_none() {
                seq.admitted = Some(now);
                let queued = now.duration_since(seq.job.enqueued);
                let cached = seq.cached_tokens.unwrap_or(0);
                crate::metrics::admitted(seq.job.prompt.len(), cached, queued);
                let queued_ms = queued.as_secs_f64() * 1e3;
                let _ = seq.job.events.send(EngineEvent::Started { queued_ms });
            }
            seq.leave_queue(&self.stats);
        }
    }

    /// A failed step ends every sequence in it (their blocks may hold partial K/V).
    fn fail_planned(&mut self, plan: &[Planned], e: EngineError) {
        tracing::error!("step failed: {e}");
        self.outbox.flush();
        let mut idx: Vec<usize> = plan.iter().map(|p| p.seq).collect();
        idx.sort_unstable();
        for i in idx.into_iter().rev() {
            let mut seq = self.sched.running.remove(i);
            seq.fail(e.clone());
            seq.release(&mut self.sched.pool);
        }
        self.runner.reset();
    }

    /// End every sequence still here with `e`.
    fn end_all(&mut self, e: EngineError) {
        self.outbox.flush();
        let pool = &mut self.sched.pool;
        for mut seq in self.sched.running.drain(..) {
            seq.fail(e.clone());
            seq.release(pool);
        }
        for mut seq in self.sched.waiting.drain(..) {
            seq.fail(e.clone());
            seq.leave_queue(&self.stats);
        }
    }
}

/// How a backend failure reaches the requests of the step.
fn engine_error(e: BackendError) -> EngineError {
    match e {
        BackendError::LoadFailed(m) => EngineError::LoadFailed(m),
        BackendError::Interrupted => EngineError::ShuttingDown,
        other => EngineError::Internal(other.to_string()),
    }
}
