//! The callback queue, an actor: one thread owns the HTTP client and posts the notices in the
//! order they were pushed, each one (with its retries) before the next, so a retried `ready`
//! never arrives after `resident`. It is its own thread with its own runtime so that a failure
//! before the service's runtime exists (an invalid file) can be reported too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::post::{deliver, HttpClient};
use super::{Event, Notice};

/// Why the queue could not start.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("--callback-url {url}: {message}")]
    Url { url: String, message: String },
    #[error("cannot start the callback thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the queue's thread is asked to do, in order.
enum Command {
    Send(Notice),
    /// Answer once every notice pushed before this one was handled.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The handle: push notices, wait for them at exit. Clones share the queue.
#[derive(Clone, Debug)]
pub struct Callbacks {
    tx: mpsc::UnboundedSender<Command>,
    failed_pushed: Arc<AtomicBool>,
}

impl Callbacks {
    /// Start the queue's thread posting to `url` (plain http).
    pub fn start(url: &str) -> Result<Callbacks, CallbackError> {
        let bad = |message: String| CallbackError::Url {
            url: crate::redact::url(url),
            message,
        };
        let uri: Uri = url.parse().map_err(|e| bad(format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs are supported".into()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CallbackError::Thread)?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("callback".into())
            .spawn(move || runtime.block_on(run(uri, rx)))
            .map_err(CallbackError::Thread)?;
        Ok(Callbacks {
            tx,
            failed_pushed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Queue `notice` behind those pushed before it.
    pub fn push(&self, notice: Notice) {
        if matches!(notice.event, Event::Failed { .. }) {
            self.failed_pushed.store(true, Ordering::SeqCst);
        }
        let _ = self.tx.send(Command::Send(notice));
    }

    /// Whether a `failed` notice was pushed (so a failure is reported once).
    pub fn failed_pushed(&self) -> bool {
        self.failed_pushed.load(Ordering::SeqCst)
    }

    /// Wait up to `wait` until every notice pushed so far was delivered or given up on; false
    /// if the time ran out first.
    pub fn flush(&self, wait: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.tx.send(Command::Flush(done_tx)).is_err() {
            return true; // the thread is gone: nothing is pending
        }
        done_rx.recv_timeout(wait).is_ok()
    }
}

/// The queue's thread: one notice at a time, in order.
async fn run(uri: Uri, mut rx: mpsc::UnboundedReceiver<Command>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Send(notice) => deliver(&client, &uri, &notice).await,
            Command::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
