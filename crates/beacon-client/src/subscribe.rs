//! Subscribing to a site's canonical events in `BEACON_EVENTS` (subjects
//! `beacon.events.<partition>.<site>.<event>`) through a JetStream consumer
//! with explicit acks.
//!
//! A durable subscriber keeps its place on the server: an event is acked
//! (and the ack confirmed) only after the handler succeeded, so a subscriber
//! that stops, crashes or is killed resumes at the first event it had not
//! finished. A handler that fails is retried with backoff, through
//! JetStream's own redelivery, so the count of attempts survives a restart;
//! after `max_failures` the event goes to the dead letter and the
//! subscription moves on. Several processes running the same durable share
//! its events, each one delivered to one of them.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind, Message};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::error::{SubscribeError, SubscribeErrorKind};
use crate::event::StoredEvent;
use crate::publish::is_valid_site_id;
use crate::retry::RetryPolicy;

/// The stream of canonical events.
pub const EVENTS_STREAM: &str = "BEACON_EVENTS";
/// Its subjects: `beacon.events.<partition>.<site>.<event>`.
pub const EVENTS_PREFIX: &str = "beacon.events";

/// One event handed to the handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: StoredEvent,
    /// 1 on the first delivery, more when an earlier attempt failed or its
    /// subscriber stopped before acking.
    pub attempt: u32,
    /// The event's sequence in `BEACON_EVENTS`.
    pub stream_seq: u64,
}

/// An event given up on after `max_failures` attempts (or one Beacon's
/// format cannot be read from).
#[derive(Debug, Clone)]
pub struct Failure {
    /// The stored message exactly as it was in `BEACON_EVENTS`.
    pub payload: Bytes,
    pub subject: String,
    pub stream_seq: u64,
    pub attempts: u32,
    /// The handler's last error.
    pub error: String,
}

/// Where events go that the handler kept failing on.
#[derive(Clone)]
pub enum DeadLetter {
    /// Published with JetStream to this subject, which a stream must hold
    /// (see [`dead_letter_stream`]). The message is the stored event; headers
    /// `Beacon-Error`, `Beacon-Attempts`, `Beacon-Stream-Seq` and
    /// `Beacon-Subject` say why and where from. The event is acked only once
    /// the dead letter is stored.
    Subject(String),
    /// Called with the failure; the event is acked once it returns.
    Callback(Arc<dyn Fn(&Failure) + Send + Sync>),
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetter::Subject(s) => f.debug_tuple("Subject").field(s).finish(),
            DeadLetter::Callback(_) => f.write_str("Callback(..)"),
        }
    }
}

/// A subscription to one site's events; set it up, then [`Subscriber::run`] it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    js: jetstream::Context,
    site: String,
    durable: Option<String>,
    names: Vec<String>,
    max_failures: u32,
    backoff: RetryPolicy,
    ack_wait: Duration,
    dead_letter: Option<DeadLetter>,
    from_new: bool,
    prefetch: usize,
}

impl Subscriber {
    /// A durable subscription named `name`: it keeps its place on the server
    /// and starts, the first time, at the oldest stored event.
    pub fn durable(client: async_nats::Client, site: impl Into<String>, name: &str) -> Self {
        Subscriber {
            durable: Some(name.to_owned()),
            ..Subscriber::live(client, site)
        }
    }

    /// A live subscription: events stored from now on, while it runs. The
    /// server forgets it a minute after it stops.
    pub fn live(client: async_nats::Client, site: impl Into<String>) -> Self {
        Subscriber {
            js: jetstream::new(client),
            site: site.into(),
            durable: None,
            names: Vec::new(),
            max_failures: 5,
            backoff: RetryPolicy {
                first_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(60),
                ..RetryPolicy::default()
            },
            ack_wait: Duration::from_secs(30),
            dead_letter: None,
            from_new: false,
            prefetch: 64,
        }
    }

    /// Only events with these names (all events when never called).
    pub fn events<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.names.extend(names.into_iter().map(Into::into));
        self
    }

    /// Attempts before an event goes to the dead letter (default 5, at least 1).
    pub fn max_failures(mut self, attempts: u32) -> Self {
        self.max_failures = attempts.max(1);
        self
    }

    /// The wait before a failed event is delivered again: `first`, doubling
    /// up to `max`, with jitter (default 500 ms to 60 s).
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff.first_backoff = first;
        self.backoff.max_backoff = max.max(first);
        self
    }

    /// How long a handler may take before the server hands its event to
    /// another delivery (default 30 s). Also how soon an event a killed
    /// subscriber held is delivered again.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = Some(dead_letter);
        self
    }

    /// A durable created by this call starts at events stored from now on
    /// rather than the oldest. (A durable that exists keeps its place.)
    pub fn from_new(mut self) -> Self {
        self.from_new = true;
        self
    }

    /// Events fetched ahead of the handler (default 64). Fetched events wait
    /// in memory, so keep `prefetch` × handler time below `ack_wait`.
    pub fn prefetch(mut self, events: usize) -> Self {
        self.prefetch = events.max(1);
        self
    }

    /// Hand every event to `handler`, one at a time in stream order, until
    /// `shutdown` resolves (after the current event) or the feed fails. A
    /// handler's `Err` or panic is a failed attempt.
    pub async fn run<H, Fut, E>(
        self,
        mut handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), SubscribeError>
    where
        H: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let consumer = self.consumer().await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.prefetch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| SubscribeError::new(SubscribeErrorKind::Disconnected, e.to_string()))?;
        let names: HashSet<String> = self.names.iter().cloned().collect();
        tokio::pin!(shutdown);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    use pull::MessagesErrorKind as K;
                    match e.kind() {
                        // Passing trouble: the feed re-pulls by itself.
                        K::MissingHeartbeat | K::Pull | K::Other => {
                            tracing::warn!(error = %e, "event feed hiccup");
                            continue;
                        }
                        _ => {
                            return Err(SubscribeError::new(
                                SubscribeErrorKind::Disconnected,
                                e.to_string(),
                            ));
                        }
                    }
                }
                None => {
                    return Err(SubscribeError::new(
                        SubscribeErrorKind::Disconnected,
                        "the event feed ended",
                    ));
                }
            };
            self.handle(message, &names, &mut handler).await;
        }
    }

    async fn consumer(
        &self,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, SubscribeError> {
        let invalid = |m: String| SubscribeError::new(SubscribeErrorKind::Invalid, m);
        if !is_valid_site_id(&self.site) {
            return Err(invalid(format!("{:?} is not a site id", self.site)));
        }
        if let Some(name) = &self.durable {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(invalid(format!(
                    "{name:?} is not a durable name (letters, digits, - and _)"
                )));
            }
        }
        let stream = self.js.get_stream(EVENTS_STREAM).await.map_err(|e| {
            let kind = match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    SubscribeErrorKind::StreamNotFound
                }
                _ => SubscribeErrorKind::Disconnected,
            };
            SubscribeError::new(kind, e.to_string())
        })?;
        let mut filters: Vec<String> = if self.names.is_empty() {
            vec![format!("{EVENTS_PREFIX}.*.{}.*", self.site)]
        } else {
            self.names
                .iter()
                .map(|n| format!("{EVENTS_PREFIX}.*.{}.{}", self.site, subject_token(n)))
                .collect()
        };
        filters.sort();
        filters.dedup();
        let (filter_subject, filter_subjects) = match <[String; 1]>::try_from(filters) {
            Ok([one]) => (one, Vec::new()),
            Err(many) => (String::new(), many),
        };
        let live = self.durable.is_none();
        let config = pull::Config {
            durable_name: self.durable.clone(),
            name: self.durable.clone(),
            description: Some(format!("beacon-client subscriber of site {}", self.site)),
            filter_subject,
            filter_subjects,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // Failures are counted and dead-lettered here, not by the server,
            // so it never silently stops delivering an event.
            max_deliver: -1,
            deliver_policy: if live || self.from_new {
                DeliverPolicy::New
            } else {
                DeliverPolicy::All
            },
            inactive_threshold: if live {
                Duration::from_secs(60)
            } else {
                Duration::ZERO
            },
            ..Default::default()
        };
        stream.create_consumer(config).await.map_err(|e| {
            let kind = match e.kind() {
                jetstream::stream::ConsumerErrorKind::JetStream(_)
                | jetstream::stream::ConsumerErrorKind::InvalidName
                | jetstream::stream::ConsumerErrorKind::InvalidConsumerType => {
                    SubscribeErrorKind::Consumer
                }
                _ => SubscribeErrorKind::Disconnected,
            };
            SubscribeError::new(kind, format!("cannot create the consumer: {e}"))
        })
    }

    /// One delivery: run the handler, then ack, retry later, or dead-letter.
    /// Acks that fail are not fatal: the event is simply delivered again.
    async fn handle<H, Fut, E>(&self, message: Message, names: &HashSet<String>, handler: &mut H)
    where
        H: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let Ok(info) = message.info() else {
            return;
        };
        let attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let stream_seq = info.stream_sequence;
        let event = match serde_json::from_slice::<StoredEvent>(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                // Retrying cannot make it readable: straight to the dead letter.
                let error = format!("not a Beacon event this client can read: {e}");
                return self.give_up(&message, stream_seq, attempt, error).await;
            }
        };
        // Two names may share a (cut, sanitized) subject token.
        if !names.is_empty() && !names.contains(&event.name) {
            return acked(&message, AckKind::Ack).await;
        }
        let outcome = AssertUnwindSafe(handler(Delivery {
            event,
            attempt,
            stream_seq,
        }))
        .catch_unwind()
        .await;
        let error = match outcome {
            Ok(Ok(())) => return acked(&message, AckKind::Ack).await,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the handler panicked".to_owned(),
        };
        if attempt >= self.max_failures {
            return self.give_up(&message, stream_seq, attempt, error).await;
        }
        let wait = self.backoff.backoff(attempt);
        tracing::debug!(%error, attempt, ?wait, stream_seq, "handler failed; will retry");
        acked(&message, AckKind::Nak(Some(wait))).await;
    }

    async fn give_up(&self, message: &Message, stream_seq: u64, attempts: u32, error: String) {
        let failure = Failure {
            payload: message.payload.clone(),
            subject: message.subject.to_string(),
            stream_seq,
            attempts,
            error,
        };
        match &self.dead_letter {
            None => {
                tracing::error!(
                    stream_seq, attempts, error = %failure.error,
                    "giving up on an event (no dead letter configured)"
                );
            }
            Some(DeadLetter::Callback(callback)) => callback(&failure),
            Some(DeadLetter::Subject(subject)) => {
                if let Err(e) = self.publish_dead(subject, &failure).await {
                    // Not stored: keep the event and try again later.
                    tracing::warn!(error = %e, stream_seq, "cannot store a dead letter; will retry");
                    let wait = self.backoff.backoff(attempts);
                    return acked(message, AckKind::Nak(Some(wait))).await;
                }
            }
        }
        acked(message, AckKind::Term).await;
    }

    async fn publish_dead(&self, subject: &str, failure: &Failure) -> Result<(), String> {
        let mut headers = async_nats::HeaderMap::new();
        let one_line: String = failure
            .error
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1024)
            .collect();
        headers.insert("Beacon-Error", one_line.as_str());
        headers.insert("Beacon-Attempts", failure.attempts.to_string().as_str());
        headers.insert("Beacon-Stream-Seq", failure.stream_seq.to_string().as_str());
        headers.insert("Beacon-Subject", failure.subject.as_str());
        // One dead letter per event and consumer, however often this is retried.
        let id = format!(
            "dead:{}:{}:{}",
            self.durable.as_deref().unwrap_or("live"),
            self.site,
            failure.stream_seq
        );
        headers.insert("Nats-Msg-Id", id.as_str());
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, failure.payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| "no acknowledgement".to_owned())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Acknowledge with the server's confirmation, so that after a success the
/// place is really kept before the next event is handled.
async fn acked(message: &Message, kind: AckKind) {
    let result = match kind {
        AckKind::Ack | AckKind::Term => message.double_ack_with(kind).await,
        _ => message.ack_with(kind).await,
    };
    if let Err(e) = result {
        // The event will be delivered again: at least once, never lost.
        tracing::warn!(error = %e, "acknowledging an event failed");
    }
}

/// An event name as Beacon writes it in a subject token: letters, digits, `-`
/// and `_` kept, anything else `_`, cut at 64 characters.
pub fn subject_token(name: &str) -> String {
    let token: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

/// Create (or keep) a stream `name` holding `subject`, for dead letters.
pub async fn dead_letter_stream(
    client: &async_nats::Client,
    name: &str,
    subject: &str,
) -> Result<(), SubscribeError> {
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| SubscribeError::new(SubscribeErrorKind::Consumer, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_match_what_beacon_writes() {
        assert_eq!(subject_token("sign up.clicked*>"), "sign_up_clicked__");
        assert_eq!(subject_token(""), "_");
        assert_eq!(subject_token("購入"), "購入");
    }
}
