//! Rollup cells: everything counted for one site in one time bucket, and the
//! delta form the same figures take between two commits.

use std::collections::{BTreeMap, BTreeSet};

use datasketches::hll::{HllSketch, HllType};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::bounded::Bounded;
use super::bucket::Granularity;
use crate::event::Event;

/// HyperLogLog precision: 2^14 registers, a relative standard error of 0.8%.
pub const HLL_LG_K: u8 = 14;

/// What a breakdown is by; `(none)` stands for events that carry no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Path,
    ReferrerSource,
    Browser,
    Os,
    Device,
    Country,
}

/// Every dimension, in the order of [`Counters::dims`].
pub const DIMENSIONS: [Dimension; 6] = [
    Dimension::Path,
    Dimension::ReferrerSource,
    Dimension::Browser,
    Dimension::Os,
    Dimension::Device,
    Dimension::Country,
];

/// The value events without one are counted under.
pub const NONE: &str = "(none)";

impl Dimension {
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            Dimension::Path => "path",
            Dimension::ReferrerSource => "referrer_source",
            Dimension::Browser => "browser",
            Dimension::Os => "os",
            Dimension::Device => "device",
            Dimension::Country => "country",
        }
    }

    pub fn parse(name: &str) -> Option<Dimension> {
        DIMENSIONS.into_iter().find(|d| d.name() == name)
    }

    /// This dimension's value on `event`, or [`NONE`].
    pub fn of(self, event: &Event) -> &str {
        let c = &event.context;
        match self {
            Dimension::Path => c.path.as_deref(),
            Dimension::ReferrerSource => c.referrer_source.as_deref(),
            Dimension::Browser => c.browser.as_deref(),
            Dimension::Os => c.os.as_deref(),
            Dimension::Device => c.device.as_deref(),
            Dimension::Country => c.country.as_deref(),
        }
        .unwrap_or(NONE)
    }
}

/// Which cell: a site's bucket of one granularity starting at `start` (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CellKey {
    pub site: String,
    pub granularity: Granularity,
    pub start: i64,
}

/// Session figures of the sessions that *started* in a bucket. They change as
/// those sessions go on (a second page view un-bounces, the exit page moves).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounters {
    pub started: i64,
    /// Sessions with exactly one page view.
    pub bounces: i64,
    /// Sum over sessions of last event time minus first.
    pub duration_ms: i64,
    /// Page views inside these sessions.
    pub pageviews: i64,
    pub entries: Bounded,
    pub exits: Bounded,
}

impl SessionCounters {
    pub fn merge(&mut self, other: &SessionCounters) {
        self.started += other.started;
        self.bounces += other.bounces;
        self.duration_ms += other.duration_ms;
        self.pageviews += other.pageviews;
        self.entries.merge(&other.entries);
        self.exits.merge(&other.exits);
    }
}

/// The additive figures of a cell: a committed total or a delta to add to one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Events by name.
    pub events: Bounded,
    pub pageviews: i64,
    /// Revenue per ISO currency, exact.
    pub revenue: BTreeMap<String, Decimal>,
    /// Events by each [`Dimension`], in [`DIMENSIONS`] order.
    pub dims: [Bounded; 6],
    /// Events by name × each dimension, sorted by name (a vector for the same
    /// reason as [`Bounded`]). Kept in hour and day buckets only.
    pub by_name: Vec<(String, [Bounded; 6])>,
    pub sessions: SessionCounters,
}

impl Counters {
    pub fn merge(&mut self, other: &Counters) {
        self.events.merge(&other.events);
        self.pageviews += other.pageviews;
        for (currency, amount) in &other.revenue {
            let sum = self.revenue.entry(currency.clone()).or_default();
            // Amounts are bounded at ingest; saturating keeps even absurd totals from panicking.
            *sum = sum.saturating_add(*amount);
        }
        merge_dims(&mut self.dims, &other.dims);
        for (name, dims) in &other.by_name {
            merge_dims(self.name_dims_mut(name), dims);
        }
        self.sessions.merge(&other.sessions);
    }

    /// Add (`sign` 1) or take away (`sign` -1) `other`, exactly and key by
    /// key: a merged view stays the sum of its partitions' cells when one of
    /// them changes by taking the old cell away and adding the new one.
    pub fn shift(&mut self, other: &Counters, sign: i64) {
        self.events.shift(&other.events, sign);
        self.pageviews += sign * other.pageviews;
        for (currency, amount) in &other.revenue {
            let sum = self.revenue.entry(currency.clone()).or_default();
            *sum = if sign < 0 {
                sum.saturating_sub(*amount)
            } else {
                sum.saturating_add(*amount)
            };
        }
        for (a, b) in self.dims.iter_mut().zip(&other.dims) {
            a.shift(b, sign);
        }
        for (name, dims) in &other.by_name {
            for (a, b) in self.name_dims_mut(name).iter_mut().zip(dims) {
                a.shift(b, sign);
            }
        }
        let (s, o) = (&mut self.sessions, &other.sessions);
        s.started += sign * o.started;
        s.bounces += sign * o.bounces;
        s.duration_ms += sign * o.duration_ms;
        s.pageviews += sign * o.pageviews;
        s.entries.shift(&o.entries, sign);
        s.exits.shift(&o.exits, sign);
    }

    /// Drop every key counted zero times (after [`Counters::shift`]).
    pub fn drop_zeros(&mut self) {
        self.events.drop_zeros();
        self.revenue.retain(|_, a| !a.is_zero());
        for d in &mut self.dims {
            d.drop_zeros();
        }
        for (_, dims) in &mut self.by_name {
            for d in dims.iter_mut() {
                d.drop_zeros();
            }
        }
        self.by_name
            .retain(|(_, dims)| dims.iter().any(|d| !d.is_empty()));
        self.sessions.entries.drop_zeros();
        self.sessions.exits.drop_zeros();
    }

    /// Bound every map to `top_n` keys. Names beyond the kept ones have their
    /// per-dimension counts folded under `(other)` too.
    pub fn truncate(&mut self, top_n: usize) {
        self.events.truncate(top_n);
        for dims in &mut self.dims {
            dims.truncate(top_n);
        }
        let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut self.by_name)
            .into_iter()
            .partition(|(n, _)| n == super::OTHER || self.events.get(n) != 0);
        self.by_name = kept;
        for (_, dims) in dropped {
            merge_dims(self.name_dims_mut(super::OTHER), &dims);
        }
        for (_, dims) in &mut self.by_name {
            for d in dims.iter_mut() {
                d.truncate(top_n);
            }
        }
        self.sessions.entries.truncate(top_n);
        self.sessions.exits.truncate(top_n);
    }

    pub fn total_events(&self) -> i64 {
        self.events.total()
    }

    /// The per-dimension counts of events named `name`, if any.
    pub fn name_dims(&self, name: &str) -> Option<&[Bounded; 6]> {
        self.by_name
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| &self.by_name[i].1)
    }

    pub fn name_dims_mut(&mut self, name: &str) -> &mut [Bounded; 6] {
        let i = match self.by_name.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => i,
            Err(i) => {
                self.by_name
                    .insert(i, (name.to_owned(), Default::default()));
                i
            }
        };
        &mut self.by_name[i].1
    }

    fn approx_bytes(&self) -> usize {
        let dims: usize = self.dims.iter().map(Bounded::approx_bytes).sum();
        let by_name: usize = self
            .by_name
            .iter()
            .map(|(n, d)| n.len() + 48 + d.iter().map(Bounded::approx_bytes).sum::<usize>())
            .sum();
        self.events.approx_bytes()
            + dims
            + by_name
            + self.sessions.entries.approx_bytes()
            + self.sessions.exits.approx_bytes()
            + 64 * self.revenue.len()
    }
}

fn merge_dims(into: &mut [Bounded; 6], from: &[Bounded; 6]) {
    for (a, b) in into.iter_mut().zip(from) {
        a.merge(b);
    }
}

/// A committed cell: its counters and the sketch of its unique users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub counters: Counters,
    #[serde(with = "sketch_bytes")]
    pub users: HllSketch,
}

impl Default for Cell {
    fn default() -> Self {
        Cell {
            counters: Counters::default(),
            users: new_sketch(),
        }
    }
}

impl Cell {
    pub fn apply(&mut self, delta: &CellDelta, top_n: usize) {
        self.counters.merge(&delta.counters);
        for user in &delta.users {
            self.users.update(user);
        }
        self.counters.truncate(top_n);
    }

    pub fn approx_bytes(&self) -> usize {
        self.counters.approx_bytes() + self.users.estimated_size() + 128
    }
}

/// What one commit adds to a cell: counter increments and the hashes of the
/// users seen, in sorted order: a sketch's estimate depends on the order of its
/// updates, and the owner and every replay must feed them identically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellDelta {
    pub counters: Counters,
    pub users: BTreeSet<u64>,
}

/// An empty unique-user sketch of Beacon's precision.
pub fn new_sketch() -> HllSketch {
    HllSketch::new(HLL_LG_K, HllType::Hll8).unwrap_or_else(|_| unreachable!("HLL_LG_K is valid"))
}

/// The hash a user key enters sketches as (stable across processes and versions).
pub fn user_hash(user_key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_key.as_bytes())
}

/// Sketches are stored in DataSketches' own compact binary form.
mod sketch_bytes {
    use datasketches::hll::HllSketch;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sketch: &HllSketch, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&sketch.serialize())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HllSketch, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        HllSketch::deserialize(&bytes).map_err(serde::de::Error::custom)
    }
}
