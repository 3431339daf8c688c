//! The operational endpoints every Beacon HTTP listener has: `/healthz`,
//! `/readyz` (is NATS connected) and `/metrics` (Prometheus). Services without
//! an API of their own (an aggregator alone) serve just these.

use std::future::Future;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

/// 200 while `client` is connected to NATS, 503 otherwise.
pub fn readiness(client: &async_nats::Client) -> Response {
    let state = client.connection_state();
    let nats = format!("{state:?}").to_lowercase();
    let (status, word) = if state == async_nats::connection::State::Connected {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    (status, Json(json!({"status": word, "nats": nats}))).into_response()
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(client: async_nats::Client) -> Router {
    crate::metrics::handle();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || async move { readiness(&client) }))
        .route("/metrics", get(|| async { crate::metrics::render() }))
}

/// Serve [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    client: async_nats::Client,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(client))
        .with_graceful_shutdown(shutdown)
        .await
}
