//! A job: one delivery to one target of one rule, as stored on the work queue.
//! It outlives the process that made it, so it carries a format version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The job format this code writes. Readers accept every version listed in
/// [`Job::read`].
pub const JOB_VERSION: u32 = 1;

/// What happened, for the receiver to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// An event matched an event rule; `data` is the event.
    Event,
    /// A window's count crossed a threshold; `data` has the figures.
    Threshold,
    /// A window's count spiked against its baseline; `data` has the figures.
    Spike,
    /// A scheduled summary; `data` has the period (`from`, `to`) and the
    /// query service's summary of it (`summary`: each figure, the previous
    /// period's and the change).
    Report,
}

/// One job. The same job, retried or redelivered, always has the same `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Format version ([`JOB_VERSION`]).
    pub v: u32,
    /// The idempotency key: `<rule>/<event id>` for event rules,
    /// `<rule>/<window or period start, RFC 3339>` for the others.
    pub key: String,
    pub rule: String,
    pub site: String,
    pub kind: JobKind,
    /// `webhook` or `email`: which of the rule's targets this job is for.
    pub target: String,
    pub created_at: DateTime<Utc>,
    pub data: Value,
}

/// Why stored bytes are not a job this code can deliver.
#[derive(Debug, thiserror::Error)]
pub enum JobFormatError {
    #[error("not a Beacon job: {0}")]
    Malformed(String),
    #[error("job format version {0} is newer than this Beacon reads ({JOB_VERSION}); upgrade it")]
    TooNew(u32),
}

#[derive(Deserialize)]
struct Version {
    v: u32,
}

impl Job {
    /// Read a stored job of any released format version.
    pub fn read(bytes: &[u8]) -> Result<Job, JobFormatError> {
        let malformed = |e: serde_json::Error| JobFormatError::Malformed(e.to_string());
        let version: Version = serde_json::from_slice(bytes).map_err(malformed)?;
        match version.v {
            1 => serde_json::from_slice(bytes).map_err(malformed),
            newer => Err(JobFormatError::TooNew(newer)),
        }
    }

    /// The `Nats-Msg-Id` that makes a second enqueue of this job (another copy
    /// of the service, or a retry) a duplicate JetStream drops.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.key, self.target)
    }

    /// A one-line description, for Slack messages and e-mail subjects.
    pub fn headline(&self) -> String {
        let figure = |k: &str| self.data.get(k).map(Value::to_string).unwrap_or_default();
        match self.kind {
            JobKind::Event => format!(
                "[{}] {}: event {} matched",
                self.site,
                self.rule,
                self.data.get("name").and_then(Value::as_str).unwrap_or("?")
            ),
            JobKind::Threshold => format!(
                "[{}] {}: {} {} {} in the window from {}",
                self.site,
                self.rule,
                figure("value"),
                figure("metric").trim_matches('"'),
                figure("condition").trim_matches('"'),
                figure("from").trim_matches('"'),
            ),
            JobKind::Spike => format!(
                "[{}] {}: {} {} in the window from {}, against a usual {}",
                self.site,
                self.rule,
                figure("value"),
                figure("metric").trim_matches('"'),
                figure("from").trim_matches('"'),
                figure("baseline_mean"),
            ),
            JobKind::Report => format!(
                "[{}] report {} to {}",
                self.site,
                figure("from").trim_matches('"'),
                figure("to").trim_matches('"')
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 1 job as written by the first release: it must stay readable.
    const V1: &str = include_str!("../tests/fixtures/job-v1.json");

    #[test]
    fn the_first_format_stays_readable() {
        let job = Job::read(V1.as_bytes()).expect("reads");
        assert_eq!(job.key, "big-purchase/evt-1");
        assert_eq!(job.kind, JobKind::Event);
        assert_eq!(job.msg_id(), "big-purchase/evt-1:webhook");
    }

    #[test]
    fn a_newer_format_is_refused_by_kind() {
        let newer = V1.replace("\"v\": 1", "\"v\": 2");
        assert!(matches!(
            Job::read(newer.as_bytes()),
            Err(JobFormatError::TooNew(2))
        ));
        assert!(matches!(
            Job::read(b"{\"v\": 1}"),
            Err(JobFormatError::Malformed(_))
        ));
    }
}
