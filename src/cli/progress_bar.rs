//! Progress bars on a terminal: `convert`, `gen-model` and `serve`'s load draw one on stderr when
//! stderr is a terminal, and nothing otherwise, so piped or redirected output is unchanged. Log
//! lines go through `log_writer`, which lifts a shown bar around each line instead of writing
//! into it.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::load::progress::{LoadState, Progress};

/// The bar on screen, for `log_writer` (at most one is shown at a time).
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether bars are drawn: stderr is a terminal.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// One bar; drawing nothing when stderr is not a terminal. Cleared when dropped.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar over `total` bytes, labelled `what`.
    pub fn bytes(total: u64, what: &str) -> Bar {
        Bar::new(
            total,
            what,
            "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    /// A bar over `total` items (tensors, units), labelled `what`.
    pub fn count(total: u64, what: &str) -> Bar {
        Bar::new(total, what, "{msg} [{wide_bar}] {pos}/{len} eta {eta}")
    }

    fn new(total: u64, what: &str, template: &str) -> Bar {
        let target = if on_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        if !bar.is_hidden() {
            *shown() = Some(bar.clone());
        }
        Bar { bar }
    }

    /// Advance by `n`.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Move to `pos`, with `msg` beside the bar.
    pub fn set(&self, pos: u64, msg: String) {
        self.bar.set_position(pos);
        self.bar.set_message(msg);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        *shown() = None;
    }
}

fn shown() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    // A poisoned lock only means a panic mid-draw; the bar handle inside is still usable.
    SHOWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The log's writer: stderr, with a shown bar lifted around each write.
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// See `log_writer`.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = shown().clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `serve`'s load as a bar: bytes resident of the total, units resident beside it.
pub struct LoadBar {
    bar: Bar,
}

impl LoadBar {
    /// A bar for `progress`'s load, or none when stderr is not a terminal.
    pub fn on_terminal(progress: &Progress) -> Option<LoadBar> {
        if !on_terminal() {
            return None;
        }
        let total = progress.snapshot().bytes_total;
        Some(LoadBar {
            bar: Bar::bytes(total, "loading"),
        })
    }

    /// Follow the load until it is resident or failed, then clear the bar.
    pub async fn follow(self, progress: Arc<Progress>) {
        let mut changes = progress.subscribe();
        loop {
            let snap = progress.snapshot();
            let units = format!("loading {}/{} units", snap.units_resident, snap.units_total);
            self.bar.set(snap.bytes_resident, units);
            if matches!(snap.state, LoadState::Resident | LoadState::Failed)
                || changes.changed().await.is_err()
            {
                return;
            }
        }
    }
}
