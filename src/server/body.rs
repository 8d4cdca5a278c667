//! Response bodies: whole JSON documents, and a channel-fed body for server-sent events.
//! Dropping a channel body (the client left) closes its channel, which is how producers learn
//! that nobody is listening.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

pub type ResBody = BoxBody<Bytes, Infallible>;

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResBody> {
    json_bytes(status, Bytes::from(value.to_string()))
}

/// A JSON response of bytes already written (a large one returns its memory once sent).
pub fn json_bytes(status: StatusCode, body: Bytes) -> Response<ResBody> {
    let body = match body.len() >= super::trim::TRIM_AFTER {
        true => super::trim::TrimmingBody::new(body).boxed(),
        false => Full::new(body).boxed(),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A body that yields whatever is sent into its channel, ending when the senders are gone.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// An SSE response and the sender that feeds it.
pub fn sse() -> (mpsc::Sender<Bytes>, Response<ResBody>) {
    let (tx, rx) = mpsc::channel(256);
    let mut r = Response::new(ChannelBody { rx }.boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (tx, r)
}

/// One SSE event frame.
pub fn sse_event(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}
