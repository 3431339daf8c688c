//! Typed calls to the `beacon-query` NATS micro service (`beacon.query.v1.<op>`):
//! the same answers as Beacon's HTTP query API, by request-reply, answered by
//! whichever query node of the queue group is free.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{QueryError, QueryErrorKind};

/// Subjects of the service are `<SUBJECT_PREFIX>.<operation>`.
pub const SUBJECT_PREFIX: &str = "beacon.query.v1";

/// Query parameters, as documented for the HTTP API (docs/QUERY.md); unset
/// ones take Beacon's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Params {
    /// RFC 3339 time, a date, `now`, or `-30m` / `-24h` / `-7d`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `1m`, `1h` or `1d` (time series).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// IANA time zone, e.g. `Europe/Berlin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// Comma-separated: `events,users,pageviews,sessions,bounce_rate,avg_session_duration,revenue`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// What a breakdown ranks: `name`, `path`, `referrer_source`, `browser`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimension: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Filters in Beacon's filter syntax, e.g. `country==US|DE;path*=/blog;props.plan!=free`
    /// (docs/QUERY.md); combined by AND with the one-value filters below.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<String>,
    /// `previous_period`, `previous_year` or `custom` (with `compare_from`, `compare_to`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_to: Option<String>,
    /// One-value filters: `name=signup` is `filters=name==signup`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl Params {
    /// A range: `Params::range("-7d", "now")`.
    pub fn range(from: impl Into<String>, to: impl Into<String>) -> Self {
        Params {
            from: Some(from.into()),
            to: Some(to.into()),
            ..Params::default()
        }
    }
}

/// Figures of one bucket (with `start`) or of a whole range (without).
/// Only the metrics asked for are present.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Figures {
    pub start: Option<String>,
    pub events: Option<i64>,
    pub users: Option<i64>,
    pub pageviews: Option<i64>,
    pub sessions: Option<i64>,
    pub bounce_rate: Option<f64>,
    /// Seconds.
    pub avg_session_duration: Option<f64>,
    /// Exact decimal text per currency.
    pub revenue: Option<BTreeMap<String, String>>,
}

/// `timeseries`: figures per bucket and their totals.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Timeseries {
    pub site: String,
    pub from: String,
    pub to: String,
    pub tz: String,
    pub interval: String,
    #[serde(default)]
    pub filters: Map<String, Value>,
    #[serde(default)]
    pub metrics: Vec<String>,
    pub points: Vec<Figures>,
    pub totals: Figures,
}

/// `breakdown`: the top values of a dimension.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Breakdown {
    pub site: String,
    pub from: String,
    pub to: String,
    pub tz: String,
    #[serde(default)]
    pub filters: Map<String, Value>,
    pub dimension: String,
    /// What the rows are ranked by (`users` unless asked otherwise).
    pub metric: String,
    pub rows: Vec<Row>,
    /// Everything not in `rows`, and the whole, for metrics that add up
    /// (events, page views, sessions); none for users or rates.
    pub other: Option<i64>,
    pub total: Option<i64>,
    /// How many values the dimension had in the range.
    #[serde(default)]
    pub total_rows: Option<u64>,
    /// `rollups` or `store`: which of Beacon's engines answered.
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Row {
    pub value: String,
    /// The ranking metric's figure (a rate can have decimals).
    pub count: f64,
    /// Every figure asked for with `metrics`, by name.
    #[serde(flatten)]
    pub figures: Map<String, Value>,
}

/// `summary`: totals for the range and the change against the period before.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Summary {
    pub site: String,
    pub from: String,
    pub to: String,
    pub tz: String,
    #[serde(default)]
    pub filters: Map<String, Value>,
    pub previous: PreviousPeriod,
    /// Per metric name.
    pub metrics: BTreeMap<String, Change>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PreviousPeriod {
    pub from: String,
    pub to: String,
    /// False when that period reaches past retention (its figures are then null).
    pub available: bool,
}

/// A metric now, before, and the relative change (`0.25` is +25 %). Values
/// are numbers, or for revenue an object of decimal text per currency.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Change {
    pub value: Value,
    pub previous: Value,
    pub change: Value,
}

/// `live`: what is happening now.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Live {
    pub site: String,
    pub active_users: u64,
    pub events_per_second: f64,
    pub events_last_minute: u64,
    pub events_last_5_minutes: u64,
    /// The newest events, newest last.
    pub recent: Vec<FeedEvent>,
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FeedEvent {
    pub seq: u64,
    pub id: String,
    pub name: String,
    pub user: String,
    pub ts: String,
    pub received_at: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub referrer_source: Option<String>,
    #[serde(default)]
    pub browser: Option<String>,
}

#[derive(Deserialize)]
struct SiteList {
    sites: Vec<String>,
}

#[derive(Serialize)]
struct Request<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<&'a str>,
    params: &'a Params,
}

/// Asks Beacon's query service with one read key.
#[derive(Clone)]
pub struct QueryClient {
    client: async_nats::Client,
    read_key: String,
    timeout: Duration,
}

impl std::fmt::Debug for QueryClient {
    // The read key is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryClient")
            .field("read_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl QueryClient {
    pub fn new(client: async_nats::Client, read_key: impl Into<String>) -> Self {
        QueryClient {
            client,
            read_key: read_key.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// How long to wait for an answer (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The sites this key may read.
    pub async fn sites(&self) -> Result<Vec<String>, QueryError> {
        let list: SiteList = self.call("sites", None, &Params::default()).await?;
        Ok(list.sites)
    }

    pub async fn timeseries(&self, site: &str, params: &Params) -> Result<Timeseries, QueryError> {
        self.call("timeseries", Some(site), params).await
    }

    pub async fn breakdown(&self, site: &str, params: &Params) -> Result<Breakdown, QueryError> {
        self.call("breakdown", Some(site), params).await
    }

    pub async fn summary(&self, site: &str, params: &Params) -> Result<Summary, QueryError> {
        self.call("summary", Some(site), params).await
    }

    pub async fn live(&self, site: &str) -> Result<Live, QueryError> {
        self.call("live", Some(site), &Params::default()).await
    }

    /// Partitions, lag and stream sizes, as JSON (its shape follows the server's).
    pub async fn status(&self) -> Result<Value, QueryError> {
        self.call("status", None, &Params::default()).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        op: &str,
        site: Option<&str>,
        params: &Params,
    ) -> Result<T, QueryError> {
        let body = serde_json::to_vec(&Request {
            key: &self.read_key,
            site,
            params,
        })
        .map_err(|e| QueryError::new(QueryErrorKind::BadRequest, e.to_string()))?;
        let request = self
            .client
            .request(format!("{SUBJECT_PREFIX}.{op}"), body.into());
        let answer = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| {
                QueryError::new(
                    QueryErrorKind::Unavailable,
                    format!("no query node answered within {:?}", self.timeout),
                )
            })?
            .map_err(|e| {
                let kind = match e.kind() {
                    async_nats::RequestErrorKind::TimedOut
                    | async_nats::RequestErrorKind::NoResponders => QueryErrorKind::Unavailable,
                    _ => QueryErrorKind::Internal,
                };
                QueryError::new(kind, e.to_string())
            })?;
        if let Some(headers) = &answer.headers
            && let Some(code) = headers.get("Nats-Service-Error-Code")
        {
            let status = code.as_str().parse::<u64>().unwrap_or(500);
            let message = headers
                .get("Nats-Service-Error")
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default();
            return Err(QueryError::new(QueryErrorKind::of_status(status), message));
        }
        serde_json::from_slice(&answer.payload).map_err(|e| {
            QueryError::new(
                QueryErrorKind::Internal,
                format!("cannot read the {op} answer: {e}"),
            )
        })
    }
}
