//! Beacon's real services for the client to talk to: a test nats-server with
//! the streams, and in this process the collector and normalizer (and, for
//! queries, an aggregator and a query node).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use beacon_core::{Limits, Site};
use beacon_ingest::collector::Collector;
use beacon_ingest::{
    CollectorSettings, NormalizerSettings, Pipeline, run_collector, run_normalizer,
};
use beacon_nats::{Publisher, RetryPolicy, StreamSettings, connect, provision};
use beacon_testing::TestServer;
use tokio::sync::watch;

pub const SITE: &str = "shop";
pub const WRITE_KEY: &str = "wk_test_client_shop_0000";
pub const READ_KEY: &str = "rk_test_client_shop_0000";
pub const PARTITIONS: u32 = 4;

pub fn sites() -> Vec<Site> {
    vec![Site {
        id: SITE.into(),
        write_keys: vec![WRITE_KEY.into()],
        read_keys: vec![READ_KEY.into()],
        rate_limit: 0,
        rate_burst: 0,
        domains: vec![],
        keep_bots: false,
        manage_keys: vec![],
        goals: vec![],
    }]
}

/// Beacon's streams on `nats`, for `PARTITIONS` partitions.
pub async fn provisioned(nats: &TestServer) -> jetstream::Context {
    let (_, js) = nats.provisioned(PARTITIONS).await;
    js
}

/// The collector (HTTP on a free port) and the normalizer, running until dropped.
pub struct Services {
    pub url: String,
    pub js: jetstream::Context,
    _stop: watch::Sender<bool>,
}

pub async fn start(nats: &TestServer) -> Services {
    let client = connect(&nats.nats_config(), "beacon-client-test")
        .await
        .expect("connect");
    let streams = StreamSettings {
        partitions: PARTITIONS,
        ..StreamSettings::default()
    };
    let publisher = Publisher::new(client.clone(), RetryPolicy::default());
    provision(publisher.jetstream(), &streams)
        .await
        .expect("provision");
    let pipeline = Pipeline::new(publisher, Limits::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("address");
    let (stop, shutdown) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let collector = Collector::new(
        pipeline.clone(),
        client.clone(),
        CollectorSettings {
            listen: addr,
            ..CollectorSettings::default()
        },
        &sites(),
        PARTITIONS,
    );
    let stop_collector = stopped(shutdown.clone());
    tokio::spawn(async move {
        run_collector(collector, axum::Router::new(), listener, stop_collector)
            .await
            .expect("collector runs")
    });
    let names: HashSet<String> = [SITE.to_owned()].into();
    let stop_normalizer = stopped(shutdown);
    tokio::spawn(async move {
        run_normalizer(
            pipeline,
            names,
            PARTITIONS,
            NormalizerSettings::default(),
            stop_normalizer,
        )
        .await
        .expect("normalizer runs")
    });
    Services {
        url: format!("http://{addr}"),
        js: jetstream::new(client),
        _stop: stop,
    }
}

/// The canonical events stored in `BEACON_EVENTS`, in stream order.
pub async fn stored(js: &jetstream::Context) -> Vec<serde_json::Value> {
    let mut stream = js
        .get_stream(beacon_nats::EVENTS_STREAM)
        .await
        .expect("stream");
    let state = stream.info().await.expect("info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(serde_json::from_slice(&m.payload).expect("stored events are JSON"));
        }
    }
    out
}

/// How many times each id is stored.
pub async fn stored_ids(js: &jetstream::Context) -> Vec<String> {
    stored(js)
        .await
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect()
}

/// Wait (bounded) until `BEACON_EVENTS` holds `n` events; the bound only guards against hangs.
pub async fn wait_stored(js: &jetstream::Context, n: usize) -> Vec<String> {
    eventually(&format!("{n} events stored"), || async {
        stored_ids(js).await.len() >= n
    })
    .await;
    // Give a would-be duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stored_ids(js).await
}

/// Wait (bounded) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gave up waiting for: {what}");
}

/// Fails unless every id appears exactly once.
pub fn assert_once(ids: &[String]) {
    let mut seen = HashSet::new();
    for id in ids {
        assert!(seen.insert(id), "event {id} is stored more than once");
    }
}
