//! Event rules: read new events from `BEACON_EVENTS` through one durable
//! consumer that every copy of the service shares, and enqueue a job for each
//! rule an event matches. The event is acked only once its jobs are on the
//! queue; a redelivered event enqueues the same job ids, which JetStream
//! drops as duplicates.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use beacon_core::Event;
use futures::StreamExt;

use crate::ActionsError;
use crate::job::{JOB_VERSION, Job, JobKind};
use crate::queue::enqueue;
use crate::rule::Rules;

/// The durable consumer on `BEACON_EVENTS` shared by every copy.
pub const MATCHER_CONSUMER: &str = "beacon-actions-events";

/// The jobs `event` calls for under `rules`.
pub fn jobs_for(rules: &Rules, event: &Event) -> Vec<Job> {
    rules
        .iter()
        .filter(|r| r.site == event.site && r.trigger.matches(event))
        .flat_map(|rule| {
            rule.targets.iter().map(|target| Job {
                v: JOB_VERSION,
                key: format!("{}/{}", rule.id, event.id),
                rule: rule.id.clone(),
                site: event.site.clone(),
                kind: JobKind::Event,
                target: target.name().to_owned(),
                created_at: chrono::Utc::now(),
                data: serde_json::to_value(event).unwrap_or_default(),
            })
        })
        .collect()
}

/// Match events until `stop` resolves. Does nothing when no rule matches events.
pub async fn run(
    js: jetstream::Context,
    rules: Arc<Rules>,
    stop: impl Future<Output = ()>,
) -> Result<(), ActionsError> {
    let sites = rules.event_sites();
    if sites.is_empty() {
        stop.await;
        return Ok(());
    }
    let stream = js
        .get_stream(beacon_nats::EVENTS_STREAM)
        .await
        .map_err(|e| ActionsError::nats("reading the events stream", e))?;
    let filters: Vec<String> = sites
        .iter()
        .map(|site| format!("{}.*.{site}.*", beacon_core::subject::EVENTS_PREFIX))
        .collect();
    let config = consumer::pull::Config {
        durable_name: Some(MATCHER_CONSUMER.to_owned()),
        // Rules act on what happens from now on, not on the stream's history.
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        filter_subjects: filters.clone(),
        ..Default::default()
    };
    let consumer: consumer::PullConsumer = match stream.get_consumer(MATCHER_CONSUMER).await {
        Ok(existing) => {
            let mut existing: consumer::PullConsumer = existing;
            let current = existing
                .info()
                .await
                .map_err(|e| ActionsError::nats("reading the event rules' consumer", e))?;
            if current.config.filter_subjects != filters {
                // A site gained or lost its event rules: follow the new set
                // from where the consumer is (its place is kept).
                stream
                    .update_consumer(config)
                    .await
                    .map_err(|e| ActionsError::nats("updating the event rules' consumer", e))?
            } else {
                existing
            }
        }
        Err(_) => stream
            .create_consumer(config)
            .await
            .map_err(|e| ActionsError::nats("creating the event rules' consumer", e))?,
    };
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .map_err(|e| ActionsError::nats("reading events", e))?;
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            _ = &mut stop => return Ok(()),
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "event feed hiccup");
                    continue;
                }
                None => return Err(ActionsError::Stopped("the event feed ended")),
            },
        };
        let event: Event = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                // Not an action's input problem: the stream holds what the
                // pipeline validated. Skip it, loudly.
                tracing::warn!(error = %e, subject = %message.subject, "unreadable event; skipped");
                let _ = message.ack().await;
                continue;
            }
        };
        let mut failed = None;
        for job in jobs_for(&rules, &event) {
            if let Err(e) = enqueue(&js, &job).await {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => {
                let _ = message.ack().await;
            }
            Some(e) => {
                tracing::warn!(error = %e, "cannot enqueue an event's jobs; it comes back");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
}
