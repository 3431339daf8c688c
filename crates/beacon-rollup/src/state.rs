//! A partition's rollup state, the delta one commit carries, and the owner's
//! working view that turns events into the next delta.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bucket::{Granularity, Retention};
use super::cell::{Cell, CellDelta, CellKey, DIMENSIONS, Dimension, Engagement, user_hash};
use super::session::{Reach, UserSessions};
use crate::tally::Tally;
use beacon_core::event::{ENGAGED_MS_PROP, ENGAGEMENT, Event, SCROLL_DEPTH_PROP};

/// The key a user's session is kept under: 64 bits of XXH3 over site and user
/// key. A collision (about one in 10^10 for a million users) would merge two
/// users' sessions; it saves a string per open session and per event.
pub fn session_key(site: &str, user_key: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(site.as_bytes());
    h.update(&[0]);
    h.update(user_key.as_bytes());
    h.digest()
}

/// Granularity of the session-forgetting horizon.
const FORGET_STEP_MS: i64 = 5 * 60_000;

/// The event name that counts as a page view.
pub const PAGEVIEW: &str = "pageview";

/// How events become rollups; defaults as documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RollupSettings {
    pub retention: Retention,
    /// A session ends after this long without events from its user.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long (in event time, behind the user's newest event) a user's
    /// sessions are remembered and corrected by late events; an event older
    /// than that is counted as session-late. A user idle this long behind the
    /// partition's newest event is forgotten.
    #[serde(with = "humantime_serde")]
    pub session_memory: Duration,
    /// Keys kept per breakdown (names, paths, sources, …); the rest is `(other)`.
    pub top_n: usize,
}

impl Default for RollupSettings {
    fn default() -> Self {
        RollupSettings {
            retention: Retention::default(),
            session_timeout: Duration::from_secs(30 * 60),
            session_memory: Duration::from_secs(24 * 3600),
            top_n: 100,
        }
    }
}

impl RollupSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.retention.problems();
        if self.session_timeout.is_zero() {
            problems.push("aggregator.session_timeout must be positive".to_owned());
        }
        if self.session_memory < self.session_timeout {
            problems.push(
                "aggregator.session_memory must be at least aggregator.session_timeout".to_owned(),
            );
        }
        if self.top_n == 0 {
            problems.push("aggregator.top_n must be positive".to_owned());
        }
        problems
    }

    /// Session timeout and memory in milliseconds.
    pub fn reach(&self) -> Reach {
        Reach {
            timeout_ms: millis(self.session_timeout),
            memory_ms: millis(self.session_memory),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Everything a partition's owner has committed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The `BEACON_EVENTS` sequence every event up to which is counted.
    pub through_seq: u64,
    pub cells: BTreeMap<CellKey, Cell>,
    /// Remembered sessions by [`session_key`] of site and user.
    pub users: HashMap<u64, UserSessions>,
    /// Events too old for every granularity's retention.
    pub dropped_late: u64,
    /// Events counted everywhere but in sessions: older than what their user's
    /// remembered sessions reach back to (see [`UserSessions::is_late`]).
    pub session_late: u64,
    /// Events counted.
    pub applied: u64,
    /// `received_at` (Unix ms) of the newest event counted.
    pub newest_received_ms: i64,
    /// Newest event time counted (Unix ms).
    pub newest_event_ms: i64,
    /// The retention cutoffs last applied.
    pub cutoffs: [i64; 3],
    /// Users whose newest remembered event was older than this are forgotten.
    pub forgotten_before: i64,
}

/// The outcome of the events between two commits, in a form that can be stored,
/// replayed and applied with the same result every time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The stream sequence reached: the state after this delta counts every event up to it.
    pub through_seq: u64,
    pub cells: BTreeMap<CellKey, CellDelta>,
    /// New sessions of every user an event changed.
    pub users: HashMap<u64, UserSessions>,
    /// Per granularity, buckets starting before this are dropped (retention).
    pub cutoffs: [i64; 3],
    /// Users whose newest remembered event is older than this are forgotten.
    pub forget_before: i64,
    pub top_n: usize,
    pub dropped_late: u64,
    pub session_late: u64,
    pub applied: u64,
    pub newest_received_ms: i64,
    pub newest_event_ms: i64,
}

impl Delta {
    /// Whether committing it would change nothing but the sequence.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
            && self.users.is_empty()
            && self.dropped_late == 0
            && self.session_late == 0
    }
}

impl PartitionState {
    /// Apply a committed delta. The owner calls this after its commit succeeds,
    /// and recovery calls it for every stored delta: the one way state changes.
    pub fn apply(&mut self, delta: &Delta) {
        self.apply_figures(delta);
        for (user, sessions) in &delta.users {
            self.users.insert(*user, sessions.clone());
        }
        if delta.forget_before > self.forgotten_before {
            self.users
                .retain(|_, u| u.newest_ms() >= delta.forget_before);
            self.forgotten_before = delta.forget_before;
        }
    }

    /// Apply all of a delta but the remembered sessions: what a reader of the
    /// rollups needs. Query nodes keep no sessions, only their figures.
    pub fn apply_figures(&mut self, delta: &Delta) {
        self.through_seq = self.through_seq.max(delta.through_seq);
        for (key, cell) in &delta.cells {
            if key.start >= delta.cutoffs[key.granularity.index()] {
                self.cells
                    .entry(key.clone())
                    .or_default()
                    .apply(cell, delta.top_n);
            }
        }
        // Full passes only when a cutoff moved (at most once a minute).
        if delta.cutoffs != self.cutoffs {
            self.cells
                .retain(|key, _| key.start >= delta.cutoffs[key.granularity.index()]);
            self.cutoffs = delta.cutoffs;
        }
        self.dropped_late += delta.dropped_late;
        self.session_late += delta.session_late;
        self.applied += delta.applied;
        self.newest_received_ms = self.newest_received_ms.max(delta.newest_received_ms);
        self.newest_event_ms = self.newest_event_ms.max(delta.newest_event_ms);
    }

    /// Replace what `sites` have in this state by what `replayed` (a count of
    /// only their events, at the same `through_seq`) has: their cells, and
    /// their remembered sessions. Session keys do not say their site, so the
    /// caller names every key of theirs this state may hold (`theirs`). The
    /// other sites' cells and sessions, and the partition-wide figures, stay.
    pub fn replace_sites(
        &mut self,
        sites: &[String],
        theirs: &HashSet<u64>,
        replayed: PartitionState,
    ) {
        self.cells.retain(|key, _| !sites.contains(&key.site));
        self.users.retain(|user, _| !theirs.contains(user));
        for (c, r) in self.cutoffs.iter_mut().zip(replayed.cutoffs) {
            *c = (*c).max(r);
        }
        let cutoffs = self.cutoffs;
        self.cells.extend(replayed.cells);
        self.cells
            .retain(|key, _| key.start >= cutoffs[key.granularity.index()]);
        self.users.extend(replayed.users);
    }

    /// Rough heap bytes of the cells, for the state-size metric.
    pub fn cell_bytes(&self) -> usize {
        self.cells.values().map(Cell::approx_bytes).sum()
    }

    /// Rough heap bytes of the remembered sessions (with the map's own slots).
    pub fn session_bytes(&self) -> usize {
        let slots = self.users.capacity() * (std::mem::size_of::<(u64, UserSessions)>() + 1);
        slots
            + self
                .users
                .values()
                .map(|u| u.approx_bytes() - std::mem::size_of::<UserSessions>())
                .sum::<usize>()
    }
}

/// Add every minute bucket into its hour bucket, then every hour bucket into
/// its day bucket: events were counted only in the finest bucket that keeps them.
fn roll_up(cells: &mut BTreeMap<CellKey, CellDelta>) {
    for (finer, coarser) in [
        (Granularity::Minute, Granularity::Hour),
        (Granularity::Hour, Granularity::Day),
    ] {
        let keys: Vec<CellKey> = cells
            .keys()
            .filter(|k| k.granularity == finer)
            .cloned()
            .collect();
        for key in keys {
            let Some(cell) = cells.remove(&key) else {
                continue;
            };
            let target = cells
                .entry(CellKey {
                    site: key.site.clone(),
                    granularity: coarser,
                    start: coarser.bucket_start(key.start),
                })
                .or_default();
            target.counters.merge(&cell.counters);
            target.users.extend(&cell.users);
            cells.insert(key, cell);
        }
    }
}

/// Add an engagement ping to its page: one ping, its engaged milliseconds
/// and its scroll depth, each only when it is a sane integer (a ping with a
/// negative or absurd figure still counts as a ping).
fn count_engagement(e: &mut Engagement, event: &Event) {
    let page = Dimension::Path.of(event);
    let int = |prop: &str, max: i64| {
        event
            .props
            .get(prop)
            .and_then(serde_json::Value::as_i64)
            .filter(|v| (0..=max).contains(v))
    };
    e.pings.add(page, 1);
    // At most a day per ping: a tab left open is not a day of reading.
    if let Some(ms) = int(ENGAGED_MS_PROP, 86_400_000) {
        e.engaged_ms.add(page, ms);
    }
    if let Some(depth) = int(SCROLL_DEPTH_PROP, 100) {
        e.scroll_sum.add(page, depth);
        e.scrolled.add(page, 1);
    }
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Counted,
    /// Counted, but in no session: older than its user's remembered sessions.
    SessionLate,
    /// Older than every granularity's retention: counted only as dropped-late.
    DroppedLate,
}

/// An owner's view of its partition: the committed state plus the pending delta.
#[derive(Debug)]
pub struct Working {
    pub state: PartitionState,
    pending: Delta,
    settings: RollupSettings,
}

impl Working {
    pub fn new(state: PartitionState, settings: RollupSettings, now_ms: i64) -> Self {
        let mut working = Working {
            state,
            pending: Delta::default(),
            settings,
        };
        working.reset_pending(now_ms);
        working
    }

    fn reset_pending(&mut self, now_ms: i64) {
        // Never behind what was applied already: an owner whose clock lags its
        // predecessor's must not bring back a bucket retention has dropped.
        let mut cutoffs = self.settings.retention.cutoffs(now_ms);
        for (c, applied) in cutoffs.iter_mut().zip(self.state.cutoffs) {
            *c = (*c).max(applied);
        }
        self.pending = Delta {
            through_seq: self.state.through_seq,
            cutoffs,
            top_n: self.settings.top_n,
            forget_before: i64::MIN,
            ..Delta::default()
        };
    }

    /// Events counted in the pending delta.
    pub fn pending_events(&self) -> u64 {
        self.pending.applied + self.pending.dropped_late
    }

    /// The sequence reached, counting pending events.
    pub fn through_seq(&self) -> u64 {
        self.pending.through_seq
    }

    /// Count `event`, stored at stream sequence `seq`, into the pending delta.
    pub fn apply_event(&mut self, event: &Event, seq: u64) -> Outcome {
        let pending = &mut self.pending;
        pending.through_seq = pending.through_seq.max(seq);
        let ts = event.ts.timestamp_millis();
        let kept: Vec<Granularity> = Granularity::ALL
            .into_iter()
            .filter(|g| g.bucket_start(ts) >= pending.cutoffs[g.index()])
            .collect();
        if kept.is_empty() {
            pending.dropped_late += 1;
            return Outcome::DroppedLate;
        }
        pending.applied += 1;
        pending.newest_received_ms = pending
            .newest_received_ms
            .max(event.received_at.timestamp_millis());
        pending.newest_event_ms = pending.newest_event_ms.max(ts);

        // The event is counted once, in the finest bucket that keeps it;
        // `take_delta` adds each bucket into the coarser ones. A bucket kept at
        // one granularity is kept at every coarser one (retention never shrinks).
        let is_pageview = event.name == PAGEVIEW;
        let user = event.user_key();
        let cell = pending
            .cells
            .entry(CellKey {
                site: event.site.clone(),
                granularity: kept[0],
                start: kept[0].bucket_start(ts),
            })
            .or_default();
        let c = &mut cell.counters;
        // Filtered traffic counts only by its reason, and an engagement ping
        // only into its page's engagement: neither is an event, a page view,
        // a user's activity or part of a session.
        if let Some(reason) = &event.context.bot {
            c.filtered.add(reason, 1);
            return Outcome::Counted;
        }
        if event.name == ENGAGEMENT {
            count_engagement(&mut c.engagement, event);
            return Outcome::Counted;
        }
        c.events.add(&event.name, 1);
        if is_pageview {
            c.pageviews += 1;
        }
        if let Some(revenue) = &event.revenue {
            let sum = c.revenue.entry(revenue.currency.clone()).or_default();
            *sum = sum.saturating_add(revenue.amount);
        }
        for d in DIMENSIONS {
            c.dims[d.index()].add(d.of(event), 1);
        }
        cell.users.insert(user_hash(user));
        // Name × dimension only in hour and day buckets: in minute buckets it
        // would be most of the memory (a realtime view filters by hour).
        if let Some(g) = kept.iter().find(|g| **g != Granularity::Minute) {
            let by_name = pending
                .cells
                .entry(CellKey {
                    site: event.site.clone(),
                    granularity: *g,
                    start: g.bucket_start(ts),
                })
                .or_default()
                .counters
                .name_dims_mut(&event.name);
            for d in DIMENSIONS {
                by_name[d.index()].add(d.of(event), 1);
            }
        }

        let page = is_pageview.then(|| DIMENSIONS[0].of(event));
        self.place_in_session(&event.site, session_key(&event.site, user), ts, page)
    }

    /// Place an event in its user's sessions and book the change: the old
    /// sessions' figures out, the new session's in, each in the buckets of its
    /// own start, in this same pending delta (so the correction commits, or
    /// is lost, together with the event).
    fn place_in_session(&mut self, site: &str, user: u64, ts: i64, page: Option<&str>) -> Outcome {
        let reach = self.settings.reach();
        let pending = &mut self.pending;
        // Whether a user is forgotten depends only on the events counted so
        // far, never on when commits happened to prune the state.
        let horizon = self
            .state
            .newest_event_ms
            .max(pending.newest_event_ms)
            .saturating_sub(reach.memory_ms);
        let remembered = |u: &&UserSessions| u.newest_ms() >= horizon;
        let known = pending
            .users
            .get(&user)
            .or_else(|| self.state.users.get(&user))
            .filter(remembered);
        // A user with no remembered sessions may have had some up to the
        // horizon: an event that could have joined one of them is late.
        let late = match known {
            Some(u) => u.is_late(ts, reach),
            None => ts < horizon.saturating_add(reach.timeout_ms),
        };
        if late {
            pending.session_late += 1;
            return Outcome::SessionLate;
        }
        let fresh = known
            .is_none()
            .then(|| UserSessions::since(horizon.saturating_add(reach.timeout_ms)));
        let sessions = match pending.users.entry(user) {
            Entry::Occupied(mut e) => {
                if let Some(fresh) = fresh {
                    e.insert(fresh);
                }
                e.into_mut()
            }
            Entry::Vacant(e) => e.insert(match fresh {
                Some(fresh) => fresh,
                None => self.state.users.get(&user).cloned().unwrap_or_default(),
            }),
        };
        let Some(change) = sessions.place(ts, page, reach) else {
            return Outcome::Counted;
        };
        for (session, sign) in change
            .removed
            .iter()
            .map(|s| (s, -1))
            .chain([(&change.added, 1)])
        {
            // Booked in the finest kept bucket of the session's start, like an event.
            let Some(g) = Granularity::ALL
                .into_iter()
                .find(|g| g.bucket_start(session.start_ms) >= pending.cutoffs[g.index()])
            else {
                continue;
            };
            let key = CellKey {
                site: site.to_owned(),
                granularity: g,
                start: g.bucket_start(session.start_ms),
            };
            session.book(
                &mut pending.cells.entry(key).or_default().counters.sessions,
                sign,
            );
        }
        Outcome::Counted
    }

    /// The id of the session `event` is in as counted so far (pending or
    /// committed), if it is in one: none for an event placed in no session
    /// (session-late or dropped-late) or whose user is forgotten.
    pub fn session_id(&self, event: &Event) -> Option<u64> {
        let user = session_key(&event.site, event.user_key());
        let sessions = self
            .pending
            .users
            .get(&user)
            .or_else(|| self.state.users.get(&user))?;
        sessions
            .session_at(event.ts.timestamp_millis())
            .map(|s| s.id(user))
    }

    /// Move past `event` without counting it (a replay of other sites): the
    /// sequence and the newest times advance as [`Working::apply_event`]
    /// would move them, so the session horizon of the sites that are counted
    /// stays what a count of every event gives.
    pub fn pass(&mut self, event: &Event, seq: u64) {
        let pending = &mut self.pending;
        pending.through_seq = pending.through_seq.max(seq);
        let ts = event.ts.timestamp_millis();
        let kept = Granularity::ALL
            .into_iter()
            .any(|g| g.bucket_start(ts) >= pending.cutoffs[g.index()]);
        if kept {
            pending.newest_received_ms = pending
                .newest_received_ms
                .max(event.received_at.timestamp_millis());
            pending.newest_event_ms = pending.newest_event_ms.max(ts);
        }
    }

    /// Move past an event that cannot be counted (it is logged by the caller).
    pub fn skip(&mut self, seq: u64) {
        self.pending.through_seq = self.pending.through_seq.max(seq);
    }

    /// The pending delta, ready to commit. Pass it to [`Working::committed`]
    /// once it is stored, or drop this `Working` if it never is: events applied
    /// after this call and before `committed` would be lost with it.
    pub fn take_delta(&mut self) -> Delta {
        let newest = self.state.newest_event_ms.max(self.pending.newest_event_ms);
        // Rounded down, so the pass over all sessions runs every few minutes of event time.
        let forget = newest.saturating_sub(millis(self.settings.session_memory));
        self.pending.forget_before = forget.saturating_sub(forget.rem_euclid(FORGET_STEP_MS));
        let mut delta = std::mem::take(&mut self.pending);
        // A correction in the bucket its session already counts in nets out.
        for cell in delta.cells.values_mut() {
            cell.counters.sessions.entries.drop_zeros();
            cell.counters.sessions.exits.drop_zeros();
        }
        roll_up(&mut delta.cells);
        delta
    }

    /// The delta was stored: fold it into the state and start the next one.
    pub fn committed(&mut self, delta: &Delta, now_ms: i64) {
        self.state.apply(delta);
        self.reset_pending(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use rust_decimal::Decimal;

    use super::*;
    use beacon_core::event::{Context, Revenue};

    const NOW: i64 = 1_790_000_000_000;

    fn event(user: &str, name: &str, ts_ms: i64, path: &str) -> Event {
        Event {
            id: format!("{user}-{ts_ms}"),
            site: "shop".into(),
            name: name.into(),
            user_id: Some(user.into()),
            anonymous_id: None,
            ts: Utc.timestamp_millis_opt(ts_ms).single().expect("valid"),
            received_at: Utc.timestamp_millis_opt(ts_ms).single().expect("valid"),
            partition: 0,
            props: Default::default(),
            revenue: (name == "purchase").then(|| Revenue {
                amount: Decimal::new(1999, 2),
                currency: "EUR".into(),
            }),
            context: Context {
                path: Some(path.into()),
                ..Context::default()
            },
        }
    }

    fn events() -> Vec<Event> {
        (0..400)
            .map(|i| {
                let name = ["pageview", "pageview", "click", "purchase"][i % 4];
                event(
                    &format!("u{}", i % 37),
                    name,
                    NOW - 3_600_000 + i as i64 * 7_000,
                    &format!("/p{}", i % 5),
                )
            })
            .collect()
    }

    /// Commit after every `every` events; return the final state.
    fn fold(events: &[Event], every: usize) -> PartitionState {
        let mut w = Working::new(PartitionState::default(), RollupSettings::default(), NOW);
        let mut log = Vec::new();
        for (i, e) in events.iter().enumerate() {
            w.apply_event(e, i as u64 + 1);
            if (i + 1) % every == 0 {
                let d = w.take_delta();
                w.committed(&d, NOW);
                log.push(d);
            }
        }
        let d = w.take_delta();
        w.committed(&d, NOW);
        log.push(d);
        // Recovery from the log gives the owner's state exactly.
        let mut replayed = PartitionState::default();
        for d in &log {
            replayed.apply(d);
        }
        assert_eq!(replayed, w.state);
        w.state
    }

    #[test]
    fn commit_boundaries_do_not_change_the_result() {
        let events = events();
        let one = fold(&events, 1);
        let many = fold(&events, 17);
        let all = fold(&events, 10_000);
        assert_eq!(
            one.cells.keys().collect::<Vec<_>>(),
            all.cells.keys().collect::<Vec<_>>()
        );
        for (key, cell) in &all.cells {
            assert_eq!(cell.counters, one.cells[key].counters, "{key:?}");
            assert_eq!(cell.counters, many.cells[key].counters, "{key:?}");
        }
        let day: i64 = all
            .cells
            .iter()
            .filter(|(k, _)| k.granularity == Granularity::Day)
            .map(|(_, c)| c.counters.total_events())
            .sum();
        assert_eq!(day, 400);
        assert_eq!(all.through_seq, 400);
        let revenue: Decimal = all
            .cells
            .iter()
            .filter(|(k, _)| k.granularity == Granularity::Hour)
            .filter_map(|(_, c)| c.counters.revenue.get("EUR"))
            .sum();
        assert_eq!(revenue, Decimal::new(1999 * 100, 2));
    }

    #[test]
    fn session_ids_are_found_before_and_after_a_commit() {
        let mut w = Working::new(PartitionState::default(), RollupSettings::default(), NOW);
        let a = event("u1", "pageview", NOW - 600_000, "/");
        let b = event("u1", "click", NOW - 300_000, "/");
        let far = event("u1", "pageview", NOW + 3_600_000, "/");
        w.apply_event(&a, 1);
        let pending = w.session_id(&a).expect("in a session");
        w.apply_event(&b, 2);
        assert_eq!(w.session_id(&b), Some(pending), "same session");
        let d = w.take_delta();
        w.committed(&d, NOW);
        assert_eq!(w.session_id(&a), Some(pending), "committed state");
        w.apply_event(&far, 3);
        let other = w.session_id(&far).expect("a new session");
        assert_ne!(other, pending);
        assert_eq!(w.session_id(&event("u2", "click", NOW, "/")), None);
    }

    #[test]
    fn events_too_old_for_a_granularity_count_in_the_others() {
        let mut w = Working::new(PartitionState::default(), RollupSettings::default(), NOW);
        let three_days = NOW - 3 * 86_400_000;
        assert_eq!(
            w.apply_event(&event("u", "click", three_days, "/"), 1),
            Outcome::Counted
        );
        let ancient = NOW - 800 * 86_400_000;
        assert_eq!(
            w.apply_event(&event("u", "click", ancient, "/"), 2),
            Outcome::DroppedLate
        );
        let d = w.take_delta();
        w.committed(&d, NOW);
        let grans: Vec<Granularity> = w.state.cells.keys().map(|k| k.granularity).collect();
        assert_eq!(grans, vec![Granularity::Hour, Granularity::Day]);
        assert_eq!(w.state.dropped_late, 1);
        // Later, retention drops the hour bucket too.
        let later = NOW + 90 * 86_400_000;
        w.committed(
            &Delta {
                cutoffs: RollupSettings::default().retention.cutoffs(later),
                top_n: 100,
                ..Delta::default()
            },
            later,
        );
        let grans: Vec<Granularity> = w.state.cells.keys().map(|k| k.granularity).collect();
        assert_eq!(grans, vec![Granularity::Day]);
    }

    #[test]
    fn unique_users_are_estimated_across_buckets() {
        let state = fold(&events(), 50);
        let mut union =
            datasketches::hll::HllUnion::new(super::super::cell::HLL_LG_K).expect("union");
        for (k, c) in &state.cells {
            if k.granularity == Granularity::Minute {
                union.update(&c.users);
            }
        }
        assert!(
            (union.estimate() - 37.0).abs() < 1.0,
            "{}",
            union.estimate()
        );
    }

    #[test]
    fn one_site_counted_alone_and_merged_gives_the_full_count() {
        // Two sites in one partition, with users idle long enough to be forgotten.
        let events: Vec<Event> = (0..600)
            .map(|i| {
                let mut e = event(
                    &format!("u{}", i % 23),
                    ["pageview", "click"][i % 2],
                    NOW - 40 * 3_600_000 + i as i64 * 240_000,
                    &format!("/p{}", i % 3),
                );
                if i % 3 == 0 {
                    e.site = "web".into();
                }
                e
            })
            .chain([
                // `web` moves the partition's newest event time far on: the
                // `shop` event after it (a user not seen before) is late only with
                // that horizon.
                Event {
                    site: "web".into(),
                    ..event("w", "click", NOW + 20 * 3_600_000, "/")
                },
                event("new", "pageview", NOW - 10 * 3_600_000, "/"),
            ])
            .collect();
        let all = fold(&events, 13);
        assert_eq!(all.session_late, 1);
        let shop = ["shop".to_owned()];
        let mut w = Working::new(PartitionState::default(), RollupSettings::default(), NOW);
        let mut theirs = HashSet::new();
        for (i, e) in events.iter().enumerate() {
            if e.site == "shop" {
                theirs.insert(session_key(&e.site, e.user_key()));
                w.apply_event(e, i as u64 + 1);
            } else {
                w.pass(e, i as u64 + 1);
            }
            if (i + 1) % 29 == 0 {
                let d = w.take_delta();
                w.committed(&d, NOW);
            }
        }
        let d = w.take_delta();
        w.committed(&d, NOW);
        assert_eq!(w.state.through_seq, all.through_seq);
        assert!(w.state.cells.keys().all(|k| k.site == "shop"));

        // A live state whose `shop` figures are wrong is put right.
        let mut live = all.clone();
        for cell in live.cells.values_mut() {
            cell.counters.pageviews += 1;
        }
        live.users.clear();
        let web_cells: Vec<_> = all.cells.iter().filter(|(k, _)| k.site == "web").collect();
        for (key, cell) in &web_cells {
            live.cells.insert((*key).clone(), (*cell).clone());
        }
        live.users.extend(
            all.users
                .iter()
                .filter(|(u, _)| !theirs.contains(*u))
                .map(|(u, s)| (*u, s.clone())),
        );
        for user in &theirs {
            live.users.insert(*user, UserSessions::default());
        }
        live.replace_sites(&shop, &theirs, w.state);
        assert_eq!(live, all);
    }

    #[test]
    fn state_round_trips_through_its_stored_form() {
        let state = fold(&events(), 50);
        let bytes = postcard::to_stdvec(&state).expect("encode");
        let back: PartitionState = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, state);
    }

    /// Bots count only as filtered traffic by reason, and engagement pings
    /// only into their page's engagement: no event, page view, user,
    /// breakdown or session sees either.
    #[test]
    fn bots_and_engagement_pings_are_not_traffic() {
        let t = NOW - 600_000;
        let people = vec![
            event("u1", "pageview", t, "/a"),
            event("u1", "pageview", t + 1_000, "/b"),
        ];
        let mut all = people.clone();
        for (i, reason) in ["crawler", "crawler", "headless", "monitor"]
            .into_iter()
            .enumerate()
        {
            let mut bot = event(&format!("bot{i}"), "pageview", t + i as i64, "/a");
            bot.context.bot = Some(reason.into());
            all.push(bot);
        }
        for (ms, depth) in [(12_000, Some(40)), (3_000, Some(90)), (-5, None)] {
            let mut ping = event("u1", ENGAGEMENT, t + 2_000, "/b");
            ping.props.insert(ENGAGED_MS_PROP.into(), ms.into());
            if let Some(depth) = depth {
                ping.props.insert(SCROLL_DEPTH_PROP.into(), depth.into());
            }
            all.push(ping);
        }
        let counted = fold(&all, 3);
        let plain = fold(&people, 3);
        let day = |s: &PartitionState| {
            s.cells
                .iter()
                .find(|(k, _)| k.granularity == Granularity::Day)
                .map(|(_, c)| c.clone())
                .expect("a day cell")
        };
        let (c, p) = (day(&counted).counters, day(&plain).counters);
        assert_eq!(c.events, p.events);
        assert_eq!(c.pageviews, 2);
        assert_eq!(c.dims, p.dims);
        assert_eq!(c.by_name, p.by_name);
        assert_eq!(c.sessions, p.sessions, "pings extend no session");
        assert_eq!(day(&counted).users.estimate().round(), 1.0, "one user");
        let filtered: Vec<(&str, i64)> = c.filtered.iter().collect();
        assert_eq!(filtered, [("crawler", 2), ("headless", 1), ("monitor", 1)]);
        let e = &c.engagement;
        assert_eq!(e.pings.get("/b"), 3);
        assert_eq!(
            e.engaged_ms.get("/b"),
            15_000,
            "a negative figure is left out"
        );
        assert_eq!((e.scroll_sum.get("/b"), e.scrolled.get("/b")), (130, 2));
        assert_eq!(counted.applied, all.len() as u64, "every event was handled");
    }
}
