//! Rollups equal a ground truth the test computes itself.

use std::time::Duration;

use beacon_rollup::Granularity;
use beacon_testing::truth::{Shape, Truth, generate, publish};

use super::support::{PARTITIONS, aggregator, settings, setup, view, wait_committed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_equal_the_ground_truth() {
    let t0 = std::time::Instant::now();
    let s = setup().await;
    let shape = Shape {
        seed: 7,
        sites: 3,
        users: 20_000,
        events: 200_000,
        days: 9,
        end_ms: chrono::Utc::now().timestamp_millis(),
        partitions: PARTITIONS,
    };
    let events = generate(shape);
    let truth = Truth::of(&events, &Granularity::ALL, 30 * 60_000);
    eprintln!("generated and computed the truth in {:?}", t0.elapsed());
    // Half before the aggregator starts, half while it runs; it is restarted
    // in between (a clean stop: commit, release, resume from the commit).
    let first = aggregator(&s.client, settings());
    let (a, b) = events.split_at(events.len() / 2);
    publish(&s.js, a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.shutdown().await;
    let second = aggregator(&s.client, settings());
    publish(&s.js, b).await;
    wait_committed(&s.js, Duration::from_secs(300)).await;
    second.shutdown().await;
    eprintln!("published and aggregated in {:?}", t0.elapsed());

    let view = view(&s.js).await;
    eprintln!("loaded in {:?}", t0.elapsed());
    assert_eq!(truth.total_events(Granularity::Day), 200_000);
    let diffs = truth.differences(&view, 0.02);
    eprintln!("compared in {:?}", t0.elapsed());
    assert!(
        diffs.is_empty(),
        "{} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
    // Unique users over all nine days: one sketch union across buckets and partitions.
    for site in ["site-0", "site-1", "site-2"] {
        let want = truth.users_of(site, Granularity::Day) as f64;
        let got = view.unique_users(site, Granularity::Day, i64::MIN..i64::MAX);
        assert!((got - want).abs() <= want * 0.02, "{site}: {got} vs {want}");
    }
}
