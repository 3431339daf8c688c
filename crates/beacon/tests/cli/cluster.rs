//! Beacon on a 3-node JetStream cluster with every stream at 3 replicas, its
//! services as separate processes: NATS nodes (stream leaders) and an
//! aggregator are SIGKILLed mid-stream and restarted. The numbers end equal to
//! the ground truth, and whenever the query node says "lag 0" its numbers
//! include every event acknowledged before it was asked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use beacon_core::Event;
use beacon_nats::{EVENTS_STREAM, ROLLUPS_STREAM};
use beacon_rollup::Granularity;
use beacon_testing::TestCluster;
use beacon_testing::truth::{Shape, Truth, generate};
use futures::StreamExt;
use serde_json::Value;
use tokio::process::Child;

use super::process::{beacon, sigterm, spawn_until};

const PARTITIONS: u32 = 8;
const READ_KEY: &str = "rk_test_site_000000000";
const EVENTS: usize = 20_000;
const CHUNK: usize = 500;

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("beacon.toml");
    std::fs::write(
        &path,
        format!(
            "[streams]\npartitions = {PARTITIONS}\nreplicas = 3\n\
             [aggregator]\ncommit_interval = \"100ms\"\nlease_ttl = \"3s\"\n\
             [aggregator.retention]\nminute = \"40days\"\n\
             [[sites]]\nid = \"site-0\"\nwrite_keys = [\"wk_test_site_000000000\"]\n\
             read_keys = [\"{READ_KEY}\"]\n"
        ),
    )
    .expect("write config");
    path
}

/// A `beacon` service process on every node of `cluster`.
fn service(
    dir: &Path,
    config: &Path,
    cluster: &TestCluster,
    role: &str,
) -> tokio::process::Command {
    let mut command = beacon(dir);
    command
        .arg(role)
        .args(["--nats-url", &cluster.urls().join(","), "--config"])
        .arg(config);
    command
}

async fn aggregator(dir: &Path, config: &Path, cluster: &TestCluster) -> Child {
    spawn_until(
        service(dir, config, cluster, "aggregator"),
        "aggregator sharing",
    )
    .await
    .0
}

/// A query node process and its base URL.
async fn query_node(dir: &Path, config: &Path, cluster: &TestCluster) -> (Child, String) {
    let mut command = service(dir, config, cluster, "query");
    command.args(["--listen", "127.0.0.1:0"]);
    let (child, line) = spawn_until(command, "query API on").await;
    let start = line.find("http://").expect("a URL in the line");
    let url = line[start..]
        .split("/api/v1/")
        .next()
        .expect("base URL")
        .to_owned();
    (child, url)
}

async fn sigkill(mut child: Child) {
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
}

/// Publish `events` until JetStream has stored every one, resending those not
/// acknowledged with the same dedupe ids (a node may be down or a leader
/// changing). Acks are awaited together, so one slow ack holds up no other.
async fn publish_stored(js: &async_nats::jetstream::Context, events: &[Event]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<&Event> = events.iter().collect();
    while !pending.is_empty() {
        let mut sent = Vec::with_capacity(pending.len());
        for e in &pending {
            let ack = beacon_testing::truth::send(js, e).await;
            sent.push(async move {
                match ack {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            });
        }
        let stored = futures::future::join_all(sent).await;
        pending = pending
            .into_iter()
            .zip(stored)
            .filter_map(|(e, ok)| (!ok).then_some(e))
            .collect();
        if !pending.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} events still not stored after 120 s",
                pending.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The events as stored, in stream order: the order the aggregators count them
/// in. A resent event lands after others sent later, and session figures depend
/// on the order, so the truth is computed from this, not the order generated.
async fn stored_events(js: &async_nats::jetstream::Context) -> Vec<Event> {
    let mut stream = js.get_stream(EVENTS_STREAM).await.expect("events stream");
    let count = stream.info().await.expect("stream info").state.messages;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("reader");
    let mut messages = consumer.messages().await.expect("messages");
    let mut events = Vec::new();
    while (events.len() as u64) < count {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the stored events within 30 s")
            .expect("more events")
            .expect("an event message");
        events.push(serde_json::from_slice(&message.payload).expect("an event"));
    }
    events
}

/// The query node's HTTP API.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    from: String,
}

impl Api {
    async fn get(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(READ_KEY)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// `(ready, lag)` from `/api/v1/status`, if it answered.
    async fn lag(&self) -> Option<(bool, u64)> {
        let status = self.get("/api/v1/status").await?;
        Some((status["ready"] == true, status["lag"].as_u64()?))
    }

    /// Events the query node counts over the whole data set.
    async fn events(&self) -> Option<u64> {
        let summary = self
            .get(&format!(
                "/api/v1/sites/site-0/summary?from={}&to=now&metrics=events,pageviews",
                self.from
            ))
            .await?;
        summary["metrics"]["events"]["value"].as_u64()
    }
}

/// What the status watcher saw.
#[derive(Debug, Default)]
struct Watched {
    statuses: u64,
    /// Status asks that failed (a leader being elected) or timed out.
    unanswered: u64,
    lag_zero: u64,
    /// "lag 0" while fewer events were counted than had been acknowledged.
    false_zeros: Vec<String>,
}

/// Ask the status over and over while events stream in; after every "lag 0",
/// the numbers must hold at least every event acknowledged before the ask.
async fn watch(api: Api, acked: Arc<AtomicU64>, done: Arc<AtomicBool>) -> Watched {
    let mut seen = Watched::default();
    while !done.load(Ordering::SeqCst) {
        let acked_before = acked.load(Ordering::SeqCst);
        if let Some((ready, lag)) = api.lag().await {
            seen.statuses += 1;
            if ready && lag == 0 {
                seen.lag_zero += 1;
                // The view only grows, so a count read after the status is
                // never less than what the status spoke for.
                if let Some(counted) = api.events().await
                    && counted < acked_before
                {
                    seen.false_zeros.push(format!(
                        "lag 0 with {counted} events counted of {acked_before} acknowledged"
                    ));
                }
            }
        } else {
            seen.unanswered += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_nodes_and_an_aggregator_killed_on_a_cluster_lose_nothing_and_never_claim_lag_0_early()
{
    let mut cluster = TestCluster::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let end_ms = chrono::Utc::now().timestamp_millis();
    let events = generate(Shape {
        seed: 31,
        sites: 1,
        users: 2_000,
        events: EVENTS,
        days: 2,
        end_ms,
        partitions: PARTITIONS,
    });

    // The first aggregator provisions the streams, at 3 replicas.
    let mut a = Some(aggregator(dir.path(), &config, &cluster).await);
    let b = aggregator(dir.path(), &config, &cluster).await;
    let (query, base) = query_node(dir.path(), &config, &cluster).await;
    let api = Api {
        http: reqwest::Client::new(),
        base,
        from: chrono::DateTime::from_timestamp_millis(end_ms - 3 * 86_400_000)
            .expect("a time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let js = async_nats::jetstream::new(cluster.client().await);
    let replicas = js
        .get_stream(EVENTS_STREAM)
        .await
        .expect("events stream")
        .cached_info()
        .config
        .num_replicas;
    assert_eq!(replicas, 3, "streams are provisioned at 3 replicas");

    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch(api.clone(), acked.clone(), done.clone()));

    let mut down: Option<usize> = None;
    for (i, chunk) in events.chunks(CHUNK).enumerate() {
        publish_stored(&js, chunk).await;
        acked.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        match i {
            // A stream's leader dies: first the events' (under the writers and
            // the aggregators' readers), later the rollups' (under the commits
            // and the query node's follower).
            8 | 24 => {
                let stream = if i == 8 {
                    EVENTS_STREAM
                } else {
                    ROLLUPS_STREAM
                };
                let node = cluster.stream_leader(stream).await.unwrap_or(0);
                cluster.kill(node);
                down = Some(node);
            }
            12 | 28 => {
                if let Some(node) = down.take() {
                    cluster.resume(node).await;
                }
            }
            16 => sigkill(a.take().expect("aggregator a")).await,
            18 => a = Some(aggregator(dir.path(), &config, &cluster).await),
            _ => {}
        }
        // Pauses let the aggregators catch up, so statuses say "lag 0" during
        // the run too, not only at its end: each such claim is checked.
        let pause = if i % 5 == 4 { 1_500 } else { 50 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    // Everything is stored; wait (bounded) until the query node says it is counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        if api.lag().await == Some((true, 0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the query node never caught up: {:?}",
            api.get("/api/v1/status").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    done.store(true, Ordering::SeqCst);
    let watched = watcher.await.expect("watcher");
    assert!(
        watched.false_zeros.is_empty(),
        "{} of {} statuses said lag 0 too early, first: {:?}",
        watched.false_zeros.len(),
        watched.statuses,
        watched.false_zeros.first()
    );
    assert!(watched.statuses > 0, "the status was read during the run");

    assert_eq!(
        api.events().await,
        Some(EVENTS as u64),
        "the query node counts every event exactly once"
    );
    let stored = stored_events(&js).await;
    assert_eq!(stored.len(), EVENTS, "every event stored once");
    let truth = Truth::of(&stored, &Granularity::ALL, 30 * 60_000);
    let view = beacon_aggregate::view(&js, PARTITIONS).await.expect("view");
    let diffs = truth.differences(&view, 0.02);
    assert!(
        diffs.is_empty(),
        "{} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
    eprintln!(
        "cluster: {} statuses read, {} said lag 0, {} unanswered",
        watched.statuses, watched.lag_zero, watched.unanswered
    );

    for child in [a.expect("aggregator a"), b, query] {
        sigterm(&child);
        let _ = tokio::time::timeout(Duration::from_secs(30), async move {
            let mut child = child;
            child.wait().await
        })
        .await
        .expect("stops");
    }
}
