//! The event store: every event of `BEACON_EVENTS`, once, in columnar Parquet
//! segments beside the rollups. [`schema`] fixes what a segment holds and turns
//! canonical events into Arrow rows; writers, compaction and the SQL engine
//! build on it.

pub mod manifest;
pub mod schema;
pub mod segment;

pub use manifest::{MANIFEST_BUCKET, Manifest, ManifestError, SEGMENT_BUCKET, SegmentMeta};
pub use schema::{Rows, SEGMENT_FORMAT_VERSION, StoredEvent, segment_schema};
