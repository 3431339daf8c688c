//! Names of the aggregator's Prometheus metrics (rendered at `/metrics` by the
//! process's HTTP listener).

pub const APPLIED: &str = "beacon_aggregator_events_applied_total";
pub const DROPPED_LATE: &str = "beacon_aggregator_events_dropped_late_total";
pub const SESSION_LATE: &str = "beacon_aggregator_events_session_late_total";
pub const UNREADABLE: &str = "beacon_aggregator_events_unreadable_total";
pub const COMMIT_SECONDS: &str = "beacon_aggregator_commit_seconds";
pub const COMMIT_FAILURES: &str = "beacon_aggregator_commit_failures_total";
pub const READERS_REOPENED: &str = "beacon_aggregator_readers_reopened_total";
pub const FENCED: &str = "beacon_aggregator_fenced_total";
pub const STATE_BYTES: &str = "beacon_aggregator_state_bytes";
pub const SESSION_BYTES: &str = "beacon_aggregator_session_bytes";
pub const LAG: &str = "beacon_aggregator_lag_events";
pub const FRESHNESS: &str = "beacon_aggregator_freshness_seconds";
pub const OWNED: &str = "beacon_aggregator_partitions_owned";
pub const COMMITTED_SEQ: &str = "beacon_aggregator_committed_sequence";
pub const SEGMENT_ROWS: &str = "beacon_store_rows_written_total";
pub const SEGMENT_BYTES: &str = "beacon_store_bytes_written_total";
pub const STORE_FLUSH_SECONDS: &str = "beacon_store_flush_seconds";
pub const STORE_COMMITTED_SEQ: &str = "beacon_store_committed_sequence";
pub const STORE_FLUSH_FAILURES: &str = "beacon_store_flush_failures_total";
