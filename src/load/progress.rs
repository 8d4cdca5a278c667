//! Load progress as the HTTP API reports it, and the READY condition:
//! listener bound ∧ tokenizer built ∧ `embed` ∧ `layer.0` resident.
//!
//! Writers are the loader thread and the startup code; readers are handlers. Every change bumps
//! a `watch` version so SSE streams and the load callbacks wake without polling.

use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use super::plan::{LoadPlan, READY_UNITS};

/// The phases a client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadState {
    Loading,
    Ready,
    Resident,
    Failed,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UnitSnapshot {
    pub name: String,
    pub bytes: u64,
    pub resident_ms: Option<f64>,
}

/// `GET /load-progress`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProgressSnapshot {
    pub state: LoadState,
    pub ready: bool,
    pub units_total: usize,
    pub units_resident: usize,
    pub bytes_total: u64,
    pub bytes_resident: u64,
    pub elapsed_ms: f64,
    pub ready_ms: Option<f64>,
    pub resident_ms: Option<f64>,
    pub mb_per_s: f64,
    pub eta_ms: Option<f64>,
    pub units: Vec<UnitSnapshot>,
    pub error: Option<String>,
}

#[derive(Debug)]
struct UnitProgress {
    name: String,
    bytes: u64,
    done: u64,
    resident_ms: Option<f64>,
}

#[derive(Debug)]
struct Inner {
    units: Vec<UnitProgress>,
    listener_bound: bool,
    tokenizer_built: bool,
    ready_ms: Option<f64>,
    resident_ms: Option<f64>,
    error: Option<String>,
    load_started: Option<Instant>,
}

impl Inner {
    fn state(&self) -> LoadState {
        if self.error.is_some() {
            LoadState::Failed
        } else if self.ready_ms.is_none() {
            LoadState::Loading
        } else if self.resident_ms.is_none() {
            LoadState::Ready
        } else {
            LoadState::Resident
        }
    }
}

/// Shared progress of one model load.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

impl Progress {
    /// `started` is the process start (all `*_ms` are measured from it).
    pub fn new(plan: &LoadPlan, started: Instant) -> Progress {
        let units = plan
            .units
            .iter()
            .map(|u| UnitProgress {
                name: u.name.clone(),
                bytes: u.bytes,
                done: 0,
                resident_ms: None,
            })
            .collect();
        let inner = Inner {
            units,
            listener_bound: false,
            tokenizer_built: false,
            ready_ms: None,
            resident_ms: None,
            error: None,
            load_started: None,
        };
        Progress {
            started,
            inner: Mutex::new(inner),
            version: watch::channel(0).0,
        }
    }

    fn ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Apply `f` and re-check READY; returns true if this call made the service ready.
    fn update(&self, f: impl FnOnce(&mut Inner, f64)) -> bool {
        let now = self.ms();
        let became_ready = {
            let mut g = self.inner.lock();
            f(&mut g, now);
            let ready = g.error.is_none()
                && g.listener_bound
                && g.tokenizer_built
                && g.units
                    .iter()
                    .take(READY_UNITS)
                    .all(|u| u.resident_ms.is_some());
            if ready && g.ready_ms.is_none() {
                g.ready_ms = Some(now);
                // Everything landed before the service could be ready (a small model on a fast
                // device, the tokenizer still building): resident counts from READY, so the
                // two are never out of order.
                if let Some(r) = g.resident_ms.as_mut() {
                    *r = r.max(now);
                }
                true
            } else {
                false
            }
        };
        self.changed();
        became_ready
    }

    pub fn load_started(&self) {
        self.update(|g, _| g.load_started = Some(Instant::now()));
    }

    pub fn add_bytes(&self, slot: usize, n: u64) -> bool {
        self.update(|g, _| {
            if let Some(u) = g.units.get_mut(slot) {
                u.done = (u.done + n).min(u.bytes);
            }
        })
    }

    pub fn unit_resident(&self, slot: usize) -> bool {
        self.update(|g, now| {
            if let Some(u) = g.units.get_mut(slot) {
                u.done = u.bytes;
                u.resident_ms = Some(now);
            }
            if g.units.iter().all(|u| u.resident_ms.is_some()) {
                g.resident_ms = Some(now);
            }
        })
    }

    pub fn listener_bound(&self) -> bool {
        self.update(|g, _| g.listener_bound = true)
    }

    pub fn tokenizer_built(&self) -> bool {
        self.update(|g, _| g.tokenizer_built = true)
    }

    pub fn fail(&self, message: String) {
        self.update(|g, _| {
            g.error.get_or_insert(message);
        });
    }

    pub fn is_tokenizer_built(&self) -> bool {
        self.inner.lock().tokenizer_built
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn state(&self) -> LoadState {
        self.inner.lock().state()
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let now = self.ms();
        let g = self.inner.lock();
        let bytes_total: u64 = g.units.iter().map(|u| u.bytes).sum();
        let bytes_resident: u64 = g.units.iter().map(|u| u.done).sum();
        let load_s = g
            .load_started
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let load_s = match (g.resident_ms, g.load_started) {
            (Some(r), Some(t)) => (r / 1e3 - (t - self.started).as_secs_f64()).max(1e-9),
            _ => load_s,
        };
        let mb_per_s = if load_s > 0.0 {
            bytes_resident as f64 / 1e6 / load_s
        } else {
            0.0
        };
        let eta_ms = match (g.resident_ms, mb_per_s > 0.0) {
            (Some(_), _) => Some(0.0),
            (None, true) => Some((bytes_total - bytes_resident) as f64 / 1e6 / mb_per_s * 1e3),
            (None, false) => None,
        };
        ProgressSnapshot {
            state: g.state(),
            ready: g.ready_ms.is_some() && g.error.is_none(),
            units_total: g.units.len(),
            units_resident: g.units.iter().filter(|u| u.resident_ms.is_some()).count(),
            bytes_total,
            bytes_resident,
            elapsed_ms: now,
            ready_ms: g.ready_ms,
            resident_ms: g.resident_ms,
            mb_per_s,
            eta_ms,
            units: g
                .units
                .iter()
                .map(|u| UnitSnapshot {
                    name: u.name.clone(),
                    bytes: u.bytes,
                    resident_ms: u.resident_ms,
                })
                .collect(),
            error: g.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::plan::{Unit, UnitKind};

    #[test]
    fn resident_is_never_before_ready() {
        let unit = |kind, name: &str| Unit {
            kind,
            name: name.into(),
            tensors: Vec::new(),
            bytes: 10,
        };
        let plan = LoadPlan {
            units: vec![
                unit(UnitKind::Embed, "embed"),
                unit(UnitKind::Layer(0), "layer 0"),
                unit(UnitKind::Head, "head"),
            ],
        };
        let p = Progress::new(&plan, Instant::now());
        p.listener_bound();
        for slot in 0..3 {
            assert!(!p.unit_resident(slot), "not ready before the tokenizer");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(
            p.tokenizer_built(),
            "the tokenizer was the last thing READY waited for"
        );
        let s = p.snapshot();
        let (ready, resident) = (s.ready_ms.unwrap(), s.resident_ms.unwrap());
        assert!(
            resident >= ready,
            "resident {resident} before ready {ready}"
        );
    }
}
