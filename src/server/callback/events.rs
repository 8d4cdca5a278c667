//! From load progress to callback notices: follows the load's state and pushes `ready`, then
//! `resident` or `failed`, each once. A load that was READY before it failed reports `ready`
//! then `failed`, even when both changes land between two looks at the state.

use std::sync::Arc;

use super::{Callbacks, Event, Notice, Worker};
use crate::backend::Backend;
use crate::load::progress::{LoadState, Progress, ProgressSnapshot};

/// What is left to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Nothing sent yet.
    Ready,
    /// `ready` sent; `resident` or `failed` to come.
    Outcome,
    /// The last event was sent.
    Done,
}

/// The event kinds to send now, given what is left and the load's state: (kinds, what is left
/// after them).
fn due(left: Due, state: LoadState, was_ready: bool) -> (Vec<LoadState>, Due) {
    let mut now = Vec::new();
    let mut left = left;
    if left == Due::Ready && was_ready {
        now.push(LoadState::Ready);
        left = Due::Outcome;
    }
    if left != Due::Done && matches!(state, LoadState::Resident | LoadState::Failed) {
        now.push(state);
        left = Due::Done;
    }
    (now, left)
}

/// Push the load's events to `callbacks` as they happen; returns after the last one.
pub async fn follow_load(
    progress: Arc<Progress>,
    model: Arc<dyn Backend>,
    callbacks: Callbacks,
    worker: Worker,
) {
    let mut changes = progress.subscribe();
    let mut left = Due::Ready;
    let mut seen = None;
    loop {
        // A snapshot only when the state moved: bytes arriving change nothing here.
        let state = progress.state();
        if seen != Some(state) {
            seen = Some(state);
            let snap = progress.snapshot();
            let (kinds, next) = due(left, snap.state, snap.ready_ms.is_some());
            for kind in kinds {
                callbacks.push(notice(kind, &snap, model.device_bytes(), &worker));
            }
            left = next;
        }
        if left == Due::Done || changes.changed().await.is_err() {
            return;
        }
    }
}

/// The notice of one event kind from the snapshot the decision was made on.
fn notice(kind: LoadState, snap: &ProgressSnapshot, vram_bytes: u64, worker: &Worker) -> Notice {
    let event = match kind {
        LoadState::Resident => Event::Resident {
            resident_ms: snap.resident_ms.unwrap_or(0.0),
            bytes_resident: snap.bytes_resident,
        },
        LoadState::Failed => Event::Failed {
            error: snap.error.clone().unwrap_or_default(),
        },
        LoadState::Ready | LoadState::Loading => Event::Ready,
    };
    Notice {
        event,
        worker_id: worker.worker_id.clone(),
        uri: worker.uri.clone(),
        vram_bytes,
        ready_ms: snap.ready_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LoadState::*;

    #[test]
    fn a_normal_load_reports_ready_then_resident() {
        assert_eq!(due(Due::Ready, Loading, false), (vec![], Due::Ready));
        assert_eq!(due(Due::Ready, Ready, true), (vec![Ready], Due::Outcome));
        assert_eq!(due(Due::Outcome, Ready, true), (vec![], Due::Outcome));
        assert_eq!(
            due(Due::Outcome, Resident, true),
            (vec![Resident], Due::Done)
        );
    }

    #[test]
    fn ready_and_resident_seen_at_once_are_both_reported_in_order() {
        assert_eq!(
            due(Due::Ready, Resident, true),
            (vec![Ready, Resident], Due::Done)
        );
    }

    #[test]
    fn a_load_failing_before_ready_reports_failed_only() {
        assert_eq!(due(Due::Ready, Failed, false), (vec![Failed], Due::Done));
    }

    #[test]
    fn a_load_failing_after_ready_reports_ready_then_failed() {
        assert_eq!(
            due(Due::Ready, Failed, true),
            (vec![Ready, Failed], Due::Done)
        );
        assert_eq!(due(Due::Outcome, Failed, true), (vec![Failed], Due::Done));
    }

    #[test]
    fn nothing_follows_the_last_event() {
        assert_eq!(due(Due::Done, Failed, true), (vec![], Due::Done));
        assert_eq!(due(Due::Done, Resident, true), (vec![], Due::Done));
    }
}
