//! The collector's answers when a request as a whole fails. One place shows the
//! retry contract with senders: 4xx means fix the request, 429 and 503 mean
//! send the same request again after `Retry-After`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use beacon_core::{Reason, Rejection};

use super::answer::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body cannot be read as events.
    #[error("{0}")]
    BadRequest(Rejection),
    /// 401: no write key, or one Beacon does not know.
    #[error("{0}")]
    Unauthorized(Rejection),
    /// 413: the body or batch is larger than allowed.
    #[error("{0}")]
    TooLarge(Rejection),
    /// 415: a `Content-Encoding` other than gzip.
    #[error("{0}")]
    UnsupportedEncoding(Rejection),
    /// 500: handling the request hit a bug (a panic was caught).
    #[error("{0}")]
    Internal(Rejection),
    /// 408: the body did not arrive in time; the connection is closed.
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    /// 429: this key is over its rate limit.
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    /// 503: NATS is down or saturated; nothing from this request may be counted as stored.
    #[error("{message}")]
    Unavailable {
        retry_after: Duration,
        message: String,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The refusal this error reports, when it is one (not for 429 and 503, which
    /// say "send again" rather than "this input is wrong").
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            ApiError::BadRequest(r)
            | ApiError::Unauthorized(r)
            | ApiError::TooLarge(r)
            | ApiError::UnsupportedEncoding(r)
            | ApiError::Internal(r) => Some(r),
            ApiError::Timeout(_) | ApiError::RateLimited { .. } | ApiError::Unavailable { .. } => {
                None
            }
        }
    }

    /// Build the error whose status fits a whole-body rejection.
    pub fn from_rejection(rejection: Rejection) -> Self {
        match rejection.reason {
            Reason::BodyTooLarge | Reason::BatchTooLarge => ApiError::TooLarge(rejection),
            Reason::MissingKey | Reason::UnknownKey => ApiError::Unauthorized(rejection),
            Reason::InternalError => ApiError::Internal(rejection),
            _ => ApiError::BadRequest(rejection),
        }
    }
}

impl ApiError {
    /// The reason code and message a response names.
    pub fn reason_and_message(&self) -> (&'static str, String) {
        match self {
            ApiError::BadRequest(r)
            | ApiError::Unauthorized(r)
            | ApiError::TooLarge(r)
            | ApiError::UnsupportedEncoding(r)
            | ApiError::Internal(r) => (r.reason.as_str(), r.message.clone()),
            ApiError::RateLimited { .. } => (
                "rate_limited",
                "this write key sent more events than its rate limit allows; retry later"
                    .to_owned(),
            ),
            ApiError::Unavailable { message, .. } => ("unavailable", message.clone()),
            ApiError::Timeout(after) => (
                "timeout",
                format!("the request body did not arrive within {after:?}"),
            ),
        }
    }

    /// `Retry-After` in whole seconds (at least 1), for 429 and 503.
    pub fn retry_after_header(&self) -> Option<HeaderValue> {
        let after = match self {
            ApiError::RateLimited { retry_after } | ApiError::Unavailable { retry_after, .. } => {
                retry_after
            }
            _ => return None,
        };
        let secs = after.as_secs_f64().ceil().max(1.0) as u64;
        HeaderValue::from_str(&secs.to_string()).ok()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Protocol::Native.refusal(self)
    }
}
