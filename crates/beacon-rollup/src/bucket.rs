//! Time buckets: every event counts in the 1-minute, 1-hour and 1-day bucket
//! (UTC) its event time falls in, each kept for its own retention.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The width of a rollup bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Width in milliseconds.
    pub const fn millis(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// Start (Unix ms, UTC) of the bucket holding `ts_ms`.
    pub const fn bucket_start(self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.millis()) * self.millis()
    }

    pub const fn index(self) -> usize {
        match self {
            Granularity::Minute => 0,
            Granularity::Hour => 1,
            Granularity::Day => 2,
        }
    }

    /// The short name used in config and APIs: `1m`, `1h`, `1d`.
    pub const fn label(self) -> &'static str {
        match self {
            Granularity::Minute => "1m",
            Granularity::Hour => "1h",
            Granularity::Day => "1d",
        }
    }
}

/// How long buckets of each granularity are kept, counted back from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    #[serde(with = "humantime_serde")]
    pub minute: Duration,
    #[serde(with = "humantime_serde")]
    pub hour: Duration,
    #[serde(with = "humantime_serde")]
    pub day: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Retention {
            minute: Duration::from_secs(48 * HOUR),
            hour: Duration::from_secs(90 * 24 * HOUR),
            day: Duration::from_secs(730 * 24 * HOUR),
        }
    }
}

impl Retention {
    pub fn of(&self, granularity: Granularity) -> Duration {
        match granularity {
            Granularity::Minute => self.minute,
            Granularity::Hour => self.hour,
            Granularity::Day => self.day,
        }
    }

    /// Per granularity, the oldest bucket start still kept at `now_ms`: a bucket
    /// is kept while any part of it is younger than its retention.
    pub fn cutoffs(&self, now_ms: i64) -> [i64; 3] {
        Granularity::ALL.map(|g| {
            let keep = i64::try_from(self.of(g).as_millis()).unwrap_or(i64::MAX);
            g.bucket_start(now_ms.saturating_sub(keep))
        })
    }

    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.minute > self.hour || self.hour > self.day {
            problems.push(
                "aggregator.retention must not shrink with coarser buckets (minute ≤ hour ≤ day)"
                    .to_owned(),
            );
        }
        if Granularity::ALL
            .iter()
            .any(|g| self.of(*g).as_millis() < g.millis() as u128)
        {
            problems.push(
                "aggregator.retention must keep at least one bucket of each granularity".to_owned(),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_utc_aligned_also_before_1970() {
        assert_eq!(Granularity::Minute.bucket_start(119_999), 60_000);
        assert_eq!(
            Granularity::Hour.bucket_start(3_600_000 * 5 + 1),
            3_600_000 * 5
        );
        assert_eq!(Granularity::Day.bucket_start(-1), -86_400_000);
    }

    #[test]
    fn cutoffs_keep_the_bucket_that_straddles_the_edge() {
        let r = Retention {
            minute: Duration::from_secs(120),
            hour: Duration::from_secs(3600),
            day: Duration::from_secs(86_400),
        };
        let now = 10 * 86_400_000 + 90_000; // 1.5 min into a day
        let [m, h, d] = r.cutoffs(now);
        assert_eq!(m, now - 90_000 - 60_000); // the minute that began 2.5 min ago is gone
        assert_eq!(h, 9 * 86_400_000 + 23 * 3_600_000);
        assert_eq!(d, 9 * 86_400_000);
        assert!(r.problems().is_empty());
    }
}
