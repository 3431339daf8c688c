//! Beacon's query nodes. Each keeps a merged in-memory view of the committed
//! rollups, kept current by following the rollup store ([`follow`]), and a
//! live picture of the newest events from the stream ([`live`]). It answers
//! the same operations over HTTP ([`http`], with Server-Sent Events for live
//! updates) and as a NATS micro service ([`service`]). It also serves the browser
//! dashboard that reads them ([`dashboard`]), and SQL and exports over the
//! event store (`beacon_store`: the segments, cached on local disk, and the
//! stream's tail in memory). Nodes hold no state of their own: run as many as
//! needed.

pub mod analysis;
pub mod auth;
pub mod dashboard;
pub mod definitions;
pub mod engine;
pub mod error;
pub mod filter;
pub mod follow;
pub mod http;
pub mod live;
pub mod manage;
pub mod planner;
pub mod service;
pub mod status;

use std::sync::Arc;

use async_nats::jetstream::context::Context;
use beacon_core::Site;
use serde::Deserialize;
use tokio::sync::watch;

pub use self::engine::Params;
pub use self::error::QueryError;
pub use self::follow::Rollups;
pub use self::live::Live;

/// The operations a query node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Sites,
    Timeseries,
    Breakdown,
    Summary,
    Live,
    Status,
    Properties,
    /// The goals report (HTTP `goals/report`).
    Goals,
    Funnel,
    Retention,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Sites,
        Op::Timeseries,
        Op::Breakdown,
        Op::Summary,
        Op::Live,
        Op::Status,
        Op::Properties,
        Op::Goals,
        Op::Funnel,
        Op::Retention,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Op::Sites => "sites",
            Op::Timeseries => "timeseries",
            Op::Breakdown => "breakdown",
            Op::Summary => "summary",
            Op::Live => "live",
            Op::Status => "status",
            Op::Properties => "properties",
            Op::Goals => "goals",
            Op::Funnel => "funnel",
            Op::Retention => "retention",
        }
    }

    /// Whether it is asked about one site.
    pub const fn per_site(self) -> bool {
        matches!(
            self,
            Op::Timeseries
                | Op::Breakdown
                | Op::Summary
                | Op::Live
                | Op::Properties
                | Op::Goals
                | Op::Funnel
                | Op::Retention
        )
    }

    pub fn parse(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// One query node: its view, live state and keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct QueryNode {
    js: Context,
    client: async_nats::Client,
    rollups: Rollups,
    live: Live,
    keys: Arc<auth::Keys>,
    /// Goals and manage keys from the config file, per site.
    definitions: Arc<definitions::Config>,
    partitions: u32,
    shutdown: watch::Receiver<bool>,
    /// The event store's engine; `None` only if no cache directory could be made.
    store: Option<beacon_store::Engine>,
    max_tail_rows: usize,
    /// The aggregators' session timeout, so SQL cuts sessions as the rollups do.
    session_timeout_ms: i64,
    /// Breakdowns by visitors per kept day ([`planner::days`]).
    day_lists: Arc<planner::days::DayLists>,
    /// Whether [`planner::days::count_ahead`] runs beside the store's follower.
    count_ahead: bool,
}

impl QueryNode {
    pub fn new(
        client: async_nats::Client,
        sites: &[Site],
        partitions: u32,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let js = async_nats::jetstream::new(client.clone());
        let defaults = QuerySettings::default();
        let store = engine(&js, &defaults)
            .inspect_err(|e| tracing::error!(error = %e, "no segment cache: SQL is unavailable"))
            .ok();
        QueryNode {
            js,
            client,
            rollups: Rollups::default(),
            live: Live::default(),
            keys: Arc::new(auth::Keys::new(sites)),
            definitions: Arc::new(definitions::Config::new(sites)),
            partitions,
            shutdown,
            store,
            max_tail_rows: defaults.tail_max_rows,
            session_timeout_ms: 30 * 60 * 1000,
            day_lists: Arc::new(planner::days::DayLists::new(defaults.breakdown_cache_bytes)),
            count_ahead: defaults.breakdown_count_ahead,
        }
    }

    /// The same node cutting sessions after `timeout` of pause, as
    /// `aggregator.session_timeout` says.
    pub fn with_session_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.session_timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        self
    }

    pub(crate) fn session_timeout_ms(&self) -> i64 {
        self.session_timeout_ms
    }

    pub(crate) fn day_lists(&self) -> &planner::days::DayLists {
        &self.day_lists
    }

    /// Bytes of days kept for breakdowns by visitors.
    pub fn kept_day_bytes(&self) -> usize {
        self.day_lists.bytes()
    }

    /// Periods of breakdowns by visitors counted (not found kept) since
    /// this node started, by questions and by counting ahead.
    pub fn breakdown_periods_counted(&self) -> usize {
        self.day_lists.counted()
    }

    /// Passes of counting the dashboard's lists ahead completed since this
    /// node started (`query.breakdown_count_ahead`).
    pub fn count_ahead_passes(&self) -> usize {
        self.day_lists.passes()
    }

    /// The same node with the event store set up as `settings` say (cache
    /// directory and size, SQL limits, tail bound).
    pub fn with_store(mut self, settings: &QuerySettings) -> std::io::Result<Self> {
        self.store = Some(engine(&self.js, settings)?);
        self.max_tail_rows = settings.tail_max_rows;
        self.day_lists = Arc::new(planner::days::DayLists::new(settings.breakdown_cache_bytes));
        self.count_ahead = settings.breakdown_count_ahead;
        Ok(self)
    }

    /// The event store's engine, once it has a cache.
    pub fn store(&self) -> Option<&beacon_store::Engine> {
        self.store.as_ref()
    }

    pub fn rollups(&self) -> &Rollups {
        &self.rollups
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Whether every rollup present at start-up is loaded.
    pub fn is_ready(&self) -> bool {
        self.rollups.is_ready()
    }

    /// How long the oldest event in the stream not yet in the numbers has waited.
    pub fn behind_ms(&self, now_ms: i64) -> i64 {
        self.rollups.read(|f| {
            let parts = f.view.partitions();
            self.live.behind_ms(
                |p| parts.get(p as usize).map_or(0, |s| s.through_seq),
                now_ms,
            )
        })
    }

    /// Follow the rollups and the stream and serve the NATS service until
    /// shutdown. If the follower or the NATS service fails, readiness turns red
    /// and the node returns that failure at once: a node that no longer follows
    /// would keep answering from a frozen view.
    pub async fn run(self) -> anyhow::Result<()> {
        let rollups = self.rollups.clone();
        let follower = async {
            follow::follow(self.js.clone(), rollups.clone(), self.shutdown.clone())
                .await
                .inspect_err(|_| rollups.fail())
                .map_err(anyhow::Error::from)
        };
        let tail = async {
            live::tail(self.js.clone(), self.live.clone(), self.shutdown.clone()).await;
            Ok(())
        };
        let nats = async {
            service::serve(self.clone())
                .await
                .inspect_err(|_| self.rollups.fail())
        };
        let store = async {
            let Some(engine) = &self.store else {
                return Ok(());
            };
            let follow = beacon_store::follow::follow(
                self.js.clone(),
                engine.view().clone(),
                self.partitions,
                self.max_tail_rows,
                self.shutdown.clone(),
            );
            // Fetching and counting ahead end only at shutdown; the
            // follower's end is the answer.
            let ahead = async {
                let counting = async {
                    if self.count_ahead {
                        planner::days::count_ahead(
                            self.day_lists.clone(),
                            engine.clone(),
                            self.keys.sites(),
                            self.shutdown.clone(),
                        )
                        .await;
                    }
                };
                tokio::join!(
                    beacon_store::follow::fetch_ahead(engine.clone(), self.shutdown.clone()),
                    counting
                );
                std::future::pending().await
            };
            tokio::select! {
                followed = follow => {
                    followed.map_err(|e| anyhow::anyhow!("the event store follower stopped: {e}"))
                }
                never = ahead => never,
            }
        };
        tokio::try_join!(follower, tail, nats, store).map(drop)
    }

    fn engine(&self) -> Result<&beacon_store::Engine, QueryError> {
        self.store.as_ref().ok_or_else(|| {
            QueryError::unavailable("this query node has no segment cache directory; see its log")
        })
    }

    /// How fresh the event store's answers are: the newest collector time of
    /// the events it holds (`None` without a store or before its first event).
    pub(crate) fn store_fresh_through(&self) -> Option<i64> {
        self.store.as_ref()?.view().newest_received_ms()
    }

    /// Answer `sql` over `site`'s events for the holder of `key`.
    pub async fn sql(
        &self,
        key: Option<&str>,
        site: &str,
        sql: &str,
        format: beacon_store::SqlFormat,
    ) -> Result<beacon_store::Answer, QueryError> {
        self.keys.check(key, site)?;
        let engine = self.engine()?;
        let started = std::time::Instant::now();
        let result = engine
            .sql(site, sql, format)
            .await
            .map_err(QueryError::from);
        metrics::histogram!("beacon_query_seconds", "op" => "sql")
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            metrics::counter!("beacon_query_errors_total", "op" => "sql", "status" => e.status.to_string())
                .increment(1);
        }
        result
    }

    /// `site`'s events with event time in `[from, to)` (times as the other
    /// operations read them), encoded in `format` as they are read.
    pub async fn export(
        &self,
        key: Option<&str>,
        site: &str,
        from: &str,
        to: &str,
        format: beacon_store::ExportFormat,
    ) -> Result<
        impl futures::Stream<Item = Result<bytes::Bytes, beacon_store::SqlError>>
        + Send
        + 'static
        + use<>,
        QueryError,
    > {
        self.keys.check(key, site)?;
        let span = engine::span(from, to, chrono::Utc::now().timestamp_millis())?;
        metrics::counter!("beacon_query_exports_total").increment(1);
        self.engine()?
            .export(site, span.from, span.to, format)
            .await
            .map_err(QueryError::from)
    }

    /// Answer `op` for the holder of `key`: the answer's JSON text.
    pub async fn answer(
        &self,
        op: Op,
        key: Option<&str>,
        site: Option<&str>,
        params: &Params,
    ) -> Result<String, QueryError> {
        let now = chrono::Utc::now().timestamp_millis();
        let started = std::time::Instant::now();
        let result = self.dispatch(op, key, site, params, now).await;
        metrics::histogram!("beacon_query_seconds", "op" => op.name())
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            metrics::counter!("beacon_query_errors_total", "op" => op.name(), "status" => e.status.to_string())
                .increment(1);
        }
        result
    }

    async fn dispatch(
        &self,
        op: Op,
        key: Option<&str>,
        site: Option<&str>,
        params: &Params,
        now: i64,
    ) -> Result<String, QueryError> {
        let site = match (op.per_site(), site) {
            (true, Some(site)) => {
                self.keys.check(key, site)?;
                site
            }
            (true, None) => return Err(QueryError::bad_request("site is required")),
            (false, _) => {
                let sites = self.keys.sites_of(key)?;
                if op == Op::Sites {
                    return Ok(serde_json::json!({"sites": sites}).to_string());
                }
                ""
            }
        };
        if op == Op::Status {
            let scope = if self.keys.reads_every_site(key) {
                status::Scope::Everything
            } else {
                status::Scope::Freshness
            };
            return status::status(self, now, scope)
                .await
                .map(|v| v.to_string());
        }
        if matches!(op, Op::Goals | Op::Funnel | Op::Retention) {
            return analysis::answer(self, op, site, params, now).await;
        }
        if op == Op::Live {
            if *params != Params::default() {
                return Err(QueryError::bad_request("live takes no parameters"));
            }
            let mut figures = serde_json::to_value(self.live.figures(site, now))
                .map_err(|e| QueryError::unavailable(e.to_string()))?;
            figures["behind_ms"] = self.behind_ms(now).into();
            return Ok(figures.to_string());
        }
        self.plan(op, site, params, now).await
    }
}

fn engine(js: &Context, settings: &QuerySettings) -> std::io::Result<beacon_store::Engine> {
    let cache = beacon_store::SegmentCache::open(&settings.segment_cache)?;
    Ok(beacon_store::Engine::new(
        js.clone(),
        beacon_store::StoreView::default(),
        cache,
        settings.sql.clone(),
    ))
}

/// The `[query]` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// Where `beacon query` serves the API (`beacon up` serves it on the collector's address).
    pub listen: std::net::SocketAddr,
    /// Segment files kept on local disk (`[query.segment_cache]`).
    pub segment_cache: beacon_store::CacheSettings,
    /// Limits of each SQL query (`[query.sql]`).
    pub sql: beacon_store::SqlLimits,
    /// Events held in memory above the committed segments; at the bound the
    /// node stops reading the stream until the writers commit (SQL answers
    /// then lag, and stay exact).
    pub tail_max_rows: usize,
    /// Memory for the days kept to answer unfiltered breakdowns by visitors
    /// (per site, dimension and UTC day); 0 keeps none.
    pub breakdown_cache_bytes: usize,
    /// Count the dashboard's lists ahead in the background (each configured
    /// site, the last 30 and 7 days and today, in UTC), so their first ask
    /// after a start or a commit finds its periods kept.
    pub breakdown_count_ahead: bool,
}

impl Default for QuerySettings {
    fn default() -> Self {
        QuerySettings {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8081)),
            segment_cache: beacon_store::CacheSettings::default(),
            sql: beacon_store::SqlLimits::default(),
            tail_max_rows: 2_000_000,
            breakdown_cache_bytes: 256 << 20,
            breakdown_count_ahead: true,
        }
    }
}
