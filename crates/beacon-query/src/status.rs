//! How current the numbers are: per partition the sequence this node's view
//! counts up to, the lag behind the stream and how old the oldest uncounted
//! event is, and the event store's segments and lag beside them; the streams'
//! sizes; and when the newest counted event became queryable on this node.
//!
//! Partitions and streams are shared by every site, so their sizes and
//! sequences tell one site's key holder about the others' traffic. A key that
//! reads every site sees everything; any other key sees only how current the
//! numbers are ([`Scope::Freshness`]).

use beacon_core::subject::EVENTS_PREFIX;
use beacon_nats::{EVENTS_STREAM, INGEST_STREAM, REJECTS_STREAM, ROLLUPS_STREAM};
use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::QueryNode;
use crate::error::QueryError;

fn rfc3339(ms: i64) -> Value {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true).into())
        .unwrap_or(Value::Null)
}

#[derive(Deserialize)]
struct Received {
    received_at: chrono::DateTime<Utc>,
}

/// What a status answer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything: for a key that reads every configured site.
    Everything,
    /// Readiness, lag and delays only: no owners, sequences, stream sizes or
    /// cell counts, which measure the traffic of sites the key cannot read.
    Freshness,
}

/// The status answer.
pub async fn status(node: &QueryNode, now: i64, scope: Scope) -> Result<Value, QueryError> {
    let unavailable = |e: &dyn std::fmt::Display| QueryError::unavailable(format!("NATS: {e}"));
    // Lag is measured against what this node answers with (its view), not
    // against what the aggregators have committed: the view follows the store
    // and may be behind it, and "lag 0" must mean the numbers are complete.
    let applied: Vec<u64> = node
        .rollups
        .read(|f| f.view.partitions().iter().map(|s| s.through_seq).collect());
    let progress = beacon_aggregate::progress_of(
        &node.js,
        node.partitions,
        beacon_aggregate::Counted::Applied(&applied),
    )
    .await
    .map_err(|e| unavailable(&e))?;
    let stored = beacon_aggregate::stored(&node.js, node.partitions)
        .await
        .map_err(|e| unavailable(&e))?;
    let events = node
        .js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| unavailable(&e))?;
    let mut partitions = Vec::with_capacity(progress.len());
    let mut behind_max = 0;
    for p in &progress {
        // How long the oldest event not yet counted has waited.
        let behind_ms = if p.lag() == 0 {
            0
        } else {
            match events
                .raw_message_builder()
                .next_by_subject(format!("{EVENTS_PREFIX}.{}.>", p.partition))
                .sequence(p.committed + 1)
                .send()
                .await
            {
                Ok(m) => serde_json::from_slice::<Received>(&m.payload)
                    .map(|r| (now - r.received_at.timestamp_millis()).max(0))
                    .unwrap_or(0),
                Err(_) => 0,
            }
        };
        behind_max = behind_max.max(behind_ms);
        // The store's sizes measure every site's traffic; its lag does not.
        let store = stored.iter().find(|s| s.partition == p.partition);
        partitions.push(match scope {
            Scope::Everything => json!({
                "partition": p.partition,
                "owner": p.owner,
                "committed": p.committed,
                "last_event": p.last_event,
                "lag": p.lag(),
                "behind_ms": behind_ms,
                "store": store.map(|s| json!({
                    "segments": s.segments,
                    "rows": s.rows,
                    "bytes": s.bytes,
                    "committed": s.committed,
                    "lag": s.lag(),
                })),
            }),
            Scope::Freshness => json!({
                "partition": p.partition,
                "lag": p.lag(),
                "behind_ms": behind_ms,
                "store": store.map(|s| json!({"lag": s.lag()})),
            }),
        });
    }
    let mut streams = Vec::new();
    for name in [INGEST_STREAM, EVENTS_STREAM, REJECTS_STREAM, ROLLUPS_STREAM] {
        let stream = match name {
            EVENTS_STREAM => Some(events.clone()),
            _ => node.js.get_stream(name).await.ok(),
        };
        if let Some(stream) = stream {
            let info = stream.cached_info();
            streams.push(json!({
                "name": name,
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "last_seq": info.state.last_sequence,
            }));
        }
    }
    let (ready, newest, seq, cells) = node
        .rollups
        .read(|f| (f.ready, f.newest, f.seq, f.view.len()));
    let queryable = newest.map(|n| {
        json!({
            "newest_event_received_at": rfc3339(n.newest_received_ms),
            "queryable_at": rfc3339(n.applied_ms),
            "delay_ms": (n.applied_ms - n.newest_received_ms).max(0),
        })
    });
    if scope == Scope::Freshness {
        return Ok(json!({
            "scope": "freshness",
            "ready": ready,
            "lag": progress.iter().map(|p| p.lag()).sum::<u64>(),
            "store_lag": stored.iter().map(|s| s.lag()).sum::<u64>(),
            "behind_ms": behind_max,
            "partitions": partitions,
            "newest_queryable": queryable,
            "nats": format!("{:?}", node.client.connection_state()).to_lowercase(),
        }));
    }
    Ok(json!({
        "scope": "everything",
        "ready": ready,
        "lag": progress.iter().map(|p| p.lag()).sum::<u64>(),
        "store_lag": stored.iter().map(|s| s.lag()).sum::<u64>(),
        "behind_ms": behind_max,
        "partitions": partitions,
        "streams": streams,
        "newest_queryable": queryable,
        "view": {"rollup_seq": seq, "cells": cells},
        "nats": format!("{:?}", node.client.connection_state()).to_lowercase(),
    }))
}
