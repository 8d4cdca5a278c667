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

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::unbounded_channel;

    use super::super::{EngineError, EngineEvent};
    use super::Outbox;

    fn started(ms: f64) -> EngineEvent {
        EngineEvent::Started { queued_ms: ms }
    }

    #[test]
    fn events_wait_for_the_flush_and_keep_their_order() {
        let (a_tx, mut a_rx) = unbounded_channel();
        let (b_tx, mut b_rx) = unbounded_channel();
        let mut out = Outbox::default();
        out.push(&a_tx, started(1.0));
        out.push(&b_tx, started(2.0));
        out.push(&a_tx, EngineEvent::Error(EngineError::ShuttingDown));
        assert!(a_rx.try_recv().is_err(), "nothing is sent before the flush");
        out.flush();
        assert!(
            matches!(a_rx.try_recv(), Ok(EngineEvent::Started { queued_ms }) if queued_ms == 1.0)
        );
        assert!(matches!(
            a_rx.try_recv(),
            Ok(EngineEvent::Error(EngineError::ShuttingDown))
        ));
        assert!(
            matches!(b_rx.try_recv(), Ok(EngineEvent::Started { queued_ms }) if queued_ms == 2.0)
        );
        // A client that left just misses its events; the others still get theirs, and what is
        // left is sent when the outbox goes.
        drop(b_rx);
        out.push(&b_tx, started(3.0));
        out.push(&a_tx, started(4.0));
        drop(out);
        assert!(
            matches!(a_rx.try_recv(), Ok(EngineEvent::Started { queued_ms }) if queued_ms == 4.0)
        );
    }
}
