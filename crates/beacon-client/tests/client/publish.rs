//! Publishing over NATS: a retry after a lost ack or a NATS restart is stored
//! once; the local buffer keeps events while NATS is away, up to its bound.

use std::time::Duration;

use beacon_client::{Event, PublishErrorKind, Published, Publisher, RetryPolicy};
use beacon_testing::TestServer;

use super::support::{self, SITE, assert_once, eventually, wait_stored};

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_millis(300),
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        deadline: Duration::from_secs(60),
        ..RetryPolicy::default()
    }
}

#[tokio::test]
async fn a_publish_retried_after_a_lost_ack_is_stored_once() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let client = nats.client().await;
    let publisher = Publisher::builder(client, SITE)
        .retry(quick_retries())
        .build()
        .expect("publisher");
    let event = Event::new("purchase").user("u-1").revenue("19.99", "USD");

    // A frozen server takes every attempt into its socket and answers none in
    // time: each attempt's ack is lost. Thawed, it stores the first attempt
    // and must recognise every later one as the same event.
    let probe = nats.client().await;
    nats.pause();
    // SIGSTOP takes effect asynchronously (and slowly on a loaded machine):
    // wait until the server no longer answers a ping.
    eventually("the server is frozen", || async {
        let ask = probe.request("$JS.API.INFO", bytes::Bytes::new());
        tokio::time::timeout(Duration::from_millis(300), ask)
            .await
            .is_err()
    })
    .await;
    let publish = tokio::spawn({
        let publisher = publisher.clone();
        let event = event.clone();
        async move { publisher.publish(&event).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !publish.is_finished(),
        "no ack can come from a frozen server"
    );
    nats.unpause();
    let published = publish.await.expect("task").expect("published in the end");
    assert!(matches!(published, Published::Stored(_)), "{published:?}");

    let ids = wait_stored(&services.js, 1).await;
    assert_eq!(ids, vec![event.id.clone()]);

    // The caller retrying the whole call is safe too.
    let again = publisher.publish(&event).await.expect("published");
    let Published::Stored(receipt) = again else {
        panic!("not buffered without a buffer: {again:?}");
    };
    assert!(receipt.duplicate, "BEACON_INGEST knows the message");
    assert_eq!(wait_stored(&services.js, 1).await, vec![event.id]);
}

#[tokio::test]
async fn publishes_across_a_nats_restart_are_stored_once() {
    let mut nats = TestServer::start().await;
    support::provisioned(&nats).await;
    let client = nats.client().await;
    let publisher = Publisher::builder(client.clone(), SITE)
        .retry(quick_retries())
        .build()
        .expect("publisher");
    let events: Vec<Event> = (0..20)
        .map(|i| Event::new("pageview").user(format!("u-{i}")))
        .collect();
    publisher
        .publish_batch(&events[..10])
        .await
        .expect("first half");

    nats.stop().await;
    // Published while the server is down: retried until it is back.
    let second_half = tokio::spawn({
        let publisher = publisher.clone();
        let events = events.clone();
        async move {
            for event in &events[10..] {
                publisher.publish(event).await?;
            }
            Ok::<_, beacon_client::PublishError>(())
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.resume().await;
    second_half
        .await
        .expect("task")
        .expect("published after the restart");
    // A producer that is unsure what got through sends everything again.
    publisher.publish_batch(&events).await.expect("again");

    let services = support::start(&nats).await;
    let ids = wait_stored(&services.js, 20).await;
    assert_eq!(ids.len(), 20, "{ids:?}");
    assert_once(&ids);
    for event in &events {
        assert!(ids.contains(&event.id), "{} lost", event.id);
    }
}

#[tokio::test]
async fn the_buffer_holds_events_while_nats_is_away_and_counts_what_it_drops() {
    let mut nats = TestServer::start().await;
    support::provisioned(&nats).await;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .expect("connect");
    let publisher = Publisher::builder(client.clone(), SITE)
        .retry(quick_retries())
        .buffer(5)
        .build()
        .expect("publisher");

    nats.stop().await;
    eventually("the client notices NATS is gone", || async {
        client.connection_state() != async_nats::connection::State::Connected
    })
    .await;
    let kept: Vec<Event> = (0..5)
        .map(|i| Event::new("signup").user(format!("kept-{i}")))
        .collect();
    for event in &kept {
        let published = publisher.publish(event).await.expect("buffered");
        assert_eq!(published, Published::Buffered);
    }
    assert_eq!(publisher.buffered(), 5);
    let error = publisher
        .publish(&Event::new("signup").user("over"))
        .await
        .expect_err("the buffer is full");
    assert_eq!(error.kind(), PublishErrorKind::BufferFull);
    assert!(error.is_retryable());
    let batch: Vec<Event> = (0..2)
        .map(|i| Event::new("signup").user(format!("over-{i}")))
        .collect();
    let error = publisher.publish_batch(&batch).await.expect_err("full");
    assert_eq!(error.kind(), PublishErrorKind::BufferFull);
    assert_eq!(publisher.dropped(), 3);

    nats.resume().await;
    publisher
        .flush(Duration::from_secs(60))
        .await
        .expect("the buffer drains once NATS is back");
    assert_eq!(publisher.buffered(), 0);

    let services = support::start(&nats).await;
    let ids = wait_stored(&services.js, 5).await;
    assert_once(&ids);
    let mut expected: Vec<String> = kept.iter().map(|e| e.id.clone()).collect();
    let mut got = ids.clone();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "exactly the buffered events, none dropped ones"
    );
}

#[tokio::test]
async fn permanent_failures_are_not_retried() {
    let nats = TestServer::start().await;
    support::provisioned(&nats).await;
    let client = nats.client().await;
    let publisher = Publisher::builder(client.clone(), SITE)
        .build()
        .expect("publisher");
    let error = publisher
        .publish(&Event::new("signup"))
        .await
        .expect_err("no user");
    assert_eq!(error.kind(), PublishErrorKind::Invalid);
    assert!(!error.is_retryable());

    let huge = Event::new("signup")
        .user("u")
        .prop("blob", "x".repeat(client.server_info().max_payload + 1));
    let error = publisher.publish(&huge).await.expect_err("too large");
    assert_eq!(error.kind(), PublishErrorKind::TooLarge);

    let error = Publisher::builder(client, "Not A Site")
        .build()
        .expect_err("bad site");
    assert_eq!(error.kind(), PublishErrorKind::Invalid);
}

#[tokio::test]
async fn without_beacon_a_publish_gives_up_at_its_deadline_as_retryable() {
    // JetStream is on but no stream holds beacon.ingest.*: nobody acks.
    let nats = TestServer::start().await;
    let publisher = Publisher::builder(nats.client().await, SITE)
        .retry(RetryPolicy {
            deadline: Duration::from_millis(800),
            ..quick_retries()
        })
        .build()
        .expect("publisher");
    let error = publisher
        .publish(&Event::new("signup").user("u"))
        .await
        .expect_err("no stream");
    assert_eq!(error.kind(), PublishErrorKind::Unavailable);
    assert!(error.is_retryable());
    assert!(error.attempts() > 1, "retried: {}", error.attempts());
}
