//! Publishing over HTTP to a real collector: results per event, a retry
//! counted once, and the retry contract's kinds.

use std::time::Duration;

use beacon_client::{Event, EventStatus, HttpPublisher, PublishErrorKind, RetryPolicy};
use beacon_testing::TestServer;

use super::support::{self, WRITE_KEY, assert_once, wait_stored};

#[tokio::test]
async fn a_batch_gets_a_result_per_event_and_a_resend_counts_once() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let publisher = HttpPublisher::new(&services.url, WRITE_KEY).expect("publisher");
    let good = Event::new("purchase")
        .user("u-1")
        .revenue("19.99", "usd")
        .prop("path", "/checkout");
    let bad = Event::new("purchase").user("u-2").revenue("19.99", "EURO");
    let also_good = Event::new("pageview").anonymous("a-3");
    let batch = [good.clone(), bad, also_good.clone()];

    let receipt = publisher.publish_batch(&batch).await.expect("sent");
    assert_eq!((receipt.accepted, receipt.rejected), (2, 1));
    assert_eq!(receipt.results[1].status, EventStatus::Rejected);
    assert_eq!(
        receipt.results[1].reason.as_deref(),
        Some("invalid_revenue")
    );

    let again = publisher.publish_batch(&batch).await.expect("sent again");
    assert_eq!((again.accepted, again.duplicates), (0, 2));
    assert_eq!(
        publisher.publish(&good).await.expect("once more"),
        EventStatus::Duplicate
    );

    let ids = wait_stored(&services.js, 2).await;
    assert_eq!(ids.len(), 2);
    assert_once(&ids);
    let stored = support::stored(&services.js).await;
    assert_eq!(stored[0]["revenue"]["currency"], "USD");
}

#[tokio::test]
async fn refusals_are_permanent_and_an_unreachable_collector_is_retryable() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let wrong_key = HttpPublisher::new(&services.url, "wk_not_a_key_000000000").expect("publisher");
    let error = wrong_key
        .publish(&Event::new("signup").user("u"))
        .await
        .expect_err("unknown key");
    assert_eq!(error.kind(), PublishErrorKind::Rejected);
    assert_eq!(error.reason(), Some("unknown_key"));
    assert!(!error.is_retryable());
    assert_eq!(error.attempts(), 1, "a 401 is not retried");

    let right_key = HttpPublisher::new(&services.url, WRITE_KEY).expect("publisher");
    let error = right_key
        .publish(
            &Event::new("signup")
                .user("u")
                .with_id("ok")
                .at(chrono::DateTime::UNIX_EPOCH),
        )
        .await
        .expect_err("too old");
    assert_eq!(error.reason(), Some("timestamp_too_old"));

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let nobody = HttpPublisher::new(&url, WRITE_KEY)
        .expect("publisher")
        .with_retry(RetryPolicy {
            first_backoff: Duration::from_millis(20),
            deadline: Duration::from_millis(500),
            ..RetryPolicy::default()
        });
    let error = nobody
        .publish(&Event::new("signup").user("u"))
        .await
        .expect_err("nobody there");
    assert_eq!(error.kind(), PublishErrorKind::Unavailable);
    assert!(error.is_retryable());
    assert!(error.attempts() > 1);
    assert!(
        !format!("{nobody:?}").contains(WRITE_KEY),
        "the key never prints"
    );
}
