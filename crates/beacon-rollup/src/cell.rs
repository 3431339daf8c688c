//! Rollup cells: everything counted for one site in one time bucket, and the
//! delta form the same figures take between two commits.

use std::collections::{BTreeMap, BTreeSet};

use datasketches::hll::{HllSketch, HllType};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::bounded::Bounded;
use super::bucket::Granularity;
use crate::tally::Tally;
use crate::tally_fields;
use beacon_core::event::Event;

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
    Channel,
    UtmSource,
    UtmMedium,
    UtmCampaign,
    UtmTerm,
    UtmContent,
    Region,
    City,
}

/// How many dimensions a cell counts events by.
pub const DIMS: usize = 14;

/// Every dimension, in the order of [`Counters::dims`].
pub const DIMENSIONS: [Dimension; DIMS] = [
    Dimension::Path,
    Dimension::ReferrerSource,
    Dimension::Browser,
    Dimension::Os,
    Dimension::Device,
    Dimension::Country,
    Dimension::Channel,
    Dimension::UtmSource,
    Dimension::UtmMedium,
    Dimension::UtmCampaign,
    Dimension::UtmTerm,
    Dimension::UtmContent,
    Dimension::Region,
    Dimension::City,
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
            Dimension::Channel => "channel",
            Dimension::UtmSource => "utm_source",
            Dimension::UtmMedium => "utm_medium",
            Dimension::UtmCampaign => "utm_campaign",
            Dimension::UtmTerm => "utm_term",
            Dimension::UtmContent => "utm_content",
            Dimension::Region => "region",
            Dimension::City => "city",
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
            Dimension::Channel => c.channel.as_deref(),
            Dimension::UtmSource => c.utm_source.as_deref(),
            Dimension::UtmMedium => c.utm_medium.as_deref(),
            Dimension::UtmCampaign => c.utm_campaign.as_deref(),
            Dimension::UtmTerm => c.utm_term.as_deref(),
            Dimension::UtmContent => c.utm_content.as_deref(),
            Dimension::Region => c.region.as_deref(),
            Dimension::City => c.city.as_deref(),
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

tally_fields!(SessionCounters {
    started,
    bounces,
    duration_ms,
    pageviews,
    entries,
    exits
});

/// Engagement of pages: what engagement pings (events named
/// `engagement`) said, per page path. Pings are never events, page views or
/// user activity; they only add to their page's engagement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    /// Pings per page.
    pub pings: Bounded,
    /// Milliseconds the page was visible and focused, per page.
    pub engaged_ms: Bounded,
    /// Sum of the pings' scroll depths (0–100), per page.
    pub scroll_sum: Bounded,
    /// Pings that carried a scroll depth, per page.
    pub scrolled: Bounded,
}

tally_fields!(Engagement {
    pings,
    engaged_ms,
    scroll_sum,
    scrolled
});

/// The additive figures of a cell: a committed total or a delta to add to one.
/// Every field is a [`Tally`], listed once below the struct.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Events by name.
    pub events: Bounded,
    pub pageviews: i64,
    /// Revenue per ISO currency, exact.
    pub revenue: BTreeMap<String, Decimal>,
    /// Events by each [`Dimension`], in [`DIMENSIONS`] order.
    pub dims: [Bounded; DIMS],
    /// Events by name × each dimension. Kept in hour and day buckets only.
    pub by_name: ByName,
    pub sessions: SessionCounters,
    pub engagement: Engagement,
    /// Filtered traffic (bots) by reason: events counted here and nowhere else.
    pub filtered: Bounded,
}

tally_fields!(Counters {
    events,
    pageviews,
    revenue,
    dims,
    by_name,
    sessions,
    engagement,
    filtered
} after truncate Counters::bound_names);

impl Counters {
    /// Names beyond the ones [`Counters::events`] kept have their
    /// per-dimension counts folded under `(other)` too; then each name's
    /// dimensions are bounded.
    fn bound_names(&mut self, top_n: usize) {
        let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut self.by_name.0)
            .into_iter()
            .partition(|(n, _)| n == super::OTHER || self.events.get(n) != 0);
        self.by_name.0 = kept;
        for (_, dims) in dropped {
            self.by_name.dims_mut(super::OTHER).merge(&dims);
        }
        for (_, dims) in &mut self.by_name.0 {
            dims.truncate(top_n);
        }
    }

    pub fn total_events(&self) -> i64 {
        self.events.total()
    }

    /// The per-dimension counts of events named `name`, if any.
    pub fn name_dims(&self, name: &str) -> Option<&[Bounded; DIMS]> {
        self.by_name.dims(name)
    }

    pub fn name_dims_mut(&mut self, name: &str) -> &mut [Bounded; DIMS] {
        self.by_name.dims_mut(name)
    }
}

/// Events by name × each dimension, sorted by name (a vector for the same
/// reason as [`Bounded`]). Names are bounded by [`Counters::events`], so its
/// own truncation bounds nothing (see `Counters::bound_names`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByName(Vec<(String, [Bounded; DIMS])>);

impl ByName {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Bounded; DIMS])> {
        self.0.iter().map(|(n, d)| (n.as_str(), d))
    }

    pub fn dims(&self, name: &str) -> Option<&[Bounded; DIMS]> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn dims_mut(&mut self, name: &str) -> &mut [Bounded; DIMS] {
        let i = match self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (name.to_owned(), Default::default()));
                i
            }
        };
        &mut self.0[i].1
    }
}

impl From<Vec<(String, [Bounded; DIMS])>> for ByName {
    fn from(mut names: Vec<(String, [Bounded; DIMS])>) -> Self {
        names.sort_by(|a, b| a.0.cmp(&b.0));
        ByName(names)
    }
}

impl Tally for ByName {
    fn merge(&mut self, other: &Self) {
        for (name, dims) in &other.0 {
            self.dims_mut(name).merge(dims);
        }
    }
    fn shift(&mut self, other: &Self, sign: i64) {
        for (name, dims) in &other.0 {
            self.dims_mut(name).shift(dims, sign);
        }
    }
    fn drop_zeros(&mut self) {
        for (_, dims) in &mut self.0 {
            dims.drop_zeros();
        }
        self.0
            .retain(|(_, dims)| dims.iter().any(|d| !d.is_empty()));
    }
    fn truncate(&mut self, _: usize) {}
    fn approx_bytes(&self) -> usize {
        self.0
            .iter()
            .map(|(n, d)| n.len() + 48 + d.approx_bytes())
            .sum()
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
