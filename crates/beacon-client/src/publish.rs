//! Publishing events to Beacon over NATS: a JetStream publish to
//! `beacon.ingest.<site>`, acknowledged by `BEACON_INGEST`, retried under one
//! deadline, and optionally buffered in memory while NATS is unreachable.
//!
//! Why a retry is stored once: every [`Event`] carries an id minted when it
//! was built, and every message a `Message-Id` (`Nats-Msg-Id`) derived from
//! those ids. `BEACON_INGEST` drops a re-sent message within its duplicate
//! window, and the normalizer stores each event in `BEACON_EVENTS` under
//! `site:id`, where a second copy is dropped again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind as NatsKind};
use bytes::Bytes;
use tokio::sync::{Notify, watch};

use crate::error::{PublishError, PublishErrorKind};
use crate::event::Event;
use crate::retry::{RetryPolicy, retrying};

/// Subjects producers publish on: `beacon.ingest.<site>`.
pub const INGEST_PREFIX: &str = "beacon.ingest";
/// Most events Beacon takes in one message (its `limits.max_batch_events` default).
pub const MAX_BATCH_EVENTS: usize = 1000;

/// `BEACON_INGEST`'s acknowledgement of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The message's sequence in `BEACON_INGEST`.
    pub stream_seq: u64,
    /// The message had been stored already (an earlier attempt's ack was lost).
    pub duplicate: bool,
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Durable in `BEACON_INGEST`.
    Stored(Receipt),
    /// NATS was unreachable: the message waits in the local buffer and is
    /// sent, in order, when NATS is back. Lost if this process ends first.
    Buffered,
}

/// Publishes one site's events over NATS. Cheap to clone; clones share the
/// connection and the buffer.
#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
    client: async_nats::Client,
    site: String,
    subject: String,
    retry: RetryPolicy,
    buffer: Option<Arc<Buffer>>,
}

/// How a [`Publisher`] is set up; see [`Publisher::builder`].
#[derive(Debug)]
pub struct PublisherBuilder {
    client: async_nats::Client,
    site: String,
    retry: RetryPolicy,
    buffer: Option<usize>,
}

impl PublisherBuilder {
    /// How publishes are retried (by default: up to 30 s, backoff from 100 ms to 5 s).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Keep up to `events` events in memory while NATS is unreachable
    /// instead of failing the publish; beyond that, events are dropped and
    /// counted ([`Publisher::dropped`]). Must be called inside a Tokio runtime.
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = Some(events);
        self
    }

    pub fn build(self) -> Result<Publisher, PublishError> {
        if !is_valid_site_id(&self.site) {
            return Err(PublishError::new(
                PublishErrorKind::Invalid,
                format!(
                    "{:?} is not a site id (1 to 64 lowercase letters, digits, - and _)",
                    self.site
                ),
            ));
        }
        let js = jetstream::new(self.client.clone());
        let subject = format!("{INGEST_PREFIX}.{}", self.site);
        let buffer = self.buffer.map(|capacity| {
            let buffer = Arc::new(Buffer::new(capacity));
            tokio::spawn(flush_forever(
                js.clone(),
                subject.clone(),
                self.retry,
                buffer.clone(),
            ));
            buffer
        });
        Ok(Publisher {
            js,
            client: self.client,
            site: self.site,
            subject,
            retry: self.retry,
            buffer,
        })
    }
}

impl Publisher {
    /// A publisher for `site` on an existing NATS connection.
    pub fn builder(client: async_nats::Client, site: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            client,
            site: site.into(),
            retry: RetryPolicy::default(),
            buffer: None,
        }
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    /// Publish one event, retrying until `BEACON_INGEST` acknowledges it.
    pub async fn publish(&self, event: &Event) -> Result<Published, PublishError> {
        let payload = encode(std::slice::from_ref(event), false)?;
        let msg_id = format!("{}:{}", self.site, event.id);
        self.send(msg_id, payload, 1).await
    }

    /// Publish many events in as few messages as Beacon allows (at most
    /// [`MAX_BATCH_EVENTS`] each), one result per message, in order. Stops at
    /// the first message that fails: the earlier ones are stored, so sending
    /// the whole batch again is safe.
    pub async fn publish_batch(&self, events: &[Event]) -> Result<Vec<Published>, PublishError> {
        let mut results = Vec::new();
        for chunk in events.chunks(MAX_BATCH_EVENTS) {
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            let payload = encode(chunk, true)?;
            // The same events give the same message id, so a batch the caller
            // sends again is dropped by BEACON_INGEST before it is even read.
            let msg_id = format!(
                "{}:batch:{}:{}:{}",
                self.site,
                chunk.len(),
                first.id,
                last.id
            );
            results.push(self.send(msg_id, payload, chunk.len()).await?);
        }
        Ok(results)
    }

    /// Events dropped because the local buffer was full (0 without a buffer).
    pub fn dropped(&self) -> u64 {
        self.buffer
            .as_ref()
            .map_or(0, |b| b.dropped.load(Ordering::Relaxed))
    }

    /// Events waiting in the local buffer.
    pub fn buffered(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| *b.len.borrow())
    }

    /// Wait until the local buffer is empty, at most `timeout`; `Unavailable`
    /// if events are still waiting then.
    pub async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let Some(buffer) = &self.buffer else {
            return Ok(());
        };
        let mut len = buffer.len.subscribe();
        match tokio::time::timeout(timeout, len.wait_for(|n| *n == 0)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(PublishError::new(
                PublishErrorKind::Unavailable,
                format!(
                    "{} events still buffered after {timeout:?}",
                    self.buffered()
                ),
            )),
        }
    }

    async fn send(
        &self,
        msg_id: String,
        payload: Bytes,
        events: usize,
    ) -> Result<Published, PublishError> {
        // Checked here too, not only by async-nats, so that a message that
        // can never be sent is refused rather than buffered.
        let max = self.client.max_payload();
        if max > 0 && payload.len() + msg_id.len() + 64 > max {
            return Err(PublishError::new(
                PublishErrorKind::TooLarge,
                format!(
                    "{} bytes is more than the server's max_payload of {max}; send fewer events at once",
                    payload.len()
                ),
            ));
        }
        let Some(buffer) = &self.buffer else {
            return self
                .send_now(&msg_id, &payload)
                .await
                .map(Published::Stored);
        };
        // Behind events already waiting, or while disconnected: straight into
        // the buffer, so the order of publishes is kept.
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if connected && buffer.is_empty() {
            match self.send_now(&msg_id, &payload).await {
                Err(e) if e.kind() == PublishErrorKind::Unavailable => {}
                done => return done.map(Published::Stored),
            }
        }
        buffer.push(Pending {
            msg_id,
            payload,
            events,
        })?;
        Ok(Published::Buffered)
    }

    async fn send_now(&self, msg_id: &str, payload: &Bytes) -> Result<Receipt, PublishError> {
        retrying(&self.retry, || async {
            publish_once(&self.js, &self.subject, msg_id, payload.clone())
                .await
                .map_err(|e| (e, None))
        })
        .await
    }
}

/// The JSON Beacon reads: one object, or an array for a batch.
pub(crate) fn encode(events: &[Event], as_array: bool) -> Result<Bytes, PublishError> {
    for event in events {
        if let Some(problem) = event.problem() {
            return Err(PublishError::new(
                PublishErrorKind::Invalid,
                format!("event {}: {problem}", event.id),
            ));
        }
    }
    let json = match (as_array, events) {
        (false, [one]) => serde_json::to_vec(one),
        _ => serde_json::to_vec(events),
    };
    json.map(Bytes::from)
        .map_err(|e| PublishError::new(PublishErrorKind::Invalid, e.to_string()))
}

/// One JetStream publish and its acknowledgement.
async fn publish_once(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Bytes,
) -> Result<Receipt, PublishError> {
    let message = jetstream::message::PublishMessage::build()
        .message_id(msg_id)
        .payload(payload);
    let ack = js
        .send_publish(subject.to_owned(), message)
        .await
        .map_err(from_nats)?
        .await
        .map_err(from_nats)?;
    Ok(Receipt {
        stream_seq: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Whether a failed JetStream publish may succeed when tried again.
fn from_nats(error: jetstream::context::PublishError) -> PublishError {
    let retryable = match error.kind() {
        // No responders: the stream is not there *yet* (NATS restarting,
        // Beacon provisioning). The deadline bounds the wait.
        NatsKind::StreamNotFound
        | NatsKind::TimedOut
        | NatsKind::BrokenPipe
        | NatsKind::MaxAckPending => true,
        NatsKind::MaxPayloadExceeded => {
            return PublishError::new(PublishErrorKind::TooLarge, error.to_string());
        }
        NatsKind::Other => {
            let server = std::error::Error::source(&error)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|e| e.error_code());
            if server == Some(jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) {
                return PublishError::new(PublishErrorKind::TooLarge, error.to_string());
            }
            // Out of resources, a leader election, a dropped connection: all
            // pass; and a retry is always safe here.
            true
        }
        _ => false,
    };
    if retryable {
        PublishError::new(PublishErrorKind::Unavailable, error.to_string())
    } else {
        PublishError::new(PublishErrorKind::Rejected, error.to_string())
    }
}

/// Whether `site` is a Beacon site id: 1 to 64 lowercase letters, digits, `-`, `_`.
pub(crate) fn is_valid_site_id(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= 64
        && site
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// One message waiting for NATS.
#[derive(Debug, Clone)]
struct Pending {
    msg_id: String,
    payload: Bytes,
    events: usize,
}

/// The bounded in-memory queue of messages waiting for NATS, and the count of
/// events that did not fit.
#[derive(Debug)]
struct Buffer {
    capacity: usize,
    queue: Mutex<VecDeque<Pending>>,
    /// Events in the queue; watched by `flush`.
    len: watch::Sender<usize>,
    dropped: AtomicU64,
    added: Notify,
}

impl Buffer {
    fn new(capacity: usize) -> Self {
        Buffer {
            capacity,
            queue: Mutex::new(VecDeque::new()),
            len: watch::Sender::new(0),
            dropped: AtomicU64::new(0),
            added: Notify::new(),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        // The lock is never held across a panic point that leaves the queue
        // half-changed, so a poisoned one is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    fn push(&self, pending: Pending) -> Result<(), PublishError> {
        let events = pending.events;
        {
            let mut queue = self.queue();
            let held: usize = *self.len.borrow();
            if held + events > self.capacity {
                drop(queue);
                self.dropped.fetch_add(events as u64, Ordering::Relaxed);
                return Err(PublishError::new(
                    PublishErrorKind::BufferFull,
                    format!(
                        "NATS is unreachable and the buffer holds {held} of {} events; {events} dropped",
                        self.capacity
                    ),
                ));
            }
            queue.push_back(pending);
            self.len.send_modify(|n| *n += events);
        }
        self.added.notify_one();
        Ok(())
    }

    fn front(&self) -> Option<Pending> {
        self.queue().front().cloned()
    }

    fn pop_front(&self) {
        if let Some(sent) = self.queue().pop_front() {
            self.len.send_modify(|n| *n = n.saturating_sub(sent.events));
        }
    }
}

/// Sends buffered messages in order, each retried until NATS takes it; ends
/// when every [`Publisher`] sharing the buffer is gone.
async fn flush_forever(
    js: jetstream::Context,
    subject: String,
    retry: RetryPolicy,
    buffer: Arc<Buffer>,
) {
    let mut failures = 0u32;
    loop {
        if Arc::strong_count(&buffer) == 1 {
            return;
        }
        let Some(next) = buffer.front() else {
            // Woken by a push, or checks now and then whether it is still needed.
            let _ = tokio::time::timeout(Duration::from_secs(1), buffer.added.notified()).await;
            continue;
        };
        let sent = tokio::time::timeout(
            retry.attempt_timeout,
            publish_once(&js, &subject, &next.msg_id, next.payload.clone()),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                failures = 0;
                buffer.pop_front();
            }
            Ok(Err(e)) if !e.is_retryable() => {
                tracing::warn!(error = %e, events = next.events, "dropping a buffered message Beacon refuses");
                buffer
                    .dropped
                    .fetch_add(next.events as u64, Ordering::Relaxed);
                buffer.pop_front();
            }
            _ => {
                failures += 1;
                tokio::time::sleep(retry.backoff(failures)).await;
            }
        }
    }
}
