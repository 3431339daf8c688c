//! A query node across NATS trouble: its numbers move on promptly after the
//! server restarts, and a node that can no longer follow the rollups fails
//! instead of serving a frozen view.

use std::time::Duration;

use beacon_core::subject::event_subject;
use beacon_query::QueryNode;
use chrono::Utc;
use tokio::sync::watch;

use super::support::{PARTITIONS, node, setup, sites};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_move_on_promptly_after_a_nats_restart() {
    let mut s = setup(500).await;
    s.committed().await;
    let n = node(&s.client).await;
    n.ready().await;
    let numbers =
        "/api/v1/sites/site-0/timeseries?from=-1h&interval=1m&metrics=events&name=after-restart";
    assert_eq!(n.ok(numbers).await["totals"]["events"], 0);

    s._nats.kill();
    s._nats.resume().await;
    let mut fresh = s.events[0].clone();
    fresh.id = "after-restart-1".into();
    fresh.site = "site-0".into();
    fresh.name = "after-restart".into();
    fresh.ts = Utc::now();
    fresh.received_at = fresh.ts;
    // Stored once the server takes writes again (that wait is not what is measured).
    let back = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", fresh.dedupe_id().as_str());
        let payload = serde_json::to_vec(&fresh).expect("serialize");
        let subject = event_subject(fresh.partition, &fresh.site, &fresh.name);
        let stored = match s
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            break;
        }
        assert!(
            tokio::time::Instant::now() < back,
            "the restarted server never took the event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Readers that wait for the client library to notice two missed idle
    // heartbeats (15 s each) take 15-30 s; reopened at the reconnect, the
    // event is counted within the usual commit interval.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = n.get(numbers, Some(super::support::READ_ALL)).await;
        if status == 200 && body["totals"]["events"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event is not counted 10 s after the restart: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop_aggregator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_rollups_are_gone_fails_and_is_not_ready() {
    let s = setup(200).await;
    s.committed().await;
    let (_stop, shutdown) = watch::channel(false);
    let node = QueryNode::new(s.client.clone(), &sites(), PARTITIONS, shutdown);
    let running = tokio::spawn(node.clone().run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !node.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "node never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    s.stop_aggregator();
    s.js.delete_stream(beacon_nats::ROLLUPS_STREAM)
        .await
        .expect("delete the rollups");
    let ended = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the node notices it cannot follow the rollups")
        .expect("the node does not panic");
    let error = ended.expect_err("a node that cannot follow fails");
    assert!(error.is::<beacon_query::follow::FollowError>(), "{error:#}");
    assert!(!node.is_ready());
}
