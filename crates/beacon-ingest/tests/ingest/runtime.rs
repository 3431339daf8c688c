//! Bounds that keep the ingest services answering when NATS or a client
//! misbehaves: a stalled server, slow connections, a shutdown mid-backlog and
//! floods of unauthenticated requests.

use std::time::{Duration, Instant};

use beacon_nats::RetryPolicy;
use beacon_testing::TestServer;
use serde_json::json;

use super::support::{self, SHOP_KEY, Setup, events};

#[tokio::test]
async fn a_paused_server_gets_a_503_within_the_deadline_and_the_retry_is_stored_once() {
    let nats = TestServer::start().await;
    let deadline = Duration::from_secs(2);
    let retry = RetryPolicy {
        deadline,
        attempt_timeout: Duration::from_millis(1500),
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
    let batch: Vec<_> = (0..100)
        .map(|i| json!({"id": format!("paused-{i}"), "name": "login", "user_id": format!("u{i}")}))
        .collect();
    let body = serde_json::Value::from(batch).to_string();

    nats.pause();
    let sent = Instant::now();
    let response = svc
        .http
        .post(format!("{}/api/v1/events", svc.url))
        .bearer_auth(SHOP_KEY)
        .body(body.clone())
        .timeout(deadline * 10)
        .send()
        .await;
    let waited = sent.elapsed();
    nats.unpause();
    let response = response.expect("the collector answers while NATS is paused");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().get("retry-after").is_some());
    // Acks awaited one after another would take 100 × attempt_timeout.
    assert!(
        waited < deadline * 3,
        "answered after {waited:?}, deadline {deadline:?}"
    );

    let (status, answer) = svc.post(body).await;
    assert_eq!(status, 200, "{answer}");
    let stored = events(&svc.js).await;
    for i in 0..100 {
        support::only(&stored, &format!("paused-{i}"));
    }
    assert_eq!(stored.len(), 100);
    svc.shutdown().await;
}

/// The shared normalizer consumer's (pending, ack pending) counts.
async fn ingest_backlog(js: &async_nats::jetstream::Context) -> (u64, usize) {
    let mut consumer = js
        .get_stream(beacon_nats::INGEST_STREAM)
        .await
        .expect("ingest stream")
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("beacon-normalizer")
        .await
        .expect("normalizer consumer");
    let info = consumer.info().await.expect("consumer info");
    (info.num_pending, info.num_ack_pending)
}

async fn stored_events(js: &async_nats::jetstream::Context) -> u64 {
    js.get_stream(beacon_nats::EVENTS_STREAM)
        .await
        .expect("events stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}

#[tokio::test]
async fn a_normalizer_stopped_mid_backlog_leaves_nothing_waiting_for_ack_wait() {
    const MESSAGES: usize = 600;
    const PER_MESSAGE: usize = 20;
    let nats = TestServer::start().await;
    let (client, js) = nats.provisioned(16).await;
    let mut acks = Vec::new();
    for m in 0..MESSAGES {
        let batch: Vec<_> = (0..PER_MESSAGE)
            .map(|i| json!({"name": "view", "user_id": format!("u{m}-{i}")}))
            .collect();
        let ack = js
            .publish(
                "beacon.ingest.shop",
                serde_json::Value::from(batch).to_string().into(),
            )
            .await
            .expect("publish");
        acks.push(ack);
    }
    for ack in acks {
        ack.await.expect("stored in BEACON_INGEST");
    }
    drop(client);
    let setup = || {
        let mut setup = Setup::default();
        // Redelivery after ack_wait would come far later than the bounded waits below.
        setup.normalizer.ack_wait = Duration::from_secs(600);
        setup.normalizer.concurrency = 2;
        setup
    };

    let svc = support::start(&nats, setup()).await;
    support::eventually("the normalizer has started on the backlog", || async {
        stored_events(&svc.js).await > 0
    })
    .await;
    svc.shutdown().await;
    assert!(
        ingest_backlog(&js).await.0 > 0,
        "the backlog was finished before the shutdown"
    );

    // Messages the stopped normalizer held were finished or released (nak'ed
    // without delay): the restarted one gets them at once. Left held, they
    // would come back only after the 10 minute ack_wait, past this bounded wait.
    let svc = support::start(&nats, setup()).await;
    support::eventually("the rest of the backlog is processed", || async {
        ingest_backlog(&js).await == (0, 0)
    })
    .await;
    assert_eq!(
        stored_events(&svc.js).await,
        (MESSAGES * PER_MESSAGE) as u64
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_unknown_keys_never_pushes_out_a_known_sites_rejects() {
    let nats = TestServer::start().await;
    let mut setup = Setup::default();
    // Small caps, so the flood below is many times either stream's size.
    setup.streams.rejects_max_bytes = 256 * 1024;
    setup.streams.unauth_rejects_max_bytes = 256 * 1024;
    let svc = support::start(&nats, setup).await;

    let (status, answer) = svc
        .post(json!([{"id": "real-1", "name": "signup"}]).to_string())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["rejected"], 1, "{answer}");

    let filler = "x".repeat(4096);
    for i in 0..200 {
        let body = json!({"name": "spam", "user_id": format!("u{i}"), "props": {"filler": filler}});
        let (status, _) = svc
            .post_with("wk_not_a_key_at_all_0000", &[], body.to_string())
            .await;
        assert_eq!(status, 401);
    }
    let (status, _) = svc.post_with("", &[], "{}").await;
    assert_eq!(status, 401);

    let known = support::messages(&svc.js, beacon_nats::REJECTS_STREAM).await;
    assert_eq!(known.len(), 1, "the known site's reject is kept");
    assert_eq!(
        known[0].headers.get("Beacon-Site").map(|v| v.as_str()),
        Some("shop")
    );
    let unauth = svc
        .js
        .get_stream(beacon_nats::UNAUTH_REJECTS_STREAM)
        .await
        .expect("unauthenticated rejects stream")
        .info()
        .await
        .expect("info")
        .state
        .clone();
    assert!(unauth.bytes <= 256 * 1024, "{unauth:?}");
    assert!(
        unauth.messages > 0,
        "the newest unauthenticated rejects are kept"
    );
    svc.shutdown().await;
}

/// Everything the server sends on `stream` until it closes the connection;
/// `None` if it is still open after `bound`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, bound: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let read = tokio::time::timeout(bound, stream.read_to_end(&mut seen)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&seen).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let nats = TestServer::start().await;
    let mut setup = Setup::default();
    setup.collector.header_read_timeout = Duration::from_secs(1);
    setup.collector.body_read_timeout = Duration::from_secs(1);
    let svc = support::start(&nats, setup).await;
    let addr = svc.url.trim_start_matches("http://").to_owned();
    // Bounds far above the timeouts: only a connection that is never closed fails.
    let bound = Duration::from_secs(20);

    // Headers that never end.
    let mut headers_only = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    headers_only
        .write_all(
            b"POST /api/v1/events HTTP/1.1\r\nHost: beacon\r\nContent-Type: application/json\r\n",
        )
        .await
        .expect("write");
    assert!(
        read_until_closed(&mut headers_only, bound).await.is_some(),
        "a connection whose headers never end is still open"
    );

    // A body that never ends: 408, then the connection is closed.
    let mut slow_body = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: beacon\r\nAuthorization: Bearer {SHOP_KEY}\r\nContent-Length: 1000\r\n\r\n{{\"name\":"
    );
    slow_body.write_all(head.as_bytes()).await.expect("write");
    let answer = read_until_closed(&mut slow_body, bound)
        .await
        .expect("a connection whose body never ends is closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Prompt clients are served as before.
    let (status, _) = svc
        .post(json!({"id": "prompt-1", "name": "x", "user_id": "u"}).to_string())
        .await;
    assert_eq!(status, 200);
    svc.shutdown().await;
}
