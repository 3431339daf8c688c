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
//! [`count_ahead`] counts the dashboard's lists before they are asked, in
//! the background, so a first ask after a start or a commit merges too.
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
/// A UTC minute in ms.
const MINUTE_MS: i64 = 60_000;
/// Periods ending this close to now are kept by the minute ([`tiles`]).
const RECENT_MS: i64 = 2 * HOUR_MS;

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

/// The dashboard's lists that an event carries (entry and exit pages are
/// sessions'), counted ahead by [`count_ahead`].
const DASHBOARD_DIMS: [Dim; 13] = [
    Dim::Path,
    Dim::Channel,
    Dim::ReferrerSource,
    Dim::UtmCampaign,
    Dim::UtmSource,
    Dim::UtmMedium,
    Dim::Browser,
    Dim::Os,
    Dim::Device,
    Dim::Country,
    Dim::Region,
    Dim::City,
    Dim::Name,
];

/// The longest wait between two passes of [`count_ahead`] without a commit:
/// time alone moves minutes out of the recent two hours into hours.
const AHEAD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The shortest wait between two passes.
const AHEAD_GAP: std::time::Duration = std::time::Duration::from_secs(1);
/// A pass is followed by at least this many times its length of rest.
const AHEAD_REST: u32 = 4;

/// The spans the dashboard asks its lists for in UTC at `now`: the last
/// 30 days, the last 7 and today, each from a midnight to the next whole hour.
fn dashboard_spans(now: i64) -> [Span; 3] {
    let today = now.div_euclid(DAY_MS) * DAY_MS;
    let to = (now.div_euclid(HOUR_MS) + i64::from(now.rem_euclid(HOUR_MS) != 0)) * HOUR_MS;
    let to = to.max(today + HOUR_MS);
    [29, 6, 0].map(|days| Span {
        from: today - days * DAY_MS,
        to,
    })
}

/// Count the dashboard's lists of every site in `sites` ahead, after the
/// store loads, after each commit (at most once a second) and every
/// [`AHEAD_EVERY`], until shutdown: the first ask of a list after a start
/// or a commit then merges kept periods instead of counting them. Counting
/// ahead waits while kept periods fill half their bound, so it never evicts
/// what questions asked for.
pub(crate) async fn count_ahead(
    lists: Arc<DayLists>,
    engine: beacon_store::Engine,
    sites: Vec<String>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut moves = engine.view().subscribe();
    loop {
        let started = tokio::time::Instant::now();
        if engine.view().is_loaded() && lists.enabled() {
            let now = chrono::Utc::now().timestamp_millis();
            'sites: for site in &sites {
                for span in dashboard_spans(now) {
                    if lists.bytes() > lists.max_bytes / 2 {
                        tracing::debug!("kept periods fill half their bound: counting ahead waits");
                        break 'sites;
                    }
                    // What a breakdown by each list would count, counted now.
                    match lists.lists(&engine, site, &DASHBOARD_DIMS, span, now).await {
                        Ok((_, 0)) => {}
                        Ok((_, periods)) => tracing::debug!(site, periods, "periods counted ahead"),
                        Err(e) => {
                            tracing::warn!(site, error = %e, "cannot count the lists ahead; asks count what they need")
                        }
                    }
                }
            }
            lists.lock().passes += 1;
        }
        let worked = started.elapsed();
        tokio::select! {
            moved = moves.changed() => if moved.is_err() { return },
            _ = tokio::time::sleep(AHEAD_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // A commit right after a pass waits out the gap; one later is
        // counted at once, before the dashboard asks again. A pass that
        // recounted much (a backfill, a compaction of many days) is
        // followed by four times its length of rest, so counting ahead
        // runs at most a fifth of the time.
        let next = (started + AHEAD_GAP).max(started + worked * (1 + AHEAD_REST));
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Whether a breakdown can be answered from days: unfiltered (checked by the
/// caller), by a dimension an event carries, with figures that add up per
/// day (events, page views) or union (users), over at least one whole UTC
/// hour (the dashboard's today) and at most [`MAX_DAYS`] whole days.
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
        && !whole(span, HOUR_MS).is_empty()
        && days.end - days.start <= MAX_DAYS
}

/// The `len`-long UTC periods (by number) wholly inside `span`.
fn whole(span: Span, len: i64) -> Range<i64> {
    span.from.div_euclid(len) + i64::from(span.from.rem_euclid(len) != 0)..span.to.div_euclid(len)
}

/// What `span` is kept as, in time order: its whole UTC days, the whole
/// UTC hours around them, and the partial hours at its edges (kept by their
/// exact bounds: a range asked again, like a bench's or a shared link's,
/// finds them too). Whatever ends within [`RECENT_MS`] of `now` is kept by
/// the UTC minute instead: new events and commits change only the minutes
/// they fall in, so under steady traffic an ask counts a minute again, not
/// the current hour or day.
fn tiles(span: Span, now: i64) -> Vec<Range<i64>> {
    let hours = whole(span, HOUR_MS);
    if hours.is_empty() {
        // Not one whole hour (its start past its end): the span is one tile.
        return recent(span.from..span.to, now);
    }
    // Without a whole day (its start past its end too), the whole hours
    // run from edge to edge.
    let days = Some(whole(span, DAY_MS)).filter(|d| !d.is_empty());
    let (first_hour, last_hour) = days
        .as_ref()
        .map_or((hours.end, hours.end), |d| (d.start * 24, d.end * 24));
    let hour = |h: i64| h * HOUR_MS..(h + 1) * HOUR_MS;
    let mut tiles = Vec::new();
    tiles.push(span.from..hours.start * HOUR_MS);
    tiles.extend((hours.start..first_hour).map(hour));
    tiles.extend(
        days.into_iter()
            .flatten()
            .map(|d| d * DAY_MS..(d + 1) * DAY_MS),
    );
    tiles.extend((last_hour..hours.end).map(hour));
    tiles.push(hours.end * HOUR_MS..span.to);
    tiles.retain(|t| !t.is_empty());
    tiles.into_iter().flat_map(|t| recent(t, now)).collect()
}

/// `tile` as it is kept: whole, or by the hour and then the minute where it
/// ends within [`RECENT_MS`] of `now`. What starts [`RECENT_MS`] or more
/// after `now` stays whole, so a range in the future never makes millions
/// of minutes.
fn recent(tile: Range<i64>, now: i64) -> Vec<Range<i64>> {
    if tile.end <= now.saturating_sub(RECENT_MS) || tile.start >= now.saturating_add(RECENT_MS) {
        vec![tile]
    } else if tile.end - tile.start > HOUR_MS {
        cut(tile, HOUR_MS)
            .into_iter()
            .flat_map(|h| recent(h, now))
            .collect()
    } else {
        cut(tile, MINUTE_MS)
    }
}

/// `range` cut at every multiple of `len` inside it.
fn cut(range: Range<i64>, len: i64) -> Vec<Range<i64>> {
    let mut out = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let end = ((start.div_euclid(len) + 1) * len).min(range.end);
        out.push(start..end);
        start = end;
    }
    out
}

/// The tiles (indexes) that are whole days: one run, as [`tiles`] makes them.
fn day_run(tiles: &[Range<i64>]) -> Range<usize> {
    let is_day = |t: &Range<i64>| t.end - t.start == DAY_MS;
    let first = tiles.iter().position(is_day).unwrap_or(0);
    let len = tiles[first..].iter().take_while(|t| is_day(t)).count();
    first..first + len
}

/// One mark for a run of periods: any of theirs changing changes it.
fn joint_mark(marks: &[u64]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    marks.hash(&mut hasher);
    hasher.finish()
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

    /// Every value of `lists`: events and page views added, users the
    /// union of their sketches.
    fn union(lists: &[&DayList]) -> DayList {
        let mut sources: HashMap<&str, Vec<&Tally>> = HashMap::new();
        for list in lists {
            for (value, tally) in &list.values {
                sources.entry(value.as_str()).or_default().push(tally);
            }
        }
        let mut bytes = PERIOD_OVERHEAD;
        let values = sources
            .into_iter()
            .map(|(value, tallies)| {
                let users = match tallies.as_slice() {
                    [one] => one.users.clone(),
                    _ => {
                        let mut union = ThetaUnionBuilder::default()
                            .lg_k(LG_K)
                            .build()
                            .unwrap_or_else(|_| unreachable!("LG_K is valid"));
                        for t in &tallies {
                            // Sketches of one seed and lg_k always union.
                            let _ = union.update(&t.users);
                        }
                        union.to_sketch(true)
                    }
                };
                bytes += VALUE_OVERHEAD + value.len() + users.num_retained() * 8;
                let tally = Tally {
                    events: tallies.iter().map(|t| t.events).sum(),
                    pageviews: tallies.iter().map(|t| t.pageviews).sum(),
                    users,
                };
                (value.to_owned(), tally)
            })
            .collect();
        DayList { values, bytes }
    }
}

/// A kept period: a site's dimension over a UTC day or hour (ms), a partial
/// hour at a range's edge, or a run of whole days (their union).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DayKey {
    site: String,
    dim: Dim,
    start: i64,
    end: i64,
}

impl DayKey {
    fn new(site: &str, dim: &Dim, period: &Range<i64>) -> DayKey {
        DayKey {
            site: site.to_owned(),
            dim: dim.clone(),
            start: period.start,
            end: period.end,
        }
    }
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
    /// Periods counted (not found kept) since the node started.
    counted: usize,
    /// Passes of [`count_ahead`] completed.
    passes: usize,
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
        now: i64,
    ) -> Result<BTreeMap<String, Figures>, QueryError> {
        let started = std::time::Instant::now();
        let (mut lists, _) = self
            .lists(engine, site, std::slice::from_ref(by), span, now)
            .await?;
        let counted = started.elapsed();
        let parts = lists.pop().unwrap_or_default();
        let parts: Vec<&DayList> = parts.iter().map(|l| &**l).collect();
        let answer = figures(&DayList::union(&parts));
        tracing::debug!(
            site,
            dimension = ?by,
            parts = parts.len(),
            lists_ms = counted.as_secs_f64() * 1e3,
            merge_ms = (started.elapsed() - counted).as_secs_f64() * 1e3,
            "breakdown from kept periods"
        );
        Ok(answer)
    }

    /// Periods counted since this node started, by asks and ahead.
    pub(crate) fn counted(&self) -> usize {
        self.lock().counted
    }

    /// Passes of [`count_ahead`] completed since this node started.
    pub(crate) fn passes(&self) -> usize {
        self.lock().passes
    }

    /// For each of `dims`, the kept lists that make up `span`: the union of
    /// its run of whole days (when it has one) and every other period. What
    /// is not kept is counted, for every dimension that lacks it, in one
    /// scan; the second figure is how many periods that was.
    async fn lists(
        &self,
        engine: &beacon_store::Engine,
        site: &str,
        dims: &[Dim],
        span: Span,
        now: i64,
    ) -> Result<(Vec<Vec<Arc<DayList>>>, usize), QueryError> {
        let started = std::time::Instant::now();
        let tiles = tiles(span, now);
        let marks = engine.view().marks(site, &tiles);
        let marked = started.elapsed();
        // The whole days are also kept as one union, so an ask whose days
        // are unchanged merges one sketch per value for them, not one a day.
        let days = day_run(&tiles);
        let run = (days.len() >= 2).then(|| {
            (
                tiles[days.start].start..tiles[days.end - 1].end,
                joint_mark(&marks[days.clone()]),
            )
        });
        let mut found: Vec<Found> = dims
            .iter()
            .map(|dim| self.find(site, dim, &tiles, &marks, &days, run.as_ref()))
            .collect();
        let mut missing: Vec<usize> = found
            .iter()
            .flat_map(|f| f.missing.iter().copied())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let lacking: Vec<usize> = (0..dims.len())
            .filter(|d| !found[*d].missing.is_empty())
            .collect();
        let counting: Vec<&Dim> = lacking.iter().map(|d| &dims[*d]).collect();
        let counted = self
            .count(engine, site, &counting, &tiles, &missing)
            .await?;
        let mut counted: HashMap<usize, Tiles> = lacking.into_iter().zip(counted).collect();
        let scanned = started.elapsed();
        let mut periods = 0;
        for (d, f) in found.iter_mut().enumerate() {
            let key = |t: &Range<i64>| DayKey::new(site, &dims[d], t);
            let mut rows = counted.remove(&d).unwrap_or_default();
            for i in std::mem::take(&mut f.missing) {
                let list = Arc::new(DayList::of(rows.remove(&i).unwrap_or_default()));
                self.put(key(&tiles[i]), marks[i], list.clone());
                f.lists[i] = Some(list);
                periods += 1;
            }
            if let (None, Some((run_span, mark))) = (&f.union, &run) {
                let each: Vec<&DayList> = f.lists[days.clone()]
                    .iter()
                    .flatten()
                    .map(|l| &**l)
                    .collect();
                let joined = Arc::new(DayList::union(&each));
                self.put(key(run_span), *mark, joined.clone());
                f.union = Some(joined);
            }
        }
        self.lock().counted += periods;
        tracing::debug!(
            site,
            dimensions = dims.len(),
            tiles = tiles.len(),
            counted = periods,
            marks_ms = marked.as_secs_f64() * 1e3,
            scan_ms = (scanned - marked).as_secs_f64() * 1e3,
            "kept periods looked up"
        );
        let lists = found
            .into_iter()
            .map(|f| {
                let union_kept = f.union.is_some();
                let mut parts: Vec<Arc<DayList>> = f.union.into_iter().collect();
                for (i, list) in f.lists.into_iter().enumerate() {
                    if !union_kept || !days.contains(&i) {
                        parts.extend(list);
                    }
                }
                parts
            })
            .collect();
        Ok((lists, periods))
    }

    /// What is kept of `dim`'s `tiles` (and its run of `days`, under `run`'s
    /// span and joint mark), and which tiles must be counted.
    fn find(
        &self,
        site: &str,
        dim: &Dim,
        tiles: &[Range<i64>],
        marks: &[u64],
        days: &Range<usize>,
        run: Option<&(Range<i64>, u64)>,
    ) -> Found {
        let key = |t: &Range<i64>| DayKey::new(site, dim, t);
        let union = run.and_then(|(span, mark)| self.get(&key(span), *mark));
        let mut lists = Vec::with_capacity(tiles.len());
        let mut missing = Vec::new();
        for (i, (tile, mark)) in tiles.iter().zip(marks).enumerate() {
            // Looked up even when the union answers, so the days stay in
            // line for the day one of them changes.
            let kept = self.get(&key(tile), *mark);
            if union.is_some() && days.contains(&i) {
                lists.push(None);
            } else {
                if kept.is_none() {
                    missing.push(i);
                }
                lists.push(kept);
            }
        }
        metrics::counter!(PERIODS, "from" => "kept")
            .increment((tiles.len() - missing.len()) as u64);
        metrics::counter!(PERIODS, "from" => "scan").increment(missing.len() as u64);
        Found {
            union,
            lists,
            missing,
        }
    }

    /// The rows of `tiles[missing]`, per dimension of `dims` (in order), tile
    /// and value, scanned in as few contiguous ranges as they make.
    async fn count(
        &self,
        engine: &beacon_store::Engine,
        site: &str,
        dims: &[&Dim],
        tiles: &[Range<i64>],
        missing: &[usize],
    ) -> Result<Vec<Tiles>, QueryError> {
        let mut counted: Vec<Tiles> = dims.iter().map(|_| HashMap::new()).collect();
        if dims.is_empty() {
            return Ok(counted);
        }
        let mut scan: Vec<Range<i64>> = Vec::new();
        for tile in missing.iter().map(|i| &tiles[*i]) {
            match scan.last_mut() {
                Some(last) if last.end == tile.start => last.end = tile.end,
                _ => scan.push(tile.clone()),
            }
        }
        let mut values = Vec::with_capacity(dims.len());
        for (i, dim) in dims.iter().enumerate() {
            let value = dim.event_sql().ok_or_else(|| {
                QueryError::internal("a breakdown from days needs an event dimension")
            })?;
            values.push(format!("{value} AS k{i}"));
        }
        let values = values.join(", ");
        for range in scan {
            // Rows, not groups: grouped by hour, value and user in SQL, a
            // month of a busy site outgrew the query's memory limit; streamed,
            // the engine holds a batch at a time and the sketches stay small.
            let sql = format!(
                "SELECT CAST(arrow_cast(ts, 'Int64') AS BIGINT) AS t, user_key, \
                   name = 'pageview' AS pageview, {values} \
                 FROM events WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({}) \
                   AND bot IS NULL AND name <> 'engagement'",
                range.start, range.end
            );
            let mut failed = None;
            engine
                .scan(site, &sql, |batch| {
                    if failed.is_none() {
                        failed = count_rows(batch, tiles, &mut counted).err();
                    }
                })
                .await
                .map_err(|e| super::planner_error(e, &sql))?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(counted)
    }
}

/// One dimension's values per tile (by index) while rows come in.
type Tiles = HashMap<usize, HashMap<String, Counting>>;

/// What [`DayLists::find`] found of one dimension.
struct Found {
    /// The run of days' union, when kept.
    union: Option<Arc<DayList>>,
    /// Each tile's kept list (`None` for the days the union answers).
    lists: Vec<Option<Arc<DayList>>>,
    /// The tiles to count.
    missing: Vec<usize>,
}

/// Rows `(t, user_key, pageview, k0, k1, …)` (`t` the event time in Unix
/// ms, `kN` the value of the `N`th dimension) into the tile of `tiles`
/// (sorted, disjoint) holding `t`, by index, for every dimension.
fn count_rows(
    batch: &RecordBatch,
    tiles: &[Range<i64>],
    counted: &mut [Tiles],
) -> Result<(), QueryError> {
    let unexpected = || QueryError::internal("a breakdown's rows came in an unexpected shape");
    let t = batch
        .column(0)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(unexpected)?;
    let user = Text::of(batch.column(1)).ok_or_else(unexpected)?;
    let pageview = batch.column(2).as_boolean_opt().ok_or_else(unexpected)?;
    let keys = (0..counted.len())
        .map(|d| batch.columns().get(3 + d).and_then(Text::of))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(unexpected)?;
    let mut at = 0;
    for row in 0..batch.num_rows() {
        let ts = t.value(row);
        // Rows mostly come in time order: try the last row's tile first.
        if !tiles.get(at).is_some_and(|tile| tile.contains(&ts)) {
            at = tiles.partition_point(|tile| tile.end <= ts);
            if !tiles.get(at).is_some_and(|tile| tile.contains(&ts)) {
                continue;
            }
        }
        let user = user.get(row).unwrap_or("");
        let pageview = i64::from(pageview.value(row));
        for (k, per_tile) in keys.iter().zip(counted.iter_mut()) {
            let values = per_tile.entry(at).or_default();
            let value = k.get(row).unwrap_or("");
            let c = match values.get_mut(value) {
                Some(c) => c,
                None => values.entry(value.to_owned()).or_insert_with(Counting::new),
            };
            c.events += 1;
            c.pageviews += pageview;
            c.users.update(user);
        }
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

/// Each value's figures of a merged list.
fn figures(list: &DayList) -> BTreeMap<String, Figures> {
    list.values
        .iter()
        .map(|(value, t)| {
            let f = Figures {
                events: t.events,
                pageviews: t.pageviews,
                users: t.users.estimate().round() as i64,
                ..Figures::default()
            };
            (value.clone(), f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use beacon_store::arrow::array::{BooleanArray, Int64Array};

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
    fn any_span_is_covered_exactly_once() {
        let day = 20 * DAY_MS;
        let spans = [
            // Inside one day, off the hour: the CI failure that counted twice.
            (day + 10 * HOUR_MS + 5, day + 12 * HOUR_MS + 7),
            (day + 10 * HOUR_MS, day + 12 * HOUR_MS),
            (day, day + HOUR_MS),
            (day + 5, day + 59 * MINUTE_MS),
            (day - HOUR_MS, day + HOUR_MS + 1),
            (day - 3, day + DAY_MS + 3),
            (day, day + 3 * DAY_MS),
            (day + 17 * MINUTE_MS, day + 9 * DAY_MS - 3),
        ];
        for (from, to) in spans {
            for now in [day - 30 * DAY_MS, day + 11 * HOUR_MS, to, to + 30 * DAY_MS] {
                let t = tiles(Span { from, to }, now);
                assert_eq!(
                    t.first().map(|t| t.start),
                    Some(from),
                    "{from}..{to} at {now}"
                );
                assert_eq!(t.last().map(|t| t.end), Some(to), "{from}..{to} at {now}");
                assert!(
                    t.windows(2).all(|w| w[0].end == w[1].start),
                    "{from}..{to} at {now}: {t:?}"
                );
                assert!(t.iter().all(|t| !t.is_empty()));
            }
        }
    }

    #[test]
    fn a_span_is_kept_as_whole_days_and_the_whole_hours_around_them() {
        let span = |from, to| Span { from, to };
        assert_eq!(whole(span(0, 3 * DAY_MS), DAY_MS), 0..3);
        assert_eq!(whole(span(1, 3 * DAY_MS - 1), DAY_MS), 1..2);
        assert_eq!(whole(span(DAY_MS - 1, DAY_MS + 1), DAY_MS), 1..1);
        let (from, to) = (DAY_MS - 2 * HOUR_MS - 5, 3 * DAY_MS + HOUR_MS + 5);
        let long_ago = 10 * DAY_MS;
        let t = tiles(span(from, to), long_ago);
        assert_eq!(
            t,
            vec![
                from..DAY_MS - 2 * HOUR_MS,
                DAY_MS - 2 * HOUR_MS..DAY_MS - HOUR_MS,
                DAY_MS - HOUR_MS..DAY_MS,
                DAY_MS..2 * DAY_MS,
                2 * DAY_MS..3 * DAY_MS,
                3 * DAY_MS..3 * DAY_MS + HOUR_MS,
                3 * DAY_MS + HOUR_MS..to,
            ]
        );
        assert_eq!(day_run(&t), 3..5);
        assert_eq!(
            tiles(span(0, 2 * DAY_MS), long_ago),
            vec![0..DAY_MS, DAY_MS..2 * DAY_MS]
        );
        assert_eq!(day_run(&tiles(span(0, 2 * DAY_MS), long_ago)), 0..2);
        // What ends within two hours of now is kept by the minute: the last
        // day's last hour and the hour after it, then the partial edge.
        let now = 3 * DAY_MS + HOUR_MS + 5;
        let r = tiles(span(from, to), now);
        assert_eq!(day_run(&r), 3..4, "the last day is no longer whole");
        assert_eq!(r[4], 2 * DAY_MS..2 * DAY_MS + HOUR_MS);
        let hours = r.iter().filter(|r| r.end - r.start == HOUR_MS).count();
        assert_eq!(hours, 2 + 23, "two before the days, 23 of the last day");
        let minutes = r.iter().filter(|r| r.end - r.start == MINUTE_MS).count();
        assert_eq!(minutes, 2 * 60);
        assert_eq!(r.last(), Some(&(3 * DAY_MS + HOUR_MS..to)));
        assert_eq!(
            r[r.len() - 2],
            3 * DAY_MS + HOUR_MS - MINUTE_MS..3 * DAY_MS + HOUR_MS
        );
        // Together, the tiles cover the span exactly, in order.
        assert_eq!(r.first().map(|r| r.start), Some(from));
        assert!(r.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(cut(5..130, 60), vec![5..60, 60..120, 120..130]);
        // A range wholly in the future keeps its days whole.
        let ahead = tiles(span(from, to), from - DAY_MS);
        assert_eq!(ahead, t);
        // Two years from now: minutes only within two hours of now.
        let now = 100 * DAY_MS;
        let r = tiles(span(100 * DAY_MS, (100 + MAX_DAYS) * DAY_MS), now);
        assert_eq!(r.len(), 2 * 60 + 22 + MAX_DAYS as usize - 1, "{}", r.len());
        // Rows count in the tile holding their time, in any order; rows
        // outside every tile in none.
        let rows = [
            (from, "/a"),
            (2 * DAY_MS + 5, "/a"),
            (DAY_MS - HOUR_MS - 1, "/b"),
            (DAY_MS + 1, "/a"),
            (from - 1, "/a"),
            (to - 1, "/b"),
            (to, "/b"),
        ];
        let batch = RecordBatch::try_from_iter([
            (
                "t",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            (
                "user_key",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "u"))),
            ),
            (
                "pageview",
                Arc::new(BooleanArray::from(vec![true; rows.len()])),
            ),
            (
                "k0",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "k1",
                Arc::new(StringViewArray::from_iter_values(
                    rows.iter().map(|r| format!("b{}", r.1)),
                )),
            ),
        ])
        .expect("batch");
        // Two dimensions counted from one scan.
        let mut counted = vec![HashMap::new(), HashMap::new()];
        count_rows(&batch, &t, &mut counted).expect("counted");
        let events = |dim: usize, tile: usize, value: &str| {
            counted[dim]
                .get(&tile)
                .and_then(|v| v.get(value))
                .map(|c| c.events)
        };
        for (dim, prefix) in [(0, ""), (1, "b")] {
            let events = |tile, value: &str| events(dim, tile, &format!("{prefix}{value}"));
            assert_eq!(events(0, "/a"), Some(1));
            assert_eq!(events(1, "/b"), Some(1));
            assert_eq!(events(3, "/a"), Some(1));
            assert_eq!(events(4, "/a"), Some(1));
            assert_eq!(events(6, "/b"), Some(1));
        }
        let all: i64 = counted
            .iter()
            .flat_map(|d| d.values())
            .flat_map(|v| v.values())
            .map(|c| c.events)
            .sum();
        assert_eq!(all, 2 * 5, "two rows fall outside the span");
        // A batch without a dimension's column is refused, not half counted.
        let mut three = vec![HashMap::new(), HashMap::new(), HashMap::new()];
        assert!(count_rows(&batch, &t, &mut three).is_err());
    }

    #[test]
    fn only_ranges_of_an_hour_to_two_years_are_kept() {
        let span = |days: i64| Span {
            from: 10 * DAY_MS,
            to: (10 + days) * DAY_MS,
        };
        let answers = |span| answers(&Dim::Path, &[Metric::Users], Metric::Users, span);
        assert!(answers(span(1)));
        assert!(answers(span(2)));
        // Today, up to the next hour: one whole hour is enough.
        let today = Span {
            from: 10 * DAY_MS,
            to: 10 * DAY_MS + HOUR_MS,
        };
        assert!(answers(today));
        // The realtime range (the last half hour, to the ms) is scanned.
        assert!(!answers(Span {
            from: 10 * DAY_MS + 5,
            to: 10 * DAY_MS + HOUR_MS + 4,
        }));
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

    #[test]
    fn counted_ahead_are_the_spans_the_dashboard_asks_in_utc() {
        let day = 100 * DAY_MS;
        let spans = dashboard_spans(day + 5 * HOUR_MS + 30 * MINUTE_MS);
        let to = day + 6 * HOUR_MS;
        assert_eq!(
            spans.map(|s| (s.from, s.to)),
            [(day - 29 * DAY_MS, to), (day - 6 * DAY_MS, to), (day, to)]
        );
        assert_eq!(dashboard_spans(day + 5 * HOUR_MS)[2].to, day + 5 * HOUR_MS);
        // At midnight, today is its first hour.
        assert_eq!(dashboard_spans(day)[2].to, day + HOUR_MS);
        for span in spans {
            assert!(DASHBOARD_DIMS.iter().all(|d| answers(
                d,
                &[Metric::Users, Metric::Events, Metric::Pageviews],
                Metric::Users,
                span
            )));
        }
    }

    fn answers_by(dim: &Dim) -> bool {
        let span = Span {
            from: 0,
            to: 7 * DAY_MS,
        };
        answers(dim, &[Metric::Users], Metric::Users, span)
    }

    #[test]
    fn periods_add_events_and_union_users() {
        let list = |values: &[(&str, &[&str], i64)]| {
            let counted = values
                .iter()
                .map(|(value, users, events)| (value.to_string(), counting(users, *events)))
                .collect();
            DayList::of(counted)
        };
        let days = [
            list(&[("/a", &["u1", "u2"], 4)]),
            list(&[("/a", &["u2", "u3"], 6)]),
        ];
        let edge = list(&[("/a", &["u3", "u4"], 2), ("/b", &["u5"], 1)]);
        let run = DayList::union(&[&days[0], &days[1]]);
        // The run of days kept as one union answers as its days do.
        for parts in [vec![&days[0], &days[1], &edge], vec![&run, &edge]] {
            let out = figures(&DayList::union(&parts));
            assert_eq!(out["/a"].events, 12);
            assert_eq!(out["/a"].pageviews, 2 + 3 + 1);
            assert_eq!(out["/a"].users, 4);
            assert_eq!(out["/b"].users, 1);
            assert_eq!(out.len(), 2);
        }
        assert_eq!(figures(&run)["/a"].users, 3);
        assert!(run.bytes >= PERIOD_OVERHEAD + VALUE_OVERHEAD + 3 * 8);
        assert_ne!(joint_mark(&[1, 2]), joint_mark(&[1, 3]));
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
