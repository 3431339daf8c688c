//! Publishing to JetStream so that an acknowledged event is stored exactly once.
//!
//! Every event carries `Nats-Msg-Id` = site + event id; retries reuse it, so a
//! publish whose ack was lost is recognised as a duplicate by the stream instead
//! of being stored twice. Messages are pipelined (all sent, then all acks
//! awaited together); only the ones not acknowledged are retried, with
//! exponential backoff and jitter. The whole call is bounded by one deadline;
//! past it the caller answers 503.

use std::borrow::Cow;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use beacon_core::subject::{reject_subject, unauth_reject_subject};
use beacon_core::{Reason, without_write_key};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How hard to try before giving up on a publish.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Longest wait for one acknowledgement.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub first_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Total time a request may spend retrying before it is answered 503.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(2),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            deadline: Duration::from_secs(5),
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl Outgoing {
    /// A message deduplicated by JetStream on `msg_id`.
    pub fn deduped(subject: String, msg_id: &str, payload: Bytes) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        Outgoing {
            subject,
            headers,
            payload,
        }
    }
}

/// How the stream took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now, at this stream sequence.
    New(u64),
    /// Already stored earlier (same `Nats-Msg-Id` within the duplicate window).
    Duplicate(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishFailed {
    /// NATS is down or saturated: retryable, answered with 503 + Retry-After.
    #[error("NATS did not acknowledge {pending} of {total} messages in time: {last_error}")]
    Unavailable {
        pending: usize,
        total: usize,
        last_error: String,
    },
    /// The server refuses the message whatever happens (larger than its max_payload).
    #[error("NATS refused a message: {0}")]
    Refused(String),
}

/// A JetStream publisher with Beacon's retry rules.
#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
    policy: RetryPolicy,
}

impl Publisher {
    pub fn new(client: async_nats::Client, policy: RetryPolicy) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(policy.attempt_timeout)
            // Many requests publish at once: wait for ack slots rather than fail.
            .max_ack_inflight(65_536)
            .backpressure_on_inflight(true)
            .build(client);
        Publisher { js, policy }
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publish all `messages`; returns how each was stored, in order, or fails
    /// when some are still unacknowledged at the deadline (none is then reported
    /// stored, and the caller's retry is safe because of the message ids).
    ///
    /// The whole call, sends and acks of every round and the waits between them,
    /// runs under the one `deadline`: the caller has its answer by then whatever
    /// the size of the batch or the state of the server.
    pub async fn publish_all(&self, messages: &[Outgoing]) -> Result<Vec<Stored>, PublishFailed> {
        let deadline = Instant::now() + self.policy.deadline;
        let mut progress = Progress {
            stored: vec![None; messages.len()],
            last_error: String::new(),
        };
        match tokio::time::timeout_at(deadline, self.rounds(messages, deadline, &mut progress))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(PublishFailed::Unavailable {
                pending: progress.stored.iter().filter(|s| s.is_none()).count(),
                total: messages.len(),
                last_error: if progress.last_error.is_empty() {
                    "no acknowledgement before the deadline".to_owned()
                } else {
                    progress.last_error
                },
            }),
        }
    }

    /// Send, await every ack at once, retry what is missing; `publish_all` bounds it in time.
    async fn rounds(
        &self,
        messages: &[Outgoing],
        deadline: Instant,
        progress: &mut Progress,
    ) -> Result<Vec<Stored>, PublishFailed> {
        let mut retried = vec![false; messages.len()];
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        let mut backoff = self.policy.first_backoff;
        loop {
            let mut acks = Vec::with_capacity(pending.len());
            let mut failed = Vec::new();
            for &i in &pending {
                // A send that failed (connection down) fails the rest of this round.
                if !failed.is_empty() {
                    failed.push(i);
                    continue;
                }
                let m = &messages[i];
                let publish = PublishMessage::build()
                    .headers(m.headers.clone())
                    .payload(m.payload.clone());
                match self.js.send_publish(m.subject.clone(), publish).await {
                    Ok(ack) => acks.push(async move { (i, ack.await) }),
                    Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        return Err(PublishFailed::Refused(e.to_string()));
                    }
                    Err(e) => {
                        progress.last_error = e.to_string();
                        failed.push(i);
                    }
                }
            }
            // Concurrently: a round takes one `attempt_timeout` at most, not one per message.
            for (i, ack) in futures::future::join_all(acks).await {
                match ack {
                    // A duplicate after our own failed attempt is that attempt having landed.
                    Ok(ack) if ack.duplicate && !retried[i] => {
                        progress.stored[i] = Some(Stored::Duplicate(ack.sequence))
                    }
                    Ok(ack) => progress.stored[i] = Some(Stored::New(ack.sequence)),
                    Err(e) => {
                        progress.last_error = e.to_string();
                        failed.push(i);
                    }
                }
            }
            if failed.is_empty() {
                return Ok(progress.stored.iter().flatten().copied().collect());
            }
            metrics::counter!("beacon_publish_retries_total").increment(failed.len() as u64);
            let pause = jittered(backoff);
            if Instant::now() + pause >= deadline {
                return Err(PublishFailed::Unavailable {
                    pending: failed.len(),
                    total: messages.len(),
                    last_error: progress.last_error.clone(),
                });
            }
            tracing::debug!(pending = failed.len(), ?pause, last_error = %progress.last_error, "retrying publish");
            for &i in &failed {
                retried[i] = true;
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
            pending = failed;
        }
    }
}

/// What a `publish_all` call has got so far, kept when the deadline cuts it short.
struct Progress {
    stored: Vec<Option<Stored>>,
    last_error: String,
}

/// Between half and one and a half times `base`, so clients that failed together
/// do not retry together.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// Largest part of a rejected input kept in `BEACON_REJECTS`.
pub const MAX_REJECT_BYTES: usize = 64 * 1024;

/// A refused input, as kept in `BEACON_REJECTS`: the original bytes, why, from where, when.
#[derive(Debug, Clone)]
pub struct RejectRecord<'a> {
    /// Which path refused it: `http`, `nats`, …
    pub source: &'a str,
    /// The configured site it is known to come from. `None` (no key, an
    /// unknown key or site) files it with the unauthenticated rejects.
    pub site: Option<&'a str>,
    pub reason: Reason,
    pub message: &'a str,
    pub raw: &'a [u8],
    pub received_at: DateTime<Utc>,
}

impl RejectRecord<'_> {
    /// The message to publish: original bytes as payload (cut at 64 KiB), the rest
    /// in headers. A `write_key` in the input is removed first; an input that holds
    /// one but cannot be parsed to remove it is withheld (secrets are never stored).
    pub fn to_outgoing(&self) -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert("Beacon-Reason", self.reason.as_str());
        let (raw, message) = match without_write_key(self.raw) {
            Some(raw) => (raw, header_safe(self.message)),
            None => (
                Cow::Borrowed(&b""[..]),
                header_safe(&format!(
                    "{} (body withheld: it holds a write key)",
                    self.message
                )),
            ),
        };
        headers.insert("Beacon-Message", message.as_str());
        headers.insert("Beacon-Source", self.source);
        headers.insert("Beacon-Received-At", self.received_at.to_rfc3339().as_str());
        if let Some(site) = self.site {
            headers.insert("Beacon-Site", header_safe(site).as_str());
        }
        let kept = &raw[..raw.len().min(MAX_REJECT_BYTES)];
        if kept.len() < raw.len() {
            headers.insert("Beacon-Original-Bytes", raw.len().to_string().as_str());
        }
        let subject = match self.site {
            Some(_) => reject_subject(self.source),
            None => unauth_reject_subject(self.source),
        };
        Outgoing {
            subject,
            headers,
            payload: Bytes::copy_from_slice(kept),
        }
    }
}

/// Header values are one line of bounded length.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_either_side() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(100));
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(150),
                "{d:?}"
            );
        }
    }

    #[test]
    fn rejects_keep_their_reason_and_a_bounded_copy() {
        let raw = vec![b'x'; MAX_REJECT_BYTES + 10];
        let record = RejectRecord {
            source: "http",
            site: Some("shop"),
            reason: Reason::EventTooLarge,
            message: "too\nbig",
            raw: &raw,
            received_at: Utc::now(),
        };
        let out = record.to_outgoing();
        assert_eq!(out.subject, "beacon.rejects.http");
        assert_eq!(out.payload.len(), MAX_REJECT_BYTES);
        assert_eq!(
            out.headers.get("Beacon-Reason").map(|v| v.as_str()),
            Some("event_too_large")
        );
        assert_eq!(
            out.headers.get("Beacon-Message").map(|v| v.as_str()),
            Some("too big")
        );
        assert_eq!(
            out.headers.get("Beacon-Original-Bytes").map(|v| v.as_str()),
            Some((MAX_REJECT_BYTES + 10).to_string().as_str())
        );
    }

    #[test]
    fn rejects_never_keep_a_write_key() {
        let record = |raw: &'static [u8]| RejectRecord {
            source: "nats",
            site: None,
            reason: Reason::UnknownField,
            message: "m",
            raw,
            received_at: Utc::now(),
        };
        let parsed = record(br#"{"write_key":"wk_secret_0000000000","name":"a"}"#).to_outgoing();
        assert!(!String::from_utf8_lossy(&parsed.payload).contains("wk_secret"));
        let broken = record(br#"{"write_key":"wk_secret_0000000000","#).to_outgoing();
        assert!(broken.payload.is_empty());
        assert!(
            broken
                .headers
                .get("Beacon-Message")
                .is_some_and(|m| m.as_str().contains("withheld"))
        );
    }
}
