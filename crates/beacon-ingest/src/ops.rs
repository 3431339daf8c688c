//! The operational endpoints every Beacon HTTP listener has: `/healthz`,
//! `/readyz` (is NATS connected) and `/metrics` (Prometheus). Services without
//! an API of their own (an aggregator alone) serve just these.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

/// Something else a process's readiness waits for, such as a query node
/// loading the rollups.
#[derive(Clone)]
pub struct Gate {
    name: &'static str,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("name", &self.name).finish()
    }
}

impl Gate {
    pub fn new(name: &'static str, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Gate {
            name,
            ready: Arc::new(ready),
        }
    }
}

/// 200 while `client` is connected to NATS and every gate is open, 503 otherwise.
pub fn readiness(client: &async_nats::Client, gates: &[Gate]) -> Response {
    let state = client.connection_state();
    let nats = format!("{state:?}").to_lowercase();
    let waiting: Vec<&str> = gates
        .iter()
        .filter(|g| !(g.ready)())
        .map(|g| g.name)
        .collect();
    let (status, word) = if state == async_nats::connection::State::Connected && waiting.is_empty()
    {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    let mut body = json!({"status": word, "nats": nats});
    if !waiting.is_empty() {
        body["waiting_for"] = json!(waiting);
    }
    (status, Json(body)).into_response()
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(client: async_nats::Client, gates: Vec<Gate>) -> Router {
    crate::metrics::handle();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move { readiness(&client, &gates) }),
        )
        .route("/metrics", get(|| async { crate::metrics::render() }))
}

/// Serve [`router`] and `extra` routes on `listener` until `shutdown` resolves,
/// closing connections whose headers take longer than `header_read_timeout`.
pub async fn serve(
    client: async_nats::Client,
    gates: Vec<Gate>,
    extra: Router,
    listener: TcpListener,
    header_read_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app =
        router(client, gates)
            .merge(extra)
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                crate::collector::panic_response,
            ));
    crate::serve::serve(listener, app, header_read_timeout, shutdown).await
}
