//! The ready callback: after READY, POST `{worker_id, uri, vram_bytes, ready_ms}` to
//! `--callback-url`, retried with exponential backoff. A failing callback is logged, never fatal.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const ATTEMPTS: u32 = 6;

/// What the callback says.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReadyNotice {
    pub worker_id: String,
    pub uri: String,
    pub vram_bytes: u64,
    pub ready_ms: f64,
}

/// Post `notice` to `url` (plain http), retrying with backoff 0.25 s, 0.5 s, 1 s, …
pub async fn notify(url: &str, notice: &ReadyNotice) {
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!("--callback-url {url} is not a valid URL: {e}");
            return;
        }
    };
    if uri.scheme_str() != Some("http") {
        tracing::error!("--callback-url {url}: only http:// URLs are supported");
        return;
    }
    let body = serde_json::to_vec(notice).unwrap_or_default();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut delay = Duration::from_millis(250);
    for attempt in 1..=ATTEMPTS {
        let req = Request::post(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.clone())));
        let outcome = match req {
            Ok(req) => {
                match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                    Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                    Ok(Ok(resp)) => Err(format!("status {}", resp.status())),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out after 5 s".into()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                tracing::info!("ready callback to {url} delivered");
                return;
            }
            Err(e) => {
                tracing::warn!("ready callback to {url} failed (attempt {attempt}/{ATTEMPTS}): {e}")
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    tracing::error!("ready callback to {url} gave up after {ATTEMPTS} attempts");
}
