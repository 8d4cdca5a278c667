//! Delivering one notice: POST it, retrying connection errors, timeouts and 5xx answers with
//! backoff 0.25 s, 0.5 s, 1 s, … (no wait after the last attempt); a 4xx answer is final.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::Notice;

const ATTEMPTS: u32 = 6;
/// One attempt's bound.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Why one attempt failed: worth retrying (no connection, a timeout, a 5xx), or refused (4xx).
enum Failure {
    Retry(String),
    Refused(hyper::StatusCode),
}

/// One attempt, bounded to `ATTEMPT_TIMEOUT`.
async fn post(client: &HttpClient, uri: &Uri, body: &Bytes) -> Result<(), Failure> {
    let req = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))
        .map_err(|e| Failure::Retry(e.to_string()))?;
    match tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) if resp.status().is_client_error() => Err(Failure::Refused(resp.status())),
        Ok(Ok(resp)) => Err(Failure::Retry(format!("status {}", resp.status()))),
        Ok(Err(e)) => Err(Failure::Retry(e.to_string())),
        Err(_) => Err(Failure::Retry(format!(
            "timed out after {ATTEMPT_TIMEOUT:?}"
        ))),
    }
}

/// Post `notice` to `uri` until it is delivered, refused, or the attempts run out (all logged,
/// with the URL's credentials masked).
pub async fn deliver(client: &HttpClient, uri: &Uri, notice: &Notice) {
    let event = notice.event.name();
    let shown = crate::redact::url(&uri.to_string());
    let body = match serde_json::to_vec(notice) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            tracing::error!("{event} callback not sent: cannot encode it: {e}");
            return;
        }
    };
    let mut delay = Duration::from_millis(250);
    for attempt in 1..=ATTEMPTS {
        match post(client, uri, &body).await {
            Ok(()) => {
                tracing::info!("callback '{event}' to {shown} delivered");
                return;
            }
            // The receiver refused the notice itself: sending it again will not help.
            Err(Failure::Refused(status)) => {
                tracing::error!(
                    "callback '{event}' to {shown} refused with status {status}; not retried"
                );
                return;
            }
            Err(Failure::Retry(e)) => tracing::warn!(
                "callback '{event}' to {shown} failed (attempt {attempt}/{ATTEMPTS}): {e}"
            ),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::error!("callback '{event}' to {shown} gave up after {ATTEMPTS} attempts");
}
