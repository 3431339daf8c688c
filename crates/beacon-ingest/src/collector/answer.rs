//! How each protocol's senders expect to be answered. Statuses are the same for
//! every protocol (so each SDK's retry rules do the right thing: 4xx is final,
//! 429 and 503 are retried); only the body's shape differs.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::pipeline::ItemResult;

/// The protocol a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native,
    PostHog,
    Segment,
    Plausible,
}

impl Protocol {
    /// The body of a refusal, in the fields this protocol's SDKs read.
    fn error_body(self, status: StatusCode, reason: &str, message: &str) -> Value {
        match self {
            Protocol::Native => json!({"error": {"reason": reason, "message": message}}),
            // posthog-python reads `detail`; PostHog's capture also sends `type` and `code`.
            Protocol::PostHog => {
                let kind = match status.as_u16() {
                    401 => "authentication_error",
                    500.. => "server_error",
                    _ => "validation_error",
                };
                json!({"type": kind, "code": reason, "detail": message})
            }
            // segment-analytics-python reads `code` and `message`.
            Protocol::Segment => json!({"success": false, "code": reason, "message": message}),
            Protocol::Plausible => json!({"errors": {reason: [message]}}),
        }
    }

    /// A request refused as a whole.
    pub fn refusal(self, error: ApiError) -> Response {
        let status = error.status();
        let (reason, message) = error.reason_and_message();
        let mut response =
            (status, Json(self.error_body(status, reason, &message))).into_response();
        if let Some(value) = error.retry_after_header() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        // The rest of a body that came too slowly is not waited for: the
        // connection ends with this answer.
        if matches!(error, ApiError::Timeout(_)) {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }

    /// Per-event results: 2xx when at least one event was stored (or already
    /// was), 400 when every one was refused. Every protocol's body also carries
    /// Beacon's counts and one result per event, which SDKs ignore and people read.
    pub fn results(self, results: Vec<ItemResult>) -> Response {
        let count = |f: fn(&ItemResult) -> bool| results.iter().filter(|r| f(r)).count();
        let accepted = count(|r| matches!(r, ItemResult::Accepted { .. }));
        let duplicates = count(|r| matches!(r, ItemResult::Duplicate { .. }));
        let rejected = results.len() - accepted - duplicates;
        let first_refusal = results.iter().find_map(|r| match r {
            ItemResult::Rejected { rejection } => Some(rejection.clone()),
            _ => None,
        });
        let indexed: Vec<Indexed> = results
            .into_iter()
            .enumerate()
            .map(|(index, result)| Indexed { index, result })
            .collect();
        let counts = json!({"accepted": accepted, "duplicates": duplicates, "rejected": rejected, "results": indexed});
        let (status, head) = match first_refusal {
            Some(r) if accepted + duplicates == 0 && self != Protocol::Native => (
                StatusCode::BAD_REQUEST,
                self.error_body(StatusCode::BAD_REQUEST, r.reason.as_str(), &r.message),
            ),
            _ if accepted + duplicates == 0 => (StatusCode::BAD_REQUEST, json!({})),
            _ => match self {
                Protocol::Native => (StatusCode::OK, json!({})),
                Protocol::PostHog => (StatusCode::OK, json!({"status": 1})),
                Protocol::Segment => (StatusCode::OK, json!({"success": true})),
                // Plausible answers 202 Accepted.
                Protocol::Plausible => (StatusCode::ACCEPTED, json!({})),
            },
        };
        let mut body = head;
        if let (Value::Object(body), Value::Object(counts)) = (&mut body, counts) {
            body.extend(counts);
        }
        (status, Json(body)).into_response()
    }
}

/// One result per event, numbered by position in the request.
#[derive(Debug, Serialize)]
struct Indexed {
    index: usize,
    #[serde(flatten)]
    result: ItemResult,
}
