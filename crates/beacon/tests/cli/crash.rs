//! Processes killed with SIGKILL mid-stream: nothing acknowledged is lost,
//! nothing is stored twice.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use beacon_testing::TestServer;
use serde_json::json;

use super::process::{SHOP_KEY, beacon, spawn_until, url_in, write_config};

async fn stored_ids(nats: &TestServer) -> Vec<String> {
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream("BEACON_EVENTS").await.expect("stream");
    let state = stream.info().await.expect("info").state.clone();
    let mut ids = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let event: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
            ids.push(event["id"].as_str().expect("id").to_owned());
        }
    }
    ids
}

fn assert_exactly_once(ids: &[String], expected: usize) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(counts.len(), expected, "distinct events stored");
}

#[tokio::test]
async fn a_collector_killed_mid_stream_loses_nothing_acknowledged() {
    let nats = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let start_collector = || {
        let mut c = beacon(dir.path());
        c.args([
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &nats.url(),
            "--config",
        ])
        .arg(&config);
        spawn_until(c, "collector listening on")
    };
    let (mut child, line) = start_collector().await;
    let mut url = url_in(&line);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // 200 batches of 10 events with ids; the collector is SIGKILLed twice on the way.
    // A batch counts as acknowledged only on a 2xx; anything else is sent again.
    let batches = 200;
    let mut acknowledged = HashSet::new();
    for b in 0..batches {
        if b == 60 || b == 140 {
            child.start_kill().expect("SIGKILL");
            let _ = child.wait().await;
            (child, url) = {
                let (c, line) = start_collector().await;
                (c, url_in(&line))
            };
        }
        let body: Vec<_> = (0..10).map(|i| json!({"id": format!("b{b}-e{i}"), "name": "click", "user_id": format!("u{i}")})).collect();
        loop {
            let sent = http
                .post(format!("{url}/api/v1/events"))
                .bearer_auth(SHOP_KEY)
                .json(&body)
                .send()
                .await;
            if let Ok(response) = sent
                && response.status().is_success()
            {
                acknowledged.insert(b);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Fire a request and kill the collector while it may be in flight: its
        // outcome is unknown to the client, which resends the batch afterwards.
        if b == 100 {
            let doomed = http
                .post(format!("{url}/api/v1/events"))
                .bearer_auth(SHOP_KEY)
                .json(&body)
                .send();
            child.start_kill().expect("SIGKILL");
            let _ = doomed.await;
            let _ = child.wait().await;
            (child, url) = {
                let (c, line) = start_collector().await;
                (c, url_in(&line))
            };
        }
    }
    assert_eq!(acknowledged.len(), batches);
    assert_exactly_once(&stored_ids(&nats).await, batches * 10);
}

#[tokio::test]
async fn a_normalizer_killed_mid_stream_counts_nothing_twice() {
    let nats = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let start_normalizer = || {
        let mut c = beacon(dir.path());
        c.args(["normalizer", "--nats-url", &nats.url(), "--config"])
            .arg(&config);
        spawn_until(c, "normalizer consuming")
    };
    // Provision the streams, then publish 3000 raw events without ids: their
    // ids come from the ingest sequence, so redeliveries must dedupe.
    let (mut child, _) = start_normalizer().await;
    let js = async_nats::jetstream::new(nats.client().await);
    let total = 3000;
    let mut acks = Vec::new();
    for i in 0..total {
        let payload = json!({"name": "pageview", "user_id": format!("u{}", i % 97)}).to_string();
        acks.push(
            js.publish("beacon.ingest.shop", payload.into())
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("stored in BEACON_INGEST");
    }
    // Kill it twice while it works through the backlog.
    for _ in 0..2 {
        for _ in 0..200 {
            if stored_ids(&nats).await.len() > 300 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        (child, _) = start_normalizer().await;
    }
    // Count only once every ingest message is acknowledged: the ones the killed
    // normalizers held have then been redelivered (after the 1 s ack wait) and processed.
    let consumer = || async {
        let stream = js.get_stream("BEACON_INGEST").await.expect("stream");
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("beacon-normalizer")
            .await
            .expect("consumer");
        consumer.info().await.expect("info").clone()
    };
    for _ in 0..600 {
        let info = consumer().await;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = consumer().await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "every ingest message is settled"
    );
    assert_exactly_once(&stored_ids(&nats).await, total);
    child.start_kill().expect("stop");
}
