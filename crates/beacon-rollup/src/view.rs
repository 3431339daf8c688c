//! Reading rollups back: the cells of every partition merged into one view per
//! site and bucket. Counters add up; unique-user sketches are unioned, so a
//! user seen in several buckets or partitions still counts once.
//!
//! A view is built once from committed states, then kept current one record at
//! a time ([`View::apply_delta`], [`View::replace`]): only the cells a record
//! touches are merged again, so a query node follows the aggregators' commits
//! at the cost of what changed.
//!
//! Unique users over many buckets (a month's totals) take a union of every
//! bucket's sketch, and a union costs about as much as a sketch is large
//! whatever the bucket holds. Dashboards ask the same ranges again and again
//! while only the newest buckets change, so a view keeps the unions it
//! computed lately ([`View::users_over`]) and brings one up to date by adding
//! only the buckets changed since.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Mutex;

use datasketches::hll::{HllSketch, HllType, HllUnion};

use super::bucket::Granularity;
use super::cell::{CellKey, Counters, HLL_LG_K, new_sketch};
use super::state::{Delta, PartitionState};
use crate::tally::Tally;

/// One bucket of one site, over every partition.
#[derive(Debug, Clone)]
pub struct Merged {
    pub counters: Counters,
    /// The union of the partitions' unique-user sketches.
    pub users: HllSketch,
    /// `users.estimate()`, computed once per change.
    pub users_estimate: f64,
    /// When the cell last changed, on the view's clock of changes.
    pub version: u64,
    /// The last version at which the cell may have lost users (a partition's
    /// cell dropped by retention or replaced by a snapshot, or the cell made
    /// anew after it was dropped). At other changes its sketch only grows.
    pub shrunk: u64,
}

impl Default for Merged {
    fn default() -> Self {
        Merged {
            counters: Counters::default(),
            users: new_sketch(),
            users_estimate: 0.0,
            version: 0,
            shrunk: 0,
        }
    }
}

/// Every partition's committed cells, merged by key.
#[derive(Debug, Default)]
pub struct View {
    cells: BTreeMap<CellKey, Merged>,
    partitions: Vec<PartitionState>,
    /// Counts changes of cells: each changed cell takes the next value as its version.
    changes: u64,
    unions: Mutex<Unions>,
}

/// Unions kept: enough for a few dashboards' ranges and their comparisons.
const KEPT_UNIONS: usize = 16;
/// Fewer buckets than this are unioned afresh: it costs little, and keeping
/// every hour's union would crowd out the long ranges worth keeping.
const KEPT_UNION_MIN_CELLS: usize = 8;

/// A union of many buckets' sketches, and the version each bucket had when it was added.
#[derive(Debug, Clone)]
struct KeptUnion {
    site: String,
    buckets: Vec<(Granularity, i64)>,
    versions: Vec<u64>,
    union: HllUnion,
    estimate: f64,
    used: u64,
}

#[derive(Debug, Default)]
struct Unions {
    kept: Vec<KeptUnion>,
    tick: u64,
}

/// A union of unique-user sketches of Beacon's precision.
pub fn new_union() -> HllUnion {
    HllUnion::new(HLL_LG_K).unwrap_or_else(|_| unreachable!("HLL_LG_K is valid"))
}

/// The union of `sketches`, as one sketch.
fn union_of<'a>(sketches: impl IntoIterator<Item = &'a HllSketch>) -> HllSketch {
    let mut union = new_union();
    for sketch in sketches {
        union.update(sketch);
    }
    union.to_sketch(HllType::Hll8)
}

impl View {
    pub fn new(mut partitions: Vec<PartitionState>) -> Self {
        // Remembered sessions serve only the owner's corrections.
        for state in &mut partitions {
            state.users = Default::default();
        }
        let mut view = View {
            partitions,
            ..View::default()
        };
        let keys: BTreeSet<CellKey> = view
            .partitions
            .iter()
            .flat_map(|s| s.cells.keys().cloned())
            .collect();
        for key in keys {
            let mut merged = Merged::default();
            let mut union = new_union();
            for state in &view.partitions {
                if let Some(cell) = state.cells.get(&key) {
                    merged.counters.merge(&cell.counters);
                    union.update(&cell.users);
                }
            }
            merged.users = union.to_sketch(HllType::Hll8);
            merged.users_estimate = merged.users.estimate();
            view.changes += 1;
            merged.version = view.changes;
            view.cells.insert(key, merged);
        }
        view
    }

    pub fn partitions(&self) -> &[PartitionState] {
        &self.partitions
    }

    fn partition_mut(&mut self, partition: u32) -> &mut PartitionState {
        let i = partition as usize;
        if self.partitions.len() <= i {
            self.partitions.resize_with(i + 1, PartitionState::default);
        }
        &mut self.partitions[i]
    }

    /// Apply a delta committed on `partition`, as its owner did.
    pub fn apply_delta(&mut self, partition: u32, delta: &Delta) {
        let state = self.partition_mut(partition);
        let mut touched: BTreeSet<CellKey> = delta.cells.keys().cloned().collect();
        // Cells retention is about to drop from this partition change too.
        if delta.cutoffs != state.cutoffs {
            touched.extend(
                state
                    .cells
                    .keys()
                    .filter(|k| k.start < delta.cutoffs[k.granularity.index()])
                    .cloned(),
            );
        }
        let before = old_counters(state, touched);
        state.apply_figures(delta);
        self.rebase(partition, before, false);
    }

    /// Replace `partition`'s whole state (a snapshot).
    pub fn replace(&mut self, partition: u32, mut state: PartitionState) {
        state.users = Default::default();
        let slot = self.partition_mut(partition);
        let touched: BTreeSet<CellKey> = slot
            .cells
            .keys()
            .chain(state.cells.keys())
            .cloned()
            .collect();
        let before = old_counters(slot, touched);
        *slot = state;
        // A snapshot normally says what the deltas before it did, but nothing
        // here checks that its sketches hold every user the old ones did.
        self.rebase(partition, before, true);
    }

    /// After `partition` changed: take each touched cell's old counters out of
    /// the merged cell and put the new ones in (counters are sums, so the
    /// other partitions need not be read), and union the unique-user
    /// sketches again (they cannot be taken apart). `replaced`: the
    /// partition's cells were replaced rather than added to, so they may hold
    /// fewer users than before.
    fn rebase(&mut self, partition: u32, before: Vec<(CellKey, Option<Counters>)>, replaced: bool) {
        for (key, old) in before {
            let new = self.partitions[partition as usize].cells.get(&key);
            if old.is_none() && new.is_none() {
                continue;
            }
            let mut union = new_union();
            let mut any = false;
            for state in &self.partitions {
                if let Some(cell) = state.cells.get(&key) {
                    union.update(&cell.users);
                    any = true;
                }
            }
            if !any {
                self.cells.remove(&key);
                continue;
            }
            self.changes += 1;
            let created = !self.cells.contains_key(&key);
            let merged = self.cells.entry(key).or_default();
            merged.version = self.changes;
            // This partition's cell gone (retention) takes its users out of
            // the union; a cell made again may hold fewer than the one before.
            if replaced || new.is_none() || created {
                merged.shrunk = self.changes;
            }
            if let Some(old) = &old {
                merged.counters.shift(old, -1);
            }
            if let Some(new) = new {
                merged.counters.shift(&new.counters, 1);
            }
            merged.counters.drop_zeros();
            merged.users = union.to_sketch(HllType::Hll8);
            merged.users_estimate = merged.users.estimate();
        }
    }

    /// Merged cells of each bucket of `site` at `granularity` starting in `range` (Unix ms).
    pub fn buckets(
        &self,
        site: &str,
        granularity: Granularity,
        range: Range<i64>,
    ) -> impl Iterator<Item = (i64, &Merged)> {
        self.cells
            .range(key_range(site, granularity, range))
            .map(|(k, c)| (k.start, c))
    }

    /// Sum of the counters of those buckets.
    pub fn total(&self, site: &str, granularity: Granularity, range: Range<i64>) -> Counters {
        let mut total = Counters::default();
        for (_, c) in self.buckets(site, granularity, range) {
            total.merge(&c.counters);
        }
        total
    }

    /// Estimated distinct users of `site` over the buckets starting in `range`.
    pub fn unique_users(&self, site: &str, granularity: Granularity, range: Range<i64>) -> f64 {
        union_of(
            self.buckets(site, granularity, range)
                .map(|(_, c)| &c.users),
        )
        .estimate()
    }

    /// Estimated distinct users of `site` over the given buckets (each at
    /// most once; buckets without a cell count no one). A union of many
    /// buckets is kept and later brought up to date with only the buckets
    /// that changed since, so asking the same range again costs little.
    pub fn users_over(&self, site: &str, buckets: &[(Granularity, i64)]) -> f64 {
        let cells: Vec<Option<&Merged>> = buckets
            .iter()
            .map(|&(granularity, start)| {
                self.cells.get(&CellKey {
                    site: site.to_owned(),
                    granularity,
                    start,
                })
            })
            .collect();
        let version = |c: &Option<&Merged>| c.map_or(0, |c| c.version);
        if cells.len() < KEPT_UNION_MIN_CELLS {
            return union_of(cells.iter().flatten().map(|c| &c.users)).estimate();
        }
        // Take the kept union out, if any, and merge outside the lock.
        let kept = {
            let mut unions = self.unions.lock().unwrap_or_else(|e| e.into_inner());
            unions.tick += 1;
            let tick = unions.tick;
            let found = unions
                .kept
                .iter_mut()
                .find(|k| k.site == site && k.buckets == buckets);
            match found {
                Some(k) if k.versions.iter().copied().eq(cells.iter().map(version)) => {
                    k.used = tick;
                    return k.estimate;
                }
                Some(k) => Some(k.clone()),
                None => None,
            }
        };
        let mut kept = kept.unwrap_or_else(|| KeptUnion {
            site: site.to_owned(),
            buckets: buckets.to_vec(),
            versions: vec![0; buckets.len()],
            union: new_union(),
            estimate: 0.0,
            used: 0,
        });
        // A tile added before (version not 0) that may have lost users
        // since, or is gone, cannot be taken out again: then the union is
        // taken afresh.
        let lost = cells
            .iter()
            .zip(&kept.versions)
            .any(|(cell, seen)| *seen != 0 && cell.is_none_or(|c| c.shrunk > *seen));
        if lost {
            kept.union = new_union();
            kept.versions.fill(0);
        }
        for (cell, seen) in cells.iter().zip(kept.versions.iter_mut()) {
            if let Some(cell) = cell
                && cell.version != *seen
            {
                kept.union.update(&cell.users);
                *seen = cell.version;
            }
        }
        // The estimate that depends only on the registers, not on the order
        // they were merged in: the same whichever buckets changed when.
        kept.estimate = kept.union.to_sketch(HllType::Hll8).composite_estimate();
        let estimate = kept.estimate;
        let mut unions = self.unions.lock().unwrap_or_else(|e| e.into_inner());
        unions.tick += 1;
        kept.used = unions.tick;
        unions
            .kept
            .retain(|k| !(k.site == site && k.buckets == buckets));
        if unions.kept.len() >= KEPT_UNIONS
            && let Some(oldest) = (0..unions.kept.len()).min_by_key(|&i| unions.kept[i].used)
        {
            unions.kept.swap_remove(oldest);
        }
        unions.kept.push(kept);
        estimate
    }

    /// The sites that have any cell.
    pub fn sites(&self) -> Vec<&str> {
        let mut sites: Vec<&str> = self.cells.keys().map(|k| k.site.as_str()).collect();
        sites.dedup();
        sites
    }

    /// Merged cells held.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// The counters `state` holds for each of `keys` now.
fn old_counters(
    state: &PartitionState,
    keys: BTreeSet<CellKey>,
) -> Vec<(CellKey, Option<Counters>)> {
    keys.into_iter()
        .map(|k| {
            let old = state.cells.get(&k).map(|c| c.counters.clone());
            (k, old)
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::{RollupSettings, Working};
    use beacon_core::event::{Context, Event};

    const NOW: i64 = 1_790_000_000_000;

    fn event(i: usize) -> Event {
        let ts = Utc
            .timestamp_millis_opt(NOW - 7_200_000 + i as i64 * 13_000)
            .single()
            .expect("valid");
        Event {
            id: i.to_string(),
            site: "shop".into(),
            name: ["pageview", "click"][i % 2].into(),
            user_id: Some(format!("u{}", i % 23)),
            anonymous_id: None,
            ts,
            received_at: ts,
            partition: (i % 3) as u32,
            props: Default::default(),
            revenue: None,
            context: Context {
                path: Some(format!("/p{}", i % 7)),
                ..Context::default()
            },
        }
    }

    /// A union over many buckets, kept and brought up to date, says what one
    /// taken afresh says: after more users come to those buckets, and after a
    /// snapshot takes some away.
    #[test]
    fn users_over_many_buckets_follow_every_change() {
        let mut owners: Vec<Working> = (0..3)
            .map(|_| Working::new(PartitionState::default(), RollupSettings::default(), NOW))
            .collect();
        let mut view = View::default();
        let mut seq = 0;
        let mut count = |events: Vec<Event>, view: &mut View| {
            for e in &events {
                seq += 1;
                owners[e.partition as usize].apply_event(e, seq);
            }
            for (p, w) in owners.iter_mut().enumerate() {
                let d = w.take_delta();
                w.committed(&d, NOW);
                view.apply_delta(p as u32, &d);
            }
        };
        let fresh = |view: &View, buckets: &[(Granularity, i64)]| {
            union_of(
                buckets
                    .iter()
                    .filter_map(|(g, start)| view.buckets("shop", *g, *start..*start + 1).next())
                    .map(|(_, cell)| &cell.users),
            )
            .composite_estimate()
        };
        count((0..300).map(event).collect(), &mut view);
        let partition_0_before = view.partitions()[0].clone();
        let mut buckets: Vec<(Granularity, i64)> = view
            .buckets("shop", Granularity::Minute, i64::MIN..i64::MAX)
            .map(|(start, _)| (Granularity::Minute, start))
            .collect();
        assert!(buckets.len() >= KEPT_UNION_MIN_CELLS, "{}", buckets.len());
        // A bucket without a cell counts no one.
        buckets.push((Granularity::Minute, NOW + 3_600_000));
        let first = view.users_over("shop", &buckets);
        assert_eq!(first, fresh(&view, &buckets));
        assert!((first - 23.0).abs() < 1.0, "{first}");
        assert_eq!(view.users_over("shop", &buckets), first, "asked again");

        // New users, all on partition 0, in minutes where it counted users
        // already (the last minute has only an event of partition 2).
        let more = (0..290)
            .map(|i| Event {
                id: format!("more{i}"),
                user_id: Some(format!("new{}", i % 40)),
                partition: 0,
                ..event(i)
            })
            .collect();
        count(more, &mut view);
        let second = view.users_over("shop", &buckets);
        assert_eq!(second, fresh(&view, &buckets));
        assert!((second - 63.0).abs() < 1.0, "{second}");

        // A snapshot that holds less than the view did (partition 0 as it
        // was before the new users): the kept union is not trusted.
        view.replace(0, partition_0_before);
        let third = view.users_over("shop", &buckets);
        assert_eq!(third, fresh(&view, &buckets));
        assert!((third - 23.0).abs() < 1.0, "{third}");
    }

    /// Following commits one at a time ends where building from the final
    /// states does, also when cells fold values into (other).
    #[test]
    fn following_commits_equals_building_from_the_end() {
        // Few keys kept per breakdown, so cells fold values into (other) as they change.
        let settings = RollupSettings {
            top_n: 3,
            ..RollupSettings::default()
        };
        let mut owners: Vec<Working> = (0..3)
            .map(|_| Working::new(PartitionState::default(), settings, NOW))
            .collect();
        let mut followed = View::default();
        for i in 0..600 {
            let e = event(i);
            let p = e.partition;
            owners[p as usize].apply_event(&e, i as u64 + 1);
            if i % 37 == 0 {
                let d = owners[p as usize].take_delta();
                owners[p as usize].committed(&d, NOW);
                followed.apply_delta(p, &d);
            }
        }
        for (p, w) in owners.iter_mut().enumerate() {
            let d = w.take_delta();
            w.committed(&d, NOW);
            followed.apply_delta(p as u32, &d);
        }
        // A snapshot replaces a partition without changing the sums.
        followed.replace(1, owners[1].state.clone());
        let built = View::new(owners.into_iter().map(|w| w.state).collect());
        assert_eq!(followed.len(), built.len());
        for (key, cell) in &built.cells {
            let got = &followed.cells[key];
            assert_eq!(got.counters, cell.counters, "{key:?}");
            assert_eq!(got.users_estimate, cell.users_estimate, "{key:?}");
        }
        let day = built.total("shop", Granularity::Day, i64::MIN..i64::MAX);
        assert_eq!(day.total_events(), 600);
        let users = built.unique_users("shop", Granularity::Minute, i64::MIN..i64::MAX);
        assert!((users - 23.0).abs() < 1.0, "{users}");
    }
}
