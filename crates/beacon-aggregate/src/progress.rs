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
use crate::segments::{Buckets, read_manifest};
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

/// Where the committed side of [`Progress`] comes from.
#[derive(Debug, Clone, Copy)]
pub enum Counted<'a> {
    /// What the aggregators have committed to the rollup store (`beacon status`,
    /// tests that read the store itself).
    Store,
    /// What one reader of the store has applied, by partition index (a query
    /// node's view): lag is then measured against the numbers it answers with.
    /// A partition missing from the slice has applied nothing.
    Applied(&'a [u64]),
}

/// Every partition's owner, committed sequence (in the rollup store) and newest event.
pub async fn progress(js: &Context, partitions: u32) -> Result<Vec<Progress>, StoreError> {
    progress_of(js, partitions, Counted::Store).await
}

/// Every partition's owner, what `counted` reaches, and its newest event: the
/// one place Beacon reads stream positions for progress, lag and readiness.
///
/// Both positions come from the stream leaders (`STREAM.MSG.GET`, which only
/// a stream's leader answers, never a direct get a lagging replica may
/// serve), and the committed side is read before the newest events. Both only
/// grow, so the lag reported is never less than the true lag at the moment
/// this returns: "lag 0" means every event stored before the call is counted.
pub async fn progress_of(
    js: &Context,
    partitions: u32,
    counted: Counted<'_>,
) -> Result<Vec<Progress>, StoreError> {
    let owners = match js.get_key_value(lease::AGGREGATORS_BUCKET).await {
        Ok(kv) => lease::owners(&kv, partitions)
            .await
            .map_err(StoreError::unavailable)?,
        Err(_) => vec![None; partitions as usize],
    };
    let committed = match counted {
        Counted::Store => {
            let rollups = js
                .get_stream(ROLLUPS_STREAM)
                .await
                .map_err(StoreError::unavailable)?;
            // The generation that counts (a replay switches it), then its logs.
            let generation = store::current(&rollups).await?.generation;
            let mut committed = Vec::with_capacity(partitions as usize);
            for partition in 0..partitions {
                committed.push(
                    store::committed_seq(&rollups, generation, partition)
                        .await?
                        .unwrap_or(0),
                );
            }
            committed
        }
        Counted::Applied(applied) => (0..partitions as usize)
            .map(|p| applied.get(p).copied().unwrap_or(0))
            .collect(),
    };
    let events = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(StoreError::unavailable)?;
    let mut out = Vec::with_capacity(partitions as usize);
    for ((partition, owner), committed) in (0..partitions).zip(owners).zip(committed) {
        out.push(Progress {
            partition,
            owner,
            committed,
            last_event: last_seq(&events, &format!("{EVENTS_PREFIX}.{partition}.>")).await?,
        });
    }
    Ok(out)
}

/// One partition of the event store: what its manifest holds and reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stored {
    pub partition: u32,
    /// `BEACON_EVENTS` sequence the committed segments reach (0: none yet).
    pub committed: u64,
    /// Sequence of the partition's newest event in the stream (0: none).
    pub last_event: u64,
    pub segments: usize,
    pub rows: u64,
    pub bytes: u64,
}

impl Stored {
    /// Stream sequences between the newest event and the store's commit.
    pub fn lag(&self) -> u64 {
        self.last_event.saturating_sub(self.committed)
    }
}

/// Every partition's committed segments and how far they reach; empty when
/// the event store's buckets do not exist (a server provisioned by an older
/// Beacon). As with [`progress_of`], the manifests are read before the
/// newest events, so the lag is never under-reported.
pub async fn stored(js: &Context, partitions: u32) -> Result<Vec<Stored>, StoreError> {
    let Ok(buckets) = Buckets::open(js).await else {
        return Ok(Vec::new());
    };
    let mut manifests = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        manifests.push(read_manifest(&buckets.manifests, partition).await?.0);
    }
    let events = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(StoreError::unavailable)?;
    let mut out = Vec::with_capacity(manifests.len());
    for m in manifests {
        out.push(Stored {
            partition: m.partition,
            committed: m.through_seq,
            last_event: last_seq(&events, &format!("{EVENTS_PREFIX}.{}.>", m.partition)).await?,
            segments: m.segments.len(),
            rows: m.rows(),
            bytes: m.bytes(),
        });
    }
    Ok(out)
}

/// The committed rollups of every partition in the current generation, merged.
pub async fn view(js: &Context, partitions: u32) -> Result<View, StoreError> {
    let rollups = js
        .get_stream(ROLLUPS_STREAM)
        .await
        .map_err(StoreError::unavailable)?;
    let generation = store::current(&rollups).await?.generation;
    let mut states = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        states.push(load(&rollups, generation, p).await?.state);
    }
    Ok(View::new(states))
}
