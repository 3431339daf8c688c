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
    dims: [Bounded; 6],
    by_name: Vec<(String, [Bounded; 6])>,
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
        applied: s.applied,
        newest_received_ms: s.newest_received_ms,
        newest_event_ms: s.newest_event_ms,
        cutoffs: s.cutoffs,
        forgotten_before: s.forgotten_before,
    })
}

fn sessions(users: HashMap<u64, UserSession>) -> HashMap<u64, session::UserSession> {
    users
        .into_iter()
        .map(|(k, u)| {
            let s = session::UserSession {
                start_ms: u.start_ms,
                last_ms: u.last_ms,
                pageviews: u.pageviews,
                exit: u.exit,
            };
            (k, s)
        })
        .collect()
}

impl From<Counters> for cell::Counters {
    fn from(c: Counters) -> Self {
        let s = c.sessions;
        cell::Counters {
            events: c.events,
            pageviews: c.pageviews,
            revenue: c.revenue,
            dims: c.dims,
            by_name: c.by_name.into(),
            sessions: cell::SessionCounters {
                started: s.started,
                bounces: s.bounces,
                duration_ms: s.duration_ms,
                pageviews: s.pageviews,
                entries: s.entries,
                exits: s.exits,
            },
        }
    }
}
