//! Publishing events over HTTP: `POST /api/v1/events` with a site's write
//! key, for producers that do not reach NATS. Retries follow the collector's
//! contract: 429 and 503 (after `Retry-After`), 408 and lost connections are
//! tried again; any other 4xx is final. Each event's id makes a retry count once.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use crate::error::{PublishError, PublishErrorKind};
use crate::event::Event;
use crate::publish::{MAX_BATCH_EVENTS, encode};
use crate::retry::{Failed, RetryPolicy, retrying};

/// Sends events to a Beacon collector over HTTP.
#[derive(Clone)]
pub struct HttpPublisher {
    http: reqwest::Client,
    endpoint: String,
    write_key: String,
    retry: RetryPolicy,
}

impl fmt::Debug for HttpPublisher {
    // The write key is a secret: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPublisher")
            .field("endpoint", &self.endpoint)
            .field("write_key", &"<redacted>")
            .field("retry", &self.retry)
            .finish()
    }
}

/// What the collector did with each event of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct HttpReceipt {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// One per event, in the order sent.
    pub results: Vec<EventResult>,
}

/// The collector's answer for one event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventResult {
    pub index: usize,
    pub status: EventStatus,
    #[serde(default)]
    pub id: Option<String>,
    /// Beacon's reason code, for a rejected event.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Stored now.
    Accepted,
    /// Stored already by an earlier send of the same id.
    Duplicate,
    /// Not stored; `reason` says why. Sending it again does not help.
    Rejected,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    reason: String,
    #[serde(default)]
    message: String,
}

impl HttpPublisher {
    /// A publisher for the collector at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str, write_key: impl Into<String>) -> Result<Self, PublishError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| PublishError::new(PublishErrorKind::Invalid, e.to_string()))?;
        Ok(HttpPublisher {
            http,
            endpoint: format!("{}/api/v1/events", base_url.trim_end_matches('/')),
            write_key: write_key.into(),
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Send one event; an event Beacon refuses is a `Rejected` error.
    pub async fn publish(&self, event: &Event) -> Result<EventStatus, PublishError> {
        let receipt = self.publish_batch(std::slice::from_ref(event)).await?;
        match receipt.results.into_iter().next() {
            Some(EventResult {
                status: EventStatus::Rejected,
                reason,
                message,
                ..
            }) => Err(PublishError::rejected(
                reason.unwrap_or_default(),
                message.unwrap_or_default(),
            )),
            Some(result) => Ok(result.status),
            None => Err(PublishError::new(
                PublishErrorKind::Rejected,
                "the collector answered without a result for the event",
            )),
        }
    }

    /// Send events in requests of at most [`MAX_BATCH_EVENTS`]; the results of
    /// all of them, indexed as in `events`. Rejected events are in the
    /// receipt, not an error: the others were stored.
    pub async fn publish_batch(&self, events: &[Event]) -> Result<HttpReceipt, PublishError> {
        let mut all = HttpReceipt::default();
        for (n, chunk) in events.chunks(MAX_BATCH_EVENTS).enumerate() {
            let body = encode(chunk, true)?;
            let receipt = retrying(&self.retry, || self.post(body.clone())).await?;
            all.accepted += receipt.accepted;
            all.duplicates += receipt.duplicates;
            all.rejected += receipt.rejected;
            all.results.extend(receipt.results.into_iter().map(|mut r| {
                r.index += n * MAX_BATCH_EVENTS;
                r
            }));
        }
        Ok(all)
    }

    async fn post(&self, body: bytes::Bytes) -> Result<HttpReceipt, Failed> {
        let unavailable = |e: reqwest::Error| {
            (
                PublishError::new(PublishErrorKind::Unavailable, e.to_string()),
                None,
            )
        };
        let response = self
            .http
            .post(&self.endpoint)
            .bearer_auth(&self.write_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.bytes().await.map_err(unavailable)?;
        // Every event rejected is a 400 carrying the same receipt as a 200.
        if (status.is_success() || status == StatusCode::BAD_REQUEST)
            && let Ok(receipt) = serde_json::from_slice::<HttpReceipt>(&text)
        {
            return Ok(receipt);
        }
        let (reason, message) = match serde_json::from_slice::<ErrorBody>(&text) {
            Ok(body) => (body.error.reason, body.error.message),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(&text).chars().take(200).collect(),
            ),
        };
        let message = format!("HTTP {status}: {message}");
        let retryable = matches!(
            status,
            StatusCode::REQUEST_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        );
        let error = if retryable {
            PublishError::new(PublishErrorKind::Unavailable, message)
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            PublishError::new(PublishErrorKind::TooLarge, message)
        } else {
            PublishError::rejected(reason, message)
        };
        Err((error, retry_after))
    }
}
