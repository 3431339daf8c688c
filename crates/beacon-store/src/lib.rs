//! The event store: every event of `BEACON_EVENTS`, once, in columnar Parquet
//! segments beside the rollups. [`schema`] fixes what a segment holds and turns
//! canonical events into Arrow rows, [`segment`] reads and writes the files,
//! [`manifest`] says which files hold a partition's events, and [`compact`]
//! decides which to merge or drop; writers and the SQL engine build on them.

pub mod compact;
pub mod manifest;
pub mod schema;
pub mod segment;
pub mod settings;

/// Arrow as the store uses it, for crates that read rows without depending on it themselves.
pub use datafusion::arrow;
pub use datafusion::arrow::array::RecordBatch;
pub use manifest::{MANIFEST_BUCKET, Manifest, ManifestError, SEGMENT_BUCKET, SegmentMeta};
pub use schema::{Rows, SEGMENT_FORMAT_VERSION, StoredEvent, segment_schema};
pub use settings::StoreSettings;
