//! Rollups: what the aggregators keep per partition, the one way that state
//! changes, the merged view readers answer from, and the versioned format the
//! rollup log stores them in ([`record`]). No I/O: the aggregators (`beacon-aggregate`)
//! and the query nodes (`beacon-query`) both build on it.
//!
//! An owner turns events into a [`Delta`] (the *outcome* of a batch of
//! events: counter increments, sketch inputs, the new sessions of the users they touched), commits the
//! delta together with the stream sequence it reached, and only then applies
//! it with [`PartitionState::apply`]. Recovery folds the same deltas with the
//! same function, so a restarted owner holds exactly the state its predecessor
//! committed: no event counted twice, none skipped.

pub mod bounded;
pub mod bucket;
pub mod cell;
pub mod record;
pub mod session;
pub mod state;
pub mod tally;
pub mod view;

#[cfg(test)]
mod event_time_tests;

pub use bounded::{Bounded, OTHER};
pub use bucket::{Granularity, Retention};
pub use cell::{
    ByName, Cell, CellDelta, CellKey, Counters, DIMENSIONS, DIMS, Dimension, Engagement,
    SessionCounters,
};
pub use session::{MAX_SESSIONS_PER_USER, Reach, Session, UserSessions, Visit};
pub use state::{Delta, Outcome, PAGEVIEW, PartitionState, RollupSettings, Working};
pub use tally::Tally;
pub use view::View;
