//! The connection's I/O, seen by hyper: hyper answers a request head it cannot parse (too large,
//! a bad Content-Length, a NUL in a header, a malformed request line) itself, with an empty body
//! and no hook. This wrapper recognises those answers on their way out — a 400, 414 or 431 head
//! with `content-length: 0` and no content type, which no handler of ours ever writes — and sends
//! the same status with the API's JSON error body instead. hyper also answers a `Content-Length`
//! it cannot hold (2^64-3 and up; its sentinels) with 431, and one past u64 with 400: the head the
//! connection sent is kept until it ends, so both are answered 413 naming the body limit.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::{ApiError, MAX_HEAD_BYTES};
use crate::request::MAX_BODY_BYTES;

pub struct JsonErrorsIo<T> {
    inner: T,
    /// The request head being read (since the last answer), until it is complete.
    head: HeadCopy,
    /// A replacement being written, how much of it is out, and the length of the write it stands
    /// for (reported to hyper once all of it is out).
    pending: Option<(Vec<u8>, usize, usize)>,
    /// A replacement written out by a flush before hyper's write was answered: that write's
    /// length, answered at its next call.
    written: Option<usize>,
}

impl<T> JsonErrorsIo<T> {
    pub fn new(inner: T) -> JsonErrorsIo<T> {
        JsonErrorsIo {
            inner,
            head: HeadCopy::default(),
            pending: None,
            written: None,
        }
    }
}

/// A copy of the request head read since the last answer: enough to tell why hyper refused it.
#[derive(Default)]
struct HeadCopy {
    bytes: Vec<u8>,
    /// The blank line ending the head was seen: nothing more is copied until the next answer.
    complete: bool,
}

impl HeadCopy {
    fn read(&mut self, data: &[u8]) {
        // hyper refuses heads over MAX_HEAD_BYTES: a little more shows every header it parsed.
        let room = (MAX_HEAD_BYTES + 1024).saturating_sub(self.bytes.len());
        if self.complete || room == 0 {
            return;
        }
        let from = self.bytes.len().saturating_sub(3);
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        self.complete = self.bytes[from..].windows(4).any(|w| w == b"\r\n\r\n");
    }

    /// An answer went out: the next bytes start a new head.
    fn answered(&mut self) {
        self.bytes.clear();
        self.complete = false;
    }

    /// Whether the head declares a body longer than the limit (digits past u64 included).
    fn declares_oversized_body(&self) -> bool {
        let text = String::from_utf8_lossy(&self.bytes);
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        head.split("\r\n").skip(1).any(|line| {
            let Some((name, value)) = line.split_once(':') else {
                return false;
            };
            let value = value.trim();
            name.trim().eq_ignore_ascii_case("content-length")
                && !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_digit())
                && value
                    .parse::<u64>()
                    .map_or(true, |n| n > MAX_BODY_BYTES as u64)
        })
    }
}

/// The JSON response standing in for hyper's body-less error head, if `buf` is one; a refused
/// head that declared an oversized body gets 413.
fn replacement(buf: &[u8], sent: &HeadCopy) -> Option<Vec<u8>> {
    let status = buf.strip_prefix(b"HTTP/1.1 ")?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let lower = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0") || lower.contains("\r\ncontent-type:") {
        return None;
    }
    let error = match status.get(..4)? {
        b"431 " | b"400 " if sent.declares_oversized_body() => ApiError::TooLarge {
            limit: MAX_BODY_BYTES,
        },
        b"431 " => ApiError::HeadTooLarge,
        b"414 " => ApiError::UriTooLong,
        b"400 " => ApiError::MalformedHead,
        _ => return None,
    };
    Some(raw_response(&error))
}

/// A whole `connection: close` response carrying `error` in the API's JSON shape, for answers
/// written below hyper (its own error heads, a connection over the cap).
pub fn raw_response(error: &ApiError) -> Vec<u8> {
    let body = error.body().to_string();
    let status = error.status();
    let retry = match error {
        ApiError::Overloaded { .. } | ApiError::PeerOverloaded { .. } => "retry-after: 1\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

impl<T: AsyncWrite + Unpin> JsonErrorsIo<T> {
    /// Write out the pending replacement; Ready(len of the write it replaced) when done.
    fn flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, done, stands_for)) = &mut self.pending {
            if *done == bytes.len() {
                let n = *stands_for;
                self.pending = None;
                return Poll::Ready(Ok(n));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrorsIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.head.read(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrorsIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(n) = this.written.take() {
            return Poll::Ready(Ok(n));
        }
        if this.pending.is_none() {
            match replacement(buf, &this.head) {
                Some(bytes) => this.pending = Some((bytes, 0, buf.len())),
                None => {
                    this.head.answered();
                    return Pin::new(&mut this.inner).poll_write(cx, buf);
                }
            }
        }
        this.flush_pending(cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_some() {
            // A flush before the replacement is out: finish it, and answer hyper's write (which
            // it will make again) with its length then.
            this.written = Some(ready!(this.flush_pending(cx))?);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{replacement as replace, HeadCopy};

    fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
        replace(buf, &HeadCopy::default())
    }

    #[test]
    fn refused_heads_with_oversized_lengths_become_413() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        for len in [
            "18446744073709551615",
            "18446744073709551614",
            "99999999999999999999999",
        ] {
            let mut head = HeadCopy::default();
            let req =
                format!("POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
            let (a, b) = req.as_bytes().split_at(20);
            head.read(a);
            head.read(b);
            let r = String::from_utf8(replace(hyper_431, &head).unwrap()).unwrap();
            assert!(r.starts_with("HTTP/1.1 413 "), "{len}: {r}");
            assert!(r.contains("1048576"), "{r}");
        }
        let mut head = HeadCopy::default();
        head.read(b"GET / HTTP/1.1\r\nContent-Length: 12\r\nX: y\r\n\r\n");
        let r = String::from_utf8(replace(hyper_431, &head).unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        head.answered();
        assert!(!head.declares_oversized_body());
    }

    #[test]
    fn only_hyper_body_less_error_heads_are_replaced() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let r = String::from_utf8(replacement(hyper_431).unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        assert!(r.contains("content-type: application/json"), "{r}");
        assert!(r.contains("\"headers_too_large\""), "{r}");
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ok).is_none());
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}";
        assert!(replacement(with_body).is_none());
    }
}
