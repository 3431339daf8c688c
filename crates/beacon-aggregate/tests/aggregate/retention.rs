//! Buckets past their retention disappear; late events count in the buckets
//! that remain; events too old for all of them are counted as dropped.

use std::time::Duration;

use beacon_rollup::{Granularity, Retention};
use beacon_testing::truth::{Shape, generate, publish};

use super::support::{aggregator, settings, setup, view, wait_committed};

#[tokio::test]
async fn old_buckets_go_and_late_events_land_where_they_can() {
    let s = setup().await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut events = generate(Shape {
        seed: 3,
        sites: 1,
        users: 5,
        events: 4,
        days: 1,
        end_ms: now,
        partitions: super::support::PARTITIONS,
    });
    // Ages far enough from bucket edges that the outcome never depends on the clock:
    // 3 minutes, 100 minutes, 5 hours and 10 days old.
    for (e, age) in
        events
            .iter_mut()
            .zip([3 * 60_000, 100 * 60_000, 5 * 3_600_000, 10 * 86_400_000])
    {
        e.ts = chrono::DateTime::from_timestamp_millis(now - age).expect("time");
    }
    let short = Retention {
        minute: Duration::from_secs(10 * 60),
        hour: Duration::from_secs(3 * 3600),
        day: Duration::from_secs(3 * 86_400),
    };
    let agg = aggregator(
        &s.client,
        beacon_aggregate::AggregatorSettings {
            retention: short,
            ..settings()
        },
    );
    publish(&s.js, &events).await;
    wait_committed(&s.js, Duration::from_secs(60)).await;
    agg.shutdown().await;

    let v = view(&s.js).await;
    let count = |g| v.total("site-0", g, i64::MIN..i64::MAX).total_events();
    assert_eq!(
        count(Granularity::Minute),
        1,
        "only the 3-minute-old event is in minute buckets"
    );
    assert_eq!(
        count(Granularity::Hour),
        2,
        "the 100-minute-old one is in hour buckets too"
    );
    assert_eq!(
        count(Granularity::Day),
        3,
        "the 5-hour-old one only in day buckets"
    );
    let dropped: u64 = v.partitions().iter().map(|p| p.dropped_late).sum();
    assert_eq!(
        dropped, 1,
        "the 10-day-old event is counted as dropped-late"
    );

    // Later, shorter retentions (as time passing would): at the next commit of
    // each partition the minute bucket and the 100-minute-old hour bucket go.
    let agg = aggregator(
        &s.client,
        beacon_aggregate::AggregatorSettings {
            retention: Retention {
                minute: Duration::from_secs(60),
                hour: Duration::from_secs(10 * 60),
                ..short
            },
            ..settings()
        },
    );
    // New events of the same users reach the same partitions and make them commit.
    let now = chrono::Utc::now().timestamp_millis();
    let triggers: Vec<_> = events[..3]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut t = e.clone();
            t.id = format!("trigger-{i}");
            t.ts = chrono::DateTime::from_timestamp_millis(now - 2 * 60_000).expect("time");
            t
        })
        .collect();
    publish(&s.js, &triggers).await;
    wait_committed(&s.js, Duration::from_secs(60)).await;
    agg.shutdown().await;
    let v = view(&s.js).await;
    let count = |g| v.total("site-0", g, i64::MIN..i64::MAX).total_events();
    assert_eq!(
        count(Granularity::Minute),
        0,
        "minute buckets past retention are gone"
    );
    assert_eq!(
        count(Granularity::Hour),
        4,
        "the 3-minute-old event and the triggers"
    );
    assert_eq!(count(Granularity::Day), 6);
}
