//! Why input is refused: a stable machine-readable reason plus a message for people.

use std::fmt;

use serde::Serialize;

/// A stable reason code. Appears in responses, in `BEACON_REJECTS` headers and as
/// the `reason` label of the rejected-events metric, so it never changes spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // Whole-body problems.
    EmptyBody,
    MalformedJson,
    InvalidUtf8,
    InvalidEncoding,
    BodyTooLarge,
    BatchTooLarge,
    MissingKey,
    UnknownKey,
    // Per-event problems.
    NotAnObject,
    UnknownField,
    EventTooLarge,
    InvalidId,
    MissingName,
    InvalidName,
    InvalidUser,
    MissingUser,
    InvalidTimestamp,
    TimestampInFuture,
    TimestampTooOld,
    /// The event time, corrected for the sender's clock, is beyond any representable time.
    TimestampOutOfRange,
    InvalidProps,
    PropsTooDeep,
    InvalidRevenue,
    InvalidContext,
    SiteMismatch,
    UnknownSite,
    /// A NATS-native message that failed processing on every allowed delivery.
    TooManyDeliveries,
    /// Handling the input hit a bug in Beacon (a panic); the input is kept to replay.
    InternalError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EmptyBody => "empty_body",
            Reason::MalformedJson => "malformed_json",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidEncoding => "invalid_encoding",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BatchTooLarge => "batch_too_large",
            Reason::MissingKey => "missing_key",
            Reason::UnknownKey => "unknown_key",
            Reason::NotAnObject => "not_an_object",
            Reason::UnknownField => "unknown_field",
            Reason::EventTooLarge => "event_too_large",
            Reason::InvalidId => "invalid_id",
            Reason::MissingName => "missing_name",
            Reason::InvalidName => "invalid_name",
            Reason::InvalidUser => "invalid_user",
            Reason::MissingUser => "missing_user",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::TimestampInFuture => "timestamp_in_future",
            Reason::TimestampTooOld => "timestamp_too_old",
            Reason::TimestampOutOfRange => "timestamp_out_of_range",
            Reason::InvalidProps => "invalid_props",
            Reason::PropsTooDeep => "props_too_deep",
            Reason::InvalidRevenue => "invalid_revenue",
            Reason::InvalidContext => "invalid_context",
            Reason::SiteMismatch => "site_mismatch",
            Reason::UnknownSite => "unknown_site",
            Reason::TooManyDeliveries => "too_many_deliveries",
            Reason::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the reason code and a sentence saying exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}
