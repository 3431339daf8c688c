//! Rollups: what the aggregators keep per partition, and the one way that state
//! changes. An owner turns events into a [`Delta`] (the *outcome* of a batch of
//! events: counter increments, sketch inputs, new session states), commits the
//! delta together with the stream sequence it reached, and only then applies
//! it with [`PartitionState::apply`]. Recovery folds the same deltas with the
//! same function, so a restarted owner holds exactly the state its predecessor
//! committed: no event counted twice, none skipped.

pub mod bounded;
pub mod bucket;
pub mod cell;
pub mod session;
pub mod state;
pub mod view;

pub use bounded::{Bounded, OTHER};
pub use bucket::{Granularity, Retention};
pub use cell::{Cell, CellDelta, CellKey, Counters, DIMENSIONS, Dimension, SessionCounters};
pub use session::UserSession;
pub use state::{Delta, Outcome, PAGEVIEW, PartitionState, RollupSettings, Working};
pub use view::View;
