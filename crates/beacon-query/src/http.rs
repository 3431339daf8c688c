//! The HTTP API under `/api/v1/`: every operation as a GET with its
//! parameters in the query string and the read key as a bearer token, the
//! live stream as Server-Sent Events, SQL (POST) and exports (streamed) over
//! the event store, and the OpenAPI document describing them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use serde_json::json;

use crate::error::QueryError;
use crate::{Op, Params, QueryNode};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The routes, as written in the OpenAPI document.
pub const ROUTES: [&str; 18] = [
    "/api/v1/openapi.json",
    "/api/v1/sites",
    "/api/v1/status",
    "/api/v1/sites/{site}/timeseries",
    "/api/v1/sites/{site}/breakdown",
    "/api/v1/sites/{site}/summary",
    "/api/v1/sites/{site}/live",
    "/api/v1/sites/{site}/live/stream",
    "/api/v1/sites/{site}/sql",
    "/api/v1/sites/{site}/export",
    "/api/v1/sites/{site}/properties",
    crate::manage::GOALS_ROUTE,
    "/api/v1/sites/{site}/goals/report",
    crate::manage::GOAL_ROUTE,
    crate::manage::FUNNELS_ROUTE,
    crate::manage::FUNNEL_ROUTE,
    "/api/v1/sites/{site}/funnel",
    "/api/v1/sites/{site}/retention",
];

/// The query API's routes and the dashboard's, to serve alone or beside the
/// collector's.
pub fn router(node: QueryNode) -> Router {
    crate::dashboard::router()
        .route(ROUTES[0], get(openapi))
        .route(ROUTES[1], get(sites))
        .route(ROUTES[2], get(status))
        .route(ROUTES[7], get(live_stream))
        .route(ROUTES[8], post(sql))
        .route(ROUTES[9], get(export))
        .route("/api/v1/sites/{site}/{op}", get(site_op))
        .merge(crate::manage::routes())
        .with_state(node)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
}

/// A panic while answering: 500 with a JSON reason, and the node keeps serving.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = what, "a query panicked");
    metrics::counter!("beacon_request_panics_total").increment(1);
    QueryError::internal("Beacon failed while answering this query (a bug)").into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The bearer token of a request, if any: the one reader the collector uses too.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    beacon_core::bearer::bearer_key(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

async fn sites(
    State(node): State<QueryNode>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    respond(&node, Op::Sites, &headers, None, query).await
}

async fn status(
    State(node): State<QueryNode>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    respond(&node, Op::Status, &headers, None, query).await
}

async fn site_op(
    State(node): State<QueryNode>,
    Path((site, op)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match Op::parse(&op).filter(|op| op.per_site()) {
        Some(op) => respond(&node, op, &headers, Some(&site), query).await,
        None => QueryError::not_found(format!(
            "no operation {op:?} (timeseries, breakdown, summary, properties, live, live/stream, funnel, retention, goals, goals/report, funnels)"
        ))
        .into_response(),
    }
}

pub(crate) async fn respond(
    node: &QueryNode,
    op: Op,
    headers: &HeaderMap,
    site: Option<&str>,
    query: Option<String>,
) -> Response {
    let answer = async {
        let params = Params::from_query(query.as_deref().unwrap_or(""))?;
        node.answer(op, bearer(headers), site, &params).await
    };
    match answer.await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The body of `POST /api/v1/sites/{site}/sql` when it is JSON.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

/// `?format=` of the SQL and export routes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatQuery {
    format: Option<String>,
}

fn sql_format(
    named: Option<&str>,
    headers: &HeaderMap,
) -> Result<beacon_store::SqlFormat, QueryError> {
    use beacon_store::SqlFormat;
    match named {
        Some(name) => SqlFormat::parse(name).ok_or_else(|| {
            QueryError::bad_request(format!(
                "format: {name:?} is not one of {}",
                SqlFormat::NAMES
            ))
        }),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .and_then(SqlFormat::from_media_type)
            .unwrap_or(SqlFormat::Json)),
    }
}

/// `POST /api/v1/sites/{site}/sql`: the body is `{"sql": "...", "format": "json"}`,
/// or the SQL itself as text (`Content-Type: text/plain` or `application/sql`).
/// The format comes from the body, `?format=`, or the `Accept` header.
async fn sql(
    State(node): State<QueryNode>,
    Path(site): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: bytes::Bytes,
) -> Response {
    let answer = async {
        let query: FormatQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|e| QueryError::bad_request(format!("bad query string: {e}")))?;
        let is_text = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/plain") || t.starts_with("application/sql"));
        let (text, named) = if is_text {
            let text = std::str::from_utf8(&body)
                .map_err(|_| QueryError::bad_request("the SQL is not UTF-8"))?;
            (text.to_owned(), query.format)
        } else {
            let body: SqlBody = serde_json::from_slice(&body).map_err(|e| {
                QueryError::bad_request(format!(
                    "the body must be JSON {{\"sql\": \"SELECT ...\"}} or SQL text with Content-Type: text/plain: {e}"
                ))
            })?;
            (body.sql, body.format.or(query.format))
        };
        let format = sql_format(named.as_deref(), &headers)?;
        node.sql(bearer(&headers), &site, &text, format).await
    };
    match answer.await {
        Ok(answer) => (
            [(header::CONTENT_TYPE, answer.format.content_type())],
            answer.body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `?from=&to=&format=` of the export.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    from: String,
    to: String,
    #[serde(default)]
    format: Option<String>,
}

/// `GET /api/v1/sites/{site}/export?from=&to=&format=parquet|ndjson|csv`: every
/// event of the range, streamed as it is read. A failure after the first
/// bytes ends the response early (a client sees a truncated body).
async fn export(
    State(node): State<QueryNode>,
    Path(site): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    use beacon_store::ExportFormat;
    let answer = async {
        let q: ExportQuery =
            serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|e| {
                QueryError::bad_request(format!(
                    "export takes from, to and format (parquet, ndjson or csv): {e}"
                ))
            })?;
        let name = q.format.as_deref().unwrap_or("ndjson");
        let format = ExportFormat::parse(name).ok_or_else(|| {
            QueryError::bad_request(format!(
                "format: {name:?} is not one of {}",
                ExportFormat::NAMES
            ))
        })?;
        let stream = node
            .export(bearer(&headers), &site, &q.from, &q.to, format)
            .await?;
        Ok::<_, QueryError>((format, stream))
    };
    match answer.await {
        Ok((format, stream)) => {
            let disposition = format!(
                "attachment; filename=\"{site}-events.{}\"",
                format.extension()
            );
            (
                [
                    (header::CONTENT_TYPE, format.content_type().to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// How often the live stream sends its figures at least, and at most.
const LIVE_EVERY: Duration = Duration::from_secs(1);
const LIVE_AT_MOST: Duration = Duration::from_millis(250);

/// Where one live stream is.
struct Streamer {
    node: QueryNode,
    site: String,
    /// Sequence of the newest event sent.
    sent: u64,
    /// Rollup sequence last announced.
    rollup_seq: Option<u64>,
    events: tokio::sync::watch::Receiver<u64>,
    rollups: tokio::sync::watch::Receiver<u64>,
    queue: VecDeque<SseEvent>,
    first: bool,
}

impl Streamer {
    /// The next SSE events: new feed events, a `rollups` notice when the
    /// numbers changed, then the live figures.
    fn fill(&mut self) {
        let now = chrono::Utc::now().timestamp_millis();
        let figures = self.node.live.figures(&self.site, now);
        let sent = self.sent;
        for event in figures.recent.iter().filter(|e| e.seq > sent) {
            self.sent = event.seq;
            self.queue.push_back(
                SseEvent::default()
                    .event("event")
                    .id(event.seq.to_string())
                    .data(serde_json::to_string(event).unwrap_or_default()),
            );
        }
        let (seq, newest) = self.node.rollups.read(|f| (f.seq, f.newest));
        if self.rollup_seq != Some(seq) {
            self.rollup_seq = Some(seq);
            let data = json!({
                "rollup_seq": seq,
                "newest_event_received_ms": newest.map(|n| n.newest_received_ms),
                "queryable_ms": newest.map(|n| n.applied_ms),
            });
            self.queue
                .push_back(SseEvent::default().event("rollups").data(data.to_string()));
        }
        let live = json!({
            "site": figures.site,
            "active_users": figures.active_users,
            "events_per_second": figures.events_per_second,
            "events_last_minute": figures.events_last_minute,
            "events_last_5_minutes": figures.events_last_5_minutes,
            "last_seq": figures.last_seq,
            "behind_ms": self.node.behind_ms(now),
        });
        let mut live = SseEvent::default().event("live").data(live.to_string());
        if self.sent > 0 {
            live = live.id(self.sent.to_string());
        }
        self.queue.push_back(live);
    }

    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            if *self.node.shutdown.borrow() {
                return None;
            }
            if !self.first {
                let mut shutdown = self.node.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(LIVE_EVERY) => {}
                    _ = self.events.changed() => {}
                    _ = self.rollups.changed() => {}
                    _ = shutdown.wait_for(|s| *s) => return None,
                }
                tokio::time::sleep(LIVE_AT_MOST).await;
                self.events.borrow_and_update();
                self.rollups.borrow_and_update();
            }
            self.first = false;
            self.fill();
        }
    }
}

/// `GET /api/v1/sites/{site}/live/stream`: the live figures about once a
/// second and each new event as it arrives. A client that reconnects with
/// `Last-Event-ID` gets the events after it that are still in the feed.
async fn live_stream(
    State(node): State<QueryNode>,
    Path(site): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, QueryError> {
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(QueryError::bad_request("live/stream takes no parameters"));
    }
    node.keys.check(bearer(&headers), &site)?;
    let sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let streamer = Streamer {
        events: node.live.subscribe(),
        rollups: node.rollups.subscribe(),
        node,
        site,
        sent,
        rollup_seq: None,
        queue: VecDeque::new(),
        first: true,
    };
    metrics::counter!("beacon_query_live_streams_total").increment(1);
    Ok(Sse::new(futures::stream::unfold(streamer, Streamer::next))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
