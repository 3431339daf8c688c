//! The rollup store: per partition, a log on `beacon.rollups.<partition>` in the
//! `BEACON_ROLLUPS` stream. Each commit is one *record* (a delta, a snapshot or
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
use beacon_core::rollup::{Delta, PartitionState};
use beacon_core::subject::ROLLUPS_PREFIX;
use bytes::Bytes;
use futures::StreamExt;

/// Largest payload of one message of a record.
const PART_BYTES: usize = 512 * 1024;

const RECORD: &str = "Beacon-Record";
const THROUGH_SEQ: &str = "Beacon-Through-Seq";
const OWNER: &str = "Beacon-Owner";

/// The subject of `partition`'s rollup log.
pub fn rollup_subject(partition: u32) -> String {
    format!("{ROLLUPS_PREFIX}.{partition}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another owner has written to the log since this one last did.
    #[error("partition {0} was taken over by another aggregator (fenced)")]
    Fenced(u32),
    /// NATS did not answer or refused; retrying may help.
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read (written by an incompatible version?).
    #[error("rollup record on partition {partition} at sequence {seq} is unreadable: {reason}")]
    Corrupt {
        partition: u32,
        seq: u64,
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Takeover,
    Delta,
    Snapshot,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Takeover => "takeover",
            Kind::Delta => "delta",
            Kind::Snapshot => "snapshot",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [Kind::Takeover, Kind::Delta, Kind::Snapshot]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// `<kind> <record id> <part>/<parts>`, on every message of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHeader {
    kind: Kind,
    id: String,
    part: usize,
    parts: usize,
}

impl PartHeader {
    fn render(&self) -> String {
        format!(
            "{} {} {}/{}",
            self.kind.as_str(),
            self.id,
            self.part,
            self.parts
        )
    }

    fn parse(s: &str) -> Option<PartHeader> {
        let mut words = s.split(' ');
        let kind = Kind::parse(words.next()?)?;
        let id = words.next()?.to_owned();
        let (part, parts) = words.next()?.split_once('/')?;
        Some(PartHeader {
            kind,
            id,
            part: part.parse().ok()?,
            parts: parts.parse().ok()?,
        })
    }
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

/// The committed sequence recorded on the last message of `partition`'s log.
pub async fn committed_seq(stream: &Stream, partition: u32) -> Result<Option<u64>, StoreError> {
    Ok(last_message(stream, &rollup_subject(partition))
        .await?
        .and_then(|m| m.headers.get(THROUGH_SEQ)?.as_str().parse().ok()))
}

/// Fold `partition`'s log into its committed state.
pub async fn load(stream: &Stream, partition: u32) -> Result<Loaded, StoreError> {
    let subject = rollup_subject(partition);
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
        if let Some(record) = records.push(message.headers.as_ref(), &message.payload) {
            let bytes = record.bytes.len();
            match record.decode(partition, seq)? {
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

/// Puts records back together from a log's messages, read in order. A record
/// counts only when all its parts follow each other; anything else (a record
/// cut short by a crash or a takeover) is dropped.
#[derive(Debug, Default)]
pub struct Assembler {
    open: Option<(PartHeader, Vec<u8>)>,
}

/// One complete record, still encoded.
#[derive(Debug)]
pub struct Record {
    kind: Kind,
    bytes: Vec<u8>,
}

/// What a record does to a partition's state.
#[derive(Debug)]
pub enum Change {
    /// A new owner claimed the log; the state is unchanged.
    Takeover,
    Delta(Delta),
    /// The whole state, replacing what came before.
    Snapshot(PartitionState),
}

impl Assembler {
    /// Take the next message of the log; returns the record it completes, if any.
    pub fn push(&mut self, headers: Option<&HeaderMap>, payload: &[u8]) -> Option<Record> {
        let header = headers
            .and_then(|h| h.get(RECORD))
            .and_then(|v| PartHeader::parse(v.as_str()));
        match header {
            Some(h) if h.part == 1 => self.open = Some((h, payload.to_vec())),
            Some(h) => match &mut self.open {
                Some((open, bytes)) if open.id == h.id && open.part + 1 == h.part => {
                    open.part = h.part;
                    bytes.extend_from_slice(payload);
                }
                _ => self.open = None,
            },
            None => self.open = None,
        }
        match &self.open {
            Some((open, _)) if open.part == open.parts => {
                self.open.take().map(|(open, bytes)| Record {
                    kind: open.kind,
                    bytes,
                })
            }
            _ => None,
        }
    }

    /// Whether a record has begun and not yet ended.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

impl Record {
    /// Decode it; `partition` and `seq` (of its last part) name it in errors.
    pub fn decode(self, partition: u32, seq: u64) -> Result<Change, StoreError> {
        let corrupt = |e: postcard::Error| StoreError::Corrupt {
            partition,
            seq,
            reason: e.to_string(),
        };
        Ok(match self.kind {
            Kind::Takeover => Change::Takeover,
            Kind::Delta => Change::Delta(postcard::from_bytes(&self.bytes).map_err(corrupt)?),
            Kind::Snapshot => Change::Snapshot(postcard::from_bytes(&self.bytes).map_err(corrupt)?),
        })
    }
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
    pub fn new(js: Context, stream: Stream, partition: u32, owner: &str, last: u64) -> Self {
        Log {
            js,
            stream,
            partition,
            subject: rollup_subject(partition),
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
        let bytes = postcard::to_stdvec(delta).map_err(StoreError::unavailable)?;
        self.append(Kind::Delta, &bytes, delta.through_seq).await?;
        Ok(bytes.len())
    }

    /// Write the whole state, then drop the log before it: loading then starts
    /// from this snapshot. Returns the snapshot's size.
    pub async fn snapshot(&mut self, state: &PartitionState) -> Result<usize, StoreError> {
        let bytes = postcard::to_stdvec(state).map_err(StoreError::unavailable)?;
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
        headers.insert(RECORD, part);
        if let Some(seq) = through_seq {
            headers.insert(THROUGH_SEQ, seq.to_string().as_str());
        }
        headers.insert(OWNER, self.owner.as_str());
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
            .and_then(|m| m.headers.get(RECORD))
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
    fn part_headers_round_trip() {
        let h = PartHeader {
            kind: Kind::Snapshot,
            id: "agg-1-7".into(),
            part: 2,
            parts: 3,
        };
        assert_eq!(PartHeader::parse(&h.render()), Some(h));
        assert_eq!(PartHeader::parse("delta x"), None);
        assert_eq!(PartHeader::parse("nope x 1/1"), None);
    }
}
