//! The normalizer: turns raw events that services published on
//! `beacon.ingest.<site>` into canonical events, exactly as the collector does.
//!
//! A durable pull consumer on `BEACON_INGEST` shared by every normalizer
//! running, so they split the work. A message is acknowledged only after its
//! events (or its reject) are stored. Events without an id get one derived from
//! the message's stream sequence, so a redelivery after a crash dedupes instead
//! of counting twice. A message that keeps failing goes to `BEACON_REJECTS`
//! after `max_deliver` deliveries, with the last error, and is not retried again.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use beacon_core::subject::{INGEST_PREFIX, site_of_ingest_subject};
use beacon_core::{IdSource, Origin, Reason, parse_body};
use beacon_nats::{INGEST_STREAM, RejectRecord};
use chrono::{DateTime, Utc};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::pipeline::Pipeline;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizerSettings {
    /// The durable consumer every normalizer shares.
    pub durable: String,
    /// Deliveries a failing message gets before it goes to rejects.
    pub max_deliver: i64,
    /// How long a delivered message may stay unacknowledged before redelivery.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Messages processed at once by one normalizer.
    pub concurrency: usize,
}

impl Default for NormalizerSettings {
    fn default() -> Self {
        NormalizerSettings {
            durable: "beacon-normalizer".to_owned(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            concurrency: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NormalizerError {
    #[error("cannot open the {INGEST_STREAM} consumer: {0}")]
    Consumer(String),
}

struct Shared {
    pipeline: Pipeline,
    sites: HashSet<String>,
    partitions: u32,
    settings: NormalizerSettings,
}

/// How long one pull request waits for messages. At shutdown the open request
/// is read to its end (its messages are released), so this bounds how long that takes.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// Normalize `BEACON_INGEST` until `shutdown` resolves, then finish the messages
/// in hand, release (nak without delay) any that arrive after it, and return.
pub async fn run(
    pipeline: Pipeline,
    sites: HashSet<String>,
    partitions: u32,
    settings: NormalizerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NormalizerError> {
    let shutdown = shutdown.boxed().shared();
    let js = pipeline.publisher().jetstream().clone();
    // NATS may be away when we start or restart: keep trying until it is back.
    let consumer = loop {
        match open_consumer(&js, &settings).await {
            Ok(consumer) => break consumer,
            Err(e) => {
                tracing::warn!(error = %e, "normalizer cannot open its consumer yet; retrying");
                tokio::select! {
                    _ = shutdown.clone() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let shared = Arc::new(Shared {
        pipeline,
        sites,
        partitions,
        settings,
    });
    let concurrency = shared.settings.concurrency.max(1);
    let mut working = FuturesUnordered::new();
    let mut stopping = false;
    while !stopping {
        while working.len() >= concurrency && !stopping {
            tokio::select! {
                _ = working.next() => {}
                _ = shutdown.clone() => stopping = true,
            }
        }
        if stopping {
            break;
        }
        // Ask for no more than there are free slots: every message the server
        // hands over is worked on at once, none waits in a buffer for ack_wait.
        let want = concurrency - working.len();
        let pulled = consumer
            .batch()
            .max_messages(want)
            .expires(PULL_WAIT)
            .messages()
            .await;
        let mut batch = match pulled {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "normalizer cannot pull; retrying");
                tokio::select! {
                    _ = shutdown.clone() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Read the pull to its end even when stopping, so no message it brings
        // is left delivered but unsettled.
        loop {
            tokio::select! {
                biased;
                Some(()) = working.next(), if !working.is_empty() => {}
                _ = shutdown.clone(), if !stopping => stopping = true,
                next = batch.next() => match next {
                    Some(Ok(message)) if stopping => release(message).await,
                    Some(Ok(message)) => working.push(handle(shared.clone(), message)),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "normalizer pull failed; pulling again");
                        break;
                    }
                    None => break,
                },
            }
        }
    }
    // Finish the messages in hand, and make sure their acks leave the process.
    while working.next().await.is_some() {}
    let _ = js.client().flush().await;
    Ok(())
}

/// Give a message back at shutdown, redeliverable at once (not after `ack_wait`).
async fn release(message: jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(error = %e, "could not release an ingest message; it returns after ack_wait");
    }
}

async fn open_consumer(
    js: &jetstream::Context,
    settings: &NormalizerSettings,
) -> Result<jetstream::consumer::Consumer<pull::Config>, NormalizerError> {
    let stream = js
        .get_stream(INGEST_STREAM)
        .await
        .map_err(|e| NormalizerError::Consumer(e.to_string()))?;
    let config = pull::Config {
        durable_name: Some(settings.durable.clone()),
        description: Some("Beacon normalizers: raw NATS-native events to BEACON_EVENTS".to_owned()),
        filter_subject: format!("{INGEST_PREFIX}.*"),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // Beacon bounds deliveries itself, so the last one can still record the reject.
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    stream
        .get_or_create_consumer(&settings.durable, config)
        .await
        .map_err(|e| NormalizerError::Consumer(e.to_string()))
}

/// Process one message and settle it: ack, nak for a later retry, or reject and term.
async fn handle(shared: Arc<Shared>, message: jetstream::Message) {
    let Ok(info) = message.info() else {
        tracing::warn!(subject = %message.subject, "message without JetStream metadata; dropping it from the consumer");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let (sequence, delivered) = (info.stream_sequence, info.delivered);
    let received_at = DateTime::<Utc>::from_timestamp_nanos(
        i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX),
    );
    let subject = message.subject.to_string();
    let payload = message.payload.clone();
    // A panic while processing is one more failed delivery, not a dead normalizer.
    let outcome = tokio::spawn({
        let shared = shared.clone();
        async move { normalize_message(&shared, &subject, &payload, sequence, received_at).await }
    })
    .await
    .unwrap_or_else(|e| Err(format!("processing panicked: {e}")));

    let settle = match outcome {
        Ok(()) => AckKind::Ack,
        Err(error) if delivered >= shared.settings.max_deliver => {
            let record = RejectRecord {
                source: "nats",
                site: site_of_ingest_subject(&message.subject),
                reason: Reason::TooManyDeliveries,
                message: &format!("failed on all {delivered} deliveries; last error: {error}"),
                raw: &message.payload,
                received_at,
            };
            match shared.pipeline.reject_whole(record).await {
                Ok(()) => AckKind::Term,
                // Not even the reject could be stored: keep the message for later.
                Err(_) => AckKind::Nak(Some(Duration::from_secs(5))),
            }
        }
        Err(error) => {
            tracing::warn!(sequence, delivered, %error, "normalizing failed; will retry");
            AckKind::Nak(Some(Duration::from_secs(
                delivered.clamp(1, 10).unsigned_abs(),
            )))
        }
    };
    if let Err(e) = message.ack_with(settle).await {
        tracing::warn!(sequence, error = %e, "could not settle an ingest message; it will be redelivered");
    }
}

/// Turn one ingest message into stored events or a stored reject. `Err` is retryable.
async fn normalize_message(
    shared: &Shared,
    subject: &str,
    payload: &[u8],
    sequence: u64,
    received_at: DateTime<Utc>,
) -> Result<(), String> {
    let refuse = |reason, text: String, site| async move {
        let record = RejectRecord {
            source: "nats",
            site,
            reason,
            message: &text,
            raw: payload,
            received_at,
        };
        shared
            .pipeline
            .reject_whole(record)
            .await
            .map_err(|e| e.to_string())
    };
    let site = match site_of_ingest_subject(subject) {
        Some(site) if shared.sites.contains(site) => site,
        other => {
            let text = format!(
                "no site {:?} is configured (subject {subject})",
                other.unwrap_or("")
            );
            // Not a site: kept with the unauthenticated rejects.
            return refuse(Reason::UnknownSite, text, None).await;
        }
    };
    let batch = match parse_body(payload, false, shared.pipeline.limits()) {
        Ok(batch) => batch,
        Err(r) => return refuse(r.reason, r.message, Some(site)).await,
    };
    let id_prefix = format!("ingest-{sequence}");
    let origin = Origin {
        site,
        received_at,
        user_agent: None,
        ip: None,
        id_source: IdSource::Derived(&id_prefix),
        partitions: shared.partitions,
    };
    shared
        .pipeline
        .ingest(batch, &origin, "nats")
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
