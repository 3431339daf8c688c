//! The last line of defence on ingest routes: a panic while handling a
//! request answers 500 `internal_error` and records the input in
//! `BEACON_REJECTS_UNAUTH` (the guard cannot know whether the request's key
//! was checked, so no site vouches for it), so the sender hears what happened
//! and an operator can replay the input that hit the bug. No panic should be reachable from input
//! in the first place; this bounds the damage of one that is.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use beacon_core::{Reason, Rejection};
use chrono::Utc;
use futures::FutureExt;

use super::{ApiError, Collector, refuse};

/// Where a handler leaves the request's decoded body once it has read it, so
/// that the input can still be recorded if the handler then panics.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawSlot(Arc<Mutex<Option<Bytes>>>);

impl RawSlot {
    /// Remember `raw` as this request's input (cheap: `Bytes` is shared).
    pub(crate) fn keep(&self, raw: &Bytes) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(raw.clone());
        }
    }

    fn take(&self) -> Bytes {
        // A poisoned lock still holds the bytes: a panic elsewhere must not lose them.
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.take().unwrap_or_default()
    }
}

/// Middleware for ingest routes: run the handler, and turn a panic into a
/// recorded `internal_error` reject and a 500.
pub(crate) async fn record_panics(
    State(c): State<Arc<Collector>>,
    mut request: Request,
    next: Next,
) -> Response {
    let received_at = Utc::now();
    let slot = RawSlot::default();
    request.extensions_mut().insert(slot.clone());
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            tracing::error!(panic = describe(&*panic), "an ingest request panicked");
            metrics::counter!(crate::metrics::PANICS).increment(1);
            let error = ApiError::from_rejection(Rejection::new(
                Reason::InternalError,
                "Beacon failed while handling this input (a bug); it is kept in BEACON_REJECTS_UNAUTH",
            ));
            refuse(&c, error, &slot.take(), None, received_at)
                .await
                .into_response()
        }
    }
}

/// A panic's message, when it has one.
pub(crate) fn describe(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The answer to a panic anywhere else on a Beacon listener (outside the
/// ingest routes, or before a request reached them): 500 with a JSON reason.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!(panic = describe(&*panic), "a request panicked");
    metrics::counter!(crate::metrics::PANICS).increment(1);
    ApiError::from_rejection(Rejection::new(
        Reason::InternalError,
        "Beacon failed while handling this request (a bug)",
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::extract::Extension;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use beacon_core::Limits;
    use beacon_nats::{Publisher, RetryPolicy, UNAUTH_REJECTS_STREAM};
    use beacon_testing::TestServer;

    use super::*;
    use crate::collector::{CollectorSettings, body};
    use crate::pipeline::Pipeline;

    /// An ingest handler with a bug after it has read its input: what the
    /// guard exists for. (No real handler may panic on input; this one must.)
    async fn buggy(Extension(slot): Extension<RawSlot>, headers: HeaderMap, raw: Body) -> Response {
        let read = body::read_body(&headers, raw, &CollectorSettings::default(), &slot).await;
        panic!("bug after reading {:?} bytes", read.map(|r| r.len()).ok());
    }

    #[tokio::test]
    async fn a_panicking_ingest_handler_answers_500_and_keeps_the_input() {
        let nats = TestServer::start().await;
        let (client, js) = nats.provisioned(4).await;
        let pipeline = Pipeline::new(
            Publisher::new(client.clone(), RetryPolicy::default()),
            Limits::default(),
        );
        let collector = Arc::new(Collector::new(
            pipeline,
            client,
            CollectorSettings::default(),
            &[],
            4,
        ));
        let app = Router::new().route("/buggy", post(buggy)).route_layer(
            axum::middleware::from_fn_with_state(collector, record_panics),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/buggy", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let input = r#"{"name":"x","user_id":"u"}"#;
        let answer = reqwest::Client::new()
            .post(&url)
            .body(input)
            .send()
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(answer.status().as_u16(), 500);
        let body: serde_json::Value = answer.json().await.expect("JSON");
        assert_eq!(body["error"]["reason"], "internal_error", "{body}");

        let stream = js.get_stream(UNAUTH_REJECTS_STREAM).await.expect("stream");
        let kept = stream
            .get_raw_message(1)
            .await
            .expect("the reject is stored");
        assert_eq!(
            kept.headers.get("Beacon-Reason").map(|v| v.as_str()),
            Some("internal_error")
        );
        assert_eq!(&kept.payload[..], input.as_bytes());
        server.abort();
    }
}
