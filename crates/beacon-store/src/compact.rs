//! Keeping a partition's segments few and large: which segments to merge
//! (compaction) and which to drop (retention). Pure functions of the
//! manifest; the partition owner does the I/O (a merge re-encodes its
//! inputs' rows with [`crate::segment::encode`]) and commits each change as
//! one manifest compare-and-set.
//!
//! Only segments next to each other in the stream are merged, so the merged
//! segment's sequence range holds exactly its inputs' rows and never overlaps
//! another segment's. Rows arrive close to event time, so neighbours in the
//! stream are neighbours in time too: level 0 (a flush, seconds to a minute),
//! level 1 (`fan_in` flushes), level 2 (`fan_in`² flushes) and so on.

use crate::manifest::{Manifest, SegmentMeta};

/// Highest level compaction produces: beyond it segments stay as they are.
pub const MAX_LEVEL: u8 = 3;

/// Segments to merge into one of `level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The inputs, in stream order.
    pub inputs: Vec<SegmentMeta>,
    pub level: u8,
}

impl Merge {
    pub fn rows(&self) -> u64 {
        self.inputs.iter().map(|s| s.rows).sum()
    }
}

/// The first run of at least `fan_in` neighbouring segments of one level
/// (below [`MAX_LEVEL`]) whose rows together stay within `max_rows`, lowest
/// level first; `None` when there is nothing worth merging.
pub fn plan(manifest: &Manifest, fan_in: usize, max_rows: u64) -> Option<Merge> {
    let mut segments: Vec<&SegmentMeta> = manifest.segments.iter().collect();
    segments.sort_unstable_by_key(|s| s.first_seq);
    for level in 0..MAX_LEVEL {
        let mut run: Vec<&SegmentMeta> = Vec::new();
        let mut rows = 0;
        for s in &segments {
            if s.level != level {
                run.clear();
                rows = 0;
                continue;
            }
            // Slide the run's start until this segment fits.
            while !run.is_empty() && rows + s.rows > max_rows {
                rows -= run.remove(0).rows;
            }
            if s.rows > max_rows {
                continue;
            }
            run.push(s);
            rows += s.rows;
            if run.len() == fan_in.max(2) {
                return Some(Merge {
                    inputs: run.into_iter().cloned().collect(),
                    level: level + 1,
                });
            }
        }
    }
    None
}

/// The manifest after a merge committed: the inputs out, `output` in. `None`
/// when an input is no longer there (the merge is then void).
pub fn apply_merge(manifest: &Manifest, merge: &Merge, output: SegmentMeta) -> Option<Manifest> {
    let mut next = manifest.clone();
    for input in &merge.inputs {
        let at = next.segments.iter().position(|s| s.name == input.name)?;
        next.segments.remove(at);
    }
    next.segments.push(output);
    next.segments.sort_unstable_by_key(|s| s.first_seq);
    Some(next)
}

/// Segments every row of which is older than `before_ms` (event time).
pub fn expired(manifest: &Manifest, before_ms: i64) -> Vec<SegmentMeta> {
    manifest
        .segments
        .iter()
        .filter(|s| s.max_ts_ms < before_ms)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, first: u64, last: u64, level: u8, max_ts_ms: i64) -> SegmentMeta {
        SegmentMeta {
            name: name.into(),
            partition: 0,
            format: 1,
            first_seq: first,
            last_seq: last,
            rows: last - first + 1,
            bytes: 10,
            min_ts_ms: 0,
            max_ts_ms,
            sites: vec!["a".into()],
            level,
        }
    }

    fn manifest(segments: Vec<SegmentMeta>) -> Manifest {
        let mut m = Manifest::empty(0);
        m.through_seq = segments.iter().map(|s| s.last_seq).max().unwrap_or(0);
        m.segments = segments;
        m
    }

    #[test]
    fn merges_the_first_run_of_neighbours_of_one_level() {
        // Level 0 at 1..=30 (three of ten rows), a level-1 in between.
        let m = manifest(vec![
            seg("a", 1, 10, 0, 1),
            seg("b", 11, 20, 0, 1),
            seg("big", 21, 200, 1, 1),
            seg("c", 201, 210, 0, 1),
            seg("d", 211, 220, 0, 1),
            seg("e", 221, 230, 0, 1),
        ]);
        let merge = plan(&m, 3, 1_000).expect("c, d, e");
        let names: Vec<&str> = merge.inputs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            (names, merge.level, merge.rows()),
            (vec!["c", "d", "e"], 1, 30)
        );
        // Too many rows together: the run slides and finds nothing.
        assert_eq!(plan(&m, 3, 25), None);
        assert_eq!(plan(&m, 4, 1_000), None);

        let out = seg("cde", 201, 230, 1, 1);
        let next = apply_merge(&m, &merge, out).expect("inputs present");
        assert_eq!(next.segments.len(), 4);
        assert_eq!(next.rows(), m.rows());
        next.check().expect("no overlaps");
        // Applied twice, the inputs are gone: void.
        assert_eq!(apply_merge(&next, &merge, seg("x", 201, 230, 1, 1)), None);
    }

    #[test]
    fn expiry_takes_only_wholly_old_segments() {
        let m = manifest(vec![seg("old", 1, 10, 2, 100), seg("new", 11, 20, 0, 200)]);
        let names: Vec<String> = expired(&m, 150).into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["old".to_owned()]);
        assert!(expired(&m, 100).is_empty());
    }
}
