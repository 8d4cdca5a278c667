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

/// Why one attempt failed: worth retrying (no connection, a timeout, a 5xx), or refused (4xx).
enum Failure {
    Retry(String),
    Refused(hyper::StatusCode),
}

/// One attempt, bounded to 5 s.
async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    uri: &Uri,
    body: &[u8],
) -> Result<(), Failure> {
    let req = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_vec())))
        .map_err(|e| Failure::Retry(e.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) if resp.status().is_client_error() => Err(Failure::Refused(resp.status())),
        Ok(Ok(resp)) => Err(Failure::Retry(format!("status {}", resp.status()))),
        Ok(Err(e)) => Err(Failure::Retry(e.to_string())),
        Err(_) => Err(Failure::Retry("timed out after 5 s".into())),
    }
}

/// Post `notice` to `url` (plain http), retrying connection errors, timeouts and 5xx answers with
/// backoff 0.25 s, 0.5 s, 1 s, … (no wait after the last attempt); a 4xx answer is final.
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
        match post(&client, &uri, &body).await {
            Ok(()) => {
                tracing::info!("ready callback to {url} delivered");
                return;
            }
            // The receiver refused the notice itself: sending it again will not help.
            Err(Failure::Refused(status)) => {
                tracing::error!(
                    "ready callback to {url} refused with status {status}; not retried"
                );
                return;
            }
            Err(Failure::Retry(e)) => {
                tracing::warn!("ready callback to {url} failed (attempt {attempt}/{ATTEMPTS}): {e}")
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::error!("ready callback to {url} gave up after {ATTEMPTS} attempts");
}
