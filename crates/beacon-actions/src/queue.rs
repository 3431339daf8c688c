//! The work queue `BEACON_ACTIONS`: its stream, putting jobs on it exactly once
//! per idempotency key, counting what waits, and moving dead letters back.
//!
//! Jobs wait on `beacon.actions.jobs.<site>`, dead letters on
//! `beacon.actions.dead.<site>`: the same payload, with the last error and the
//! attempts made in headers. The stream is a work queue, so a job is removed
//! only when a worker acks it, and a dead letter only when `replay-dead` has
//! put it back on the queue.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use beacon_nats::StreamSettings;
use futures::StreamExt;
use serde::Serialize;

use crate::job::Job;

pub const ACTIONS_STREAM: &str = "BEACON_ACTIONS";
pub const JOBS_PREFIX: &str = "beacon.actions.jobs";
pub const DEAD_PREFIX: &str = "beacon.actions.dead";
/// The workers' shared durable consumer.
pub const WORKERS_CONSUMER: &str = "beacon-actions";
/// The consumer `replay-dead` reads dead letters with.
pub const DEAD_CONSUMER: &str = "beacon-actions-dead";

/// Dead-letter headers.
pub const ERROR_HEADER: &str = "Beacon-Error";
pub const ATTEMPTS_HEADER: &str = "Beacon-Attempts";
pub const KEY_HEADER: &str = "Beacon-Idempotency-Key";

/// The stream's configuration: replicas and duplicate window as the others.
pub fn stream_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: ACTIONS_STREAM.to_owned(),
        description: Some(
            "Beacon action jobs (beacon.actions.jobs.<site>) and dead letters (beacon.actions.dead.<site>)"
                .to_owned(),
        ),
        subjects: vec![format!("{JOBS_PREFIX}.*"), format!("{DEAD_PREFIX}.*")],
        storage: stream::StorageType::File,
        // Nothing expires: a job leaves only when delivered or replayed.
        retention: stream::RetentionPolicy::WorkQueue,
        max_bytes: -1,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    }
}

/// Create or update `BEACON_ACTIONS`; returns the line to log.
pub async fn provision(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<String, beacon_nats::ProvisionError> {
    beacon_nats::provision::ensure_stream(js, stream_config(settings)).await
}

/// Why a job could not be put on the queue. Every kind is worth retrying:
/// the job is valid, the queue was not reachable.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("cannot publish the job: {0}")]
    Publish(String),
    #[error("JetStream did not acknowledge the job: {0}")]
    Ack(String),
}

/// Put `job` on the queue. A job with the same key and target enqueued within
/// the duplicate window (by this process or another copy) is dropped by
/// JetStream, so firing is at most once per key and target.
pub async fn enqueue(js: &jetstream::Context, job: &Job) -> Result<(), EnqueueError> {
    let payload = serde_json::to_vec(job).map_err(|e| EnqueueError::Publish(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", job.msg_id().as_str());
    js.publish_with_headers(
        format!("{JOBS_PREFIX}.{}", job.site),
        headers,
        payload.into(),
    )
    .await
    .map_err(|e| EnqueueError::Publish(e.to_string()))?
    .await
    .map_err(|e| EnqueueError::Ack(e.to_string()))?;
    Ok(())
}

/// What waits on the queue, for `beacon status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    /// Jobs not delivered yet, or in a worker's hands.
    pub pending: u64,
    /// Jobs that failed at least once and wait for another attempt.
    pub retrying: u64,
    /// Dead letters waiting for `replay-dead`.
    pub dead: u64,
}

/// Count jobs; `None` when the stream does not exist yet.
pub async fn counts(js: &jetstream::Context) -> Result<Option<JobCounts>, async_nats::Error> {
    let Ok(mut stream) = js.get_stream(ACTIONS_STREAM).await else {
        return Ok(None);
    };
    let mut per_subject = stream
        .info_with_subjects(format!("{DEAD_PREFIX}.*"))
        .await?;
    let mut dead = 0;
    while let Some(entry) = per_subject.next().await {
        dead += entry?.1 as u64;
    }
    let jobs_total = stream.info().await?.state.messages.saturating_sub(dead);
    let retrying = match stream.consumer_info(WORKERS_CONSUMER).await {
        Ok(info) => info.num_redelivered as u64,
        Err(_) => 0,
    };
    Ok(Some(JobCounts {
        pending: jobs_total.saturating_sub(retrying),
        retrying,
        dead,
    }))
}

/// Move every dead letter back onto the job queue; returns how many. Each gets
/// a fresh `Nats-Msg-Id` (its dead-letter sequence added), so JetStream does
/// not take it for a duplicate of the first enqueue, while the job inside, and
/// so the idempotency key receivers see, is unchanged.
pub async fn replay_dead(js: &jetstream::Context) -> Result<u64, async_nats::Error> {
    let stream = js.get_stream(ACTIONS_STREAM).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            DEAD_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(DEAD_CONSUMER.to_owned()),
                filter_subject: format!("{DEAD_PREFIX}.*"),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await?;
    let mut moved = 0;
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(256)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message?;
            got += 1;
            let site = message
                .subject
                .as_str()
                .strip_prefix(&format!("{DEAD_PREFIX}."))
                .unwrap_or("_")
                .to_owned();
            let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            let original = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let mut headers = HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!("{original}:replay:{sequence}").as_str(),
            );
            js.publish_with_headers(
                format!("{JOBS_PREFIX}.{site}"),
                headers,
                message.payload.clone(),
            )
            .await?
            .await?;
            // Only once the job is back on the queue: a crash in between
            // leaves the dead letter in place, to be replayed again.
            message.double_ack().await?;
            moved += 1;
        }
        if got == 0 {
            return Ok(moved);
        }
    }
}
