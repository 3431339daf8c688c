//! Starting the ingest services against a test nats-server, and reading streams back.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, message::StreamMessage};
use beacon_core::{Enricher, Limits, Site};
use beacon_ingest::collector::Collector;
use beacon_ingest::{
    CollectorSettings, NormalizerSettings, Pipeline, run_collector, run_normalizer,
};
use beacon_nats::{Publisher, RetryPolicy, StreamSettings, check_server, connect, provision};
use beacon_testing::TestServer;
use tokio::sync::watch;

pub const SHOP_KEY: &str = "wk_test_shop_000000000";
pub const BLOG_KEY: &str = "wk_test_blog_000000000";

/// Settings a test may change before the services start.
#[derive(Debug, Clone)]
pub struct Setup {
    pub streams: StreamSettings,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub collector: CollectorSettings,
    pub normalizer: NormalizerSettings,
    pub sites: Vec<Site>,
    /// Routes served beside the collector's.
    pub extra: axum::Router,
    /// No GeoIP database unless a test gives one.
    pub enricher: Enricher,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            streams: StreamSettings::default(),
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            collector: CollectorSettings {
                listen: "127.0.0.1:0".parse().expect("address"),
                ..CollectorSettings::default()
            },
            normalizer: NormalizerSettings::default(),
            sites: vec![
                Site {
                    id: "shop".into(),
                    write_keys: vec![SHOP_KEY.into()],
                    read_keys: vec![],
                    rate_limit: 0,
                    rate_burst: 0,
                    domains: vec!["shop.example".into()],
                    keep_bots: false,
                    manage_keys: vec![],
                    goals: vec![],
                },
                Site {
                    id: "blog".into(),
                    write_keys: vec![BLOG_KEY.into()],
                    read_keys: vec![],
                    rate_limit: 1,
                    rate_burst: 5,
                    domains: vec!["blog.example".into()],
                    keep_bots: false,
                    manage_keys: vec![],
                    goals: vec![],
                },
            ],
            extra: axum::Router::new(),
            enricher: Enricher::default(),
        }
    }
}

/// Collector and normalizer running in this process against `nats`.
pub struct Services {
    pub url: String,
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub async fn start(nats: &TestServer, setup: Setup) -> Services {
    let client = connect(&nats.nats_config(), "beacon-test")
        .await
        .expect("connect");
    check_server(&client).await.expect("server is usable");
    let publisher = Publisher::new(client.clone(), setup.retry);
    provision(publisher.jetstream(), &setup.streams)
        .await
        .expect("provision");
    let pipeline = Pipeline::new(publisher, setup.limits.clone()).with_enricher(setup.enricher);
    let listener = tokio::net::TcpListener::bind(setup.collector.listen)
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
        setup.collector,
        &setup.sites,
        setup.streams.partitions,
    );
    let mut tasks = vec![tokio::spawn({
        let stop = stopped(shutdown.clone());
        async move {
            run_collector(collector, setup.extra, listener, stop)
                .await
                .expect("collector runs")
        }
    })];
    let sites: HashSet<String> = setup.sites.iter().map(|s| s.id.clone()).collect();
    tasks.push(tokio::spawn({
        let stop = stopped(shutdown);
        let partitions = setup.streams.partitions;
        async move {
            run_normalizer(pipeline, sites, partitions, setup.normalizer, stop)
                .await
                .expect("normalizer runs")
        }
    }));
    Services {
        url: format!("http://{addr}"),
        js: jetstream::new(client),
        http: reqwest::Client::new(),
        stop,
        tasks,
    }
}

impl Services {
    /// POST a body to the native endpoint with the shop's key.
    pub async fn post(&self, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
        self.post_with(SHOP_KEY, &[], body).await
    }

    pub async fn post_with(
        &self,
        key: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let bearer = format!("Bearer {key}");
        let mut all = headers.to_vec();
        if !key.is_empty() {
            all.push(("authorization", &bearer));
        }
        self.send(reqwest::Method::POST, "/api/v1/events", &all, body)
            .await
    }

    /// Send `body` to any collector path with the given headers; the answer's
    /// status and its body (JSON when it is JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("collector answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Every message in a stream, in order.
    pub async fn messages(&self, stream: &str) -> Vec<StreamMessage> {
        messages(&self.js, stream).await
    }

    /// Stop both services the way SIGTERM does and wait for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("service ended cleanly");
        }
    }
}

pub async fn messages(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// The canonical events stored in `BEACON_EVENTS`.
pub async fn events(js: &jetstream::Context) -> Vec<serde_json::Value> {
    messages(js, beacon_nats::EVENTS_STREAM)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("stored events are JSON"))
        .collect()
}

/// Every stored reject: those of known sites, then the unauthenticated ones.
pub async fn all_rejects(js: &jetstream::Context) -> Vec<StreamMessage> {
    let mut all = messages(js, beacon_nats::REJECTS_STREAM).await;
    all.extend(messages(js, beacon_nats::UNAUTH_REJECTS_STREAM).await);
    all
}

/// The reason header of every stored reject.
pub async fn reject_reasons(js: &jetstream::Context) -> Vec<String> {
    all_rejects(js)
        .await
        .iter()
        .filter_map(|m| {
            m.headers
                .get("Beacon-Reason")
                .map(|v| v.as_str().to_owned())
        })
        .collect()
}

/// Every stored reject as (reason, payload as text).
pub async fn rejects(js: &jetstream::Context) -> Vec<(String, String)> {
    all_rejects(js)
        .await
        .iter()
        .map(|m| {
            let reason = m
                .headers
                .get("Beacon-Reason")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            (reason, String::from_utf8_lossy(&m.payload).into_owned())
        })
        .collect()
}

/// The stored event with this id; fails unless there is exactly one.
pub fn only<'a>(stored: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    let found: Vec<_> = stored.iter().filter(|e| e["id"] == id).collect();
    assert_eq!(found.len(), 1, "event {id} is stored {} times", found.len());
    found[0]
}

/// Wait (bounded) until `check` holds; the bound only guards against hangs.
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
