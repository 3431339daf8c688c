//! The one ingest pipeline: parsed items → canonical events in `BEACON_EVENTS`
//! (deduplicated by site + event id), refused items → `BEACON_REJECTS`.

use std::sync::Arc;
use std::time::Instant;

use beacon_core::subject::event_subject;
use beacon_core::{Batch, Enricher, Limits, Origin, Rejection, normalize_with};
use beacon_nats::publish::Outgoing;
use beacon_nats::{PublishFailed, Publisher, RejectRecord, Stored};
use bytes::Bytes;
use serde::Serialize;

use crate::metrics::{ACCEPTED, DUPLICATES, PUBLISH_SECONDS, REJECTED};

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ItemResult {
    /// Stored now.
    Accepted { id: String },
    /// Already stored by an earlier send of the same event (same site and id).
    Duplicate { id: String },
    /// Refused, with the reason; a copy is in `BEACON_REJECTS`.
    Rejected {
        #[serde(flatten)]
        rejection: Rejection,
    },
}

/// Validation, publishing and rejects, shared by every ingest path.
#[derive(Debug, Clone)]
pub struct Pipeline {
    publisher: Publisher,
    limits: Limits,
    enricher: Arc<Enricher>,
}

impl Pipeline {
    /// A pipeline that enriches without a GeoIP database and filters every
    /// site's bots; see [`Pipeline::with_enricher`].
    pub fn new(publisher: Publisher, limits: Limits) -> Self {
        Pipeline {
            publisher,
            limits,
            enricher: Arc::default(),
        }
    }

    /// Enrich with `enricher` (its GeoIP database and the sites that keep bots).
    pub fn with_enricher(mut self, enricher: Enricher) -> Self {
        self.enricher = Arc::new(enricher);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Validate every item, publish the good ones and the rejects together, and
    /// answer per item. `Err` means nothing may be reported stored: retry it all.
    pub async fn ingest(
        &self,
        batch: Batch<'_>,
        origin: &Origin<'_>,
        source: &'static str,
    ) -> Result<Vec<ItemResult>, PublishFailed> {
        let mut messages = Vec::with_capacity(batch.items.len());
        // For each item: Ok(id) when its message is an event, Err(rejection) when a reject.
        let mut planned: Vec<Result<String, Rejection>> = Vec::with_capacity(batch.items.len());
        for (index, item) in batch.items.iter().enumerate() {
            let event = item.value.clone().and_then(|value| {
                normalize_with(value, index, origin, &self.limits, &self.enricher)
            });
            match event {
                Ok(event) => {
                    let payload = serde_json::to_vec(&event)
                        .map(Bytes::from)
                        .unwrap_or_default();
                    let subject = event_subject(event.partition, &event.site, &event.name);
                    messages.push(Outgoing::deduped(subject, &event.dedupe_id(), payload));
                    planned.push(Ok(event.id));
                }
                Err(rejection) => {
                    let record = RejectRecord {
                        source,
                        site: Some(origin.site),
                        reason: rejection.reason,
                        message: &rejection.message,
                        raw: &item.raw,
                        received_at: origin.received_at,
                    };
                    messages.push(record.to_outgoing());
                    planned.push(Err(rejection));
                }
            }
        }

        let started = Instant::now();
        let stored = self.publisher.publish_all(&messages).await?;
        metrics::histogram!(PUBLISH_SECONDS, "source" => source)
            .record(started.elapsed().as_secs_f64());

        let results: Vec<ItemResult> = planned
            .into_iter()
            .zip(stored)
            .map(|(plan, stored)| match (plan, stored) {
                (Ok(id), Stored::New(_)) => ItemResult::Accepted { id },
                (Ok(id), Stored::Duplicate(_)) => ItemResult::Duplicate { id },
                (Err(rejection), _) => ItemResult::Rejected { rejection },
            })
            .collect();
        for result in &results {
            match result {
                ItemResult::Accepted { .. } => {
                    metrics::counter!(ACCEPTED, "source" => source).increment(1)
                }
                ItemResult::Duplicate { .. } => {
                    metrics::counter!(DUPLICATES, "source" => source).increment(1)
                }
                ItemResult::Rejected { rejection } => {
                    metrics::counter!(REJECTED, "source" => source, "reason" => rejection.reason.as_str()).increment(1);
                }
            }
        }
        Ok(results)
    }

    /// Keep a copy of an input refused as a whole (unreadable body, unknown key,
    /// a message that failed on every delivery).
    pub async fn reject_whole(&self, record: RejectRecord<'_>) -> Result<(), PublishFailed> {
        metrics::counter!(REJECTED, "source" => record.source.to_owned(), "reason" => record.reason.as_str()).increment(1);
        self.publisher.publish_all(&[record.to_outgoing()]).await.map(drop).inspect_err(|e| {
            tracing::warn!(reason = %record.reason, error = %e, "could not record a rejected input");
        })
    }
}
