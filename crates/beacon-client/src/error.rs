//! The client's errors. Each operation has one error type with a kind to
//! `match` on (as async-nats does), and whether trying again can help is
//! decided once, where the error is made: [`PublishError::is_retryable`].

use std::fmt;

/// Why events could not be published.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct PublishError {
    kind: PublishErrorKind,
    message: String,
    reason: Option<String>,
    attempts: u32,
}

/// What kind of failure a [`PublishError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The event cannot be sent as it is (no user, a bad id, not JSON). Permanent.
    Invalid,
    /// The message is larger than the server accepts. Permanent: send fewer events at once.
    TooLarge,
    /// Beacon refused the request or the event (a 4xx answer, a rejected
    /// event); [`PublishError::reason`] holds Beacon's reason code. Permanent.
    Rejected,
    /// Beacon or NATS was unreachable or did not acknowledge before the
    /// deadline. Retryable: sending the same events again is safe, they are
    /// stored once.
    Unavailable,
    /// The local buffer was full while NATS was unreachable, so the event was
    /// dropped (and counted in [`crate::Publisher::dropped`]). Retryable later.
    BufferFull,
    /// The NATS connection was closed by this program. Permanent.
    Closed,
}

impl fmt::Display for PublishErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishErrorKind::Invalid => "invalid event",
            PublishErrorKind::TooLarge => "too large",
            PublishErrorKind::Rejected => "rejected by Beacon",
            PublishErrorKind::Unavailable => "unavailable",
            PublishErrorKind::BufferFull => "local buffer full",
            PublishErrorKind::Closed => "connection closed",
        })
    }
}

impl PublishErrorKind {
    /// Whether the same publish may succeed later.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            PublishErrorKind::Unavailable | PublishErrorKind::BufferFull
        )
    }
}

impl PublishError {
    pub(crate) fn new(kind: PublishErrorKind, message: impl Into<String>) -> Self {
        PublishError {
            kind,
            message: message.into(),
            reason: None,
            attempts: 0,
        }
    }

    pub(crate) fn rejected(reason: impl Into<String>, message: impl Into<String>) -> Self {
        PublishError {
            reason: Some(reason.into()),
            ..PublishError::new(PublishErrorKind::Rejected, message)
        }
    }

    pub(crate) fn after(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Beacon's reason code (`unknown_key`, `invalid_name`, …) when Beacon refused.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// How many attempts were made before giving up (0 when none could be).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// Why a subscription stopped.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct SubscribeError {
    kind: SubscribeErrorKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeErrorKind {
    /// The site or a setting is not valid. Permanent.
    Invalid,
    /// `BEACON_EVENTS` does not exist (Beacon has not started on this NATS yet). Retryable.
    StreamNotFound,
    /// The consumer could not be created or bound, e.g. a durable of that name
    /// exists with other settings. Permanent until the settings agree.
    Consumer,
    /// The connection or the consumer's message feed failed. Retryable: a new
    /// run resumes where this one stopped.
    Disconnected,
}

impl fmt::Display for SubscribeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubscribeErrorKind::Invalid => "invalid subscription",
            SubscribeErrorKind::StreamNotFound => "no BEACON_EVENTS stream",
            SubscribeErrorKind::Consumer => "consumer",
            SubscribeErrorKind::Disconnected => "disconnected",
        })
    }
}

impl SubscribeErrorKind {
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            SubscribeErrorKind::StreamNotFound | SubscribeErrorKind::Disconnected
        )
    }
}

impl SubscribeError {
    pub(crate) fn new(kind: SubscribeErrorKind, message: impl Into<String>) -> Self {
        SubscribeError {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> SubscribeErrorKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct QueryError {
    kind: QueryErrorKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryErrorKind {
    /// The parameters were refused (400). Permanent.
    BadRequest,
    /// No read key, an unknown one, or a write key (401). Permanent.
    Unauthorized,
    /// The read key does not grant this site (403). Permanent.
    Forbidden,
    /// No such site (404). Permanent.
    NotFound,
    /// No query node answered in time, or the node is not ready yet (503). Retryable.
    Unavailable,
    /// The node failed while answering (500), or answered something this
    /// client cannot read. Permanent.
    Internal,
}

impl fmt::Display for QueryErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryErrorKind::BadRequest => "bad request",
            QueryErrorKind::Unauthorized => "unauthorized",
            QueryErrorKind::Forbidden => "forbidden",
            QueryErrorKind::NotFound => "not found",
            QueryErrorKind::Unavailable => "unavailable",
            QueryErrorKind::Internal => "internal error",
        })
    }
}

impl QueryErrorKind {
    pub const fn is_retryable(self) -> bool {
        matches!(self, QueryErrorKind::Unavailable)
    }

    /// The kind of an error answer with this HTTP status code.
    pub(crate) fn of_status(status: u64) -> Self {
        match status {
            400 => QueryErrorKind::BadRequest,
            401 => QueryErrorKind::Unauthorized,
            403 => QueryErrorKind::Forbidden,
            404 => QueryErrorKind::NotFound,
            503 | 504 | 408 | 429 => QueryErrorKind::Unavailable,
            _ => QueryErrorKind::Internal,
        }
    }
}

impl QueryError {
    pub(crate) fn new(kind: QueryErrorKind, message: impl Into<String>) -> Self {
        QueryError {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> QueryErrorKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The node's message, as it would appear in an HTTP answer.
    pub fn message(&self) -> &str {
        &self.message
    }
}
