//! The one error every query answer can be: a status code (HTTP's, also used
//! as the NATS service error code) and a message saying what to change.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The kind of [`QueryError::not_in_rollups`].
pub const NOT_IN_ROLLUPS: &str = "not_in_rollups";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct QueryError {
    pub status: u16,
    pub message: String,
    /// For SQL answers, what kind of failure (`row_limit`, `read_only`, …):
    /// sent beside the status so clients need not read the message.
    pub kind: Option<&'static str>,
}

impl QueryError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        QueryError {
            status,
            message: message.into(),
            kind: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 409: the change contradicts what exists (a goal defined in the config file).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }

    /// 400 from the rollups for a question they cannot answer exactly (a
    /// range whose buckets are gone, a figure they do not keep): the planner
    /// asks the event store instead, so it reaches a client only from the
    /// rollup engine called alone.
    pub fn not_in_rollups(message: impl Into<String>) -> Self {
        QueryError {
            status: 400,
            message: message.into(),
            kind: Some(NOT_IN_ROLLUPS),
        }
    }

    /// 500: answering hit a bug (a caught panic).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
}

/// The status and kind of each way a SQL query fails. Limits are the
/// query's to change (4xx); only `unavailable` is worth retrying as is.
impl From<beacon_store::SqlError> for QueryError {
    fn from(e: beacon_store::SqlError) -> Self {
        use beacon_store::SqlErrorKind as Kind;
        let (status, kind) = match e.kind {
            Kind::Invalid => (400, "invalid"),
            Kind::ReadOnly => (403, "read_only"),
            Kind::TimeLimit => (408, "time_limit"),
            Kind::RowLimit => (413, "row_limit"),
            Kind::MemoryLimit => (422, "memory_limit"),
            Kind::Unavailable => (503, "unavailable"),
        };
        QueryError {
            status,
            message: e.message,
            kind: Some(kind),
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({"error": self.message, "status": self.status});
        if let Some(kind) = self.kind {
            body["kind"] = kind.into();
        }
        let mut response = (status, Json(body)).into_response();
        if self.status == 401 {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"beacon\""),
            );
        }
        if self.status == 503 {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
