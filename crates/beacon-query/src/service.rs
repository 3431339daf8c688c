//! The NATS micro service `beacon-query`: the same operations as the HTTP API
//! on `beacon.query.v1.<operation>`, discoverable with `$SRV.PING`, `$SRV.INFO`
//! and `$SRV.STATS`. Its endpoints share the queue group `beacon-query`, so
//! every node subscribes and each request is answered by one of them.
//!
//! A request is JSON: `{"key": "<read key>", "site": "shop", "params": {...}}`
//! with the HTTP query parameters in `params`. The answer is the HTTP answer's
//! body; an error sets `Nats-Service-Error-Code` (the HTTP status) and
//! `Nats-Service-Error` (the message).
//!
//! SQL is the endpoint `beacon.query.v1.sql`: `{"key", "site", "sql",
//! "format"}`, answered like `POST /api/v1/sites/{site}/sql`, as long as the
//! answer fits in one NATS message (the server's `max_payload`).

use std::panic::AssertUnwindSafe;

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;

use crate::error::QueryError;
use crate::{Op, Params, QueryNode};

pub const SERVICE_NAME: &str = "beacon-query";
pub const QUEUE_GROUP: &str = "beacon-query";
/// Subjects are `<SUBJECT_PREFIX>.<operation>`.
pub const SUBJECT_PREFIX: &str = "beacon.query.v1";

/// A request's body.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Request {
    pub key: Option<String>,
    pub site: Option<String>,
    pub params: Params,
}

/// A request to the `sql` endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlRequest {
    pub key: Option<String>,
    pub site: String,
    pub sql: String,
    /// `json` (the default), `arrow` or `csv`.
    pub format: Option<String>,
}

/// The name of the SQL endpoint under [`SUBJECT_PREFIX`].
pub const SQL_ENDPOINT: &str = "sql";

async fn answer_sql(node: &QueryNode, payload: &[u8]) -> Result<Bytes, QueryError> {
    let r: SqlRequest = serde_json::from_slice(payload)
        .map_err(|e| QueryError::bad_request(format!("bad request body: {e}")))?;
    let name = r.format.as_deref().unwrap_or("json");
    let format = beacon_store::SqlFormat::parse(name).ok_or_else(|| {
        QueryError::bad_request(format!(
            "format: {name:?} is not one of {}",
            beacon_store::SqlFormat::NAMES
        ))
    })?;
    let answer = node.sql(r.key.as_deref(), &r.site, &r.sql, format).await?;
    let max = node.client.server_info().max_payload;
    if answer.body.len() > max {
        return Err(QueryError {
            status: 413,
            message: format!(
                "the answer ({} bytes) is larger than one NATS message ({max} bytes): add a LIMIT or ask over HTTP",
                answer.body.len()
            ),
            kind: Some("row_limit"),
        });
    }
    Ok(answer.body)
}

/// Serve the operations until the node shuts down.
pub async fn serve(node: QueryNode) -> anyhow::Result<()> {
    let service = node
        .client
        .service_builder()
        .description("Beacon analytics queries: timeseries, breakdown, summary, properties, goals, funnel, retention, live, status, sql")
        .queue_group(QUEUE_GROUP)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the NATS query service: {e}"))?;
    let group = service.group(SUBJECT_PREFIX);
    let mut endpoints = Vec::new();
    for op in Op::ALL {
        let endpoint = group
            .endpoint(op.name())
            .await
            .map_err(|e| anyhow::anyhow!("cannot add endpoint {}: {e}", op.name()))?;
        endpoints.push(endpoint.map(move |request| (Some(op), request)).boxed());
    }
    let sql = group
        .endpoint(SQL_ENDPOINT)
        .await
        .map_err(|e| anyhow::anyhow!("cannot add endpoint {SQL_ENDPOINT}: {e}"))?;
    endpoints.push(sql.map(|request| (None, request)).boxed());
    let mut requests = futures::stream::select_all(endpoints);
    let mut shutdown = node.shutdown.clone();
    loop {
        let (op, request) = tokio::select! {
            next = requests.next() => match next {
                Some(r) => r,
                None => break,
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let node = node.clone();
        tokio::spawn(async move {
            let payload = request.message.payload.clone();
            let name = op.map_or(SQL_ENDPOINT, Op::name);
            let answer = AssertUnwindSafe(async {
                let Some(op) = op else {
                    return answer_sql(&node, &payload).await;
                };
                match serde_json::from_slice::<Request>(&payload) {
                    Ok(r) => node
                        .answer(op, r.key.as_deref(), r.site.as_deref(), &r.params)
                        .await
                        .map(Bytes::from),
                    Err(e) => Err(QueryError::bad_request(format!("bad request body: {e}"))),
                }
            })
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(op = name, "a NATS query panicked");
                metrics::counter!("beacon_request_panics_total").increment(1);
                Err(QueryError::internal(
                    "Beacon failed while answering this query (a bug)",
                ))
            });
            let reply = match answer {
                Ok(body) => Ok(body),
                // A header holds one line: a message never breaks the reply.
                Err(e) => Err(service::error::Error {
                    status: e.message.replace(['\r', '\n'], " "),
                    code: e.status as usize,
                }),
            };
            if let Err(e) = request.respond(reply).await {
                tracing::debug!(error = %e, "cannot answer a NATS query");
            }
        });
    }
    let _ = service.stop().await;
    Ok(())
}
