//! Owners whose event readers break: an idle one across a nats-server restart
//! must not count old events again, and one that goes silent must be reopened.

use std::time::Duration;

use beacon_aggregate::owner::READER_PREFIX;
use beacon_rollup::Granularity;
use beacon_testing::truth::{Shape, generate, publish};

use super::support::{PARTITIONS, aggregator, settings, setup, view, wait_committed};

/// 400 events of 50 users on one site, ending now.
fn shape(seed: u64) -> Shape {
    Shape {
        seed,
        sites: 1,
        users: 50,
        events: 400,
        days: 1,
        end_ms: chrono::Utc::now().timestamp_millis(),
        partitions: PARTITIONS,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_idle_owners_counts_nothing_twice() {
    let mut s = setup().await;
    publish(&s.js, &generate(shape(1))).await;
    let first = aggregator(&s.client, settings());
    wait_committed(&s.js, Duration::from_secs(60)).await;
    first.shutdown().await;

    // New owners take over and wait on partitions with nothing new.
    let second = aggregator(&s.client, settings());
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.nats.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish(&s.js, &generate(shape(2))).await;
    wait_committed(&s.js, Duration::from_secs(60)).await;
    second.shutdown().await;

    let v = view(&s.js).await;
    assert_eq!(
        v.total("site-0", Granularity::Day, i64::MIN..i64::MAX)
            .total_events(),
        800
    );
}

/// An event reader that the server stops feeding while it still answers
/// heartbeats (here: paused on the server) looks alive to the client. The
/// owner must notice that its partition has events it was not given, and
/// read them with a new reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_reader_goes_silent_with_events_waiting_reads_them_anyway() {
    let s = setup().await;
    publish(&s.js, &generate(shape(1))).await;
    let running = aggregator(&s.client, settings());
    wait_committed(&s.js, Duration::from_secs(60)).await;

    let paused =
        beacon_testing::pause_consumers(&s.js, beacon_nats::EVENTS_STREAM, READER_PREFIX).await;
    assert_eq!(paused.len(), PARTITIONS as usize, "{paused:?}");

    publish(&s.js, &generate(shape(2))).await;
    wait_committed(&s.js, Duration::from_secs(90)).await;
    running.shutdown().await;

    let v = view(&s.js).await;
    assert_eq!(
        v.total("site-0", Granularity::Day, i64::MIN..i64::MAX)
            .total_events(),
        800
    );
}
