//! Beacon's query nodes. Each keeps a merged in-memory view of the committed
//! rollups, kept current by following the rollup store ([`follow`]), and a
//! live picture of the newest events from the stream ([`live`]). It answers
//! the same operations over HTTP ([`http`], with Server-Sent Events for live
//! updates) and as a NATS micro service ([`service`]). It also serves the browser
//! dashboard that reads them ([`dashboard`]). Nodes hold no state of their
//! own: run as many as needed.

pub mod auth;
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod follow;
pub mod http;
pub mod live;
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
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Sites,
        Op::Timeseries,
        Op::Breakdown,
        Op::Summary,
        Op::Live,
        Op::Status,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Op::Sites => "sites",
            Op::Timeseries => "timeseries",
            Op::Breakdown => "breakdown",
            Op::Summary => "summary",
            Op::Live => "live",
            Op::Status => "status",
        }
    }

    /// Whether it is asked about one site.
    pub const fn per_site(self) -> bool {
        matches!(
            self,
            Op::Timeseries | Op::Breakdown | Op::Summary | Op::Live
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
    partitions: u32,
    shutdown: watch::Receiver<bool>,
}

impl QueryNode {
    pub fn new(
        client: async_nats::Client,
        sites: &[Site],
        partitions: u32,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        QueryNode {
            js: async_nats::jetstream::new(client.clone()),
            client,
            rollups: Rollups::default(),
            live: Live::default(),
            keys: Arc::new(auth::Keys::new(sites)),
            partitions,
            shutdown,
        }
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
        tokio::try_join!(follower, tail, nats).map(drop)
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
        if op == Op::Live {
            if *params != Params::default() {
                return Err(QueryError::bad_request("live takes no parameters"));
            }
            let mut figures = serde_json::to_value(self.live.figures(site, now))
                .map_err(|e| QueryError::unavailable(e.to_string()))?;
            figures["behind_ms"] = self.behind_ms(now).into();
            return Ok(figures.to_string());
        }
        let answer = match op {
            Op::Timeseries => engine::timeseries,
            Op::Breakdown => engine::breakdown,
            _ => engine::summary,
        };
        self.rollups.read(|f| {
            if !f.ready {
                return Err(QueryError::unavailable(
                    "this query node is still loading the rollups; try again in a moment",
                ));
            }
            answer(&f.view, site, params, now)
        })
    }
}

/// The `[query]` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// Where `beacon query` serves the API (`beacon up` serves it on the collector's address).
    pub listen: std::net::SocketAddr,
}

impl Default for QuerySettings {
    fn default() -> Self {
        QuerySettings {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8081)),
        }
    }
}
