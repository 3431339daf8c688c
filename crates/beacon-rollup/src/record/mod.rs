//! The rollup log's record format, without I/O. A *record* (a delta, a
//! snapshot or a takeover marker) is one message or several parts written back
//! to back; each part names its record in the `Beacon-Record` header, and the
//! first says the record's format version in `Beacon-Format` (absent: version
//! 1, written before the header existed). Readers put parts back together
//! ([`Assembler`]) and decode records of every version they know, converting
//! older ones to today's types ([`Record::decode`]); a version they do not
//! know is an error that says so, never a silent hole in the numbers.

mod v1;
mod v2;

use serde::Serialize;

use crate::state::{Delta, PartitionState};

/// Header on every part: `<kind> <record id> <part>/<parts>`.
pub const RECORD_HEADER: &str = "Beacon-Record";
/// Header on every part: the record's format version.
pub const FORMAT_HEADER: &str = "Beacon-Format";
/// Header on a record's final part: the `BEACON_EVENTS` sequence it counts up to.
pub const THROUGH_SEQ_HEADER: &str = "Beacon-Through-Seq";
/// Header on every part: the member id of the aggregator that wrote it.
pub const OWNER_HEADER: &str = "Beacon-Owner";

/// The format this release writes. Version 1 is the unversioned postcard
/// encoding of the first release; 2 adds the header (the types were the same
/// when it was introduced, and each later change of a stored type bumps it);
/// 3 adds dimensions (channel, `utm_*`, region, city), page engagement and
/// filtered traffic to every cell.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format this release reads (converting it).
pub const OLDEST_READABLE: u32 = 1;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Takeover,
    Delta,
    Snapshot,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
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

/// The `Beacon-Record` header of one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHeader {
    pub kind: Kind,
    pub id: String,
    /// 1-based.
    pub part: usize,
    pub parts: usize,
}

impl PartHeader {
    pub fn render(&self) -> String {
        format!(
            "{} {} {}/{}",
            self.kind.as_str(),
            self.id,
            self.part,
            self.parts
        )
    }

    pub fn parse(s: &str) -> Option<PartHeader> {
        let mut words = s.split(' ');
        let kind = Kind::parse(words.next()?)?;
        let id = words.next()?.to_owned();
        let (part, parts) = words.next()?.split_once('/')?;
        let (part, parts) = (part.parse().ok()?, parts.parse().ok()?);
        (part >= 1 && part <= parts).then_some(PartHeader {
            kind,
            id,
            part,
            parts,
        })
    }
}

/// Why a complete record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Written in a format this release does not read: by a newer release, or
    /// one too old to convert.
    #[error(
        "written in rollup format {found}, and this release reads formats {OLDEST_READABLE} to {FORMAT_VERSION}: \
         run the release that wrote it, or rebuild the rollups from the events with `beacon replay`"
    )]
    Unsupported { found: String },
    /// The bytes do not decode as their kind and version say.
    #[error("format {version} {kind} does not decode: {reason}")]
    Unreadable {
        version: u32,
        kind: &'static str,
        reason: String,
    },
}

/// One complete record, still encoded.
#[derive(Debug)]
pub struct Record {
    pub kind: Kind,
    /// The `Beacon-Format` header of its first part, as written (absent: "1").
    format: Option<String>,
    pub bytes: Vec<u8>,
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

impl Record {
    /// The record's format version, if this release knows the number at all.
    pub fn version(&self) -> Result<u32, RecordError> {
        let Some(text) = &self.format else {
            return Ok(1);
        };
        match text.trim().parse::<u32>() {
            Ok(v) if (OLDEST_READABLE..=FORMAT_VERSION).contains(&v) => Ok(v),
            _ => Err(RecordError::Unsupported {
                found: text.chars().take(32).collect(),
            }),
        }
    }

    /// Decode it into today's types, converting an older format.
    pub fn decode(self) -> Result<Change, RecordError> {
        let version = self.version()?;
        let unreadable = |e: postcard::Error| RecordError::Unreadable {
            version,
            kind: self.kind.as_str(),
            reason: e.to_string(),
        };
        Ok(match (self.kind, version) {
            (Kind::Takeover, _) => Change::Takeover,
            (Kind::Delta, 1) => Change::Delta(v1::delta(&self.bytes).map_err(unreadable)?),
            (Kind::Snapshot, 1) => Change::Snapshot(v1::snapshot(&self.bytes).map_err(unreadable)?),
            (Kind::Delta, 2) => Change::Delta(v2::delta(&self.bytes).map_err(unreadable)?),
            (Kind::Snapshot, 2) => Change::Snapshot(v2::snapshot(&self.bytes).map_err(unreadable)?),
            (Kind::Delta, _) => {
                Change::Delta(postcard::from_bytes(&self.bytes).map_err(unreadable)?)
            }
            (Kind::Snapshot, _) => {
                Change::Snapshot(postcard::from_bytes(&self.bytes).map_err(unreadable)?)
            }
        })
    }
}

/// A delta in today's format.
pub fn encode_delta(delta: &Delta) -> Vec<u8> {
    encode(delta)
}

/// A snapshot in today's format.
pub fn encode_snapshot(state: &PartitionState) -> Vec<u8> {
    encode(state)
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    // Encoding into a vector fails only for types serde cannot express in
    // postcard (none of ours: no maps with non-string keys are untagged).
    postcard::to_stdvec(value).unwrap_or_else(|e| unreachable!("rollup types encode: {e}"))
}

/// Puts records back together from a log's messages, read in order. A record
/// counts only when all its parts follow each other; anything else (a record
/// cut short by a crash or a takeover) is dropped.
#[derive(Debug, Default)]
pub struct Assembler {
    open: Option<(PartHeader, Option<String>, Vec<u8>)>,
}

impl Assembler {
    /// Take the next message of the log, given its `Beacon-Record` and
    /// `Beacon-Format` headers; returns the record it completes, if any.
    pub fn push(
        &mut self,
        record: Option<&str>,
        format: Option<&str>,
        payload: &[u8],
    ) -> Option<Record> {
        match record.and_then(PartHeader::parse) {
            Some(h) if h.part == 1 => {
                self.open = Some((h, format.map(str::to_owned), payload.to_vec()))
            }
            Some(h) => match &mut self.open {
                Some((open, _, bytes)) if open.id == h.id && open.part + 1 == h.part => {
                    open.part = h.part;
                    bytes.extend_from_slice(payload);
                }
                _ => self.open = None,
            },
            None => self.open = None,
        }
        match &self.open {
            Some((open, _, _)) if open.part == open.parts => {
                self.open.take().map(|(open, format, bytes)| Record {
                    kind: open.kind,
                    format,
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

#[cfg(test)]
mod tests;
