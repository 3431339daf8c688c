//! The bounds every event is checked against; operators tune them in config.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Validation limits. `Limits::default()` holds the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted event, in bytes of its JSON.
    pub max_event_bytes: usize,
    /// Most events in one request or message.
    pub max_batch_events: usize,
    /// Longest event name, user id, anonymous id, event id and property key (characters).
    pub max_name_chars: usize,
    /// Longest string property value (characters).
    pub max_value_chars: usize,
    /// Most top-level properties.
    pub max_props: usize,
    /// Deepest nesting of objects and arrays inside `props`.
    pub max_depth: usize,
    /// How far ahead of the server clock an event time may be.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// How old an event time may be.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Keep the client IP address on the event (off by default).
    pub keep_ip: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 32 * 1024,
            max_batch_events: 1000,
            max_name_chars: 200,
            max_value_chars: 4096,
            max_props: 256,
            max_depth: 8,
            max_future_skew: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(30 * 24 * 3600),
            keep_ip: false,
        }
    }
}
