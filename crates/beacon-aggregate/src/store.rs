//! The rollup store: per partition, a log on `beacon.rollups.<partition>` in the
//! `BEACON_ROLLUPS` stream (generation 0; `beacon replay` builds generation N
//! on `beacon.rollups.g<N>.<partition>`, and `beacon.rollups.current` says
//! which generation counts). Each commit is one *record* (a delta, a snapshot or
//! a takeover marker) holding the state change together with the
//! `BEACON_EVENTS` sequence it reaches, so state and position can never
//! disagree. Every message is published with `Nats-Expected-Last-Subject-Sequence`
//! set to the last message its writer saw: once a new owner has written its
//! takeover marker, nothing a stale owner sends can land (fencing).
//!
//! Records larger than one message are split into parts written back to back;
//! a reader counts a record only when all its parts follow each other, so a
//! record cut short by a crash or a takeover is ignored.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use beacon_core::subject::ROLLUPS_PREFIX;
use beacon_rollup::record::{
    Assembler, Change, FORMAT_HEADER, FORMAT_VERSION, Kind, OWNER_HEADER, PartHeader,
    RECORD_HEADER, RecordError, THROUGH_SEQ_HEADER, encode_delta, encode_snapshot,
};
use beacon_rollup::{Delta, PartitionState};
use bytes::Bytes;
use futures::StreamExt;

/// Largest payload of one message of a record.
const PART_BYTES: usize = 512 * 1024;

/// The last message on this subject names the generation of rollup logs
/// that counts (none: generation 0).
pub const CURRENT_SUBJECT: &str = "beacon.rollups.current";
/// On a switch message: the generation that counts from there on.
pub const GENERATION_HEADER: &str = "Beacon-Generation";

/// The subject of `partition`'s rollup log in `generation`. Generation 0 keeps
/// the name Beacon always used, so existing logs need no migration.
pub fn rollup_subject(generation: u64, partition: u32) -> String {
    if generation == 0 {
        format!("{ROLLUPS_PREFIX}.{partition}")
    } else {
        format!("{ROLLUPS_PREFIX}.g{generation}.{partition}")
    }
}

/// What a subject of `BEACON_ROLLUPS` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupSubject {
    Log { generation: u64, partition: u32 },
    Current,
}

impl RollupSubject {
    pub fn parse(subject: &str) -> Option<RollupSubject> {
        if subject == CURRENT_SUBJECT {
            return Some(RollupSubject::Current);
        }
        let rest = subject.strip_prefix(ROLLUPS_PREFIX)?.strip_prefix('.')?;
        let (generation, partition) = match rest.split_once('.') {
            Some((g, p)) => (g.strip_prefix('g')?.parse().ok().filter(|g| *g > 0)?, p),
            None => (0, rest),
        };
        Some(RollupSubject::Log {
            generation,
            partition: partition.parse().ok()?,
        })
    }
}

/// The generation that counts, and the sequence of the message saying so (0:
/// none, generation 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub generation: u64,
    pub seq: u64,
}

/// The generation that counts now.
pub async fn current(stream: &Stream) -> Result<Current, StoreError> {
    let Some(message) = last_message(stream, CURRENT_SUBJECT).await? else {
        return Ok(Current {
            generation: 0,
            seq: 0,
        });
    };
    Ok(Current {
        generation: generation_of(
            message.headers.get(GENERATION_HEADER).map(|v| v.as_str()),
            message.sequence,
        )?,
        seq: message.sequence,
    })
}

/// The generation a switch message names.
pub fn generation_of(header: Option<&str>, seq: u64) -> Result<u64, StoreError> {
    header
        .and_then(|g| g.parse().ok())
        .ok_or(StoreError::BadSwitch { seq })
}

/// Make `generation` the one that counts, if `from` still is (two replays
/// cannot both switch). Query nodes following `BEACON_ROLLUPS` in order swap
/// their view at this message; aggregators take the new logs over.
pub async fn switch(js: &Context, from: Current, generation: u64) -> Result<u64, StoreError> {
    let mut headers = HeaderMap::new();
    headers.insert(GENERATION_HEADER, generation.to_string().as_str());
    let publish = PublishMessage::build()
        .payload(Bytes::new())
        .headers(headers)
        .expected_last_subject_sequence(from.seq);
    let ack = js
        .send_publish(CURRENT_SUBJECT, publish)
        .await
        .map_err(StoreError::unavailable)?;
    match ack.await {
        Ok(ack) => Ok(ack.sequence),
        Err(e) => {
            // Refused (another switch came first) or unknown: the end tells.
            let now = current(
                &js.get_stream(beacon_nats::ROLLUPS_STREAM)
                    .await
                    .map_err(StoreError::unavailable)?,
            )
            .await?;
            if now.generation == generation {
                Ok(now.seq)
            } else if now.seq != from.seq {
                Err(StoreError::Switched(now.generation))
            } else {
                Err(StoreError::unavailable(e))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another owner has written to the log since this one last did.
    #[error("partition {0} was taken over by another aggregator (fenced)")]
    Fenced(u32),
    /// Another switch of generation came first.
    #[error("the rollups were switched to generation {0} meanwhile")]
    Switched(u64),
    /// NATS did not answer or refused; retrying may help.
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read: a format this release does not know,
    /// or bytes that do not decode.
    #[error("rollup record on partition {partition} at sequence {seq}: {reason}")]
    Corrupt {
        partition: u32,
        seq: u64,
        reason: RecordError,
    },
    /// `beacon replay --site` could not reach the live generation's committed
    /// sequence exactly (it is not one of the partition's events): the states
    /// cannot be merged.
    #[error(
        "partition {partition}: the replay reached sequence {replayed}, the live rollups {live}; cannot merge them"
    )]
    Misaligned {
        partition: u32,
        replayed: u64,
        live: u64,
    },
    /// A generation switch message that does not name a generation.
    #[error("{CURRENT_SUBJECT} at sequence {seq} has no valid {GENERATION_HEADER} header")]
    BadSwitch { seq: u64 },
    /// The event store's manifest or segments cannot be read or written
    /// (a format this release does not know, rows that do not encode).
    #[error("event store: {0}")]
    Segments(crate::segments::WriteError),
}

/// The store's fencing and unavailability are the rollups' kinds: an owner
/// stops, or retries, the same way whichever output refused.
impl From<crate::segments::WriteError> for StoreError {
    fn from(e: crate::segments::WriteError) -> Self {
        use crate::segments::WriteError;
        match e {
            WriteError::Fenced(partition) => StoreError::Fenced(partition),
            WriteError::Unavailable(e) => StoreError::Unavailable(e),
            other => StoreError::Segments(other),
        }
    }
}

impl StoreError {
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// A message header's value, if present.
pub fn header<'a>(message: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// A partition's state as last committed, and where its log ends.
#[derive(Debug)]
pub struct Loaded {
    pub state: PartitionState,
    /// Stream sequence of the last message on the partition's subject (0: none).
    pub last: u64,
    /// Bytes of records since the newest snapshot (what a snapshot would save).
    pub bytes_since_snapshot: usize,
    pub snapshot_bytes: usize,
}

/// The last message on `subject` (wildcards allowed), if there is one. Asked
/// with `STREAM.MSG.GET`, which only the stream's leader answers: on a cluster
/// a direct get may be served by a replica that is behind, and both fencing
/// and progress need the stream's real end.
async fn last_message(stream: &Stream, subject: &str) -> Result<Option<StreamMessage>, StoreError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(StoreError::unavailable(e)),
    }
}

/// Stream sequence of the last message on `subject`, 0 if there is none.
pub async fn last_seq(stream: &Stream, subject: &str) -> Result<u64, StoreError> {
    Ok(last_message(stream, subject)
        .await?
        .map_or(0, |m| m.sequence))
}

/// The committed sequence recorded on the last message of `partition`'s log
/// in `generation`.
pub async fn committed_seq(
    stream: &Stream,
    generation: u64,
    partition: u32,
) -> Result<Option<u64>, StoreError> {
    Ok(last_message(stream, &rollup_subject(generation, partition))
        .await?
        .and_then(|m| m.headers.get(THROUGH_SEQ_HEADER)?.as_str().parse().ok()))
}

/// Who wrote the last message of `partition`'s log in `generation`.
pub async fn last_owner(
    stream: &Stream,
    generation: u64,
    partition: u32,
) -> Result<Option<String>, StoreError> {
    Ok(last_message(stream, &rollup_subject(generation, partition))
        .await?
        .and_then(|m| Some(m.headers.get(OWNER_HEADER)?.as_str().to_owned())))
}

/// Fold `partition`'s log in `generation` into its committed state.
pub async fn load(stream: &Stream, generation: u64, partition: u32) -> Result<Loaded, StoreError> {
    let subject = rollup_subject(generation, partition);
    let last = last_seq(stream, &subject).await?;
    let mut loaded = Loaded {
        state: PartitionState::default(),
        last,
        bytes_since_snapshot: 0,
        snapshot_bytes: 0,
    };
    if last == 0 {
        return Ok(loaded);
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(StoreError::unavailable)?;
    let mut messages = consumer.messages().await.map_err(StoreError::unavailable)?;
    let mut records = Assembler::default();
    let mut first_seq = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .map_err(|_| StoreError::Unavailable("reading the rollup log timed out".into()))?
    {
        let message = message.map_err(StoreError::unavailable)?;
        let info = message.info().map_err(StoreError::unavailable)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let first_seq = *first_seq.get_or_insert(seq);
        if let Some(record) = records.push(
            header(&message, RECORD_HEADER),
            header(&message, FORMAT_HEADER),
            &message.payload,
        ) {
            let bytes = record.bytes.len();
            match record.decode().map_err(|reason| StoreError::Corrupt {
                partition,
                seq,
                reason,
            })? {
                Change::Takeover => {}
                Change::Delta(delta) => {
                    loaded.state.apply(&delta);
                    loaded.bytes_since_snapshot += bytes;
                }
                Change::Snapshot(state) => {
                    loaded.state = state;
                    loaded.snapshot_bytes = bytes;
                    loaded.bytes_since_snapshot = 0;
                }
            }
        }
        if seq >= last {
            // Done, unless a record is open. If the read began at or before
            // `last`, the state already holds everything committed by then and
            // the open record is a later one still being written: leave it.
            // If it began after `last`, the log was trimmed under us and this
            // is the snapshot that replaced it: read it to the end.
            if !records.is_open() || (first_seq <= last && pending == 0) {
                break;
            }
        }
    }
    Ok(loaded)
}

/// An owner's handle on its partition's log: appends are fenced by the
/// sequence of the last message this writer saw.
#[derive(Debug)]
pub struct Log {
    js: Context,
    stream: Stream,
    partition: u32,
    subject: String,
    owner: String,
    last: u64,
    records: u64,
    /// A record whose append failed part-way: retrying the same record resumes
    /// it under the same id, so a part that landed late is recognised as ours.
    unfinished: Option<Unfinished>,
    attempt_timeout: Duration,
}

#[derive(Debug)]
struct Unfinished {
    id: String,
    next_part: usize,
    first: u64,
    /// Which record this was: another one starts afresh, leaving this one
    /// incomplete (readers ignore it).
    digest: u64,
}

fn digest(kind: Kind, bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    kind.as_str().hash(&mut h);
    bytes.hash(&mut h);
    h.finish()
}

impl Log {
    pub fn new(
        js: Context,
        stream: Stream,
        generation: u64,
        partition: u32,
        owner: &str,
        last: u64,
    ) -> Self {
        Log {
            js,
            stream,
            partition,
            subject: rollup_subject(generation, partition),
            owner: owner.to_owned(),
            last,
            records: 0,
            unfinished: None,
            attempt_timeout: Duration::from_secs(5),
        }
    }

    /// Claim the log: after this, a previous owner's appends fail.
    pub async fn takeover(&mut self, through_seq: u64) -> Result<(), StoreError> {
        self.append(Kind::Takeover, &[], through_seq)
            .await
            .map(|_| ())
    }

    /// Commit a delta; returns the bytes written.
    pub async fn commit(&mut self, delta: &Delta) -> Result<usize, StoreError> {
        let bytes = encode_delta(delta);
        self.append(Kind::Delta, &bytes, delta.through_seq).await?;
        Ok(bytes.len())
    }

    /// Write the whole state, then drop the log before it: loading then starts
    /// from this snapshot. Returns the snapshot's size.
    pub async fn snapshot(&mut self, state: &PartitionState) -> Result<usize, StoreError> {
        let bytes = encode_snapshot(state);
        let first = self
            .append(Kind::Snapshot, &bytes, state.through_seq)
            .await?;
        // Everything before the snapshot's first part is folded into it. A
        // purge that fails only leaves the log longer; loading still works.
        if let Err(e) = self
            .stream
            .purge()
            .filter(&self.subject)
            .sequence(first)
            .await
        {
            tracing::warn!(partition = self.partition, error = %e, "cannot trim the rollup log");
        }
        Ok(bytes.len())
    }

    /// Append one record (split into parts); returns the sequence of its first
    /// part. After a failure, call again with the same record to resume it.
    async fn append(
        &mut self,
        kind: Kind,
        bytes: &[u8],
        through_seq: u64,
    ) -> Result<u64, StoreError> {
        let digest = digest(kind, bytes);
        let Unfinished {
            id,
            next_part,
            mut first,
            ..
        } = match self.unfinished.take() {
            Some(u) if u.digest == digest => u,
            _ => {
                self.records += 1;
                Unfinished {
                    id: format!("{}-{}", self.owner, self.records),
                    next_part: 0,
                    first: 0,
                    digest,
                }
            }
        };
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(PART_BYTES).collect()
        };
        for (i, chunk) in chunks.iter().enumerate().skip(next_part) {
            let header = PartHeader {
                kind,
                id: id.clone(),
                part: i + 1,
                parts: chunks.len(),
            };
            // Only a complete record reaches a sequence; readers of progress
            // look at the last message, so only the final part says so.
            let through = (i + 1 == chunks.len()).then_some(through_seq);
            match self
                .append_part(&header.render(), Bytes::copy_from_slice(chunk), through)
                .await
            {
                Ok(seq) if i == 0 => first = seq,
                Ok(_) => {}
                Err(e @ StoreError::Unavailable(_)) => {
                    self.unfinished = Some(Unfinished {
                        id,
                        next_part: i,
                        first,
                        digest,
                    });
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(first)
    }

    /// Publish one message fenced on `self.last`. When the outcome is unknown
    /// (timeout, lost connection), read the log's end to learn whether it landed.
    async fn append_part(
        &mut self,
        part: &str,
        payload: Bytes,
        through_seq: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(RECORD_HEADER, part);
        headers.insert(FORMAT_HEADER, FORMAT_VERSION.to_string().as_str());
        if let Some(seq) = through_seq {
            headers.insert(THROUGH_SEQ_HEADER, seq.to_string().as_str());
        }
        headers.insert(OWNER_HEADER, self.owner.as_str());
        let publish = PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .expected_last_subject_sequence(self.last);
        let sent = match self.js.send_publish(self.subject.clone(), publish).await {
            Ok(ack) => match tokio::time::timeout(self.attempt_timeout, ack).await {
                Ok(Ok(ack)) => Ok(ack.sequence),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no acknowledgement in time".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Ok(seq) = sent {
            self.last = seq;
            return Ok(seq);
        }
        // Refused or unknown (a retry of a part that did land is refused too):
        // the log's end tells. Only this writer's own part can follow
        // `self.last` without another owner having fenced it.
        let end = last_message(&self.stream, &self.subject).await?;
        let end_seq = end.as_ref().map_or(0, |m| m.sequence);
        let ours = end
            .as_ref()
            .and_then(|m| m.headers.get(RECORD_HEADER))
            .is_some_and(|v| v.as_str() == part);
        if ours {
            self.last = end_seq;
            Ok(end_seq)
        } else if end_seq == self.last {
            Err(StoreError::Unavailable(sent.err().unwrap_or_default()))
        } else {
            Err(StoreError::Fenced(self.partition))
        }
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_subjects_name_generation_and_partition() {
        assert_eq!(rollup_subject(0, 7), "beacon.rollups.7");
        assert_eq!(rollup_subject(3, 7), "beacon.rollups.g3.7");
        for (g, p) in [(0, 0), (0, 15), (1, 3), (12, 255)] {
            assert_eq!(
                RollupSubject::parse(&rollup_subject(g, p)),
                Some(RollupSubject::Log {
                    generation: g,
                    partition: p
                })
            );
        }
        assert_eq!(
            RollupSubject::parse(CURRENT_SUBJECT),
            Some(RollupSubject::Current)
        );
        for other in [
            "beacon.rollups.x",
            "beacon.rollups.g0.1",
            "beacon.rollups.g2",
            "beacon.events.1",
        ] {
            assert_eq!(RollupSubject::parse(other), None, "{other}");
        }
    }
}
