//! A query node's view of the event store: per partition, the committed
//! manifest and the in-memory tail, the events of the stream above the
//! manifest's `through_seq` as Arrow rows. Both live under one lock, so a
//! query's [`Snapshot`] reads each event exactly once: from a segment when its
//! sequence is at or below `through_seq`, from the tail when above, never both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use beacon_core::Event;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{TimestampMillisecondType, UInt64Type};
use tokio::sync::watch;

use crate::manifest::{Manifest, SegmentMeta};
use crate::schema::{Rows, StoredEvent, TS_COLUMN, read_schema, recast};

/// Rows gathered before they become a record batch of the tail.
const BATCH_ROWS: usize = 4096;
/// Batches a partition's tail holds before they are merged into one.
const MAX_BATCHES: usize = 64;
/// A UTC day in ms.
pub const DAY_MS: i64 = 86_400_000;

/// Tail rows of one partition, in stream order.
#[derive(Debug, Default)]
struct Tail {
    /// Finished batches, each in ascending sequence.
    batches: Vec<RecordBatch>,
    pending: Rows,
    /// Highest sequence taken in.
    last_seq: u64,
}

impl Tail {
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // Kept as the engine reads them ([`read_schema`]), cast once here
        // rather than by every query.
        match self
            .pending
            .finish()
            .and_then(|b| recast(&b, &read_schema()))
        {
            Ok(batch) => self.batches.push(batch),
            // The builder only fails on a column of the wrong length, which
            // `Rows::push` cannot produce, and text always casts to views.
            Err(e) => tracing::error!(error = %e, "tail rows lost: cannot build a batch"),
        }
        // Each query flushes what is pending: at a slow event rate that makes
        // many tiny batches, which scans read slowly. Merge them now and then.
        if self.batches.len() > MAX_BATCHES {
            match concat_batches(&read_schema(), &self.batches) {
                Ok(one) => self.batches = vec![one],
                Err(e) => tracing::warn!(error = %e, "cannot merge tail batches"),
            }
        }
    }

    /// Drop the rows at or below `through`; the rows dropped.
    fn cut(&mut self, through: u64) -> usize {
        self.flush();
        let mut dropped = 0;
        self.batches.retain_mut(|batch| {
            let seq = batch.column(0).as_primitive::<UInt64Type>();
            let keep_from = seq.values().partition_point(|s| *s <= through);
            dropped += keep_from;
            if keep_from == batch.num_rows() {
                return false;
            }
            if keep_from > 0 {
                *batch = batch.slice(keep_from, batch.num_rows() - keep_from);
            }
            true
        });
        dropped
    }
}

#[derive(Debug, Default)]
struct Partition {
    manifest: Option<Arc<Manifest>>,
    /// Revision of the manifest's key: a watch may deliver an older one late.
    revision: u64,
    tail: Tail,
}

impl Partition {
    fn through_seq(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.through_seq)
    }
}

#[derive(Debug, Default)]
struct State {
    partitions: BTreeMap<u32, Partition>,
    tail_rows: usize,
    /// Highest stream sequence the tail has read (kept or not).
    read_seq: u64,
    /// Newest collector time (`received_at`, Unix ms) of the events read that
    /// queries can see (in the tail, or already in a segment).
    newest_received_ms: Option<i64>,
    /// The manifests present at start-up are read.
    loaded: bool,
    /// Why the view stopped following, if it did.
    failed: Option<String>,
}

/// What a query reads: the segments that may hold its rows and the tail
/// rows above them (in [`read_schema`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub segments: Vec<SegmentMeta>,
    pub tail: Vec<RecordBatch>,
}

/// Per partition, what the view holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    pub through_seq: u64,
    pub segments: usize,
    pub segment_rows: u64,
    pub segment_bytes: u64,
    pub tail_rows: usize,
    /// Highest stream sequence the tail has read for this partition.
    pub tail_seq: u64,
}

/// The view, shared by the followers that write it and the queries that read it.
#[derive(Debug, Clone)]
pub struct StoreView {
    state: Arc<Mutex<State>>,
    /// Bumped whenever a manifest moves (the tail may then shrink).
    manifests: watch::Sender<u64>,
}

impl Default for StoreView {
    fn default() -> Self {
        StoreView {
            state: Arc::default(),
            manifests: watch::channel(0).0,
        }
    }
}

impl StoreView {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install a partition's manifest read at `revision`, unless a newer one
    /// is there; the tail's rows it now covers go.
    pub fn set_manifest(&self, manifest: Manifest, revision: u64) {
        let mut state = self.lock();
        let partition = state.partitions.entry(manifest.partition).or_default();
        if revision < partition.revision {
            return;
        }
        partition.revision = revision;
        let through = manifest.through_seq;
        partition.manifest = Some(Arc::new(manifest));
        let dropped = partition.tail.cut(through);
        state.tail_rows -= dropped;
        drop(state);
        self.manifests.send_modify(|n| *n += 1);
    }

    /// The manifests present at start-up are in.
    pub fn set_loaded(&self) {
        self.lock().loaded = true;
    }

    pub fn is_loaded(&self) -> bool {
        self.lock().loaded
    }

    /// The followers stopped for good; queries say why.
    pub fn fail(&self, reason: String) {
        self.lock().failed = Some(reason);
    }

    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Take in an event the stream holds at `seq`, unless a segment already has it.
    pub fn push(&self, seq: u64, event: &Event) {
        let mut state = self.lock();
        state.read_seq = state.read_seq.max(seq);
        let received = event.received_at.timestamp_millis();
        state.newest_received_ms = Some(
            state
                .newest_received_ms
                .map_or(received, |n| n.max(received)),
        );
        let partition = state.partitions.entry(event.partition).or_default();
        if seq <= partition.through_seq() || seq <= partition.tail.last_seq {
            return;
        }
        partition.tail.last_seq = seq;
        partition.tail.pending.push(StoredEvent {
            seq,
            event,
            session_id: None,
        });
        if partition.tail.pending.len() >= BATCH_ROWS {
            partition.tail.flush();
        }
        state.tail_rows += 1;
    }

    /// Note that the tail read `seq` (an event it could not take in).
    pub fn read_through(&self, seq: u64) {
        let mut state = self.lock();
        state.read_seq = state.read_seq.max(seq);
    }

    /// Highest stream sequence the tail has read.
    pub fn read_seq(&self) -> u64 {
        self.lock().read_seq
    }

    /// How fresh the store's answers are: the newest collector time of the
    /// events read that a query sees; `None` until the tail has read one. An
    /// event the tail could not take in ([`StoreView::read_through`]) does not count.
    pub fn newest_received_ms(&self) -> Option<i64> {
        self.lock().newest_received_ms
    }

    /// Rows held in memory now.
    pub fn tail_rows(&self) -> usize {
        self.lock().tail_rows
    }

    /// Notified when a manifest moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.manifests.subscribe()
    }

    /// Where the tail should start reading the stream: after the lowest
    /// `through_seq` of `partitions` partitions (1 while any has none).
    pub fn tail_start(&self, partitions: u32) -> u64 {
        let state = self.lock();
        (0..partitions)
            .map(|p| state.partitions.get(&p).map_or(0, Partition::through_seq))
            .min()
            .unwrap_or(0)
            + 1
    }

    /// The segments that may hold rows of `site` with event time in
    /// `[from_ms, to_ms)`, and every tail row, as of now.
    pub fn snapshot(&self, site: &str, from_ms: i64, to_ms: i64) -> Snapshot {
        let mut state = self.lock();
        let mut snapshot = Snapshot::default();
        for partition in state.partitions.values_mut() {
            if let Some(manifest) = &partition.manifest {
                snapshot
                    .segments
                    .extend(manifest.prune(site, from_ms, to_ms).cloned());
            }
            partition.tail.flush();
            snapshot.tail.extend(partition.tail.batches.iter().cloned());
        }
        snapshot
    }

    /// Every committed segment of every partition, as of now.
    pub fn segments(&self) -> Vec<SegmentMeta> {
        let state = self.lock();
        state
            .partitions
            .values()
            .filter_map(|p| p.manifest.as_deref())
            .flat_map(|m| m.segments.iter().cloned())
            .collect()
    }

    /// Per period (Unix ms) of `periods`, sorted and disjoint,
    /// a mark of what the view holds of `site` in it: the names of the
    /// segments that may hold its rows there, and how many tail rows (of any
    /// site) fall in it. Rows only ever enter the tail or move from it into a
    /// new segment, and segments are only replaced by new ones, so an
    /// unchanged mark means unchanged rows (a changed one may not: compaction
    /// moves rows).
    pub fn marks(&self, site: &str, periods: &[std::ops::Range<i64>]) -> Vec<u64> {
        use std::hash::{Hash, Hasher};
        let mut state = self.lock();
        let mut tail = vec![0u64; periods.len()];
        for partition in state.partitions.values_mut() {
            partition.tail.flush();
            for batch in &partition.tail.batches {
                let ts = batch
                    .column(TS_COLUMN)
                    .as_primitive::<TimestampMillisecondType>();
                for t in ts.values() {
                    let i = periods.partition_point(|p| p.end <= *t);
                    if periods.get(i).is_some_and(|p| p.contains(t)) {
                        tail[i] += 1;
                    }
                }
            }
        }
        periods
            .iter()
            .zip(tail)
            .map(|(period, tail_rows)| {
                let mut names: Vec<&str> = state
                    .partitions
                    .values()
                    .filter_map(|p| p.manifest.as_deref())
                    .flat_map(|m| m.prune(site, period.start, period.end))
                    .map(|s| s.name.as_str())
                    .collect();
                names.sort_unstable();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (names, tail_rows).hash(&mut h);
                h.finish()
            })
            .collect()
    }

    /// What each partition holds.
    pub fn status(&self) -> Vec<PartitionStatus> {
        let state = self.lock();
        state
            .partitions
            .iter()
            .map(|(p, data)| PartitionStatus {
                partition: *p,
                through_seq: data.through_seq(),
                segments: data.manifest.as_ref().map_or(0, |m| m.segments.len()),
                segment_rows: data.manifest.as_ref().map_or(0, |m| m.rows()),
                segment_bytes: data.manifest.as_ref().map_or(0, |m| m.bytes()),
                tail_rows: data
                    .tail
                    .batches
                    .iter()
                    .map(RecordBatch::num_rows)
                    .sum::<usize>()
                    + data.tail.pending.len(),
                tail_seq: data.tail.last_seq,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn event(partition: u32, i: i64) -> Event {
        Event {
            id: format!("e{i}"),
            site: "shop".into(),
            name: "pageview".into(),
            user_id: Some("u".into()),
            anonymous_id: None,
            ts: Utc.timestamp_millis_opt(1_700_000_000_000 + i).unwrap(),
            received_at: Utc.timestamp_millis_opt(1_700_000_000_000 + i).unwrap(),
            partition,
            props: Default::default(),
            revenue: None,
            context: Default::default(),
        }
    }

    fn seqs(snapshot: &Snapshot) -> Vec<u64> {
        let mut all: Vec<u64> = snapshot
            .tail
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec())
            .collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn each_sequence_is_in_the_tail_or_a_segment_never_both() {
        let view = StoreView::default();
        for seq in 1..=10_000u64 {
            view.push(seq, &event((seq % 2) as u32, seq as i64));
        }
        // A repeat (a reopened feed) is not taken twice.
        view.push(9_999, &event(1, 9_999));
        assert_eq!(view.tail_rows(), 10_000);
        let mut m = Manifest::empty(0);
        m.through_seq = 5_000;
        view.set_manifest(m.clone(), 7);
        assert_eq!(view.tail_rows(), 7_500);
        // An older revision delivered late changes nothing.
        let mut old = m.clone();
        old.through_seq = 10;
        view.set_manifest(old, 3);
        let snapshot = view.snapshot("shop", 0, i64::MAX);
        let got = seqs(&snapshot);
        let want: Vec<u64> = (1..=10_000).filter(|s| s % 2 == 1 || *s > 5_000).collect();
        assert_eq!(got, want);
        // Events at or below a partition's through_seq are not taken in.
        view.push(10_002, &event(1, 1));
        let mut m1 = Manifest::empty(1);
        m1.through_seq = 20_000;
        view.set_manifest(m1, 8);
        view.push(10_004, &event(1, 1));
        assert_eq!(view.tail_rows(), 2_500);
        // Queries between single events leave tiny batches; they are merged.
        for seq in 20_001..20_200u64 {
            view.push(seq, &event(2, seq as i64));
            view.snapshot("shop", 0, i64::MAX);
        }
        let merged = view.snapshot("shop", 0, i64::MAX);
        assert!(merged.tail.len() < 70, "{} batches", merged.tail.len());
        assert_eq!(seqs(&merged).len(), 2_500 + 199);
        assert_eq!(view.tail_start(2), 5_001);
        assert_eq!(view.tail_start(3), 1);
    }
}
