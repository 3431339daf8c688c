//! Format 1: the unversioned records of Beacon's first release, kept readable.
//! postcard is not self-describing, so these are frozen copies of the types as
//! that release stored them (field order and types exactly), converted to
//! today's types after decoding. Never change them; the golden fixture in
//! `tests/fixtures/` holds a real log of this format and the tests read it.
//!
//! `Bounded`, `CellKey` and sketches' byte form are the same today and are
//! reused; should one of them change, its old form gets a frozen copy here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::bounded::Bounded;
use crate::cell::{self, CellKey};
use crate::session;
use crate::state;

#[derive(Deserialize)]
struct SessionCounters {
    started: i64,
    bounces: i64,
    duration_ms: i64,
    pageviews: i64,
    entries: Bounded,
    exits: Bounded,
}

#[derive(Deserialize)]
struct Counters {
    events: Bounded,
    pageviews: i64,
    revenue: BTreeMap<String, Decimal>,
    dims: [Bounded; super::v2::OLD_DIMS],
    by_name: Vec<(String, [Bounded; super::v2::OLD_DIMS])>,
    sessions: SessionCounters,
}

#[derive(Deserialize)]
struct Cell {
    counters: Counters,
    users: Vec<u8>,
}

#[derive(Deserialize)]
struct CellDelta {
    counters: Counters,
    users: BTreeSet<u64>,
}

/// A user's one open session, in arrival order.
#[derive(Deserialize)]
struct UserSession {
    start_ms: i64,
    last_ms: i64,
    pageviews: u32,
    exit: Option<String>,
}

#[derive(Deserialize)]
struct PartitionState {
    through_seq: u64,
    cells: BTreeMap<CellKey, Cell>,
    users: HashMap<u64, UserSession>,
    dropped_late: u64,
    applied: u64,
    newest_received_ms: i64,
    newest_event_ms: i64,
    cutoffs: [i64; 3],
    forgotten_before: i64,
}

#[derive(Deserialize)]
struct Delta {
    through_seq: u64,
    cells: BTreeMap<CellKey, CellDelta>,
    users: HashMap<u64, UserSession>,
    cutoffs: [i64; 3],
    forget_before: i64,
    top_n: usize,
    dropped_late: u64,
    applied: u64,
    newest_received_ms: i64,
    newest_event_ms: i64,
}

pub(super) fn delta(bytes: &[u8]) -> Result<state::Delta, postcard::Error> {
    let d: Delta = postcard::from_bytes(bytes)?;
    Ok(state::Delta {
        through_seq: d.through_seq,
        cells: d
            .cells
            .into_iter()
            .map(|(k, c)| {
                let delta = cell::CellDelta {
                    counters: c.counters.into(),
                    users: c.users,
                };
                (k, delta)
            })
            .collect(),
        users: sessions(d.users),
        cutoffs: d.cutoffs,
        forget_before: d.forget_before,
        top_n: d.top_n,
        dropped_late: d.dropped_late,
        session_late: 0,
        applied: d.applied,
        newest_received_ms: d.newest_received_ms,
        newest_event_ms: d.newest_event_ms,
    })
}

pub(super) fn snapshot(bytes: &[u8]) -> Result<state::PartitionState, postcard::Error> {
    let s: PartitionState = postcard::from_bytes(bytes)?;
    let mut cells = BTreeMap::new();
    for (key, c) in s.cells {
        let users = datasketches::hll::HllSketch::deserialize(&c.users)
            .map_err(|_| postcard::Error::DeserializeBadEncoding)?;
        cells.insert(
            key,
            cell::Cell {
                counters: c.counters.into(),
                users,
            },
        );
    }
    Ok(state::PartitionState {
        through_seq: s.through_seq,
        cells,
        users: sessions(s.users),
        dropped_late: s.dropped_late,
        session_late: 0,
        applied: s.applied,
        newest_received_ms: s.newest_received_ms,
        newest_event_ms: s.newest_event_ms,
        cutoffs: s.cutoffs,
        forgotten_before: s.forgotten_before,
    })
}

/// A format-1 user's one open session becomes one remembered session. Format 1
/// kept only its exit page; its entry page was counted but not kept. Events
/// of the user at or before the session's last event are therefore
/// session-late (`since_ms` just after it), so the session can only grow later
/// and its start never moves: the entry stands for the counted one under the
/// exit's path, and every correction takes it out and puts it back in the
/// same bucket, where the two cancel.
fn sessions(users: HashMap<u64, UserSession>) -> HashMap<u64, session::UserSessions> {
    users
        .into_iter()
        .map(|(k, u)| {
            let visit = |ts_ms| {
                u.exit.as_deref().map(|path| session::Visit {
                    ts_ms,
                    path: path.into(),
                })
            };
            let s = session::Session {
                start_ms: u.start_ms,
                end_ms: u.last_ms,
                pageviews: u.pageviews,
                entry: visit(u.start_ms),
                exit: visit(u.last_ms),
            };
            let user = session::UserSessions {
                since_ms: u.last_ms.saturating_add(1),
                sessions: vec![s],
            };
            (k, user)
        })
        .collect()
}

impl From<Counters> for cell::Counters {
    fn from(c: Counters) -> Self {
        let s = c.sessions;
        super::v2::counters(
            c.events,
            c.pageviews,
            c.revenue,
            c.dims,
            c.by_name,
            cell::SessionCounters {
                started: s.started,
                bounces: s.bounces,
                duration_ms: s.duration_ms,
                pageviews: s.pageviews,
                entries: s.entries,
                exits: s.exits,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Reach;

    const MIN: i64 = 60_000;

    #[test]
    fn a_format_1_session_only_grows_later_and_its_entry_cancels_out() {
        let old = UserSession {
            start_ms: 0,
            last_ms: 10 * MIN,
            pageviews: 2,
            exit: Some("/x".into()),
        };
        let mut users = sessions(HashMap::from([(7, old)]));
        let user = users.get_mut(&7).expect("converted");
        let reach = Reach {
            timeout_ms: 30 * MIN,
            memory_ms: 24 * 60 * MIN,
        };
        assert!(user.is_late(5 * MIN, reach), "its start cannot move");
        let change = user.place(20 * MIN, Some("/y"), reach).expect("it grows");
        let mut booked = cell::SessionCounters::default();
        for s in &change.removed {
            s.book(&mut booked, -1);
        }
        change.added.book(&mut booked, 1);
        booked.entries.drop_zeros();
        booked.exits.drop_zeros();
        assert!(
            booked.entries.is_empty(),
            "the entry format 1 counted stays"
        );
        let exits: Vec<(&str, i64)> = booked.exits.iter().collect();
        assert_eq!(exits, [("/x", -1), ("/y", 1)]);
        assert_eq!(
            (
                booked.started,
                booked.bounces,
                booked.pageviews,
                booked.duration_ms
            ),
            (0, 0, 1, 10 * MIN)
        );
    }
}
