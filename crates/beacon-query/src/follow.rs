//! Following the rollup store: one ordered consumer over every partition's log
//! in `BEACON_ROLLUPS` pushes each record as the aggregators commit it (no
//! polling). The node first reads what is there into its [`View`] and reports
//! ready only then; afterwards each record changes just the cells it touches.
//! A feed that a reconnect or a stall broke is reopened at once; a stream that
//! is gone fails the follower, and with it the node.
//!
//! The view holds the generation of logs that `beacon.rollups.current` names.
//! Records of a newer generation (a `beacon replay` at work) are folded aside,
//! and the view is swapped for them exactly at the switch message, between
//! two records, so an answer reads one generation or the other, never a mix.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::context::{Context, GetStreamError, GetStreamErrorKind};
use beacon_aggregate::{RollupSubject, StoreError, header};
use beacon_core::subject::ROLLUPS_PREFIX;
use beacon_nats::ROLLUPS_STREAM;
use beacon_rollup::record::{Assembler, Change, FORMAT_HEADER, RECORD_HEADER};
use beacon_rollup::{PartitionState, View};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// The view and what is known about how current it is.
#[derive(Debug, Default)]
pub struct Followed {
    pub view: View,
    /// Every record present at start-up has been read.
    pub ready: bool,
    /// The follower stopped for good: the view no longer changes.
    pub failed: bool,
    /// The newest record applied.
    pub newest: Option<Applied>,
    /// `BEACON_ROLLUPS` sequence read up to.
    pub seq: u64,
}

/// When the newest counted event became queryable here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// `received_at` (Unix ms) of the newest event the view counts.
    pub newest_received_ms: i64,
    /// When this node applied the record that counted it (Unix ms).
    pub applied_ms: i64,
}

/// A query node's shared view: read by every answer, written by the follower.
#[derive(Debug, Clone)]
pub struct Rollups {
    inner: Arc<RwLock<Followed>>,
    /// Bumped on every change; live streams wait on it.
    changed: watch::Sender<u64>,
}

impl Default for Rollups {
    fn default() -> Self {
        Rollups {
            inner: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Rollups {
    /// Read the view.
    pub fn read<T>(&self, f: impl FnOnce(&Followed) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    fn write(&self, f: impl FnOnce(&mut Followed)) {
        {
            let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
            f(&mut guard);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Note that every message up to `seq` is read, when the last one changed
    /// nothing (a part of a record, another generation's record): `status`
    /// compares this with the stream's end to tell that the view is current.
    fn read_up_to(&self, seq: u64) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        guard.seq = guard.seq.max(seq);
    }

    /// Loaded, and still followed.
    pub fn is_ready(&self) -> bool {
        self.read(|f| f.ready && !f.failed)
    }

    /// Mark the view as no longer followed, so readiness turns red.
    pub fn fail(&self) {
        self.write(|f| f.failed = true);
        metrics::gauge!("beacon_query_ready").set(0.0);
    }

    /// A receiver that sees each change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Per generation and partition, the record being put together.
#[derive(Default)]
struct Reader {
    assemblers: HashMap<(u64, u32), Assembler>,
}

/// What a message of `BEACON_ROLLUPS` completes.
enum Item {
    Record {
        generation: u64,
        partition: u32,
        change: Change,
    },
    /// From here on, `generation` counts.
    Switch(u64),
}

impl Reader {
    /// The item a message completes, if any.
    fn push(
        &mut self,
        subject: &str,
        seq: u64,
        message: &async_nats::Message,
    ) -> Result<Option<Item>, StoreError> {
        let (generation, partition) = match RollupSubject::parse(subject) {
            Some(RollupSubject::Log {
                generation,
                partition,
            }) => (generation, partition),
            Some(RollupSubject::Current) => {
                let header = header(message, beacon_aggregate::store::GENERATION_HEADER);
                return Ok(Some(Item::Switch(beacon_aggregate::store::generation_of(
                    header, seq,
                )?)));
            }
            None => return Ok(None),
        };
        match self
            .assemblers
            .entry((generation, partition))
            .or_default()
            .push(
                header(message, RECORD_HEADER),
                header(message, FORMAT_HEADER),
                &message.payload,
            ) {
            Some(record) => match record.decode() {
                Ok(change) => Ok(Some(Item::Record {
                    generation,
                    partition,
                    change,
                })),
                Err(reason) => Err(StoreError::Corrupt {
                    partition,
                    seq,
                    reason,
                }),
            },
            None => Ok(None),
        }
    }
}

/// Partition states folded apart from the view, per generation.
#[derive(Default)]
struct Generations(HashMap<u64, Vec<PartitionState>>);

impl Generations {
    fn apply(&mut self, generation: u64, partition: u32, change: Change) {
        let states = self.0.entry(generation).or_default();
        let i = partition as usize;
        if states.len() <= i {
            states.resize_with(i + 1, PartitionState::default);
        }
        match change {
            Change::Takeover => {}
            Change::Delta(d) => states[i].apply(&d),
            Change::Snapshot(s) => states[i] = s,
        }
    }

    /// The states of `generation`, forgetting it and every older one.
    fn take(&mut self, generation: u64) -> Vec<PartitionState> {
        let states = self.0.remove(&generation).unwrap_or_default();
        self.0.retain(|g, _| *g > generation);
        states
    }
}

/// Why a node stopped following the rollups. It then cannot answer correctly
/// any more: the node fails (see `QueryNode::run`).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("{ROLLUPS_STREAM} has not existed for {0:?}; this node cannot follow the rollups")]
    StreamGone(Duration),
    /// A record this release cannot read.
    #[error(transparent)]
    Record(StoreError),
}

/// How often the stream is looked at while the feed brings nothing.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Looks in a row that find no stream before the follower gives up.
const GONE_AFTER: u32 = 10;
/// Looks in a row that find records the feed has not brought before it is reopened.
const STALLED_AFTER: u32 = 3;

/// Follow `BEACON_ROLLUPS` into `rollups` until `shutdown`.
///
/// The feed is reopened at the next sequence when the connection comes back
/// (the server forgot the consumer) or when it stalls while the stream has
/// records it did not bring. NATS being away is waited out; a stream that
/// stays missing fails the follower, and so does a record it cannot decode (a
/// format this release does not read): answering without it would be a silent
/// hole in the numbers.
pub async fn follow(
    js: Context,
    rollups: Rollups,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), FollowError> {
    let client = js.client();
    let mut missing = Missing::default();
    let end_at_start = loop {
        match last_sequence(&js).await {
            Ok(last) => break last,
            Err(e) => {
                missing.note(e)?;
                if pause(&mut shutdown).await {
                    return Ok(());
                }
            }
        }
    };
    let mut reader = Reader::default();
    // Until ready, states are folded alone and merged once at the end; after
    // that, only generations newer than the view's are.
    let mut loading = true;
    let mut aside = Generations::default();
    let mut current = 0;
    let mut seq = 0;
    if end_at_start == 0 {
        install(&rollups, aside.take(current), 0, &mut loading);
    }
    loop {
        let connected = beacon_nats::connects(&client);
        let mut messages = match open(&js, seq).await {
            Ok(messages) => messages,
            Err(e) => {
                missing.note(e)?;
                if pause(&mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        let mut check = tokio::time::interval_at(Instant::now() + CHECK_EVERY, CHECK_EVERY);
        let (mut delivered, mut stalled) = (false, 0);
        loop {
            let message = tokio::select! {
                m = messages.next() => m,
                () = stopped(&mut shutdown) => return Ok(()),
                _ = beacon_nats::reconnected(&client, connected) => {
                    tracing::debug!(seq, "reconnected to NATS; reopening the rollup feed");
                    break;
                }
                _ = check.tick() => {
                    if std::mem::take(&mut delivered) {
                        continue;
                    }
                    match last_sequence(&js).await {
                        Ok(last) if last > seq => stalled += 1,
                        Ok(_) => stalled = 0,
                        Err(e) => missing.note(e)?,
                    }
                    if stalled >= STALLED_AFTER {
                        tracing::warn!(seq, "the rollup feed stalled; reopening it");
                        break;
                    }
                    continue;
                }
            };
            let Some(message) = message else {
                tracing::warn!(seq, "the rollup feed ended; reopening it");
                break;
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "reading rollups; the feed resumes by itself");
                    continue;
                }
            };
            let Ok(info) = message.info() else { continue };
            let at = info.stream_sequence;
            if at <= seq {
                continue; // a recreated feed repeats what was read
            }
            (delivered, stalled) = (true, 0);
            missing = Missing::default();
            seq = at;
            let item = match reader.push(message.subject.as_str(), at, &message) {
                Ok(item) => item,
                Err(e) => {
                    metrics::counter!("beacon_query_records_unreadable_total").increment(1);
                    return Err(FollowError::Record(e));
                }
            };
            match item {
                Some(Item::Switch(generation)) if generation != current => {
                    tracing::info!(
                        from = current,
                        to = generation,
                        "rollups switched generation"
                    );
                    current = generation;
                    if loading {
                        aside.0.retain(|g, _| *g >= generation);
                    } else {
                        install(&rollups, aside.take(generation), at, &mut loading);
                    }
                }
                Some(Item::Record {
                    generation,
                    partition,
                    change,
                }) if loading || generation > current => aside.apply(generation, partition, change),
                Some(Item::Record {
                    generation,
                    partition: p,
                    change,
                }) if generation == current => {
                    let now = chrono::Utc::now().timestamp_millis();
                    rollups.write(|f| {
                        let newest = match change {
                            Change::Takeover => None,
                            Change::Delta(d) => {
                                let newest = d.newest_received_ms;
                                f.view.apply_delta(p, &d);
                                (d.applied > 0).then_some(newest)
                            }
                            Change::Snapshot(s) => {
                                f.view.replace(p, s);
                                None
                            }
                        };
                        if let Some(newest) = newest {
                            f.newest = Some(Applied {
                                newest_received_ms: newest,
                                applied_ms: now,
                            });
                        }
                        f.seq = at;
                    });
                    metrics::counter!("beacon_query_records_applied_total").increment(1);
                }
                // An older generation's late writes, a repeated switch: nothing to do.
                Some(_) | None => {}
            }
            if loading && at >= end_at_start {
                install(&rollups, aside.take(current), at, &mut loading);
            } else if !loading && rollups.read(|f| f.seq) < at {
                rollups.read_up_to(at);
            }
        }
    }
}

/// Why the stream could not be looked at.
enum Unreadable {
    /// The server says it does not exist.
    Gone,
    /// NATS is away or did not answer: waited out.
    Unavailable(String),
}

/// Consecutive looks that found no stream.
#[derive(Default)]
struct Missing(u32);

impl Missing {
    /// Count a failed look; `Err` once the stream has been missing too long.
    fn note(&mut self, e: Unreadable) -> Result<(), FollowError> {
        match e {
            Unreadable::Gone => {
                self.0 += 1;
                tracing::warn!(looks = self.0, "{ROLLUPS_STREAM} does not exist");
                if self.0 >= GONE_AFTER {
                    return Err(FollowError::StreamGone(CHECK_EVERY * GONE_AFTER));
                }
            }
            Unreadable::Unavailable(e) => {
                tracing::warn!(error = %e, "cannot reach {ROLLUPS_STREAM}; retrying");
            }
        }
        Ok(())
    }
}

/// The rollup stream's last sequence, read from the stream's leader like every
/// position behind progress and lag: a replica that is behind would make the
/// node ready too early.
async fn last_sequence(js: &Context) -> Result<u64, Unreadable> {
    let stream = js.get_stream(ROLLUPS_STREAM).await.map_err(unreadable)?;
    beacon_aggregate::store::last_seq(&stream, &format!("{ROLLUPS_PREFIX}.>"))
        .await
        .map_err(|e| Unreadable::Unavailable(e.to_string()))
}

fn unreadable(e: GetStreamError) -> Unreadable {
    match e.kind() {
        GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            Unreadable::Gone
        }
        _ => Unreadable::Unavailable(e.to_string()),
    }
}

/// An ordered feed of every rollup record after `seq`.
async fn open(js: &Context, seq: u64) -> Result<Ordered, Unreadable> {
    let stream = js.get_stream(ROLLUPS_STREAM).await.map_err(unreadable)?;
    let deliver_policy = match seq {
        0 => DeliverPolicy::All,
        seq => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{ROLLUPS_PREFIX}.>"),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| Unreadable::Unavailable(e.to_string()))?;
    consumer
        .messages()
        .await
        .map_err(|e| Unreadable::Unavailable(e.to_string()))
}

/// Resolves once shutdown is signalled. Unlike `wait_for` it holds no borrow
/// of the flag, so a `select!` arm after it may await.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Wait a second; true if shutdown came first.
async fn pause(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(CHECK_EVERY) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    }
}

/// Make `states` the view: once loading is done, and at each switch of generation.
fn install(rollups: &Rollups, states: Vec<PartitionState>, seq: u64, loading: &mut bool) {
    let view = View::new(states);
    let now = chrono::Utc::now().timestamp_millis();
    let newest = view
        .partitions()
        .iter()
        .map(|s| s.newest_received_ms)
        .max()
        .filter(|ms| *ms > 0);
    if *loading {
        tracing::info!(cells = view.len(), "rollups loaded; query node ready");
    }
    *loading = false;
    rollups.write(|f| {
        f.view = view;
        f.ready = true;
        f.seq = seq;
        f.newest = newest.map(|n| Applied {
            newest_received_ms: n,
            applied_ms: now,
        });
    });
    metrics::gauge!("beacon_query_ready").set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(through_seq: u64) -> Change {
        Change::Snapshot(PartitionState {
            through_seq,
            ..PartitionState::default()
        })
    }

    #[test]
    fn a_generation_is_taken_whole_and_older_ones_are_forgotten() {
        let mut aside = Generations::default();
        aside.apply(1, 0, snapshot(5));
        aside.apply(1, 3, snapshot(7));
        aside.apply(2, 1, snapshot(9));
        aside.apply(1, 3, Change::Takeover);
        let states = aside.take(1);
        // Every partition up to the highest seen, the others empty.
        let seqs: Vec<u64> = states.iter().map(|s| s.through_seq).collect();
        assert_eq!(seqs, [5, 0, 0, 7]);
        // A newer generation (another replay under way) stays aside.
        assert_eq!(aside.0.keys().copied().collect::<Vec<_>>(), [2]);
        assert!(aside.take(1).is_empty());
        assert_eq!(aside.take(2).len(), 2);
        assert!(aside.0.is_empty());
    }
}
