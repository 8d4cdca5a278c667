//! Per-unit residency flags with a condvar: the CPU engine's gate. The loader marks units
//! resident (or the whole load failed); the engine waits on the unit it needs next. Once every
//! unit is resident a single atomic read answers, so the gate costs nothing after the load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    resident: Vec<bool>,
    resident_at: Vec<Option<Instant>>,
    failed: Option<String>,
    interrupted: bool,
}

/// Why a wait ended without the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The load failed with this error.
    Failed(String),
    /// Waiting was interrupted (shutdown).
    Interrupted,
}

/// Shared between the loader (writer) and the engine (waiter).
#[derive(Debug)]
pub struct Residency {
    state: Mutex<State>,
    cv: Condvar,
    all: AtomicBool,
}

impl Residency {
    pub fn new(units: usize) -> Residency {
        Residency {
            state: Mutex::new(State {
                resident: vec![false; units],
                resident_at: vec![None; units],
                failed: None,
                interrupted: false,
            }),
            cv: Condvar::new(),
            all: AtomicBool::new(false),
        }
    }

    pub fn mark_resident(&self, slot: usize) {
        let mut s = self.state.lock();
        if let Some(r) = s.resident.get_mut(slot) {
            *r = true;
        }
        if let Some(at) = s.resident_at.get_mut(slot) {
            at.get_or_insert_with(Instant::now);
        }
        if s.resident.iter().all(|&r| r) {
            self.all.store(true, Ordering::Release);
        }
        self.cv.notify_all();
    }

    /// The load failed: every waiter (now and later) gets this error.
    pub fn fail(&self, message: String) {
        let mut s = self.state.lock();
        s.failed.get_or_insert(message);
        self.cv.notify_all();
    }

    /// Wake every waiter (now and later) with `WaitError::Interrupted`; units keep loading.
    pub fn interrupt(&self) {
        self.state.lock().interrupted = true;
        self.cv.notify_all();
    }

    pub fn is_resident(&self, slot: usize) -> bool {
        self.all_resident()
            || self
                .state
                .lock()
                .resident
                .get(slot)
                .copied()
                .unwrap_or(false)
    }

    /// When `slot` became resident, if it has.
    pub fn resident_at(&self, slot: usize) -> Option<Instant> {
        self.state.lock().resident_at.get(slot).copied().flatten()
    }

    /// The load error or the interruption that ends every wait, if either happened.
    pub fn wait_error(&self) -> Option<WaitError> {
        let s = self.state.lock();
        match (&s.failed, s.interrupted) {
            (Some(e), _) => Some(WaitError::Failed(e.clone())),
            (None, true) => Some(WaitError::Interrupted),
            (None, false) => None,
        }
    }

    pub fn all_resident(&self) -> bool {
        self.all.load(Ordering::Acquire)
    }

    /// Block until every unit is resident, or the load fails.
    pub fn wait_all(&self) -> Result<Duration, WaitError> {
        let t0 = Instant::now();
        let mut s = self.state.lock();
        loop {
            if s.resident.iter().all(|&r| r) {
                return Ok(t0.elapsed());
            }
            if let Some(e) = &s.failed {
                return Err(WaitError::Failed(e.clone()));
            }
            if s.interrupted {
                return Err(WaitError::Interrupted);
            }
            self.cv.wait(&mut s);
        }
    }

    /// Block until `slot` is resident; returns how long it waited, or the load error.
    pub fn wait(&self, slot: usize) -> Result<Duration, WaitError> {
        if self.all_resident() {
            return Ok(Duration::ZERO);
        }
        let t0 = Instant::now();
        let mut s = self.state.lock();
        loop {
            if s.resident.get(slot).copied().unwrap_or(false) {
                return Ok(t0.elapsed());
            }
            if let Some(e) = &s.failed {
                return Err(WaitError::Failed(e.clone()));
            }
            if s.interrupted {
                return Err(WaitError::Interrupted);
            }
            self.cv.wait(&mut s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiter_wakes_when_unit_lands_and_errors_when_load_fails() {
        let r = Arc::new(Residency::new(3));
        let r2 = r.clone();
        let h = std::thread::spawn(move || r2.wait(1));
        std::thread::sleep(Duration::from_millis(20));
        r.mark_resident(1);
        assert!(h.join().unwrap().unwrap() >= Duration::from_millis(10));
        assert!(!r.all_resident());
        let r3 = r.clone();
        let h = std::thread::spawn(move || r3.wait(2));
        r.fail("disk gone".into());
        assert_eq!(
            h.join().unwrap().unwrap_err(),
            WaitError::Failed("disk gone".into())
        );
        let r4 = Arc::new(Residency::new(2));
        let r5 = r4.clone();
        let h = std::thread::spawn(move || r5.wait(0));
        r4.interrupt();
        assert_eq!(h.join().unwrap().unwrap_err(), WaitError::Interrupted);
    }
}
