//! Workers: take jobs from the shared durable consumer, deliver each, and ack
//! only afterwards. A failure is retried with exponential backoff and jitter
//! (a delayed nak, so the job waits in JetStream, not in a worker); after the
//! last attempt, or at once for a permanent failure, the job moves to the
//! dead-letter subject with its error. A worker that dies mid-delivery never
//! acked, so JetStream hands the job to another after `ack_wait`.

use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use tokio::task::JoinSet;

use crate::ActionsError;
use crate::deliver::{Deliverer, DeliveryError};
use crate::job::Job;
use crate::queue::{
    ACTIONS_STREAM, ATTEMPTS_HEADER, DEAD_PREFIX, ERROR_HEADER, JOBS_PREFIX, KEY_HEADER,
    WORKERS_CONSUMER,
};
use crate::settings::ActionsSettings;

/// The wait before attempt `attempt + 1`: `first · 2^(attempt-1)`, at most
/// `max`, then jittered to between half and one and a half times that, so
/// jobs that failed together do not all come back together.
pub fn backoff(first: Duration, max: Duration, attempt: u64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30) as u32;
    let base = first.saturating_mul(1u32 << doublings).min(max);
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// Deliver jobs until `stop` resolves, then finish the ones in hand.
pub async fn run(
    js: jetstream::Context,
    settings: ActionsSettings,
    deliverer: Deliverer,
    stop: impl Future<Output = ()>,
) -> Result<(), ActionsError> {
    let stream = js
        .get_stream(ACTIONS_STREAM)
        .await
        .map_err(|e| ActionsError::nats("reading the actions stream", e))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            WORKERS_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(WORKERS_CONSUMER.to_owned()),
                filter_subject: format!("{JOBS_PREFIX}.*"),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                // Beacon counts attempts itself, so the last one can still
                // write the dead letter.
                max_deliver: -1,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ActionsError::nats("creating the workers' consumer", e))?;
    tokio::pin!(stop);
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let free = settings.concurrency.saturating_sub(tasks.len());
        if free == 0 {
            tokio::select! {
                _ = &mut stop => break,
                _ = tasks.join_next() => continue,
            }
        }
        // Pull no more than there are free hands, so no job waits in a buffer
        // while its ack_wait runs.
        let batch = consumer
            .fetch()
            .max_messages(free)
            .expires(Duration::from_secs(1))
            .messages();
        let mut batch = tokio::select! {
            _ = &mut stop => break,
            batch = batch => match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull jobs; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => {
                    let (js, settings, deliverer) =
                        (js.clone(), settings.clone(), deliverer.clone());
                    tasks.spawn(handle(js, settings, deliverer, message));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pull ended early");
                    break;
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn handle(
    js: jetstream::Context,
    settings: ActionsSettings,
    deliverer: Deliverer,
    message: jetstream::Message,
) {
    let attempt = message
        .info()
        .map(|i| i.delivered.max(1) as u64)
        .unwrap_or(1);
    let outcome = match Job::read(&message.payload) {
        Ok(job) => {
            let delivery = deliverer.deliver(&job, attempt);
            tokio::pin!(delivery);
            // Tell JetStream the job is in hand while a slow receiver answers,
            // so it is not handed to another worker meanwhile.
            let mut beat = tokio::time::interval(settings.ack_wait / 3);
            beat.tick().await;
            loop {
                tokio::select! {
                    outcome = &mut delivery => break outcome,
                    _ = beat.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
                }
            }
        }
        Err(e) => Err(DeliveryError::from(e)),
    };
    let key = || {
        Job::read(&message.payload)
            .map(|j| j.key)
            .unwrap_or_default()
    };
    match outcome {
        Ok(()) => {
            metrics::counter!("beacon_actions_delivered_total").increment(1);
            if let Err(e) = message.double_ack().await {
                // Delivered but not acked: it comes back and is delivered again
                // (at least once), with the same key.
                tracing::warn!(error = %e, key = %key(), "delivered, but the ack was lost");
            }
        }
        Err(e) if e.is_retryable() && attempt < u64::from(settings.max_attempts) => {
            metrics::counter!("beacon_actions_retries_total").increment(1);
            let wait = backoff(settings.first_backoff, settings.max_backoff, attempt);
            tracing::info!(key = %key(), attempt, error = %e, ?wait, "delivery failed; will retry");
            let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
        }
        Err(e) => {
            tracing::warn!(key = %key(), attempt, error = %e, "delivery failed for good; moving the job to the dead letters");
            match dead_letter(&js, &message, &e, attempt).await {
                Ok(()) => {
                    metrics::counter!("beacon_actions_dead_total").increment(1);
                    let _ = message.double_ack().await;
                }
                Err(publish) => {
                    // Keep the job rather than lose it: try again shortly.
                    tracing::error!(error = %publish, "cannot write the dead letter; keeping the job");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
            }
        }
    }
}

/// Publish the job to `beacon.actions.dead.<site>` with the last error, and
/// wait for JetStream's ack. Its `Nats-Msg-Id` names the job's stream
/// sequence, so a second try after a lost ack is stored once.
async fn dead_letter(
    js: &jetstream::Context,
    message: &jetstream::Message,
    error: &DeliveryError,
    attempts: u64,
) -> Result<(), async_nats::Error> {
    let site = message
        .subject
        .as_str()
        .strip_prefix(&format!("{JOBS_PREFIX}."))
        .unwrap_or("_");
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
        format!("{original}:dead:{sequence}").as_str(),
    );
    // Header values are one line of bounded length.
    let text: String = error
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1_000)
        .collect();
    headers.insert(ERROR_HEADER, text.as_str());
    headers.insert(ATTEMPTS_HEADER, attempts.to_string().as_str());
    if let Ok(job) = Job::read(&message.payload) {
        headers.insert(KEY_HEADER, job.key.as_str());
    }
    js.publish_with_headers(
        format!("{DEAD_PREFIX}.{site}"),
        headers,
        message.payload.clone(),
    )
    .await?
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_stops_at_the_cap() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..200 {
            let third = backoff(first, max, 3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(6));
            let late = backoff(first, max, 40);
            assert!(late >= Duration::from_secs(30) && late <= Duration::from_secs(90));
        }
    }
}
