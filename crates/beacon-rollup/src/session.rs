//! Event-time sessions: a user's events, sorted by event time, belong to one
//! session until a pause longer than the timeout, whatever order they arrive
//! in. Each user's recent sessions are remembered whole (times, page views,
//! entry and exit visit), so an event that arrives late can extend, merge or
//! open sessions exactly: the sessions it touches are replaced by the one they
//! become, and the rollups are corrected by taking the old sessions'
//! contributions out and putting the new one in.

use serde::{Deserialize, Serialize};

use super::cell::SessionCounters;

/// Most sessions remembered per user; the oldest are forgotten first. A user
/// with more distinct sessions inside `session_memory` than this is a robot
/// or a load test, and its late events are counted as session-late.
pub const MAX_SESSIONS_PER_USER: usize = 32;

/// A page view at a time: where a session was entered or left.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Visit {
    pub ts_ms: i64,
    /// Boxed, not a `String`: there is one per remembered session.
    pub path: Box<str>,
}

/// One session, as much of it as its rollup figures need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Event time of the session's earliest event (Unix ms).
    pub start_ms: i64,
    /// Event time of its latest event.
    pub end_ms: i64,
    pub pageviews: u32,
    /// Its earliest page view (ties: the smaller path), the entry page.
    pub entry: Option<Visit>,
    /// Its latest page view (ties: the larger path), the exit page.
    pub exit: Option<Visit>,
}

impl Session {
    /// A session of one event; `page` is the path when it is a page view.
    fn of(ts_ms: i64, page: Option<&str>) -> Session {
        let visit = page.map(|path| Visit {
            ts_ms,
            path: path.into(),
        });
        Session {
            start_ms: ts_ms,
            end_ms: ts_ms,
            pageviews: u32::from(visit.is_some()),
            entry: visit.clone(),
            exit: visit,
        }
    }

    /// Take `other` in: the session both make together.
    fn absorb(&mut self, other: Session) {
        self.start_ms = self.start_ms.min(other.start_ms);
        self.end_ms = self.end_ms.max(other.end_ms);
        self.pageviews = self.pageviews.saturating_add(other.pageviews);
        self.entry = [self.entry.take(), other.entry].into_iter().flatten().min();
        self.exit = [self.exit.take(), other.exit].into_iter().flatten().max();
    }

    /// Add (`sign` 1) or take out (`sign` -1) this session's figures, booked in
    /// the buckets of its start: a pure function of the session, so any change
    /// is corrected exactly by taking the old session out and the new one in.
    pub fn book(&self, into: &mut SessionCounters, sign: i64) {
        into.started += sign;
        if self.pageviews == 1 {
            into.bounces += sign;
        }
        into.duration_ms += sign * (self.end_ms - self.start_ms);
        into.pageviews += sign * i64::from(self.pageviews);
        if let Some(entry) = &self.entry {
            into.entries.add(&entry.path, sign);
        }
        if let Some(exit) = &self.exit {
            into.exits.add(&exit.path, sign);
        }
    }

    /// The session's id: 64 bits of XXH3 over its user's [`session_key`] and
    /// its start. It stays the same while the session only grows later; an
    /// earlier event or a merge moves the start and so gives a new id. Once its
    /// user is `session_memory` past it, no event can change it any more.
    ///
    /// [`session_key`]: super::state::session_key
    pub fn id(&self, user: u64) -> u64 {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&user.to_le_bytes());
        bytes[8..].copy_from_slice(&self.start_ms.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    fn approx_bytes(&self) -> usize {
        // An allocation costs its length plus the allocator's own word or two.
        let path = |v: &Option<Visit>| v.as_ref().map_or(0, |v| v.path.len() + 16);
        std::mem::size_of::<Session>() + path(&self.entry) + path(&self.exit)
    }
}

/// How far sessions reach, in milliseconds of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// A pause longer than this ends a session.
    pub timeout_ms: i64,
    /// Sessions are remembered this long behind their user's newest event.
    pub memory_ms: i64,
}

/// What one event did to its user's sessions: the sessions it replaced (their
/// contributions come out) and the session it is now part of (its contribution
/// goes in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub removed: Vec<Session>,
    pub added: Session,
}

/// A user's remembered sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSessions {
    /// Events before this time are *session-late*: a session they belong to
    /// may have been forgotten, so they are placed in none.
    pub since_ms: i64,
    /// Sorted by start; any two are more than the timeout apart.
    pub sessions: Vec<Session>,
}

impl UserSessions {
    /// A user with no remembered sessions, placing events from `since_ms` on.
    pub fn since(since_ms: i64) -> Self {
        UserSessions {
            since_ms,
            sessions: Vec::new(),
        }
    }

    /// Event time of the user's newest event remembered (`i64::MIN`: none).
    pub fn newest_ms(&self) -> i64 {
        self.sessions.last().map_or(i64::MIN, |s| s.end_ms)
    }

    /// Whether an event at `ts_ms` is too old to be placed: before what is
    /// remembered, or more than the memory behind the user's newest event.
    pub fn is_late(&self, ts_ms: i64, reach: Reach) -> bool {
        ts_ms < self.since_ms || ts_ms < self.newest_ms().saturating_sub(reach.memory_ms)
    }

    /// The remembered session holding event time `ts_ms`, if any.
    pub fn session_at(&self, ts_ms: i64) -> Option<&Session> {
        let i = self.sessions.partition_point(|s| s.end_ms < ts_ms);
        self.sessions.get(i).filter(|s| s.start_ms <= ts_ms)
    }

    /// Place an event at `ts_ms` (not [late](Self::is_late)); `page` is the
    /// path when it is a page view. An event inside a session, or within the
    /// timeout of one or two, joins them into one; any other opens a session.
    /// Returns `None` when no session figure changed.
    pub fn place(&mut self, ts_ms: i64, page: Option<&str>, reach: Reach) -> Option<Change> {
        let t = reach.timeout_ms;
        // Sessions are disjoint and sorted, so their ends are sorted too; the
        // ones within reach of `ts_ms` are consecutive (at most two).
        let first = self
            .sessions
            .partition_point(|s| s.end_ms.saturating_add(t) < ts_ms);
        let last = first
            + self.sessions[first..]
                .iter()
                .take_while(|s| s.start_ms.saturating_sub(t) <= ts_ms)
                .count();
        if page.is_none()
            && last == first + 1
            && (self.sessions[first].start_ms..=self.sessions[first].end_ms).contains(&ts_ms)
        {
            return None;
        }
        let removed: Vec<Session> = self.sessions.drain(first..last).collect();
        let mut added = Session::of(ts_ms, page);
        for s in &removed {
            added.absorb(s.clone());
        }
        self.sessions.insert(first, added.clone());
        self.forget_old(reach);
        Some(Change { removed, added })
    }

    /// Forget sessions more than the memory behind the newest event, and the
    /// oldest beyond [`MAX_SESSIONS_PER_USER`]; events that could have joined
    /// them become late.
    fn forget_old(&mut self, reach: Reach) {
        let horizon = self.newest_ms().saturating_sub(reach.memory_ms);
        let stale = self.sessions.partition_point(|s| s.end_ms < horizon);
        let over = self.sessions.len().saturating_sub(MAX_SESSIONS_PER_USER);
        let n = stale.max(over);
        if n == 0 {
            return;
        }
        for s in self.sessions.drain(..n) {
            // An event within the timeout after `end_ms` would have joined it.
            self.since_ms = self
                .since_ms
                .max(s.end_ms.saturating_add(reach.timeout_ms).saturating_add(1));
        }
    }

    /// Rough heap bytes, for the state-size metric.
    pub fn approx_bytes(&self) -> usize {
        let unused = self.sessions.capacity() - self.sessions.len();
        std::mem::size_of::<Self>()
            + unused * std::mem::size_of::<Session>()
            + self
                .sessions
                .iter()
                .map(Session::approx_bytes)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const REACH: Reach = Reach {
        timeout_ms: 30 * MIN,
        memory_ms: 24 * 60 * MIN,
    };

    /// Place events in the given order; the counters every change booked.
    fn run(events: &[(i64, Option<&str>)]) -> (SessionCounters, UserSessions) {
        let mut total = SessionCounters::default();
        let mut user = UserSessions::since(i64::MIN);
        for (ts, page) in events {
            assert!(!user.is_late(*ts, REACH));
            if let Some(change) = user.place(*ts, *page, REACH) {
                for s in &change.removed {
                    s.book(&mut total, -1);
                }
                change.added.book(&mut total, 1);
            }
        }
        total.entries.drop_zeros();
        total.exits.drop_zeros();
        (total, user)
    }

    #[test]
    fn one_page_view_is_a_bounce_two_are_not() {
        let (c, _) = run(&[(0, Some("/"))]);
        assert_eq!((c.started, c.bounces, c.duration_ms), (1, 1, 0));
        let (c, u) = run(&[(0, Some("/")), (5 * MIN, Some("/pricing")), (6 * MIN, None)]);
        assert_eq!(
            (c.started, c.bounces, c.pageviews, c.duration_ms),
            (1, 0, 2, 6 * MIN)
        );
        assert_eq!(c.entries.iter().collect::<Vec<_>>(), vec![("/", 1)]);
        assert_eq!(c.exits.iter().collect::<Vec<_>>(), vec![("/pricing", 1)]);
        assert_eq!(u.sessions.len(), 1);
    }

    #[test]
    fn an_earlier_page_view_moves_the_entry_and_a_gap_filled_merges() {
        // Arrival order: the middle event last.
        let (c, u) = run(&[
            (40 * MIN, Some("/b")),
            (0, Some("/a")),
            (41 * MIN, None),
            (20 * MIN, Some("/m")),
        ]);
        assert_eq!(u.sessions.len(), 1);
        assert_eq!(
            (c.started, c.bounces, c.pageviews, c.duration_ms),
            (1, 0, 3, 41 * MIN)
        );
        assert_eq!(c.entries.iter().collect::<Vec<_>>(), vec![("/a", 1)]);
        assert_eq!(c.exits.iter().collect::<Vec<_>>(), vec![("/b", 1)]);
        assert_eq!(u.session_at(30 * MIN).map(|s| s.start_ms), Some(0));
        assert!(u.session_at(50 * MIN).is_none());
    }

    #[test]
    fn sessions_are_forgotten_behind_the_memory_and_past_the_cap() {
        let mut user = UserSessions::since(i64::MIN);
        user.place(0, Some("/"), REACH);
        user.place(24 * 60 * MIN + 20 * MIN, Some("/"), REACH);
        assert_eq!(user.sessions.len(), 1, "the first is a day behind");
        assert!(user.is_late(10 * MIN, REACH), "behind the memory");
        assert!(
            user.is_late(25 * MIN, REACH),
            "it could have joined the first"
        );
        assert!(!user.is_late(40 * MIN, REACH));
        for i in 0..40 {
            user.place(26 * 60 * MIN + i * 31 * MIN, None, REACH);
        }
        assert_eq!(user.sessions.len(), MAX_SESSIONS_PER_USER);
        assert!(user.is_late(26 * 60 * MIN, REACH));
    }

    #[test]
    fn ids_follow_the_start() {
        let a = Session::of(5, None);
        let mut b = Session::of(9, Some("/"));
        assert_ne!(a.id(1), b.id(1));
        assert_ne!(a.id(1), a.id(2));
        b.absorb(a.clone());
        assert_eq!(b.id(1), a.id(1));
    }
}
