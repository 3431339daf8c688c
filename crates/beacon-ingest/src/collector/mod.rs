//! The HTTP collector: `POST /api/v1/events`, the PostHog-, Segment- and
//! Plausible-compatible endpoints, the tracker script and its endpoint, plus
//! `/healthz`, `/readyz`, `/metrics`.
//!
//! It answers 2xx only after JetStream has acknowledged every accepted event of
//! the request; when it cannot get those acks in time it answers 503 with
//! `Retry-After`, and the sender's retry is stored once thanks to the event ids.

pub mod answer;
mod body;
pub mod error;
mod forwarded;
mod guard;
mod plausible;
mod posthog;
mod segment;
mod tracker;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use axum::routing::{get, post};
use beacon_core::{Batch, IdSource, Item, Origin, Reason, Rejection, Secret, Site, parse_body};
use beacon_nats::{PublishFailed, RejectRecord, Salts};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

use self::answer::Protocol;
pub use self::error::ApiError;
pub use self::forwarded::TrustedProxies;
use self::guard::RawSlot;
pub use self::guard::panic_response;
use crate::metrics::{IN_FLIGHT, RATE_LIMITED, UNAVAILABLE};
use crate::pipeline::{ItemResult, Pipeline};

/// Collector settings; defaults as documented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorSettings {
    pub listen: SocketAddr,
    /// Largest request body, before and after decompression.
    pub max_body_bytes: usize,
    /// Events being published at once across all requests; beyond it, 503.
    pub max_in_flight_events: usize,
    /// What `Retry-After` says when NATS is unavailable.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Origins browsers may send from; `["*"]` for any.
    pub cors_origins: Vec<String>,
    /// Proxies (IP addresses or CIDR ranges) whose `X-Forwarded-For` is
    /// believed; from any other peer the socket address is the client's.
    pub trusted_proxies: Vec<String>,
    /// Longest a client may take to send a request's headers; then the
    /// connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body; then it is answered
    /// 408 and the connection is closed.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
}

impl CollectorSettings {
    /// What is wrong with these settings, for the start-up config checks.
    pub fn problems(&self) -> Vec<String> {
        TrustedProxies::parse(&self.trusted_proxies)
            .err()
            .unwrap_or_default()
    }
}

impl Default for CollectorSettings {
    fn default() -> Self {
        CollectorSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_in_flight_events: 100_000,
            retry_after: Duration::from_secs(2),
            cors_origins: vec!["*".to_owned()],
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// A write key's site and rate limiter.
#[derive(Debug)]
struct WriteKey {
    site: String,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Most events one request may carry under the rate limit.
    burst: u32,
}

/// Everything a request needs; shared by all requests.
#[derive(Debug)]
pub struct Collector {
    pipeline: Pipeline,
    client: async_nats::Client,
    settings: CollectorSettings,
    partitions: u32,
    keys: HashMap<Secret, WriteKey>,
    /// Plausible `domain` → the site's id and the write key its events count
    /// against; `*` names the site that takes any other domain.
    domains: HashMap<String, (String, Secret)>,
    /// Site id → the write key its browser events count against, and the
    /// domains whose pages may send them (`/api/v1/track`).
    sites: HashMap<String, (Secret, Vec<String>)>,
    /// Daily salts for Plausible visitor ids, shared with every collector.
    salts: Salts,
    in_flight: Semaphore,
    trusted_proxies: TrustedProxies,
    /// What else `/readyz` waits for.
    gates: Vec<crate::ops::Gate>,
}

impl Collector {
    pub fn new(
        pipeline: Pipeline,
        client: async_nats::Client,
        settings: CollectorSettings,
        sites: &[Site],
        partitions: u32,
    ) -> Self {
        let mut keys = HashMap::new();
        let mut domains = HashMap::new();
        let mut site_keys = HashMap::new();
        for site in sites {
            if let Some(key) = site.write_keys.first() {
                for domain in &site.domains {
                    domains.insert(domain.clone(), (site.id.clone(), key.clone()));
                }
                site_keys.insert(site.id.clone(), (key.clone(), site.domains.clone()));
            }
            for key in &site.write_keys {
                let rate = NonZeroU32::new(site.rate_limit);
                // Burst defaults to twice the rate.
                let burst = NonZeroU32::new(site.rate_burst)
                    .or(rate.map(|r| r.saturating_mul(NonZeroU32::MIN.saturating_add(1))));
                let limiter = rate.zip(burst).map(|(rate, burst)| {
                    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
                });
                let site = site.id.clone();
                keys.insert(
                    key.clone(),
                    WriteKey {
                        site,
                        limiter,
                        burst: burst.map_or(u32::MAX, NonZeroU32::get),
                    },
                );
            }
        }
        let in_flight = Semaphore::new(settings.max_in_flight_events.max(1));
        let salts = Salts::new(pipeline.publisher().jetstream().clone());
        // Checked at start-up with the other settings; should a bad entry
        // still get here, no proxy is trusted (the safe side), and it is said.
        let trusted_proxies =
            TrustedProxies::parse(&settings.trusted_proxies).unwrap_or_else(|bad| {
                tracing::warn!(
                    ?bad,
                    "trusting no proxy: collector.trusted_proxies is invalid"
                );
                TrustedProxies::default()
            });
        Collector {
            pipeline,
            client,
            settings,
            partitions,
            keys,
            domains,
            sites: site_keys,
            salts,
            in_flight,
            trusted_proxies,
            gates: Vec::new(),
        }
    }

    /// The site (and its write key) that takes events for the first of these
    /// domains it lists, else the site listing `*`, if any.
    pub(crate) fn site_of_domain(&self, domains: &[String]) -> Option<(String, Secret)> {
        domains
            .iter()
            .find_map(|d| self.domains.get(d))
            .or_else(|| self.domains.get(beacon_core::site::ANY_DOMAIN))
            .cloned()
    }

    /// Make `/readyz` wait for `gate` too.
    pub fn with_gate(mut self, gate: crate::ops::Gate) -> Self {
        self.gates.push(gate);
        self
    }

    /// The routes, ready to serve.
    pub fn router(self: Arc<Self>) -> Router {
        let origins = if self.settings.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                self.settings
                    .cors_origins
                    .iter()
                    .filter_map(|o| o.parse().ok()),
            )
        };
        let cors = CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::CONTENT_ENCODING,
            ])
            // The tracker reads it to wait as long as the collector asks.
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(24 * 3600));
        let mut router = Router::new()
            .route("/api/v1/events", post(post_events).layer(cors.clone()))
            .route("/v1/{call}", post(segment::calls).layer(cors.clone()))
            .route("/api/event", post(plausible::event).layer(cors.clone()))
            .route("/api/v1/track", post(tracker::track).layer(cors.clone()))
            .route(
                posthog::V1_PATH,
                post(posthog::capture_v1).layer(cors.clone()),
            );
        for path in posthog::PATHS {
            router = router.route(
                path,
                get(posthog::capture)
                    .post(posthog::capture)
                    .layer(cors.clone()),
            );
        }
        // Only the ingest routes so far: their panics record the input.
        router = router.route_layer(axum::middleware::from_fn_with_state(
            self.clone(),
            guard::record_panics,
        ));
        for path in tracker::SCRIPT_PATHS {
            router = router.route(path, get(tracker::script));
        }
        router
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(|| async { crate::metrics::render() }))
            .with_state(self)
    }
}

/// Serve `collector`, and the `extra` routes beside it, on `listener` until
/// `shutdown` resolves, then finish the requests in flight (their publishes
/// complete) and return.
pub async fn run(
    collector: Collector,
    extra: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::metrics::handle();
    let header_read_timeout = collector.settings.header_read_timeout;
    let app = Arc::new(collector).router().merge(extra).layer(
        tower_http::catch_panic::CatchPanicLayer::custom(panic_response),
    );
    crate::serve::serve(listener, app, header_read_timeout, shutdown).await
}

async fn readyz(State(c): State<Arc<Collector>>) -> Response {
    crate::ops::readiness(&c.client, &c.gates)
}

async fn post_events(
    State(c): State<Arc<Collector>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(slot): Extension<RawSlot>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = Utc::now();
    let header_key = bearer_key(&headers);
    let raw = match body::read_body(&headers, body, &c.settings, &slot).await {
        Ok(raw) => raw,
        // Unreadable bodies are kept as far as they were read (none, when too large).
        Err(e) => return Err(refuse(&c, e, b"", None, received_at).await),
    };
    if let Some(key) = header_key
        && !c.keys.contains_key(key)
    {
        return Err(refuse(&c, unknown_key(), &raw, None, received_at).await);
    }
    let batch = match parse_body(&raw, is_ndjson(&headers), c.pipeline.limits()) {
        Ok(batch) => batch,
        Err(r) => {
            let site = header_key
                .and_then(|k| c.keys.get(k))
                .map(|k| k.site.as_str());
            return Err(refuse(&c, ApiError::from_rejection(r), &raw, site, received_at).await);
        }
    };
    let key = header_key.or(batch.write_key.as_deref()).map(str::to_owned);
    let ip = c.client_ip(&headers, peer);
    let submission = Submission {
        key: key.as_deref(),
        batch,
        raw: &raw,
        received_at,
        user_agent: user_agent(&headers),
        ip: Some(&ip),
    };
    let results = submit(&c, submission).await?;
    Ok(Protocol::Native.results(results))
}

/// A request in any protocol, reshaped into a batch of native events.
pub(crate) struct Submission<'a> {
    /// The write key the request carries, wherever it carried it.
    pub key: Option<&'a str>,
    pub batch: Batch<'a>,
    /// The (decoded) body, kept if the request is refused as a whole.
    pub raw: &'a [u8],
    pub received_at: DateTime<Utc>,
    pub user_agent: Option<&'a str>,
    /// The sender's address, for enrichment; `None` keeps it off the events.
    pub ip: Option<&'a str>,
}

/// The part every protocol shares: the write key, the rate limit, the in-flight
/// bound, then the one pipeline. `Err` is the whole request's refusal.
pub(crate) async fn submit(c: &Collector, s: Submission<'_>) -> Result<Vec<ItemResult>, ApiError> {
    let Some(key) = s.key else {
        let r = Rejection::new(
            Reason::MissingKey,
            "send the site's write key as `Authorization: Bearer <key>` (or `write_key` in the body); \
             docs/INGEST.md says where each SDK protocol carries it",
        );
        return Err(refuse(c, ApiError::from_rejection(r), s.raw, None, s.received_at).await);
    };
    let Some(write_key) = c.keys.get(key) else {
        return Err(refuse(c, unknown_key(), s.raw, None, s.received_at).await);
    };

    let events = u32::try_from(s.batch.items.len())
        .unwrap_or(u32::MAX)
        .max(1);
    if let Some(limiter) = &write_key.limiter {
        let over = match limiter.check_n(NonZeroU32::new(events).unwrap_or(NonZeroU32::MIN)) {
            Ok(Ok(())) => None,
            Ok(Err(not_until)) => Some(not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))),
            Err(_) => {
                let r = Rejection::new(
                    Reason::BatchTooLarge,
                    format!(
                        "{events} events in one request; this key's rate limit allows at most {} at once",
                        write_key.burst
                    ),
                );
                return Err(refuse(
                    c,
                    ApiError::from_rejection(r),
                    s.raw,
                    Some(&write_key.site),
                    s.received_at,
                )
                .await);
            }
        };
        if let Some(retry_after) = over {
            metrics::counter!(RATE_LIMITED).increment(1);
            return Err(ApiError::RateLimited { retry_after });
        }
    }

    let permits = events
        .min(u32::try_from(c.settings.max_in_flight_events).unwrap_or(u32::MAX))
        .max(1);
    let _permit = tokio::time::timeout(Duration::from_secs(1), c.in_flight.acquire_many(permits))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| c.unavailable("Beacon is saturated; retry later".to_owned()))?;
    let _gauge = InFlight::new(events);

    let origin = Origin {
        site: &write_key.site,
        received_at: s.received_at,
        user_agent: s.user_agent,
        ip: s.ip,
        id_source: IdSource::Random,
        partitions: c.partitions,
    };
    match c.pipeline.ingest(s.batch, &origin, "http").await {
        Ok(results) => Ok(results),
        Err(PublishFailed::Unavailable { last_error, .. }) => {
            tracing::warn!(error = %last_error, "answering 503: NATS did not acknowledge in time");
            Err(c.unavailable(format!(
                "NATS did not acknowledge the events in time ({last_error}); retry later"
            )))
        }
        Err(e @ PublishFailed::Refused(_)) => Err(c.unavailable(e.to_string())),
    }
}

impl Collector {
    /// 503: the sender should send the same request again after `Retry-After`.
    pub(crate) fn unavailable(&self, message: String) -> ApiError {
        metrics::counter!(UNAVAILABLE).increment(1);
        ApiError::Unavailable {
            retry_after: self.settings.retry_after,
            message,
        }
    }
}

/// A request to one of the other protocols' endpoints: what the shared steps
/// after translation need, and the protocol that shapes the answers.
pub(crate) struct Compat<'a> {
    pub protocol: Protocol,
    pub received_at: DateTime<Utc>,
    pub headers: &'a HeaderMap,
}

impl<'a> Compat<'a> {
    /// A request to `protocol`'s endpoint, received now.
    pub fn new(protocol: Protocol, headers: &'a HeaderMap) -> Self {
        Compat {
            protocol,
            received_at: Utc::now(),
            headers,
        }
    }

    /// Read the body (bounded, gunzipped, kept for the reject record) and
    /// decode it with `parse`; what cannot be read or parsed is refused, and
    /// the refusal answered, here.
    pub async fn read<T>(
        &self,
        c: &Collector,
        body: Body,
        slot: &RawSlot,
        parse: impl FnOnce(serde_json::Value) -> Result<T, Rejection>,
    ) -> Result<(Bytes, T), Response> {
        let raw = match body::read_body(self.headers, body, &c.settings, slot).await {
            Ok(raw) => raw,
            Err(e) => return Err(self.refuse(c, e, b"").await),
        };
        match beacon_core::compat::parse_json(&raw).and_then(parse) {
            Ok(parsed) => Ok((raw, parsed)),
            Err(r) => Err(self.refuse(c, ApiError::from_rejection(r), &raw).await),
        }
    }

    /// The day's salt for hashed visitor ids, or the 503 that says to retry.
    pub async fn salt(&self, c: &Collector) -> Result<Arc<[u8]>, Response> {
        c.salts
            .for_day(self.received_at.date_naive())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "answering 503: no visitor salt");
                self.protocol
                    .refusal(c.unavailable(format!("{e}; retry later")))
            })
    }

    /// Record a whole-request refusal, then answer it in the protocol's shape.
    pub async fn refuse(&self, c: &Collector, error: ApiError, raw: &[u8]) -> Response {
        self.protocol
            .refusal(refuse(c, error, raw, None, self.received_at).await)
    }

    /// Submit the translated events (or refuse the request, when translating
    /// refused it as a whole) and answer in the protocol's shape.
    pub async fn submit(
        &self,
        c: &Collector,
        key: Option<&str>,
        translated: Result<Vec<Item<'static>>, Rejection>,
        raw: &[u8],
        ip: Option<&str>,
    ) -> Response {
        let items = match translated {
            Ok(items) => items,
            Err(r) => return self.refuse(c, ApiError::from_rejection(r), raw).await,
        };
        let submission = Submission {
            key,
            batch: Batch {
                write_key: None,
                items,
            },
            raw,
            received_at: self.received_at,
            user_agent: user_agent(self.headers),
            ip,
        };
        match submit(c, submission).await {
            Ok(results) => self.protocol.results(results),
            Err(e) => self.protocol.refusal(e),
        }
    }
}

pub(crate) fn unknown_key() -> ApiError {
    ApiError::from_rejection(Rejection::new(
        Reason::UnknownKey,
        "the write key is not known to Beacon",
    ))
}

/// Record an input refused as a whole, then give back the error to answer with.
/// Recorded before answering, so the sender can find it in `BEACON_REJECTS` at once;
/// failing to record it never changes the answer (it is logged).
pub(crate) async fn refuse(
    c: &Collector,
    error: ApiError,
    raw: &[u8],
    site: Option<&str>,
    received_at: chrono::DateTime<Utc>,
) -> ApiError {
    let Some(rejection) = error.rejection() else {
        return error;
    };
    let record = RejectRecord {
        source: "http",
        site,
        reason: rejection.reason,
        message: &rejection.message,
        raw,
        received_at,
    };
    let _ = c.pipeline.reject_whole(record).await;
    error
}

/// Keeps the in-flight gauge right however the request ends.
struct InFlight(f64);

impl InFlight {
    fn new(events: u32) -> Self {
        metrics::gauge!(IN_FLIGHT).increment(f64::from(events));
        InFlight(f64::from(events))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT).decrement(self.0);
    }
}

pub(crate) fn bearer_key(headers: &HeaderMap) -> Option<&str> {
    beacon_core::bearer::bearer_key(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            [
                "application/x-ndjson",
                "application/ndjson",
                "application/jsonl",
            ]
            .iter()
            .any(|n| t.starts_with(n))
        })
}

pub(crate) fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

impl Collector {
    /// The sender's address: see [`TrustedProxies::client_ip`].
    pub(crate) fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> String {
        self.trusted_proxies.client_ip(headers, peer).to_string()
    }
}
