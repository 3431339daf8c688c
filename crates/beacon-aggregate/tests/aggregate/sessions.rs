//! Sessions follow event time, not arrival order.

use std::time::Duration;

use beacon_rollup::Granularity;
use beacon_testing::truth::{Shape, generate, publish};

use super::support::{aggregator, settings, setup, view, wait_committed};

#[tokio::test]
async fn a_page_view_at_noon_then_one_at_ten_are_two_bounced_sessions() {
    let s = setup().await;
    // Today's 12:00 and 10:00 UTC, or yesterday's while today's noon is ahead.
    let now = chrono::Utc::now().timestamp_millis();
    let day = Granularity::Day.bucket_start(now - 12 * 3_600_000);
    let (ten, noon) = (day + 10 * 3_600_000, day + 12 * 3_600_000);
    let template = generate(Shape {
        seed: 13,
        sites: 1,
        users: 1,
        events: 1,
        days: 1,
        end_ms: now,
        partitions: super::support::PARTITIONS,
    })
    .remove(0);
    let page_view = |id: &str, ts: i64, path: &str| {
        let mut e = template.clone();
        e.id = id.to_owned();
        e.name = "pageview".to_owned();
        e.revenue = None;
        e.ts = chrono::DateTime::from_timestamp_millis(ts).expect("time");
        e.context.path = Some(path.to_owned());
        e
    };
    // Sent in this order: noon first, ten o'clock after it.
    publish(
        &s.js,
        &[page_view("noon", noon, "/b"), page_view("ten", ten, "/a")],
    )
    .await;
    let agg = aggregator(&s.client, settings());
    wait_committed(&s.js, Duration::from_secs(60)).await;
    agg.shutdown().await;

    let v = view(&s.js).await;
    let total = v.total("site-0", Granularity::Day, day..day + 1);
    let sessions = &total.sessions;
    assert_eq!(
        (
            sessions.started,
            sessions.bounces,
            sessions.duration_ms,
            sessions.pageviews
        ),
        (2, 2, 0, 2)
    );
    let entries: Vec<(&str, i64)> = sessions.entries.iter().collect();
    assert_eq!(entries, [("/a", 1), ("/b", 1)]);
    let exits: Vec<(&str, i64)> = sessions.exits.iter().collect();
    assert_eq!(exits, [("/a", 1), ("/b", 1)]);
    // Each in the hour it started.
    for (hour, path) in [(ten, "/a"), (noon, "/b")] {
        let t = v.total("site-0", Granularity::Hour, hour..hour + 1);
        assert_eq!(t.sessions.started, 1, "{path}");
        assert_eq!(t.sessions.entries.get(path), 1, "{path}");
    }
    let late: u64 = v.partitions().iter().map(|p| p.session_late).sum();
    assert_eq!(late, 0);
}
