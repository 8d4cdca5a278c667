//! A one-way flag threads can wait for (the loader's end, the device being set up, the engine's
//! objects made).

use std::time::Instant;

#[derive(Default)]
pub struct Flag {
    set: parking_lot::Mutex<bool>,
    cv: parking_lot::Condvar,
}

impl Flag {
    pub fn set(&self) {
        *self.set.lock() = true;
        self.cv.notify_all();
    }

    pub fn wait(&self) {
        let mut s = self.set.lock();
        while !*s {
            self.cv.wait(&mut s);
        }
    }

    /// Wait until the flag is set or `deadline` passes; whether it was set.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut s = self.set.lock();
        while !*s {
            if self.cv.wait_until(&mut s, deadline).timed_out() {
                return *s;
            }
        }
        true
    }
}
