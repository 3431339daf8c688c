//! Which segments hold a partition's events: the manifest. One JSON document per
//! partition, kept whole under the key `p<N>` of the `BEACON_STORE` key-value
//! bucket. Every change (a new segment, a compaction, a retention drop) writes
//! the whole document with a compare-and-set on the key's revision, so a change
//! is atomic, and a writer that lost its partition to another can never commit
//! again: the new owner rewrote the key when it took over.
//!
//! A segment object that is in the object store but in no manifest was never
//! committed (its writer died between upload and commit) and holds no row
//! anyone counts.

use serde::{Deserialize, Serialize};

/// Version of the manifest document this build writes. A reader refuses a newer one.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// The buckets: named in `beacon_core` so provisioning (in `beacon-nats`)
/// creates them without depending on the store.
pub use beacon_core::subject::{MANIFEST_BUCKET, SEGMENT_BUCKET};

/// The manifest key of a partition.
pub fn manifest_key(partition: u32) -> String {
    format!("p{partition}")
}

/// The partition a manifest key names, if it is one.
pub fn partition_of_key(key: &str) -> Option<u32> {
    key.strip_prefix('p')?.parse().ok()
}

/// What the query side needs to know about a segment without opening it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Object name in [`SEGMENT_BUCKET`]; unique, never reused.
    pub name: String,
    pub partition: u32,
    /// Segment layout version ([`crate::SEGMENT_FORMAT_VERSION`] when written).
    pub format: u32,
    /// Lowest and highest `BEACON_EVENTS` sequence of its rows.
    pub first_seq: u64,
    pub last_seq: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Event-time range of its rows (Unix ms), for pruning by time.
    pub min_ts_ms: i64,
    pub max_ts_ms: i64,
    /// Sites with rows in it, sorted, for pruning by site.
    pub sites: Vec<String>,
    /// 0 for a segment written from the stream; higher for compacted ones.
    pub level: u8,
}

/// A partition's committed segments and how far into the stream they reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub partition: u32,
    /// Every event of this partition with a stream sequence ≤ this is in
    /// exactly one of `segments` (or was dropped by retention); none above it is.
    pub through_seq: u64,
    /// Who wrote this version (diagnostics only; the revision is the fence).
    pub writer: String,
    pub segments: Vec<SegmentMeta>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "manifest of partition {partition} has format {found}; this build reads up to {MANIFEST_FORMAT_VERSION}: upgrade beacon"
    )]
    TooNew { partition: u32, found: u32 },
    #[error("manifest is not valid JSON: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("manifest of partition {partition} is inconsistent: {problem}")]
    Inconsistent { partition: u32, problem: String },
}

impl Manifest {
    /// The manifest of a partition nothing was written for yet.
    pub fn empty(partition: u32) -> Self {
        Manifest {
            format: MANIFEST_FORMAT_VERSION,
            partition,
            through_seq: 0,
            writer: String::new(),
            segments: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Read a stored manifest, refusing one this build cannot understand and
    /// one whose segments overlap (which would count rows twice).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        struct Version {
            format: u32,
            partition: u32,
        }
        let version: Version = serde_json::from_slice(bytes)?;
        if version.format > MANIFEST_FORMAT_VERSION {
            return Err(ManifestError::TooNew {
                partition: version.partition,
                found: version.format,
            });
        }
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Segments must not overlap in sequence and must lie at or below `through_seq`.
    pub fn check(&self) -> Result<(), ManifestError> {
        let bad = |problem: String| ManifestError::Inconsistent {
            partition: self.partition,
            problem,
        };
        let mut ranges: Vec<(u64, u64, &str)> = self
            .segments
            .iter()
            .map(|s| (s.first_seq, s.last_seq, s.name.as_str()))
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            if pair[1].0 <= pair[0].1 {
                return Err(bad(format!(
                    "segments {} and {} overlap",
                    pair[0].2, pair[1].2
                )));
            }
        }
        if let Some(seg) = self
            .segments
            .iter()
            .find(|s| s.first_seq > s.last_seq || s.last_seq > self.through_seq)
        {
            return Err(bad(format!(
                "segment {} covers {}..={} beyond through_seq {}",
                seg.name, seg.first_seq, seg.last_seq, self.through_seq
            )));
        }
        Ok(())
    }

    /// The segments that may hold rows of `site` with event time in `[from_ms, to_ms)`.
    pub fn prune<'a>(
        &'a self,
        site: &'a str,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Iterator<Item = &'a SegmentMeta> + 'a {
        self.segments.iter().filter(move |s| {
            s.max_ts_ms >= from_ms
                && s.min_ts_ms < to_ms
                && s.sites.binary_search_by(|x| x.as_str().cmp(site)).is_ok()
        })
    }

    pub fn rows(&self) -> u64 {
        self.segments.iter().map(|s| s.rows).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, first: u64, last: u64) -> SegmentMeta {
        SegmentMeta {
            name: name.into(),
            partition: 0,
            format: 1,
            first_seq: first,
            last_seq: last,
            rows: last - first + 1,
            bytes: 100,
            min_ts_ms: 1_000,
            max_ts_ms: 2_000,
            sites: vec!["a".into(), "c".into()],
            level: 0,
        }
    }

    #[test]
    fn round_trips_and_prunes() {
        let mut m = Manifest::empty(0);
        m.through_seq = 20;
        m.segments = vec![seg("x", 1, 10), seg("y", 11, 20)];
        let back = Manifest::decode(&m.encode()).expect("decodes");
        assert_eq!(back, m);
        assert_eq!(back.rows(), 20);
        assert_eq!(back.prune("a", 0, 1_500).count(), 2);
        assert_eq!(back.prune("b", 0, 1_500).count(), 0);
        assert_eq!(back.prune("a", 2_001, 3_000).count(), 0);
    }

    #[test]
    fn refuses_overlaps_and_newer_formats() {
        let mut m = Manifest::empty(3);
        m.through_seq = 20;
        m.segments = vec![seg("x", 1, 10), seg("y", 10, 20)];
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Inconsistent { .. })
        ));
        m.segments = vec![seg("x", 1, 21)];
        assert!(Manifest::decode(&m.encode()).is_err());
        let newer = br#"{"format": 99, "partition": 3, "future": true}"#;
        assert!(matches!(
            Manifest::decode(newer),
            Err(ManifestError::TooNew { found: 99, .. })
        ));
        assert_eq!(partition_of_key(&manifest_key(7)), Some(7));
        assert_eq!(partition_of_key("q7"), None);
    }
}
