//! The HTTP server: `run(listener, state, shutdown)` accepts connections until `shutdown`
//! resolves, then stops accepting and lets open connections finish (bounded by the caller).

pub mod access;
mod access_log;
pub mod answer_size;
pub mod auth;
pub mod body;
pub mod callback;
pub mod cors;
pub mod error;
pub mod generate;
pub mod hosts;
mod json_errors_io;
mod openai_api;
mod openai_logprobs;
mod openai_tools;
pub mod peers;
pub mod routes;
pub mod state;
mod trim;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use state::{AppState, ModelInfo, Runtime};

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Open connections one client address may hold; more are answered 503 and closed.
    pub max_per_peer: usize,
    /// A whole request head must arrive within this (from the connection's start or the end of
    /// its previous exchange); then the connection is closed.
    pub head_timeout: Duration,
}

/// Serve until `shutdown` resolves; then wait up to `drain` for open connections.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(error::MAX_HEAD_BYTES)
        .max_headers(error::MAX_HEADERS)
        .writev(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = peers::Peers::new(limits.max_per_peer);
    let mut accept_errors = RateLimited::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        accept_errors.warn(&e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Some(peer_slot) = peers.admit(peer.ip()) else {
                    let limit = peers.limit();
                    tokio::spawn(refuse(stream, error::ApiError::PeerOverloaded { limit }));
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    let limit = limits.max_connections;
                    tokio::spawn(refuse(stream, error::ApiError::Overloaded { limit }));
                    continue;
                };
                let slot = (slot, peer_slot);
                let inflight = Arc::new(AtomicUsize::new(0));
                let svc = {
                    let (state, inflight) = (state.clone(), inflight.clone());
                    service_fn(move |req| {
                        let busy = InFlight::enter(&inflight);
                        answer(state.clone(), req, busy)
                    })
                };
                let io = TokioIo::new(json_errors_io::JsonErrorsIo::new(stream));
                let conn = graceful.watch(http.serve_connection(io, svc));
                tokio::spawn(serve_connection(conn, inflight, state.stopping.clone(), slot));
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
}

/// Route a request; its response carries `X-Request-Id`, and its body keeps the request in
/// flight and its access-log line pending until the body is done (a stream outlives the handler).
async fn answer(
    state: Arc<AppState>,
    req: hyper::Request<hyper::body::Incoming>,
    busy: InFlight,
) -> Result<hyper::Response<body::ResBody>, std::convert::Infallible> {
    let ex = access_log::Exchange::begin(state.request_id(), req.method(), req.uri().path());
    let mut r = routes::route(state, req, &ex).await;
    if let Ok(id) = HeaderValue::from_str(&ex.id) {
        r.headers_mut().insert("x-request-id", id);
    }
    let log = ex.answered(r.status().as_u16());
    Ok(r.map(|inner| {
        Tracked {
            inner,
            _busy: busy,
            log,
        }
        .boxed()
    }))
}

/// Drive one connection. Once the server is stopping, a connection with no request in flight
/// (idle, or still sending a request head) is closed at once instead of holding the drain.
async fn serve_connection<C, E>(
    conn: C,
    inflight: Arc<AtomicUsize>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    slot: (tokio::sync::OwnedSemaphorePermit, peers::PeerSlot),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = &mut conn => Some(r),
        _ = stopping.wait_for(|s| *s) => None,
    };
    let ended = match ended {
        Some(r) => Some(r),
        None => loop {
            if inflight.load(Ordering::Acquire) == 0 {
                break None;
            }
            tokio::select! {
                r = &mut conn => break Some(r),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        },
    };
    if let Some(Err(e)) = ended {
        tracing::debug!("connection ended: {e}");
    }
    drop(slot);
}

/// Counts a request in flight on its connection while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(n: &Arc<AtomicUsize>) -> InFlight {
        n.fetch_add(1, Ordering::AcqRel);
        InFlight(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is finished or dropped,
/// and logs the request then.
struct Tracked {
    inner: body::ResBody,
    _busy: InFlight,
    log: access_log::Pending,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        // hyper stops polling a body that says it has ended, so both places note the end.
        if matches!(frame, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.log.body_ended();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.log.body_ended();
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answer a connection over a limit with a 503 in the API's error shape, and close it.
async fn refuse(mut stream: tokio::net::TcpStream, why: error::ApiError) {
    use tokio::io::AsyncWriteExt;
    let answer = json_errors_io::raw_response(&why);
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Accept errors (out of file descriptors, say) logged at most once a second, with a count.
#[derive(Default)]
struct RateLimited {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn warn(&mut self, e: &std::io::Error) {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            suppressed = self.suppressed,
            "accept failed: {e} (further failures within a second are counted, not logged)"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}
