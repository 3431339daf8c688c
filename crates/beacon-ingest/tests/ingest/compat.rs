//! The PostHog-, Segment- and Plausible-compatible endpoints over plain HTTP:
//! every body encoding each protocol uses, the protocol's own answers, and
//! malformed bodies refused with the protocol's error and kept in rejects.

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use beacon_testing::TestServer;
use flate2::{Compression, write::GzEncoder};
use reqwest::Method;
use serde_json::{Value, json};

use super::support::{self, SHOP_KEY, Setup, events, only, rejects};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(data).expect("compress");
    gz.finish().expect("compress")
}

/// One request: method, path with query, headers, body.
type Send = (Method, String, Vec<(&'static str, &'static str)>, Vec<u8>);

fn posthog_event(uuid: &str) -> Value {
    json!({"event": "$pageview", "uuid": uuid, "distinct_id": "anon-1",
        "properties": {"$current_url": "https://shop.example/a", "$referrer": "https://www.google.com/"}})
}

#[tokio::test]
async fn posthog_bodies_in_every_encoding_are_stored_once() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let envelope = |uuid: &str| {
        json!({"api_key": SHOP_KEY, "batch": [posthog_event(uuid)]})
            .to_string()
            .into_bytes()
    };
    let b64 = |uuid: &str| BASE64.encode(envelope(uuid));
    let form = |data: &str| format!("data={}", url_encode(data.as_bytes()),);
    let sends: Vec<Send> = vec![
        (Method::POST, "/batch/".into(), vec![], envelope("p-json")),
        (
            Method::POST,
            "/batch".into(),
            vec![("content-encoding", "gzip")],
            gzip(&envelope("p-gzip-header")),
        ),
        // posthog-js: gzip with no header, recognised by its magic bytes.
        (
            Method::POST,
            "/e/?compression=gzip-js".into(),
            vec![("content-type", "text/plain")],
            gzip(&envelope("p-gzip-js")),
        ),
        (
            Method::POST,
            "/i/v0/e/?compression=base64".into(),
            vec![],
            b64("p-base64").into_bytes(),
        ),
        (
            Method::POST,
            "/capture".into(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            form(&b64("p-form")).into_bytes(),
        ),
        (
            Method::POST,
            "/track/".into(),
            vec![],
            form(&BASE64.encode(gzip(&envelope("p-form-gzip")))).into_bytes(),
        ),
        (
            Method::GET,
            format!("/e/?{}", form(&b64("p-get"))),
            vec![],
            Vec::new(),
        ),
        // One event alone, its token inside the properties (as posthog-js sends it).
        (
            Method::POST,
            "/i/v0/e".into(),
            vec![],
            json!({"event": "signup", "uuid": "p-single", "distinct_id": "u-1",
            "properties": {"token": SHOP_KEY, "plan": "pro"}})
            .to_string()
            .into_bytes(),
        ),
    ];
    for (method, path, headers, body) in sends {
        let (status, answer) = svc.send(method, &path, &headers, body).await;
        assert_eq!(
            (status, answer["status"].clone()),
            (200, json!(1)),
            "{path}: {answer}"
        );
        assert_eq!(answer["accepted"], json!(1), "{path}: {answer}");
    }
    // A resend is acknowledged the same way and stored once.
    let (status, answer) = svc
        .send(Method::POST, "/batch/", &[], envelope("p-json"))
        .await;
    assert_eq!(
        (
            status,
            answer["status"].clone(),
            answer["duplicates"].clone()
        ),
        (200, json!(1), json!(1))
    );

    let stored = events(&svc.js).await;
    assert_eq!(stored.len(), 8);
    for id in [
        "p-json",
        "p-gzip-header",
        "p-gzip-js",
        "p-base64",
        "p-form",
        "p-form-gzip",
        "p-get",
    ] {
        let event = only(&stored, id);
        assert_eq!(event["name"], "pageview");
        assert_eq!(event["user_id"], "anon-1");
        assert_eq!(event["context"]["path"], "/a");
        assert_eq!(event["context"]["referrer_source"], "Google");
    }
    let single = only(&stored, "p-single");
    assert_eq!(
        (single["name"].clone(), single["props"].clone()),
        (json!("signup"), json!({"plan": "pro"}))
    );
    svc.shutdown().await;
}

fn url_encode(data: &[u8]) -> String {
    data.iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn posthog_times_are_corrected_for_the_client_clock() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    // The client's clock is a day behind; the event happened 5 s before sending.
    let body = json!({"api_key": SHOP_KEY, "sent_at": "2026-01-02T00:00:05Z", "batch": [
        {"event": "clicked", "uuid": "skew-1", "distinct_id": "u", "timestamp": "2026-01-02T00:00:00Z"},
        {"event": "clicked", "uuid": "skew-2", "distinct_id": "u", "offset": 1500}]});
    let (status, answer) = svc
        .send(Method::POST, "/batch/", &[], body.to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    let stored = events(&svc.js).await;
    let millis = |e: &Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(e[field].as_str().expect("time"))
            .expect("rfc 3339")
            .timestamp_millis()
    };
    let first = only(&stored, "skew-1");
    assert_eq!(millis(first, "received_at") - millis(first, "ts"), 5_000);
    let second = only(&stored, "skew-2");
    assert_eq!(millis(second, "received_at") - millis(second, "ts"), 1_500);
    svc.shutdown().await;
}

#[tokio::test]
async fn posthog_malformed_bodies_get_posthog_errors_and_land_in_rejects() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let good = json!({"api_key": SHOP_KEY, "batch": [posthog_event("x")]}).to_string();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/e/?compression=lz64",
            b"N4IgLgng".to_vec(),
            400,
            "invalid_encoding",
        ),
        ("/e/", b"%%% not base64 %%%".to_vec(), 400, "malformed_json"),
        (
            "/e/",
            b"\x1f\x8b\x08 truncated gzip".to_vec(),
            400,
            "invalid_encoding",
        ),
        (
            "/batch/",
            br#"{"api_key": "#.to_vec(),
            400,
            "malformed_json",
        ),
        (
            "/batch/",
            json!({"batch": [posthog_event("y")]})
                .to_string()
                .into_bytes(),
            401,
            "missing_key",
        ),
        (
            "/batch/",
            good.replace(SHOP_KEY, "phc_not_a_beacon_key").into_bytes(),
            401,
            "unknown_key",
        ),
        // Readable, but its only event is refused: PostHog's 400, the event kept.
        (
            "/batch/",
            json!({"api_key": SHOP_KEY, "batch": [{"event": "x", "uuid": "no-user"}]})
                .to_string()
                .into_bytes(),
            400,
            "missing_user",
        ),
    ];
    let mut expected = Vec::new();
    for (path, body, status, reason) in cases {
        let (got, answer) = svc.send(Method::POST, path, &[], body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(reason)),
            "{path}: {answer}"
        );
        assert!(
            answer["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{answer}"
        );
        expected.push(reason.to_owned());
    }
    assert!(events(&svc.js).await.is_empty());
    let kept = rejects(&svc.js).await;
    let mut reasons: Vec<String> = kept.iter().map(|(r, _)| r.clone()).collect();
    reasons.sort();
    expected.sort();
    assert_eq!(reasons, expected);
    for (_, payload) in &kept {
        assert!(
            !payload.contains(SHOP_KEY),
            "a write key was kept: {payload}"
        );
    }
    svc.shutdown().await;
}

fn basic(key: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{key}:")))
}

#[tokio::test]
async fn segment_calls_are_stored_once_with_segment_answers() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let auth = basic(SHOP_KEY);
    let calls = [
        (
            "track",
            json!({"messageId": "s-track", "userId": "u-1", "event": "Order Completed",
            "properties": {"revenue": "42.50", "currency": "eur", "sku": "x"}}),
        ),
        (
            "identify",
            json!({"messageId": "s-identify", "userId": "u-1", "anonymousId": "a-1", "traits": {"plan": "pro"}}),
        ),
        (
            "page",
            json!({"messageId": "s-page", "anonymousId": "a-1", "name": "Home",
            "context": {"page": {"url": "https://shop.example/home", "referrer": "https://t.co/x"}, "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"}}),
        ),
        (
            "screen",
            json!({"messageId": "s-screen", "userId": "u-1", "name": "Settings"}),
        ),
        (
            "group",
            json!({"messageId": "s-group", "userId": "u-1", "groupId": "acme"}),
        ),
        (
            "alias",
            json!({"messageId": "s-alias", "userId": "u-1", "previousId": "a-1"}),
        ),
    ];
    for (call, body) in &calls {
        let (status, answer) = svc
            .send(
                Method::POST,
                &format!("/v1/{call}"),
                &[("authorization", &auth)],
                body.to_string(),
            )
            .await;
        assert_eq!(
            (status, answer["success"].clone()),
            (200, json!(true)),
            "{call}: {answer}"
        );
    }
    // A batch, gzipped, with the key in the body; one call repeats an earlier one.
    let batch = json!({"writeKey": SHOP_KEY, "sentAt": "2026-01-01T00:00:10Z", "batch": [
        {"type": "track", "messageId": "s-batch", "anonymousId": "a-2", "event": "Viewed", "timestamp": "2026-01-01T00:00:00Z"},
        {"type": "track", "messageId": "s-track", "userId": "u-1", "event": "Order Completed",
            "properties": {"revenue": "42.50", "currency": "eur", "sku": "x"}}]});
    let (status, answer) = svc
        .send(
            Method::POST,
            "/v1/batch",
            &[("content-encoding", "gzip")],
            gzip(batch.to_string().as_bytes()),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].clone(), answer["duplicates"].clone()),
        (json!(1), json!(1))
    );

    let stored = events(&svc.js).await;
    assert_eq!(stored.len(), 7);
    let track = only(&stored, "s-track");
    assert_eq!(
        track["revenue"],
        json!({"amount": "42.5", "currency": "EUR"})
    );
    assert_eq!(track["props"], json!({"sku": "x"}));
    let identify = only(&stored, "s-identify");
    assert_eq!(
        (
            identify["name"].clone(),
            identify["user_id"].clone(),
            identify["anonymous_id"].clone()
        ),
        (json!("identify"), json!("u-1"), json!("a-1"))
    );
    let page = only(&stored, "s-page");
    assert_eq!(
        (page["name"].clone(), page["props"]["name"].clone()),
        (json!("pageview"), json!("Home"))
    );
    assert_eq!(
        (
            page["context"]["path"].clone(),
            page["context"]["referrer_source"].clone(),
            page["context"]["device"].clone()
        ),
        (json!("/home"), json!("Twitter"), json!("mobile"))
    );
    assert_eq!(only(&stored, "s-screen")["name"], "screen");
    assert_eq!(only(&stored, "s-group")["props"]["group_id"], "acme");
    let alias = only(&stored, "s-alias");
    assert_eq!(
        (alias["user_id"].clone(), alias["anonymous_id"].clone()),
        (json!("u-1"), json!("a-1"))
    );
    let batched = only(&stored, "s-batch");
    let millis = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(batched[field].as_str().expect("time"))
            .expect("rfc 3339")
            .timestamp_millis()
    };
    assert_eq!(
        millis("received_at") - millis("ts"),
        10_000,
        "sentAt corrects the client clock"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn segment_malformed_bodies_get_segment_errors_and_land_in_rejects() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let auth = basic(SHOP_KEY);
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/track",
            auth.clone(),
            b"{\"event\": ".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "/v1/batch",
            auth.clone(),
            json!({"batch": {"type": "track"}}).to_string().into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "/v1/batch",
            auth.clone(),
            b"\x1f\x8b\x08garbage".to_vec(),
            400,
            "invalid_encoding",
        ),
        (
            "/v1/track",
            basic("wk_not_a_beacon_key"),
            json!({"event": "x", "userId": "u", "writeKey": SHOP_KEY})
                .to_string()
                .into_bytes(),
            401,
            "unknown_key",
        ),
        (
            "/v1/track",
            String::new(),
            json!({"event": "x", "userId": "u"})
                .to_string()
                .into_bytes(),
            401,
            "missing_key",
        ),
        (
            "/v1/batch",
            auth.clone(),
            json!({"batch": [{"type": "launch", "userId": "u"}]})
                .to_string()
                .into_bytes(),
            400,
            "invalid_name",
        ),
    ];
    for (path, auth, body, status, reason) in cases {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", &auth)]
        };
        let (got, answer) = svc.send(Method::POST, path, &headers, body).await;
        assert_eq!(
            (got, answer["code"].as_str(), answer["success"].clone()),
            (status, Some(reason), json!(false)),
            "{path}: {answer}"
        );
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _) = svc
        .send(
            Method::POST,
            "/v1/launch",
            &[("authorization", &auth)],
            "{}",
        )
        .await;
    assert_eq!(status, 404);
    let kept = rejects(&svc.js).await;
    assert_eq!(kept.len(), 6, "{kept:?}");
    for (_, payload) in &kept {
        assert!(
            !payload.contains(SHOP_KEY),
            "a write key was kept: {payload}"
        );
    }
    assert!(events(&svc.js).await.is_empty());
    svc.shutdown().await;
}

#[tokio::test]
async fn plausible_documented_calls_count_visitors_without_storing_addresses() {
    let nats = TestServer::start().await;
    let mut setup = Setup::default();
    // Even an operator who keeps addresses does not get them from this endpoint.
    setup.limits.keep_ip = true;
    let svc = support::start(&nats, setup).await;
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    // The call from Plausible's Events API docs, as curl sends it.
    let send = |ua: &'static str, ip: &'static str, body: Value| {
        let svc = &svc;
        async move {
            svc.send(
                Method::POST,
                "/api/event",
                &[
                    ("user-agent", ua),
                    ("x-forwarded-for", ip),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await
        }
    };
    let pageview = json!({"name": "pageview", "url": "https://shop.example/pricing?utm_source=newsletter",
        "domain": "shop.example", "referrer": "https://www.google.com/"});
    let (status, answer) = send(firefox, "203.0.113.9", pageview.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let signup = json!({"name": "Signup", "url": "https://shop.example/signup", "domain": "shop.example",
        "props": {"plan": "pro"}, "revenue": {"currency": "EUR", "amount": 9.5}});
    assert_eq!(send(firefox, "203.0.113.9", signup).await.0, 202);
    assert_eq!(send(chrome, "203.0.113.9", pageview.clone()).await.0, 202);
    // The tracker script's short form, with props as a JSON string.
    let short = json!({"n": "Download", "u": "https://blog.example/post", "d": "blog.example", "p": "{\"file\":\"a.pdf\"}"});
    assert_eq!(send(firefox, "203.0.113.9", short).await.0, 202);

    let stored = events(&svc.js).await;
    assert_eq!(stored.len(), 4);
    let visitor = |e: &Value| e["anonymous_id"].as_str().expect("visitor id").to_owned();
    assert_eq!(
        visitor(&stored[0]),
        visitor(&stored[1]),
        "same address and agent, same visitor"
    );
    assert_ne!(
        visitor(&stored[0]),
        visitor(&stored[2]),
        "another browser is another visitor"
    );
    assert_ne!(
        visitor(&stored[0]),
        visitor(&stored[3]),
        "another site is another visitor"
    );
    assert_eq!(
        (
            stored[0]["name"].clone(),
            stored[0]["context"]["path"].clone(),
            stored[0]["context"]["referrer_source"].clone()
        ),
        (json!("pageview"), json!("/pricing"), json!("newsletter"))
    );
    assert_eq!(stored[0]["context"]["browser"], "Firefox");
    assert_eq!(
        (stored[1]["props"].clone(), stored[1]["revenue"].clone()),
        (
            json!({"plan": "pro"}),
            json!({"amount": "9.5", "currency": "EUR"})
        )
    );
    assert_eq!(
        (stored[3]["site"].clone(), stored[3]["props"].clone()),
        (json!("blog"), json!({"file": "a.pdf"}))
    );
    for event in &stored {
        assert!(event["user_id"].is_null());
        assert!(
            event["context"]["ip"].is_null(),
            "the address is never stored: {event}"
        );
        assert!(!event.to_string().contains("203.0.113.9"));
    }
    // Today's salt is in the shared bucket, for every other collector to use.
    let salts = svc
        .js
        .get_key_value(beacon_nats::SALTS_BUCKET)
        .await
        .expect("bucket");
    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(
        salts.get(today).await.expect("read").map(|s| s.len()),
        Some(32)
    );

    // Bad input: Plausible's 400, kept in rejects.
    let (status, answer) = send(
        firefox,
        "203.0.113.9",
        json!({"name": "pageview", "url": "https://x.example/", "domain": "x.example"}),
    )
    .await;
    assert_eq!(
        (status, answer["errors"]["unknown_site"].is_array()),
        (400, true),
        "{answer}"
    );
    let (status, answer) = svc
        .send(
            Method::POST,
            "/api/event",
            &[("user-agent", firefox)],
            "{\"name\": ",
        )
        .await;
    assert_eq!(
        (status, answer["errors"]["malformed_json"].is_array()),
        (400, true),
        "{answer}"
    );
    let (status, _) = send(
        firefox,
        "203.0.113.9",
        json!({"name": "x", "domain": "shop.example", "props": "{oops"}),
    )
    .await;
    assert_eq!(status, 400);
    let mut reasons: Vec<String> = rejects(&svc.js).await.into_iter().map(|(r, _)| r).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec!["invalid_props", "malformed_json", "unknown_site"]
    );
    svc.shutdown().await;
}
