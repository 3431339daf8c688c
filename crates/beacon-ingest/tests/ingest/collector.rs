//! The HTTP collector: exactly-once storage, every refusal with its status and
//! reason, and 503 (never 2xx) while NATS is away.

use std::io::Write;

use beacon_nats::RetryPolicy;
use beacon_testing::TestServer;
use flate2::{Compression, write::GzEncoder};
use serde_json::json;

use super::support::{self, BLOG_KEY, SHOP_KEY, Setup, events, eventually, reject_reasons};

#[tokio::test]
async fn an_event_sent_three_times_is_stored_once() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let body = json!({"id": "evt-1", "name": "purchase", "user_id": "u-1",
        "revenue": {"amount": "19.99", "currency": "USD"}, "props": {"path": "/checkout"}})
    .to_string();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, answer) = svc.post(body.clone()).await;
        statuses.push((status, answer["results"][0]["status"].clone()));
    }
    assert_eq!(
        statuses,
        vec![
            (200, json!("accepted")),
            (200, json!("duplicate")),
            (200, json!("duplicate"))
        ]
    );
    let stored = events(&svc.js).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["id"], "evt-1");
    assert_eq!(stored[0]["site"], "shop");
    assert_eq!(
        stored[0]["revenue"],
        json!({"amount": "19.99", "currency": "USD"})
    );
    let subject = &svc.messages(beacon_nats::EVENTS_STREAM).await[0].subject;
    assert_eq!(
        subject.as_str(),
        format!("beacon.events.{}.shop.purchase", stored[0]["partition"])
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn bad_events_are_refused_alone_with_reasons_and_kept_in_rejects() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let deep = (0..12).fold(json!(1), |v, _| json!({"k": v}));
    let lines = [
        json!({"id": "good-1", "name": "pageview", "user_id": "u"}).to_string(),
        "{\"name\": \"broken\"".to_owned(),
        json!({"name": "x", "user_id": "u", "props": {"deep": deep}}).to_string(),
        json!({"name": 42, "user_id": "u"}).to_string(),
        json!({"user_id": "u"}).to_string(),
        json!({"name": " . * > . ", "user_id": "u"}).to_string(),
        json!({"name": "x", "user_id": "u", "ts": "2099-01-01T00:00:00Z"}).to_string(),
        json!({"name": "x", "user_id": "u", "ts": "2001-01-01T00:00:00Z"}).to_string(),
        json!({"name": "x", "user_id": "u", "props": {"blob": "y".repeat(40_000)}}).to_string(),
        json!({"id": "good-2", "name": "signup", "anonymous_id": "a-1"}).to_string(),
    ];
    let mut body = lines.join("\n").into_bytes();
    body.extend_from_slice(b"\n{\"name\": \"bad \xff utf8\", \"user_id\": \"u\"}\n");
    let (status, answer) = svc
        .post_with(SHOP_KEY, &[("content-type", "application/x-ndjson")], body)
        .await;
    assert_eq!(status, 200, "{answer}");
    let reasons: Vec<_> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        vec![
            json!(null),
            json!("malformed_json"),
            json!("props_too_deep"),
            json!("invalid_name"),
            json!("missing_name"),
            json!("invalid_name"),
            json!("timestamp_in_future"),
            json!("timestamp_too_old"),
            json!("event_too_large"),
            json!(null),
            json!("invalid_utf8"),
        ]
    );
    assert_eq!(
        (answer["accepted"].clone(), answer["rejected"].clone()),
        (json!(2), json!(9))
    );
    let stored: Vec<_> = events(&svc.js)
        .await
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(stored, vec![json!("good-1"), json!("good-2")]);
    let mut kept = reject_reasons(&svc.js).await;
    kept.sort();
    let mut expected: Vec<String> = reasons
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    expected.sort();
    assert_eq!(kept, expected);
    svc.shutdown().await;
}

#[tokio::test]
async fn whole_body_refusals_have_their_status() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let event = json!({"name": "x", "user_id": "u"}).to_string();

    let (status, answer) = svc.post("[{\"name\": ").await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (400, json!("malformed_json"))
    );
    let (status, answer) = svc.post(b"[\"\xff\"]".to_vec()).await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (400, json!("invalid_utf8"))
    );
    let (status, answer) = svc
        .post_with("wk_nobody_knows_this_key", &[], event.clone())
        .await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (401, json!("unknown_key"))
    );
    let (status, answer) = svc.post_with("", &[], event.clone()).await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (401, json!("missing_key"))
    );
    let (status, answer) = svc.post(vec![b' '; 2 * 1024 * 1024]).await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (413, json!("body_too_large"))
    );
    let batch = format!("[{}]", vec![event.as_str(); 1001].join(","));
    let (status, answer) = svc.post(batch).await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (413, json!("batch_too_large"))
    );
    let (status, answer) = svc
        .post_with(SHOP_KEY, &[("content-encoding", "br")], event.clone())
        .await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (415, json!("invalid_encoding"))
    );
    let (status, answer) = svc
        .post_with(SHOP_KEY, &[("content-encoding", "gzip")], event.clone())
        .await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (400, json!("invalid_encoding"))
    );
    let (status, answer) = svc.post(json!([{"name": "x"}]).to_string()).await;
    assert_eq!(
        (status, answer["rejected"].clone()),
        (400, json!(1)),
        "all refused: 400 with results"
    );

    let mut kept = reject_reasons(&svc.js).await;
    kept.sort();
    assert_eq!(
        kept,
        [
            "batch_too_large",
            "body_too_large",
            "invalid_encoding",
            "invalid_encoding",
            "invalid_utf8",
            "malformed_json",
            "missing_key",
            "missing_user",
            "unknown_key"
        ]
    );
    assert!(events(&svc.js).await.is_empty());
    svc.shutdown().await;
}

#[tokio::test]
async fn gzip_browser_beacons_and_cors_work() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(json!([{"id": "gz-1", "name": "a", "user_id": "u"}, {"id": "gz-2", "name": "b", "user_id": "u"}]).to_string().as_bytes())
        .expect("compress");
    let compressed = gz.finish().expect("compress");
    let (status, answer) = svc
        .post_with(
            SHOP_KEY,
            &[("content-encoding", "gzip")],
            compressed.clone(),
        )
        .await;
    assert_eq!((status, answer["accepted"].clone()), (200, json!(2)));
    // Detected by its magic bytes too, as some SDKs omit the header.
    let (_, answer) = svc.post(compressed).await;
    assert_eq!(answer["duplicates"], json!(2));
    // sendBeacon cannot set headers: the key travels in the body.
    let beacon = json!({"write_key": SHOP_KEY, "batch": [{"id": "b-1", "name": "pageview", "anonymous_id": "a"}]});
    let (status, answer) = svc
        .post_with("", &[("content-type", "text/plain")], beacon.to_string())
        .await;
    assert_eq!((status, answer["accepted"].clone()), (200, json!(1)));
    let preflight = svc
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/events", svc.url),
        )
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight answered");
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"*"[..])
    );
    assert_eq!(events(&svc.js).await.len(), 3);

    // A refused beacon event is kept in rejects without the key it carried.
    let refused = json!({"write_key": SHOP_KEY, "name": "pageview"});
    let (status, _) = svc.post_with("", &[], refused.to_string()).await;
    assert_eq!(status, 400);
    // No bearer key: no configured site vouches for it.
    let kept = support::messages(&svc.js, beacon_nats::UNAUTH_REJECTS_STREAM).await;
    assert_eq!(kept.len(), 1);
    assert!(!String::from_utf8_lossy(&kept[0].payload).contains(SHOP_KEY));
    assert!(String::from_utf8_lossy(&kept[0].payload).contains("pageview"));
    svc.shutdown().await;
}

#[tokio::test]
async fn a_key_over_its_rate_limit_gets_429_with_retry_after() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    // The blog key allows a burst of 5 events, then 1 per second.
    let five: Vec<_> = (0..5)
        .map(|i| json!({"name": "x", "user_id": format!("u{i}")}))
        .collect();
    let (status, _) = svc.post_with(BLOG_KEY, &[], json!(five).to_string()).await;
    assert_eq!(status, 200);
    let response = svc
        .http
        .post(format!("{}/api/v1/events", svc.url))
        .bearer_auth(BLOG_KEY)
        .body(json!({"name": "x", "user_id": "u"}).to_string())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().get("retry-after").is_some());
    // A batch larger than the burst could never pass: 413 saying why, not 429 forever.
    let six: Vec<_> = (0..6)
        .map(|i| json!({"name": "x", "user_id": format!("u{i}")}))
        .collect();
    let (status, answer) = svc.post_with(BLOG_KEY, &[], json!(six).to_string()).await;
    assert_eq!(
        (status, answer["error"]["reason"].clone()),
        (413, json!("batch_too_large"))
    );
    assert_eq!(events(&svc.js).await.len(), 5);
    svc.shutdown().await;
}

#[tokio::test]
async fn nats_down_means_503_then_the_same_request_is_stored_once() {
    let mut nats = TestServer::start().await;
    let retry = RetryPolicy {
        deadline: std::time::Duration::from_millis(1500),
        attempt_timeout: std::time::Duration::from_millis(500),
        ..RetryPolicy::default()
    };
    let svc = support::start(
        &nats,
        Setup {
            retry,
            ..Setup::default()
        },
    )
    .await;
    let body = json!([{"id": "down-1", "name": "login", "user_id": "u"}, {"id": "down-2", "name": "login", "user_id": "v"}]).to_string();

    nats.stop().await;
    let response = svc
        .http
        .post(format!("{}/api/v1/events", svc.url))
        .bearer_auth(SHOP_KEY)
        .body(body.clone())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let ready = svc
        .http
        .get(format!("{}/readyz", svc.url))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready.status().as_u16(), 503);

    nats.resume().await;
    eventually("the collector is ready again", || async {
        svc.http
            .get(format!("{}/readyz", svc.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let (status, answer) = svc.post(body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let (_, again) = svc.post(body).await;
    assert_eq!(again["duplicates"], json!(2));
    let ids: Vec<_> = events(&svc.js)
        .await
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("down-1"), json!("down-2")]);
    svc.shutdown().await;
}

#[tokio::test]
async fn a_publish_retried_across_a_server_restart_is_stored_once() {
    let mut nats = TestServer::start().await;
    let retry = RetryPolicy {
        deadline: std::time::Duration::from_secs(60),
        attempt_timeout: std::time::Duration::from_millis(500),
        ..RetryPolicy::default()
    };
    let svc = support::start(
        &nats,
        Setup {
            retry,
            ..Setup::default()
        },
    )
    .await;
    let body = json!({"id": "restart-1", "name": "purchase", "user_id": "u"}).to_string();
    // Stored once before the restart: the dedupe state must survive it.
    let (status, _) = svc
        .post(json!({"id": "before", "name": "x", "user_id": "u"}).to_string())
        .await;
    assert_eq!(status, 200);

    nats.stop().await;
    let request = {
        let (http, url) = (svc.http.clone(), svc.url.clone());
        let body = body.clone();
        tokio::spawn(async move {
            let response = http
                .post(format!("{url}/api/v1/events"))
                .bearer_auth(SHOP_KEY)
                .body(body)
                .send()
                .await
                .expect("answered");
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.expect("json"),
            )
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    nats.resume().await;
    let (status, answer) = request.await.expect("request finished");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["status"], "accepted");

    let (_, again) = svc.post(body).await;
    assert_eq!(again["results"][0]["status"], "duplicate");
    let (_, before) = svc
        .post(json!({"id": "before", "name": "x", "user_id": "u"}).to_string())
        .await;
    assert_eq!(before["results"][0]["status"], "duplicate");
    let ids: Vec<_> = events(&svc.js)
        .await
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("before"), json!("restart-1")]);
    svc.shutdown().await;
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    svc.post(json!([{"id": "m-1", "name": "a", "user_id": "u"}, {"name": "a"}]).to_string())
        .await;
    let text = svc
        .http
        .get(format!("{}/metrics", svc.url))
        .send()
        .await
        .expect("answered")
        .text()
        .await
        .expect("text");
    for needle in [
        "beacon_events_accepted_total{source=\"http\"}",
        "beacon_events_rejected_total{source=\"http\",reason=\"missing_user\"}",
        "beacon_publish_seconds_bucket",
        "beacon_events_in_flight",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    svc.shutdown().await;
}
