//! Aggregator settings (`[aggregator]` in the config); defaults as documented.

use std::time::Duration;

use beacon_rollup::{Retention, RollupSettings};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorSettings {
    /// Prefix of this aggregator's member id (a random suffix keeps ids unique).
    pub name: String,
    /// Commit at least this often while events arrive.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit once this many events are pending, even before the interval.
    pub commit_max_events: u64,
    /// A dead aggregator's partitions move after this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Write a snapshot (and trim the log) once the deltas since the last one
    /// exceed this and the last snapshot's size.
    pub snapshot_min_bytes: usize,
    pub retention: Retention,
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub session_memory: Duration,
    pub top_n: usize,
}

impl Default for AggregatorSettings {
    fn default() -> Self {
        let rollup = RollupSettings::default();
        AggregatorSettings {
            name: "aggregator".to_owned(),
            commit_interval: Duration::from_millis(250),
            commit_max_events: 20_000,
            lease_ttl: Duration::from_secs(10),
            snapshot_min_bytes: 4 * 1024 * 1024,
            retention: rollup.retention,
            session_timeout: rollup.session_timeout,
            session_memory: rollup.session_memory,
            top_n: rollup.top_n,
        }
    }
}

impl AggregatorSettings {
    pub fn rollup(&self) -> RollupSettings {
        RollupSettings {
            retention: self.retention,
            session_timeout: self.session_timeout,
            session_memory: self.session_memory,
            top_n: self.top_n,
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.rollup().problems();
        if self.commit_interval.is_zero() || self.commit_max_events == 0 {
            problems.push(
                "aggregator.commit_interval and aggregator.commit_max_events must be positive"
                    .to_owned(),
            );
        }
        if self.lease_ttl < Duration::from_secs(2) {
            problems.push("aggregator.lease_ttl must be at least 2s".to_owned());
        }
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            problems.push(
                "aggregator.name must be letters, digits, '-' and '_' (it names KV keys)"
                    .to_owned(),
            );
        }
        problems
    }
}
