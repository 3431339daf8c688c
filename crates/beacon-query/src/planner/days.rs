//! Breakdowns by visitors over whole days and hours, kept between questions.
//! The rollups count events and page views per value, not users, so the
//! dashboard's lists (ranked by visitors, unfiltered) are event store
//! questions whose cost grows with the range. Here a node keeps, per site,
//! dimension and UTC day (and whole UTC hour around a range's whole days),
//! each value's events, page views and a sketch of its users, and answers a
//! range from the kept periods plus a scan of only what is not kept: the
//! partial hours at its edges, and periods whose rows changed since (late
//! events, new or compacted segments; [`StoreView::marks`] says which).
//!
//! A value's users are a theta sketch: exact up to [`LG_K`]'s 4,096 users,
//! within about 1.6 % above, like the rollups' unique users are within their
//! sketch's error. Kept periods are bounded in bytes
//! (`query.breakdown_cache_bytes`), the least recently used going first.
//!
//! [`StoreView::marks`]: beacon_store::StoreView::marks

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use beacon_store::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StringViewArray,
};
use beacon_store::arrow::datatypes::{DataType, Int64Type};
use beacon_store::view::DAY_MS;
use datasketches::theta::{CompactThetaSketch, ThetaSketch, ThetaSketchBuilder, ThetaUnionBuilder};

use super::Figures;
use crate::engine::{Metric, Span};
use crate::error::QueryError;
use crate::filter::Dim;

/// Log2 of a value's sketch's nominal entries: exact below 4,096 users.
const LG_K: u8 = 12;

/// A UTC hour in ms.
const HOUR_MS: i64 = 3_600_000;

/// Whole days and hours a breakdown read, by where from: `kept` or `scan`.
const PERIODS: &str = "beacon_query_breakdown_periods_total";
/// Bytes of days and hours kept.
const KEPT_BYTES: &str = "beacon_query_breakdown_kept_bytes";

/// Bytes a kept value costs beyond its name and its sketch's entries.
const VALUE_OVERHEAD: usize = 96;
/// Bytes a kept period costs however few values it holds, so even empty
/// ones count against the bound.
const PERIOD_OVERHEAD: usize = 256;

/// The longest range answered from kept periods (two years of days); a
/// longer one is scanned, so a range of centuries never makes a million
/// periods to look up and keep.
const MAX_DAYS: i64 = 731;

/// Whether a breakdown can be answered from days: unfiltered (checked by the
/// caller), by a dimension an event carries, with figures that add up per
/// day (events, page views) or union (users), over at least two whole days
/// and at most [`MAX_DAYS`].
pub(super) fn answers(by: &Dim, metrics: &[Metric], rank: Metric, span: Span) -> bool {
    let summable = |m: &Metric| {
        matches!(
            m,
            Metric::Events | Metric::Pageviews | Metric::Users | Metric::Visitors
        )
    };
    let days = whole(span, DAY_MS);
    by.event_sql().is_some()
        && metrics.iter().all(summable)
        && summable(&rank)
        && span.from >= 0
        && (2..=MAX_DAYS).contains(&(days.end - days.start))
}

/// The `len`-long UTC periods (by number) wholly inside `span`.
fn whole(span: Span, len: i64) -> Range<i64> {
    span.from.div_euclid(len) + i64::from(span.from.rem_euclid(len) != 0)..span.to.div_euclid(len)
}

/// What `span` is kept as, in time order: its whole UTC days, and the whole
/// UTC hours around them. Only the partial hours at its edges are left.
fn tiles(span: Span) -> Vec<Range<i64>> {
    let days = whole(span, DAY_MS);
    let hours = whole(span, HOUR_MS);
    let hour = |h: i64| h * HOUR_MS..(h + 1) * HOUR_MS;
    let mut tiles: Vec<Range<i64>> = (hours.start..(days.start * 24).max(hours.start))
        .map(hour)
        .collect();
    tiles.extend(days.clone().map(|d| d * DAY_MS..(d + 1) * DAY_MS));
    tiles.extend(((days.end * 24).min(hours.end)..hours.end).map(hour));
    tiles
}

/// One value's figures while rows come in.
struct Counting {
    events: i64,
    pageviews: i64,
    users: ThetaSketch,
}

impl Counting {
    fn new() -> Counting {
        Counting {
            events: 0,
            pageviews: 0,
            users: ThetaSketchBuilder::default()
                .lg_k(LG_K)
                .build()
                .unwrap_or_else(|_| unreachable!("LG_K is valid")),
        }
    }
}

/// One value's figures of a kept day.
struct Tally {
    events: i64,
    pageviews: i64,
    users: CompactThetaSketch,
}

/// A day's values of one dimension.
struct DayList {
    values: HashMap<String, Tally>,
    bytes: usize,
}

impl DayList {
    fn of(counted: HashMap<String, Counting>) -> DayList {
        let mut bytes = PERIOD_OVERHEAD;
        let values = counted
            .into_iter()
            .map(|(value, c)| {
                let users = c.users.compact(true);
                bytes += VALUE_OVERHEAD + value.len() + users.num_retained() * 8;
                let tally = Tally {
                    events: c.events,
                    pageviews: c.pageviews,
                    users,
                };
                (value, tally)
            })
            .collect();
        DayList { values, bytes }
    }
}

/// A kept period: a site's dimension over a UTC day or hour (ms).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DayKey {
    site: String,
    dim: Dim,
    start: i64,
    end: i64,
}

struct Kept {
    /// What the view held of the day when it was counted.
    mark: u64,
    list: Arc<DayList>,
    /// Tick of the last use: the smallest goes first.
    used: u64,
}

#[derive(Default)]
struct State {
    days: HashMap<DayKey, Kept>,
    bytes: usize,
    tick: u64,
}

/// The kept days of one query node.
pub(crate) struct DayLists {
    max_bytes: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for DayLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("DayLists")
            .field("max_bytes", &self.max_bytes)
            .field("days", &state.days.len())
            .field("bytes", &state.bytes)
            .finish()
    }
}

impl DayLists {
    /// Keep at most `max_bytes` of days; 0 keeps none (and answers nothing).
    pub fn new(max_bytes: usize) -> DayLists {
        DayLists {
            max_bytes,
            state: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The kept list of a day, if the view still holds what it was counted from.
    fn get(&self, key: &DayKey, mark: u64) -> Option<Arc<DayList>> {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        let kept = state.days.get_mut(key).filter(|k| k.mark == mark)?;
        kept.used = tick;
        Some(kept.list.clone())
    }

    fn put(&self, key: DayKey, mark: u64, list: Arc<DayList>) {
        if list.bytes > self.max_bytes {
            return;
        }
        let mut state = self.lock();
        state.tick += 1;
        let used = state.tick;
        state.bytes += list.bytes;
        if let Some(old) = state.days.insert(key, Kept { mark, list, used }) {
            state.bytes -= old.list.bytes;
        }
        while state.bytes > self.max_bytes {
            let Some(oldest) = state
                .days
                .iter()
                .min_by_key(|(_, k)| k.used)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some(gone) = state.days.remove(&oldest) {
                state.bytes -= gone.list.bytes;
            }
        }
        metrics::gauge!(KEPT_BYTES).set(state.bytes as f64);
    }

    /// Per value of `by` in `span`: events, page views and users of `site`'s
    /// traffic (no bots, no engagement pings), as the planner's breakdown
    /// counts them.
    pub(super) async fn breakdown(
        &self,
        engine: &beacon_store::Engine,
        site: &str,
        by: &Dim,
        span: Span,
    ) -> Result<BTreeMap<String, Figures>, QueryError> {
        let tiles = tiles(span);
        let marks = engine.view().marks(site, &tiles);
        let key = |t: &Range<i64>| DayKey {
            site: site.to_owned(),
            dim: by.clone(),
            start: t.start,
            end: t.end,
        };
        let mut kept = Vec::new();
        let mut missing = Vec::new();
        for (tile, mark) in tiles.iter().zip(&marks) {
            match self.get(&key(tile), *mark) {
                Some(list) => kept.push(list),
                None => missing.push((tile.clone(), *mark)),
            }
        }
        metrics::counter!(PERIODS, "from" => "kept").increment(kept.len() as u64);
        metrics::counter!(PERIODS, "from" => "scan").increment(missing.len() as u64);
        // What to scan: the partial hours at the edges and the missing tiles,
        // as few contiguous ranges as they make.
        let covered =
            tiles.first().map_or(span.from, |t| t.start)..tiles.last().map_or(span.from, |t| t.end);
        let mut scan: Vec<Range<i64>> = Vec::new();
        let mut add = |r: Range<i64>| {
            if r.is_empty() {
                return;
            }
            match scan.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => scan.push(r),
            }
        };
        add(span.from..covered.start);
        for (tile, _) in &missing {
            add(tile.clone());
        }
        add(covered.end..span.to);
        let starts: HashMap<i64, usize> = tiles
            .iter()
            .enumerate()
            .map(|(i, t)| (t.start, i))
            .collect();
        let mut counted: HashMap<usize, HashMap<String, Counting>> = HashMap::new();
        let mut edges: HashMap<String, Counting> = HashMap::new();
        let value = by.event_sql().ok_or_else(|| {
            QueryError::internal("a breakdown from days needs an event dimension")
        })?;
        for range in scan {
            // Rows, not groups: grouped by hour, value and user in SQL, a
            // month of a busy site outgrew the query's memory limit; streamed,
            // the engine holds a batch at a time and the sketches stay small.
            let sql = format!(
                "SELECT CAST(arrow_cast(ts, 'Int64') / {HOUR_MS} AS BIGINT) AS h, {value} AS k, \
                   user_key, name = 'pageview' AS pageview \
                 FROM events WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({}) \
                   AND bot IS NULL AND name <> 'engagement'",
                range.start, range.end
            );
            let mut failed = None;
            engine
                .scan(site, &sql, |batch| {
                    if failed.is_none() {
                        let into = |hour: i64| tile_of(hour, &covered, &starts);
                        failed = count_rows(batch, into, &mut counted, &mut edges).err();
                    }
                })
                .await
                .map_err(|e| super::planner_error(e, &sql))?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        for (tile, mark) in missing {
            let i = starts.get(&tile.start).copied();
            let rows = i.and_then(|i| counted.remove(&i)).unwrap_or_default();
            let list = Arc::new(DayList::of(rows));
            self.put(key(&tile), mark, list.clone());
            kept.push(list);
        }
        Ok(merge(&kept, edges))
    }
}

/// The tile (index into the span's tiles) an hour's rows count in: its day
/// when that day is a tile, else the hour itself when it is one; `None` for
/// the partial hours at the edges.
fn tile_of(hour: i64, covered: &Range<i64>, starts: &HashMap<i64, usize>) -> Option<usize> {
    let at = hour * HOUR_MS;
    if !covered.contains(&at) {
        return None;
    }
    starts
        .get(&(hour.div_euclid(24) * DAY_MS))
        .or_else(|| starts.get(&at))
        .copied()
}

/// Rows `(h, k, user_key, pageview)` (`h` the hour since the epoch) into the
/// tile `into` says, or into `edges` for none.
fn count_rows(
    batch: &RecordBatch,
    into: impl Fn(i64) -> Option<usize>,
    counted: &mut HashMap<usize, HashMap<String, Counting>>,
    edges: &mut HashMap<String, Counting>,
) -> Result<(), QueryError> {
    let unexpected = || QueryError::internal("a breakdown's rows came in an unexpected shape");
    let h = batch
        .column(0)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(unexpected)?;
    let k = Text::of(batch.column(1)).ok_or_else(unexpected)?;
    let user = Text::of(batch.column(2)).ok_or_else(unexpected)?;
    let pageview = batch.column(3).as_boolean_opt().ok_or_else(unexpected)?;
    for row in 0..batch.num_rows() {
        let values = match into(h.value(row)) {
            Some(tile) => counted.entry(tile).or_default(),
            None => &mut *edges,
        };
        let value = k.get(row).unwrap_or("");
        let c = match values.get_mut(value) {
            Some(c) => c,
            None => values.entry(value.to_owned()).or_insert_with(Counting::new),
        };
        c.events += 1;
        c.pageviews += i64::from(pageview.value(row));
        c.users.update(user.get(row).unwrap_or(""));
    }
    Ok(())
}

/// A text column as the engine gives it: plain strings or string views.
enum Text<'a> {
    Plain(&'a StringArray),
    View(&'a StringViewArray),
}

impl<'a> Text<'a> {
    fn of(column: &'a ArrayRef) -> Option<Text<'a>> {
        match column.data_type() {
            DataType::Utf8 => column.as_string_opt().map(Text::Plain),
            DataType::Utf8View => column.as_string_view_opt().map(Text::View),
            _ => None,
        }
    }

    /// The value of `row`, `None` when null.
    fn get(&self, row: usize) -> Option<&'a str> {
        match self {
            Text::Plain(a) => (!a.is_null(row)).then(|| a.value(row)),
            Text::View(a) => (!a.is_null(row)).then(|| a.value(row)),
        }
    }
}

/// The kept days and the scanned edges, per value.
fn merge(days: &[Arc<DayList>], edges: HashMap<String, Counting>) -> BTreeMap<String, Figures> {
    let mut sources: HashMap<&str, Vec<&Tally>> = HashMap::new();
    for list in days {
        for (value, tally) in &list.values {
            sources.entry(value.as_str()).or_default().push(tally);
        }
    }
    let mut out = BTreeMap::new();
    for (value, tallies) in &sources {
        let edge = edges.get(*value);
        let f = figures(tallies, edge);
        out.insert((*value).to_owned(), f);
    }
    for (value, c) in &edges {
        if !sources.contains_key(value.as_str()) {
            out.insert(value.clone(), figures(&[], Some(c)));
        }
    }
    out
}

/// One value's figures from its days' tallies and its edge rows.
fn figures(tallies: &[&Tally], edge: Option<&Counting>) -> Figures {
    let events = tallies.iter().map(|t| t.events).sum::<i64>() + edge.map_or(0, |c| c.events);
    let pageviews =
        tallies.iter().map(|t| t.pageviews).sum::<i64>() + edge.map_or(0, |c| c.pageviews);
    let users = match (tallies, edge) {
        ([], Some(c)) => c.users.estimate(),
        ([one], None) => one.users.estimate(),
        _ => {
            let mut union = ThetaUnionBuilder::default()
                .lg_k(LG_K)
                .build()
                .unwrap_or_else(|_| unreachable!("LG_K is valid"));
            for t in tallies {
                // Sketches of one seed and lg_k always union.
                let _ = union.update(&t.users);
            }
            if let Some(c) = edge {
                let _ = union.update(c.users.as_view());
            }
            union.to_sketch(false).estimate()
        }
    };
    Figures {
        events,
        pageviews,
        users: users.round() as i64,
        ..Figures::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(users: &[&str], events: i64) -> Counting {
        let mut c = Counting::new();
        for u in users {
            c.users.update(*u);
        }
        c.events = events;
        c.pageviews = events / 2;
        c
    }

    #[test]
    fn a_span_is_kept_as_whole_days_and_the_whole_hours_around_them() {
        let span = |from, to| Span { from, to };
        assert_eq!(whole(span(0, 3 * DAY_MS), DAY_MS), 0..3);
        assert_eq!(whole(span(1, 3 * DAY_MS - 1), DAY_MS), 1..2);
        assert_eq!(whole(span(DAY_MS - 1, DAY_MS + 1), DAY_MS), 1..1);
        let t = tiles(span(DAY_MS - 2 * HOUR_MS - 5, 3 * DAY_MS + HOUR_MS + 5));
        assert_eq!(
            t,
            vec![
                DAY_MS - 2 * HOUR_MS..DAY_MS - HOUR_MS,
                DAY_MS - HOUR_MS..DAY_MS,
                DAY_MS..2 * DAY_MS,
                2 * DAY_MS..3 * DAY_MS,
                3 * DAY_MS..3 * DAY_MS + HOUR_MS,
            ]
        );
        assert_eq!(
            tiles(span(0, 2 * DAY_MS)),
            vec![0..DAY_MS, DAY_MS..2 * DAY_MS]
        );
        let covered = t[0].start..t[4].end;
        let starts: HashMap<i64, usize> = t.iter().enumerate().map(|(i, r)| (r.start, i)).collect();
        // An hour of a whole day counts in the day; of a kept hour, in it;
        // a partial hour at an edge, in none.
        assert_eq!(tile_of(24 + 5, &covered, &starts), Some(2));
        assert_eq!(tile_of(23, &covered, &starts), Some(1));
        assert_eq!(tile_of(22, &covered, &starts), Some(0));
        assert_eq!(tile_of(21, &covered, &starts), None);
        assert_eq!(tile_of(72, &covered, &starts), Some(4));
        assert_eq!(tile_of(73, &covered, &starts), None);
    }

    #[test]
    fn only_ranges_of_two_days_to_two_years_are_kept() {
        let span = |days: i64| Span {
            from: 10 * DAY_MS,
            to: (10 + days) * DAY_MS,
        };
        let answers = |span| answers(&Dim::Path, &[Metric::Users], Metric::Users, span);
        assert!(!answers(span(1)));
        assert!(answers(span(2)));
        assert!(answers(span(MAX_DAYS)));
        assert!(!answers(span(MAX_DAYS + 1)));
        // Hostile edges: before 1970, to the year 9999, a filter-only dimension.
        assert!(!answers(Span {
            from: -DAY_MS,
            to: 5 * DAY_MS
        }));
        assert!(!answers(Span {
            from: 0,
            to: 253_402_300_799_999
        }));
        assert!(!answers_by(&Dim::Goal));
        assert!(!answers_by(&Dim::EntryPage));
    }

    fn answers_by(dim: &Dim) -> bool {
        let span = Span {
            from: 0,
            to: 7 * DAY_MS,
        };
        answers(dim, &[Metric::Users], Metric::Users, span)
    }

    #[test]
    fn days_and_edges_add_events_and_union_users() {
        let day = |users: &[&str], events| {
            let mut m = HashMap::new();
            m.insert("/a".to_owned(), counting(users, events));
            Arc::new(DayList::of(m))
        };
        let days = [day(&["u1", "u2"], 4), day(&["u2", "u3"], 6)];
        let mut edges = HashMap::new();
        edges.insert("/a".to_owned(), counting(&["u3", "u4"], 2));
        edges.insert("/b".to_owned(), counting(&["u5"], 1));
        let out = merge(&days, edges);
        assert_eq!(out["/a"].events, 12);
        assert_eq!(out["/a"].pageviews, 2 + 3 + 1);
        assert_eq!(out["/a"].users, 4);
        assert_eq!(out["/b"].users, 1);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn the_least_recently_used_day_goes_first() {
        let list = |n: usize| {
            let mut m = HashMap::new();
            for i in 0..n {
                m.insert(format!("/{i}"), counting(&["u"], 1));
            }
            Arc::new(DayList::of(m))
        };
        let one = list(1).bytes;
        let lists = DayLists::new(2 * one);
        let key = |day: i64| DayKey {
            site: "s".into(),
            dim: Dim::Path,
            start: day * DAY_MS,
            end: (day + 1) * DAY_MS,
        };
        lists.put(key(1), 7, list(1));
        lists.put(key(2), 7, list(1));
        assert!(lists.get(&key(1), 7).is_some());
        // A changed mark is a miss.
        assert!(lists.get(&key(1), 8).is_none());
        lists.put(key(3), 7, list(1));
        assert!(
            lists.get(&key(2), 7).is_none(),
            "day 2 was used least recently"
        );
        assert!(lists.get(&key(1), 7).is_some());
        assert!(lists.get(&key(3), 7).is_some());
        assert_eq!(lists.bytes(), 2 * one);
        // A list larger than the whole budget is not kept.
        lists.put(key(4), 7, list(8));
        assert!(list(8).bytes > 2 * one);
        assert!(lists.get(&key(4), 7).is_none());
        // An empty period still costs: a flood of them is bounded too.
        let empty = Arc::new(DayList::of(HashMap::new()));
        assert!(empty.bytes > 0);
        for day in 10..10_000 {
            lists.put(key(day), 7, empty.clone());
        }
        assert!(lists.bytes() <= 2 * one);
        assert!(lists.lock().days.len() <= 2 * one / empty.bytes);
    }
}
