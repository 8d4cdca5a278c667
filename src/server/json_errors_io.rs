//! The connection's I/O, seen by hyper: hyper answers a request head it cannot parse (too large,
//! a bad Content-Length, a NUL in a header, a malformed request line) itself, with an empty body
//! and no hook. This wrapper recognises those answers on their way out — a 400, 414 or 431 head
//! with `content-length: 0` and no content type, which no handler of ours ever writes — and sends
//! the same status with the API's JSON error body instead.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ApiError;

pub struct JsonErrorsIo<T> {
    inner: T,
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
            pending: None,
            written: None,
        }
    }
}

/// The JSON response standing in for hyper's body-less error head, if `buf` is one.
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    let head = buf.strip_prefix(b"HTTP/1.1 ")?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let lower = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0") || lower.contains("\r\ncontent-type:") {
        return None;
    }
    let error = match head.get(..4)? {
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
        ApiError::Overloaded { .. } => "retry-after: 1\r\n",
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
            match replacement(buf) {
                Some(bytes) => this.pending = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
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
    use super::replacement;

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
