//! A new event reaches the live stream and the numbers without a restart, and
//! a reconnecting stream resumes after the last event it saw.

use std::time::Duration;

use beacon_testing::truth::publish;
use chrono::Utc;

use crate::support::*;

/// Read `response` (bounded) until its text so far contains `needle`.
async fn read_until(response: &mut reqwest::Response, text: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !text.contains(needle) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("stream ended or stalled before {needle:?}: {other:?}\n{text}"),
        }
    }
}

fn stream(n: &Node, last_event_id: Option<u64>) -> reqwest::RequestBuilder {
    let mut request = n
        .http
        .get(format!("http://{}/api/v1/sites/site-0/live/stream", n.addr))
        .bearer_auth(READ_ALL);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_event_shows_on_the_stream_and_in_the_numbers() {
    let s = setup(2_000).await;
    s.committed().await;
    let n = node(&s.client).await;
    n.ready().await;

    let mut sse = stream(&n, None).send().await.expect("stream");
    assert_eq!(sse.status(), 200);
    assert_eq!(
        sse.headers()["content-type"].to_str().expect("type"),
        "text/event-stream"
    );
    let mut text = String::new();
    read_until(&mut sse, &mut text, "event: live").await;

    let numbers =
        "/api/v1/sites/site-0/timeseries?from=-1h&interval=1m&metrics=events&name=fresh-signup";
    assert_eq!(n.ok(numbers).await["totals"]["events"], 0);

    let mut fresh = s.events[0].clone();
    fresh.id = "fresh-1".into();
    fresh.site = "site-0".into();
    fresh.name = "fresh-signup".into();
    fresh.ts = Utc::now();
    fresh.received_at = fresh.ts;
    publish(&s.js, std::slice::from_ref(&fresh)).await;

    read_until(&mut sse, &mut text, "\"name\":\"fresh-signup\"").await;
    let seq: u64 = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .and_then(|id| id.parse().ok())
        .expect("the event carries its sequence as id");
    // The node follows the aggregator's commit by itself: no restart, no poll
    // on its side (the test waits, bounded, for the commit to land).
    let counted = n.until(numbers, |v| v["totals"]["events"] == 1).await;
    // The hour, widened to whole minutes at both ends.
    let points = counted["points"].as_array().map_or(0, Vec::len);
    assert!((60..=61).contains(&points), "{points} points");
    read_until(&mut sse, &mut text, "event: rollups").await;
    let live = n.ok("/api/v1/sites/site-0/live").await;
    assert!(live["active_users"].as_u64() >= Some(1), "{live}");
    assert_eq!(
        live["recent"]
            .as_array()
            .and_then(|r| r.last())
            .map(|e| e["id"].clone()),
        Some("fresh-1".into())
    );

    // Reconnecting just before it replays it; just after it does not.
    let mut again = stream(&n, Some(seq - 1)).send().await.expect("stream");
    let mut replay = String::new();
    read_until(&mut again, &mut replay, "event: live").await;
    assert!(replay.contains(&format!("id: {seq}\n")), "{replay}");
    assert_eq!(replay.matches("event: event").count(), 1, "{replay}");
    let mut after = stream(&n, Some(seq)).send().await.expect("stream");
    let mut none = String::new();
    read_until(&mut after, &mut none, "event: live").await;
    assert!(!none.contains("event: event"), "{none}");
    s.stop_aggregator();
}
