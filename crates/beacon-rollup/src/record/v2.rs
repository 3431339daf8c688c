//! Format 2: the records of the release that introduced the `Beacon-Format`
//! header, kept readable. Frozen copies of the types it stored (field order
//! and types exactly), converted to today's after decoding. Never change them;
//! `tests/fixtures/rollups-v2.jsonl` is a real log of this format.
//!
//! Format 3 added dimensions (channel, the five `utm_*`, region, city), page
//! engagement and filtered traffic. A format-2 cell had none of them: its
//! events carried no value of the new dimensions, so they are counted there
//! under `(none)`, and its engagement and filtered traffic are zero.
//!
//! `Bounded`, `CellKey`, `SessionCounters`, sessions and sketches' byte form
//! are the same today and are reused; should one change, its format-2 form
//! gets a frozen copy here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::bounded::Bounded;
use crate::cell::{self, CellKey, DIMS, NONE, SessionCounters};
use crate::session::UserSessions;
use crate::state;

/// Dimensions of formats 1 and 2: path, referrer source, browser, OS, device, country.
pub(super) const OLD_DIMS: usize = 6;

#[derive(Deserialize)]
struct Counters {
    events: Bounded,
    pageviews: i64,
    revenue: BTreeMap<String, Decimal>,
    dims: [Bounded; OLD_DIMS],
    by_name: Vec<(String, [Bounded; OLD_DIMS])>,
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

#[derive(Deserialize)]
struct PartitionState {
    through_seq: u64,
    cells: BTreeMap<CellKey, Cell>,
    users: HashMap<u64, UserSessions>,
    dropped_late: u64,
    session_late: u64,
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
    users: HashMap<u64, UserSessions>,
    cutoffs: [i64; 3],
    forget_before: i64,
    top_n: usize,
    dropped_late: u64,
    session_late: u64,
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
        users: d.users,
        cutoffs: d.cutoffs,
        forget_before: d.forget_before,
        top_n: d.top_n,
        dropped_late: d.dropped_late,
        session_late: d.session_late,
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
        users: s.users,
        dropped_late: s.dropped_late,
        session_late: s.session_late,
        applied: s.applied,
        newest_received_ms: s.newest_received_ms,
        newest_event_ms: s.newest_event_ms,
        cutoffs: s.cutoffs,
        forgotten_before: s.forgotten_before,
    })
}

/// Formats 1 and 2 counted six dimensions; the ones added since count the
/// same events under `(none)`, as a count of them today would. `count` is
/// how many events the old dimensions add up to.
pub(super) fn widen(old: [Bounded; OLD_DIMS], count: i64) -> [Bounded; DIMS] {
    let mut dims: [Bounded; DIMS] = Default::default();
    for (slot, d) in dims.iter_mut().zip(old) {
        *slot = d;
    }
    for slot in &mut dims[OLD_DIMS..] {
        slot.add(NONE, count);
    }
    dims
}

/// An old cell's counters in today's form (shared with format 1, whose
/// counters differ only in how its sessions were stored).
pub(super) fn counters(
    events: Bounded,
    pageviews: i64,
    revenue: BTreeMap<String, Decimal>,
    dims: [Bounded; OLD_DIMS],
    by_name: Vec<(String, [Bounded; OLD_DIMS])>,
    sessions: SessionCounters,
) -> cell::Counters {
    // The count behind a set of dimensions is any one dimension's total:
    // every event is counted once in each.
    let by_name: Vec<(String, [Bounded; DIMS])> = by_name
        .into_iter()
        .map(|(name, d)| {
            let count = d[0].total();
            (name, widen(d, count))
        })
        .collect();
    let count = dims[0].total();
    cell::Counters {
        events,
        pageviews,
        revenue,
        dims: widen(dims, count),
        by_name: by_name.into(),
        sessions,
        engagement: cell::Engagement::default(),
        filtered: Bounded::default(),
    }
}

impl From<Counters> for cell::Counters {
    fn from(c: Counters) -> Self {
        counters(
            c.events,
            c.pageviews,
            c.revenue,
            c.dims,
            c.by_name,
            c.sessions,
        )
    }
}
