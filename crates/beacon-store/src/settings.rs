//! Event store settings (`[store]` in the config); defaults as documented in
//! docs/CONFIG.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Whether the partition owners write segments at all.
    pub enabled: bool,
    /// A partition's buffered rows are written as a segment once there are this many…
    pub flush_rows: usize,
    /// …or once the oldest of them has waited this long.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Whether small segments are merged into larger ones.
    pub compaction: bool,
    /// Merge this many consecutive segments of one level into one of the next.
    pub compaction_fan_in: usize,
    /// Never make a segment of more rows than this by merging.
    pub compaction_max_rows: u64,
    /// Drop whole segments whose newest event is older than this; none: keep all.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// A segment file no manifest names (its writer died between upload and
    /// commit) is deleted once it is this old.
    #[serde(with = "humantime_serde")]
    pub orphan_grace: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            enabled: true,
            flush_rows: 100_000,
            flush_interval: Duration::from_secs(30),
            compaction: true,
            compaction_fan_in: 8,
            compaction_max_rows: 2_000_000,
            retention: None,
            orphan_grace: Duration::from_secs(3600),
        }
    }
}

/// Largest `flush_rows`: a partition's buffer is held in memory.
pub const MAX_FLUSH_ROWS: usize = 1_000_000;

impl StoreSettings {
    /// Everything wrong with these settings, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=MAX_FLUSH_ROWS).contains(&self.flush_rows) {
            problems.push(format!(
                "store.flush_rows must be 1 to {MAX_FLUSH_ROWS} (rows a partition buffers in memory), not {}",
                self.flush_rows
            ));
        }
        if self.flush_interval < Duration::from_secs(1)
            || self.flush_interval > Duration::from_secs(3600)
        {
            problems.push(
                "store.flush_interval must be 1s to 1h (events wait this long for a segment; \
                 until then query nodes answer them from memory)"
                    .to_owned(),
            );
        }
        if self.compaction_fan_in < 2 {
            problems.push("store.compaction_fan_in must be at least 2".to_owned());
        }
        if self.compaction_max_rows < self.flush_rows as u64 {
            problems.push("store.compaction_max_rows must be at least store.flush_rows".to_owned());
        }
        if self
            .retention
            .is_some_and(|r| r < Duration::from_secs(3600))
        {
            problems.push(
                "store.retention must be at least 1h (or left out to keep every segment)"
                    .to_owned(),
            );
        }
        if self.orphan_grace < Duration::from_secs(60) {
            problems.push(
                "store.orphan_grace must be at least 1m: a segment being committed must not be taken for an orphan"
                    .to_owned(),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_each_bad_value_is_named() {
        assert!(StoreSettings::default().problems().is_empty());
        let bad = StoreSettings {
            flush_rows: MAX_FLUSH_ROWS + 1,
            flush_interval: Duration::ZERO,
            compaction_fan_in: 1,
            compaction_max_rows: 10,
            retention: Some(Duration::from_secs(60)),
            orphan_grace: Duration::from_secs(1),
            ..StoreSettings::default()
        };
        let problems = bad.problems().join("\n");
        for name in [
            "flush_rows",
            "flush_interval",
            "compaction_fan_in",
            "compaction_max_rows",
            "retention",
            "orphan_grace",
        ] {
            assert!(problems.contains(&format!("store.{name}")), "{problems}");
        }
    }
}
