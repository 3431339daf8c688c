//! Reading the aggregators' progress and results from outside: who owns each
//! partition, how far its commits reach against the stream, and the committed
//! rollups of all partitions merged. `beacon status`, the tests and readers of
//! the numbers use it.

use async_nats::jetstream::context::Context;
use beacon_core::subject::EVENTS_PREFIX;
use beacon_nats::{EVENTS_STREAM, ROLLUPS_STREAM};
use beacon_rollup::View;
use serde::Serialize;

use crate::lease;
use crate::store::{self, StoreError, last_seq, load};

/// One partition's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub partition: u32,
    /// The aggregator holding the partition's lease, if any.
    pub owner: Option<String>,
    /// `BEACON_EVENTS` sequence counted up to (0: nothing committed yet).
    pub committed: u64,
    /// Sequence of the partition's newest event in the stream (0: none).
    pub last_event: u64,
}

impl Progress {
    /// Stream sequences between the newest event and the last commit.
    pub fn lag(&self) -> u64 {
        self.last_event.saturating_sub(self.committed)
    }
}

/// Every partition's owner, committed sequence and newest event.
pub async fn progress(js: &Context, partitions: u32) -> Result<Vec<Progress>, StoreError> {
    let events = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(StoreError::unavailable)?;
    let rollups = js
        .get_stream(ROLLUPS_STREAM)
        .await
        .map_err(StoreError::unavailable)?;
    let owners = match js.get_key_value(lease::AGGREGATORS_BUCKET).await {
        Ok(kv) => lease::owners(&kv, partitions)
            .await
            .map_err(StoreError::unavailable)?,
        Err(_) => vec![None; partitions as usize],
    };
    let mut out = Vec::with_capacity(partitions as usize);
    for (partition, owner) in (0..partitions).zip(owners) {
        out.push(Progress {
            partition,
            owner,
            committed: store::committed_seq(&rollups, partition)
                .await?
                .unwrap_or(0),
            last_event: last_seq(&events, &format!("{EVENTS_PREFIX}.{partition}.>")).await?,
        });
    }
    Ok(out)
}

/// The committed rollups of every partition, merged.
pub async fn view(js: &Context, partitions: u32) -> Result<View, StoreError> {
    let rollups = js
        .get_stream(ROLLUPS_STREAM)
        .await
        .map_err(StoreError::unavailable)?;
    let mut states = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        states.push(load(&rollups, p).await?.state);
    }
    Ok(View::new(states))
}
