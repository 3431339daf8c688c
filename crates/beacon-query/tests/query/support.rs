//! A test nats-server with Beacon's streams and a day's worth of known events,
//! an in-process aggregator, and query nodes serving HTTP on free ports.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use beacon_aggregate::AggregatorSettings;
use beacon_core::Site;
use beacon_core::event::Event;
use beacon_query::QueryNode;
use beacon_rollup::Retention;
use beacon_testing::TestServer;
use beacon_testing::truth::{Shape, generate, publish};
use serde_json::Value;
use tokio::sync::watch;

pub const PARTITIONS: u32 = 4;
/// Reads both generated sites.
pub const READ_ALL: &str = "rk_test_all_sites_0000";
/// Reads site-1 only.
pub const READ_ONE: &str = "rk_test_site_one_0000";
pub const WRITE: &str = "wk_test_site_zero_0000";
/// The end of the generated data: a whole hour, an hour before now.
pub fn end_ms() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    now - now % 3_600_000 - 3_600_000
}

pub fn sites() -> Vec<Site> {
    let site = |id: &str, write: &str, read: Vec<&str>| Site {
        id: id.into(),
        write_keys: vec![write.into()],
        read_keys: read.into_iter().map(Into::into).collect(),
        rate_limit: 0,
        rate_burst: 0,
        domains: vec![],
        keep_bots: false,
        manage_keys: vec![],
        goals: vec![],
    };
    vec![
        site("site-0", WRITE, vec![READ_ALL]),
        site("site-1", "wk_test_site_one_00000", vec![READ_ALL, READ_ONE]),
        site("quiet", "wk_test_quiet_0000000", vec![READ_ALL]),
    ]
}

pub struct Setup {
    pub _nats: TestServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub events: Vec<Event>,
    aggregator_stop: watch::Sender<bool>,
}

/// A server with streams, `events` generated events over three days (stored),
/// and an aggregator counting them.
pub async fn setup(events: usize) -> Setup {
    setup_with(generate(Shape {
        seed: 5,
        sites: 2,
        users: 400,
        events,
        days: 3,
        end_ms: end_ms(),
        partitions: PARTITIONS,
    }))
    .await
}

/// A server with streams, `events` (stored), and an aggregator counting them.
pub async fn setup_with(events: Vec<Event>) -> Setup {
    let nats = TestServer::start().await;
    let (client, js) = nats.provisioned(PARTITIONS).await;
    publish(&js, &events).await;
    let (aggregator_stop, mut stopped) = watch::channel(false);
    let settings = AggregatorSettings {
        commit_interval: Duration::from_millis(100),
        retention: Retention {
            minute: Duration::from_secs(10 * 86_400),
            ..Retention::default()
        },
        ..AggregatorSettings::default()
    };
    tokio::spawn(beacon_aggregate::run(
        client.clone(),
        settings,
        beacon_aggregate::StoreSettings::default(),
        PARTITIONS,
        1,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    Setup {
        _nats: nats,
        client,
        js,
        events,
        aggregator_stop,
    }
}

impl Setup {
    /// Wait (bounded) until the aggregator has committed every event.
    pub async fn committed(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let progress = beacon_aggregate::progress(&self.js, PARTITIONS)
                .await
                .expect("progress");
            if progress.iter().all(|p| p.lag() == 0) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "aggregator behind: {progress:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn stop_aggregator(&self) {
        let _ = self.aggregator_stop.send(true);
    }
}

/// A query node in this process, its HTTP API on a free port.
pub struct Node {
    pub node: QueryNode,
    pub addr: SocketAddr,
    pub _stop: watch::Sender<bool>,
    pub http: reqwest::Client,
}

pub async fn node(client: &async_nats::Client) -> Node {
    node_of(client, &sites()).await
}

/// A query node of `sites` in this process, its HTTP API on a free port.
pub async fn node_of(client: &async_nats::Client, sites: &[Site]) -> Node {
    let (stop, shutdown) = watch::channel(false);
    let node = QueryNode::new(client.clone(), sites, PARTITIONS, shutdown.clone());
    tokio::spawn(node.clone().run());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = beacon_query::http::router(node.clone());
    let mut down = shutdown;
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = down.wait_for(|s| *s).await;
            })
            .await
    });
    Node {
        node,
        addr,
        _stop: stop,
        http: reqwest::Client::new(),
    }
}

impl Node {
    /// Wait (bounded) until the node has loaded the rollups.
    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.node.is_ready() {
            assert!(tokio::time::Instant::now() < deadline, "node never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET `path` with `key`; the status and the JSON body.
    pub async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// GET that must succeed.
    pub async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path, Some(READ_ALL)).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// Wait (bounded) until `path`'s answer satisfies `done`, e.g. until the
    /// node's view has caught up with the aggregator's commits.
    pub async fn until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let (status, body) = self.get(path, Some(READ_ALL)).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never satisfied: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Ask the NATS service; Ok(body) or Err((code, message)).
pub async fn ask_nats(
    client: &async_nats::Client,
    op: &str,
    body: Value,
) -> Result<Value, (String, String)> {
    let reply = client
        .request(
            format!("beacon.query.v1.{op}"),
            serde_json::to_vec(&body).expect("json").into(),
        )
        .await
        .expect("a query node answers");
    if let Some(headers) = &reply.headers
        && let Some(code) = headers.get("Nats-Service-Error-Code")
    {
        let message = headers
            .get("Nats-Service-Error")
            .map(|v| v.to_string())
            .unwrap_or_default();
        return Err((code.to_string(), message));
    }
    Ok(serde_json::from_slice(&reply.payload).expect("JSON answer"))
}
