//! The events a step produces for its clients, held until the next step is running on the device
//! and sent then: each send may wake a parked server thread (microseconds each), and at a hundred
//! sequences a step that is time the device would otherwise sit idle for. Every event of the
//! engine's emit path goes through here, so a sequence's tokens, its end and its error keep their
//! order; the worker flushes before any event it sends itself.

use tokio::sync::mpsc::UnboundedSender;

use super::EngineEvent;

#[derive(Default)]
pub struct Outbox {
    queued: Vec<(UnboundedSender<EngineEvent>, EngineEvent)>,
}

impl Outbox {
    pub fn push(&mut self, to: &UnboundedSender<EngineEvent>, ev: EngineEvent) {
        self.queued.push((to.clone(), ev));
    }

    /// Send everything queued, in order (a client that left just misses its events).
    pub fn flush(&mut self) {
        for (to, ev) in self.queued.drain(..) {
            let _ = to.send(ev);
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.flush();
    }
}
