//! Reading rollups back: the cells of every partition merged into one view per
//! site and bucket. Counters add up; unique-user sketches are unioned, so a
//! user seen in several buckets or partitions still counts once.

use std::collections::BTreeMap;
use std::ops::Range;

use datasketches::hll::{HllType, HllUnion};

use super::bucket::Granularity;
use super::cell::{CellKey, Counters, HLL_LG_K};
use super::state::PartitionState;

/// Every partition's committed cells, merged by key.
#[derive(Debug, Default)]
pub struct View {
    cells: BTreeMap<CellKey, Counters>,
    partitions: Vec<PartitionState>,
}

impl View {
    pub fn new(partitions: Vec<PartitionState>) -> Self {
        let mut cells: BTreeMap<CellKey, Counters> = BTreeMap::new();
        for state in &partitions {
            for (key, cell) in &state.cells {
                cells.entry(key.clone()).or_default().merge(&cell.counters);
            }
        }
        View { cells, partitions }
    }

    pub fn partitions(&self) -> &[PartitionState] {
        &self.partitions
    }

    /// Merged counters of each bucket of `site` at `granularity` starting in `range` (Unix ms).
    pub fn buckets(
        &self,
        site: &str,
        granularity: Granularity,
        range: Range<i64>,
    ) -> impl Iterator<Item = (i64, &Counters)> {
        self.cells
            .range(key_range(site, granularity, range))
            .map(|(k, c)| (k.start, c))
    }

    /// Sum of the counters of those buckets.
    pub fn total(&self, site: &str, granularity: Granularity, range: Range<i64>) -> Counters {
        let mut total = Counters::default();
        for (_, c) in self.buckets(site, granularity, range) {
            total.merge(c);
        }
        total
    }

    /// Estimated distinct users of `site` over the buckets starting in `range`.
    pub fn unique_users(&self, site: &str, granularity: Granularity, range: Range<i64>) -> f64 {
        let mut union = HllUnion::new(HLL_LG_K).unwrap_or_else(|_| unreachable!("valid lg_k"));
        for state in &self.partitions {
            for (_, cell) in state
                .cells
                .range(key_range(site, granularity, range.clone()))
            {
                union.update(&cell.users);
            }
        }
        union.to_sketch(HllType::Hll8).estimate()
    }

    /// The sites that have any cell.
    pub fn sites(&self) -> Vec<&str> {
        let mut sites: Vec<&str> = self.cells.keys().map(|k| k.site.as_str()).collect();
        sites.dedup();
        sites
    }
}

/// The cell keys of `site`'s buckets at `granularity` starting in `range`.
fn key_range(site: &str, granularity: Granularity, range: Range<i64>) -> Range<CellKey> {
    let key = |start| CellKey {
        site: site.to_owned(),
        granularity,
        start,
    };
    key(range.start)..key(range.end)
}
