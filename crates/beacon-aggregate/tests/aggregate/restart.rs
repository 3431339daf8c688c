//! An owner whose partition is idle when the nats-server restarts: its event
//! consumer is recreated before any delivery, and must not count old events again.

use std::time::Duration;

use beacon_rollup::Granularity;
use beacon_testing::truth::{Shape, generate, publish};

use super::support::{PARTITIONS, aggregator, settings, setup, view, wait_committed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_idle_owners_counts_nothing_twice() {
    let mut s = setup().await;
    let shape = |seed| Shape {
        seed,
        sites: 1,
        users: 50,
        events: 400,
        days: 1,
        end_ms: chrono::Utc::now().timestamp_millis(),
        partitions: PARTITIONS,
    };
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
