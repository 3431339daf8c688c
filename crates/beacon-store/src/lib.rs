//! The event store: every event of `BEACON_EVENTS`, once, in columnar Parquet
//! segments beside the rollups. [`schema`] fixes what a segment holds and turns
//! canonical events into Arrow rows, [`segment`] reads and writes the files,
//! [`manifest`] says which files hold a partition's events, and [`compact`]
//! decides which to merge or drop. The read side: [`view`] (manifests and the
//! in-memory tail, kept current by [`follow`]), [`cache`] (segment files on
//! local disk), [`engine`] (SQL and export) and [`output`] (their encodings).

pub mod cache;
pub mod compact;
pub mod engine;
pub mod follow;
pub mod manifest;
pub mod output;
pub mod schema;
pub mod segment;
pub mod settings;
mod trunc;
pub mod view;

/// The engine's own DataFusion (Arrow, Parquet), for readers of its answers.
pub use datafusion;

pub use cache::{CacheSettings, SegmentCache};
pub use engine::{Answer, Engine, SqlError, SqlErrorKind, SqlLimits, Step};
pub use output::{ExportFormat, SqlFormat};
pub use view::StoreView;

/// Arrow as the store uses it, for crates that read rows without depending on it themselves.
pub use datafusion::arrow;
pub use datafusion::arrow::array::RecordBatch;
pub use manifest::{MANIFEST_BUCKET, Manifest, ManifestError, SEGMENT_BUCKET, SegmentMeta};
pub use schema::{Rows, SEGMENT_FORMAT_VERSION, StoredEvent, segment_schema};
pub use settings::StoreSettings;
