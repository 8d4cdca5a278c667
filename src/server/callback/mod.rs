//! The load callbacks: with `--callback-url`, the worker POSTs one JSON notice per load event —
//! `ready` (READY), `resident` (every unit resident), `failed` (the load or startup failed) — in
//! that order, from one queue. Every notice carries the original ready notice's fields
//! (`worker_id`, `uri`, `vram_bytes`, `ready_ms`) beside `event`, so a receiver written for the
//! single ready notice keeps working. A failing callback is logged, never fatal.

mod events;
mod post;
mod queue;

pub use events::follow_load;
pub use queue::{CallbackError, Callbacks};

/// Who is reporting: the same in every notice.
#[derive(Clone, Debug)]
pub struct Worker {
    pub worker_id: String,
    /// The address callers use (`--advertise-url`, else the bound address).
    pub uri: String,
}

/// One POSTed notice: the event and its fields, then the fields every notice has.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Notice {
    #[serde(flatten)]
    pub event: Event,
    pub worker_id: String,
    pub uri: String,
    pub vram_bytes: u64,
    /// When the worker became ready (ms since process start); null if it never did.
    pub ready_ms: Option<f64>,
}

/// What happened, with the fields only that event has.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// READY: the embeddings and layer 0 are resident, the tokenizer is built.
    Ready,
    /// Every unit is resident.
    Resident {
        resident_ms: f64,
        bytes_resident: u64,
    },
    /// The load (or the startup) failed; `error` names what failed, e.g. the tensor.
    Failed { error: String },
}

impl Event {
    /// The `event` field's value, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Ready => "ready",
            Event::Resident { .. } => "resident",
            Event::Failed { .. } => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn notice(event: Event, ready_ms: Option<f64>) -> serde_json::Value {
        let n = Notice {
            event,
            worker_id: "w".into(),
            uri: "http://h:1".into(),
            vram_bytes: 7,
            ready_ms,
        };
        serde_json::to_value(n).unwrap()
    }

    #[test]
    fn every_event_keeps_the_ready_notice_fields_beside_its_own() {
        let common = json!({"worker_id": "w", "uri": "http://h:1", "vram_bytes": 7});
        let with = |extra: serde_json::Value| {
            let mut v = common.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        assert_eq!(
            notice(Event::Ready, Some(1.5)),
            with(json!({"event": "ready", "ready_ms": 1.5}))
        );
        let resident = Event::Resident {
            resident_ms: 9.0,
            bytes_resident: 100,
        };
        assert_eq!(
            notice(resident, Some(1.5)),
            with(
                json!({"event": "resident", "ready_ms": 1.5, "resident_ms": 9.0, "bytes_resident": 100})
            )
        );
        let failed = Event::Failed {
            error: "tensor 'blk.0.attn_q.weight': read failed".into(),
        };
        assert_eq!(
            notice(failed, None),
            with(json!({"event": "failed", "ready_ms": null,
                        "error": "tensor 'blk.0.attn_q.weight': read failed"}))
        );
    }
}
