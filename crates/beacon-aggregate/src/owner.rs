//! One partition's owner: load the committed state, claim the log, then apply
//! events in stream order and commit each delta with the sequence it reaches.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::stream::Stream;
use beacon_core::Event;
use beacon_core::subject::EVENTS_PREFIX;
use beacon_rollup::state::session_key;
use beacon_rollup::{Outcome, PartitionState, Working};
use futures::StreamExt;
use tokio::sync::watch;

use crate::metrics::{
    APPLIED, COMMIT_FAILURES, COMMIT_SECONDS, COMMITTED_SEQ, DROPPED_LATE, FRESHNESS, LAG,
    READERS_REOPENED, SESSION_BYTES, SESSION_LATE, STATE_BYTES, STORE_FLUSH_FAILURES, UNREADABLE,
};
use crate::segments::{Buckets, WriteError, Writer};
use crate::settings::AggregatorSettings;
use crate::store::{Log, StoreError, committed_seq, load};
use beacon_store::StoreSettings;

/// What every owner in a process shares.
#[derive(Debug)]
pub struct Shared {
    pub js: Context,
    pub events: Stream,
    pub rollups: Stream,
    pub settings: AggregatorSettings,
    /// This aggregator's member id; it also names the records it writes.
    pub id: String,
    /// The event store's buckets, when owners write segments.
    pub segments: Option<Buckets>,
    pub store: StoreSettings,
}

/// How long a stopping owner keeps trying to commit while NATS is away. What
/// it cannot commit is simply counted again by the next owner.
const STOP_COMMIT_DEADLINE: Duration = Duration::from_secs(10);

/// Names of the aggregators' event readers (ephemeral ordered consumers) start so.
pub const READER_PREFIX: &str = "beacon-agg-";

/// Event readers this process has opened: each reader's number. Counted per
/// process, not per owner: an aggregator that takes a partition back starts a
/// new owner, and its readers must not take the names of the last owner's,
/// which linger on the server (a name cannot be reused with another start,
/// and the client's own recreation of a reader would fail on it silently).
static READERS: AtomicU64 = AtomicU64::new(0);

/// Estimate the state's size at most this often.
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// Commit even an empty delta this often, so retention moves on idle partitions.
const IDLE_COMMIT: Duration = Duration::from_secs(60);

/// Resolves once `stop` turns true (the guard `wait_for` returns is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Own `partition`'s log in `generation` until `stop` turns true (then commit
/// and return) or the partition is taken over by someone else (`Err(Fenced)`).
/// `beacon replay` runs the same owners on a new generation.
pub async fn own(
    shared: Arc<Shared>,
    generation: u64,
    partition: u32,
    stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut owner = Owner::take(shared.clone(), generation, partition).await?;
    if let Some(buckets) = &shared.segments {
        let writer =
            Writer::take(buckets.clone(), shared.store.clone(), partition, &shared.id).await?;
        tracing::debug!(
            partition,
            through_seq = writer.reached(),
            "took the partition's segments"
        );
        owner.segments = Some(writer);
    }
    owner.consume(generation, partition, stop, None).await
}

/// `beacon replay --site`: rebuild only `sites`' rollups of `partition` into
/// `generation`, and end with a snapshot there that holds exactly the live
/// generation's committed state but for `sites`, whose cells and sessions are
/// the replay's. Both are taken at the same `BEACON_EVENTS` sequence, so the
/// aggregators that take the new log over after the switch count on from
/// there, and every other site's figures go through the switch unchanged.
pub async fn replay_sites(
    shared: Arc<Shared>,
    generation: u64,
    partition: u32,
    live: u64,
    sites: Arc<[String]>,
    stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut owner = Owner::take(shared.clone(), generation, partition).await?;
    // A run that died after merging (or a replay of every site) left other
    // sites' figures in the log, and their sessions cannot be told from the
    // replayed sites' ones: count this partition afresh from an empty state.
    let state = &owner.working.state;
    if state.cells.keys().any(|key| !sites.contains(&key.site)) {
        tracing::info!(partition, "the new log holds other sites; starting it over");
        let empty = PartitionState::default();
        owner.log.snapshot(&empty).await?;
        owner.working = Working::new(empty, shared.settings.rollup(), now_ms());
    }
    // What else a resumed replay remembers is of `sites` (it counts nothing
    // else), so those session keys are theirs.
    owner.seen = owner.working.state.users.keys().copied().collect();
    owner.sites = Some(sites.clone());
    // Follow the live generation's committed position, never past it: the
    // state to be merged with must be at the replay's position exactly, and
    // the live one only moves forward.
    loop {
        let target = committed_seq(&shared.rollups, live, partition)
            .await?
            .unwrap_or(0);
        if target <= owner.working.through_seq() {
            break;
        }
        let started = Instant::now();
        owner
            .consume(generation, partition, stop.clone(), Some(target))
            .await?;
        if *stop.borrow() {
            return Ok(());
        }
        // Close behind: what the live side adds meanwhile is counted by the
        // final step below.
        if started.elapsed() < CLOSE_BEHIND {
            break;
        }
    }
    let live_state = load(&shared.rollups, live, partition).await?.state;
    let at = live_state.through_seq;
    owner
        .consume(generation, partition, stop.clone(), Some(at))
        .await?;
    let replayed = owner.working.state.clone();
    if replayed.through_seq != at {
        return Err(StoreError::Misaligned {
            partition,
            replayed: replayed.through_seq,
            live: at,
        });
    }
    let mut merged = live_state;
    merged.replace_sites(&sites, &owner.seen, replayed);
    let mut backoff = Duration::from_millis(50);
    for attempt in 1.. {
        match owner.log.snapshot(&merged).await {
            Ok(_) => break,
            Err(StoreError::Unavailable(e)) if attempt < SNAPSHOT_ATTEMPTS => {
                tracing::warn!(partition, error = %e, "merged snapshot failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
    tracing::debug!(partition, through_seq = at, "merged the replayed sites");
    Ok(())
}

/// A catch-up round shorter than this leaves the replay close enough behind
/// the live position to take the final step.
const CLOSE_BEHIND: Duration = Duration::from_secs(1);

/// Tries at the merged snapshot while NATS is unavailable.
const SNAPSHOT_ATTEMPTS: u32 = 20;

struct Owner {
    working: Working,
    log: Log,
    shared: Arc<Shared>,
    snapshot_bytes: usize,
    bytes_since_snapshot: usize,
    last_commit: Instant,
    /// Events of this partition in the stream after the last one applied.
    lag: u64,
    /// When the state's size was last estimated (it walks every cell).
    sized: Option<Instant>,
    label: String,
    /// Count only these sites' events (`beacon replay --site`).
    sites: Option<Arc<[String]>>,
    /// Session keys of the events of `sites` counted.
    seen: HashSet<u64>,
    /// Count no event past this sequence.
    until: Option<u64>,
    /// An event past `until` came: that sequence is not one of this partition's.
    overshot: bool,
    /// The event store's writer of this partition, if the store is on.
    segments: Option<Writer>,
}

impl Owner {
    /// Load the committed state and claim the log.
    async fn take(
        shared: Arc<Shared>,
        generation: u64,
        partition: u32,
    ) -> Result<Self, StoreError> {
        let loaded = load(&shared.rollups, generation, partition).await?;
        let mut log = Log::new(
            shared.js.clone(),
            shared.rollups.clone(),
            generation,
            partition,
            &shared.id,
            loaded.last,
        );
        log.takeover(loaded.state.through_seq).await?;
        tracing::debug!(
            partition,
            generation,
            through_seq = loaded.state.through_seq,
            "took partition"
        );
        let mut owner = Owner {
            working: Working::new(loaded.state, shared.settings.rollup(), now_ms()),
            snapshot_bytes: loaded.snapshot_bytes,
            bytes_since_snapshot: loaded.bytes_since_snapshot,
            last_commit: Instant::now(),
            lag: 0,
            sized: None,
            label: partition.to_string(),
            log,
            shared,
            sites: None,
            seen: HashSet::new(),
            until: None,
            overshot: false,
            segments: None,
        };
        owner.publish_gauges();
        Ok(owner)
    }

    /// Whether `until` is reached.
    fn reached(&self) -> bool {
        self.overshot || self.until.is_some_and(|u| self.working.through_seq() >= u)
    }

    /// Count events until `stop` turns true or `until` is reached, then commit.
    async fn consume(
        &mut self,
        generation: u64,
        partition: u32,
        mut stop: watch::Receiver<bool>,
        until: Option<u64>,
    ) -> Result<(), StoreError> {
        self.until = until;
        self.overshot = false;
        let owner = self;
        let shared = owner.shared.clone();
        // A second view of the stop flag, for commits made while `stop` is awaited.
        let stopping = stop.clone();
        let filter = format!("{EVENTS_PREFIX}.{partition}.>");
        let mut tick = tokio::time::interval(shared.settings.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let client = shared.js.client();
        'consume: loop {
            if owner.reached() {
                break 'consume;
            }
            // The rollups and the store each have their cursor: read from
            // the lower, and give each output only what it lacks.
            let start = owner
                .working
                .through_seq()
                .min(owner.segments.as_ref().map_or(u64::MAX, Writer::reached))
                + 1;
            // A reader left behind by a broken connection lingers on the server for
            // a while, and a consumer name cannot be reused with another start.
            let reader = READERS.fetch_add(1, Ordering::Relaxed) + 1;
            let connected = beacon_nats::connects(&client);
            let messages = async {
                let consumer = shared
                    .events
                    .create_consumer(OrderedConfig {
                        // Named after its owner, so `beacon status` can tell these apart.
                        // The generation too: after a switch the partition is
                        // read again from another start, under a new name.
                        name: Some(format!(
                            "{READER_PREFIX}{}-g{generation}-p{partition}-{}",
                            shared.id, reader
                        )),
                        filter_subject: filter.clone(),
                        deliver_policy: DeliverPolicy::ByStartSequence {
                            start_sequence: start,
                        },
                        ..Default::default()
                    })
                    .await
                    .map_err(StoreError::unavailable)?;
                consumer.messages().await.map_err(StoreError::unavailable)
            }
            .await;
            let mut silence = beacon_nats::Silence::new(shared.events.clone(), &filter, start - 1);
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot read events; retrying");
                    tokio::select! {
                        _ = stopped(&mut stop) => break 'consume,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'consume,
                    }
                }
            };
            loop {
                let full = owner.working.pending_events() >= shared.settings.commit_max_events
                    || owner.segments.as_ref().is_some_and(Writer::full);
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => break 'consume,
                    _ = tick.tick() => {
                        owner.commit_if_due(&stopping).await?;
                        owner.flush_if_due(&stopping).await?;
                    }
                    read_through = silence.stalled(), if !full => {
                        metrics::counter!(READERS_REOPENED).increment(1);
                        tracing::warn!(partition, read_through, "the event reader went silent with events waiting; opening a new one");
                        continue 'consume;
                    }
                    // A restarted server forgot this reader: open a new one now
                    // rather than after the client's missed-heartbeat timeouts.
                    _ = beacon_nats::reconnected(&client, connected) => continue 'consume,
                    next = messages.next(), if !full => match next {
                        Some(Ok(message)) => {
                            if let Some(seq) = owner.apply(&message) {
                                silence.heard(seq);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(partition, error = %e, "event consumer failed; recreating it");
                            continue 'consume;
                        }
                        None => continue 'consume,
                    },
                }
                if owner.working.pending_events() >= shared.settings.commit_max_events {
                    owner.commit(&stopping).await?;
                }
                if owner.segments.as_ref().is_some_and(Writer::full) {
                    owner.flush(&stopping).await?;
                }
                if owner.reached() {
                    break 'consume;
                }
            }
        }
        owner.commit(&stopping).await?;
        owner.flush(&stopping).await?;
        tracing::debug!(
            partition,
            through_seq = owner.working.state.through_seq,
            "released partition"
        );
        Ok(())
    }

    /// Take one message of the reader; returns its stream sequence.
    fn apply(&mut self, message: &async_nats::jetstream::Message) -> Option<u64> {
        let info = message.info().ok()?;
        let seq = info.stream_sequence;
        self.lag = info.pending;
        // A consumer recreated by the client before its first delivery starts
        // over from the stream's beginning: what is counted already is skipped.
        // After a restart one output may be ahead of the other: each takes
        // only the events it lacks.
        let count = seq > self.working.through_seq();
        let store = self.segments.as_ref().is_some_and(|w| seq > w.reached());
        if !count && !store {
            return Some(seq);
        }
        if self.until.is_some_and(|u| seq > u) {
            self.overshot = true;
            return Some(seq);
        }
        match serde_json::from_slice::<Event>(&message.payload) {
            Ok(event)
                if self
                    .sites
                    .as_ref()
                    .is_some_and(|s| !s.contains(&event.site)) =>
            {
                self.working.pass(&event, seq)
            }
            Ok(event) => {
                if count {
                    self.count(&event, seq);
                }
                if store && let Some(writer) = self.segments.as_mut() {
                    writer.push(seq, &event, self.working.session_id(&event));
                }
            }
            Err(e) => {
                // Only Beacon writes BEACON_EVENTS; an unreadable event is a bug or
                // a foreign writer. Skip it loudly rather than stall the partition.
                if count {
                    metrics::counter!(UNREADABLE).increment(1);
                    tracing::error!(seq, error = %e, "skipping an unreadable event in BEACON_EVENTS");
                    self.working.skip(seq);
                }
                if let Some(writer) = self.segments.as_mut().filter(|_| store) {
                    writer.skip(seq);
                }
            }
        }
        Some(seq)
    }

    /// Count one event into the rollups.
    fn count(&mut self, event: &Event, seq: u64) {
        if self.sites.is_some() {
            self.seen.insert(session_key(&event.site, event.user_key()));
        }
        match self.working.apply_event(event, seq) {
            Outcome::Counted => metrics::counter!(APPLIED).increment(1),
            Outcome::SessionLate => {
                metrics::counter!(APPLIED).increment(1);
                metrics::counter!(SESSION_LATE).increment(1);
            }
            Outcome::DroppedLate => metrics::counter!(DROPPED_LATE).increment(1),
        }
    }

    /// Flush the segment buffer when it is due, and keep the segments in
    /// shape (compaction, retention, clean-up) meanwhile.
    async fn flush_if_due(&mut self, stop: &watch::Receiver<bool>) -> Result<(), StoreError> {
        let Some(writer) = self.segments.as_mut() else {
            return Ok(());
        };
        if writer.due() {
            return self.flush(stop).await;
        }
        match writer.maintain(now_ms()).await {
            Ok(()) => Ok(()),
            Err(WriteError::Unavailable(e)) => {
                tracing::warn!(partition = %self.label, error = %e, "segment upkeep failed; will retry");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Write the buffered rows as a segment and commit it; retry while NATS
    /// is unavailable (bounded once stopping). Nothing counts as stored
    /// before the manifest names it.
    async fn flush(&mut self, stop: &watch::Receiver<bool>) -> Result<(), StoreError> {
        let Some(writer) = self.segments.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match writer.flush().await {
                Ok(()) => return Ok(()),
                Err(WriteError::Unavailable(e)) => {
                    metrics::counter!(STORE_FLUSH_FAILURES).increment(1);
                    if *stop.borrow() && started.elapsed() > STOP_COMMIT_DEADLINE {
                        return Err(StoreError::Unavailable(e));
                    }
                    tracing::warn!(partition = %self.label, error = %e, "segment flush failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn commit_if_due(&mut self, stop: &watch::Receiver<bool>) -> Result<(), StoreError> {
        let moved = self.working.through_seq() > self.working.state.through_seq;
        if moved || self.last_commit.elapsed() >= IDLE_COMMIT {
            // A commit publishes the gauges itself.
            self.commit(stop).await?;
        } else {
            self.publish_gauges();
        }
        Ok(())
    }

    /// Store the pending delta; retry while NATS is unavailable (bounded once
    /// stopping). Only a stored delta is applied to the state.
    async fn commit(&mut self, stop: &watch::Receiver<bool>) -> Result<(), StoreError> {
        let delta = self.working.take_delta();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let bytes = loop {
            match self.log.commit(&delta).await {
                Ok(bytes) => break bytes,
                Err(StoreError::Unavailable(e)) => {
                    metrics::counter!(COMMIT_FAILURES).increment(1);
                    if *stop.borrow() && started.elapsed() > STOP_COMMIT_DEADLINE {
                        return Err(StoreError::Unavailable(e));
                    }
                    tracing::warn!(partition = %self.label, error = %e, "commit failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        };
        metrics::histogram!(COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        self.working.committed(&delta, now_ms());
        self.last_commit = Instant::now();
        self.bytes_since_snapshot += bytes;
        if self.bytes_since_snapshot
            > self
                .shared
                .settings
                .snapshot_min_bytes
                .max(self.snapshot_bytes)
        {
            match self.log.snapshot(&self.working.state).await {
                Ok(size) => {
                    self.snapshot_bytes = size;
                    self.bytes_since_snapshot = 0;
                }
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(partition = %self.label, error = %e, "snapshot failed; will retry")
                }
                Err(e) => return Err(e),
            }
        }
        self.publish_gauges();
        Ok(())
    }

    fn publish_gauges(&mut self) {
        let state = &self.working.state;
        let label = self.label.clone();
        metrics::gauge!(LAG, "partition" => label.clone()).set(self.lag as f64);
        metrics::gauge!(COMMITTED_SEQ, "partition" => label.clone()).set(state.through_seq as f64);
        if self.sized.is_none_or(|at| at.elapsed() >= SIZE_EVERY) {
            self.sized = Some(Instant::now());
            let sessions = state.session_bytes();
            metrics::gauge!(SESSION_BYTES, "partition" => label.clone()).set(sessions as f64);
            metrics::gauge!(STATE_BYTES, "partition" => label.clone())
                .set((state.cell_bytes() + sessions) as f64);
        }
        if state.newest_received_ms > 0 {
            let age = (now_ms() - state.newest_received_ms).max(0) as f64 / 1000.0;
            metrics::gauge!(FRESHNESS, "partition" => label).set(age);
        }
    }
}
