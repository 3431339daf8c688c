//! Subscribing: a durable subscriber killed mid-stream resumes at the first
//! event it had not acked; a failing handler is retried, then dead-lettered;
//! a live subscriber sees only new events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beacon_client::{DeadLetter, Delivery, Event, Publisher, Subscriber, dead_letter_stream};
use beacon_testing::TestServer;
use tokio::sync::mpsc;

use super::support::{self, SITE, wait_stored};

/// Publish `events` through the real normalizer and wait until all are stored.
async fn stored_events(nats: &TestServer, services: &support::Services, events: &[Event]) {
    let publisher = Publisher::builder(nats.client().await, SITE)
        .build()
        .expect("publisher");
    publisher.publish_batch(events).await.expect("published");
    let before = support::stored_ids(&services.js).await.len();
    wait_stored(&services.js, before.max(events.len())).await;
}

/// A subscriber running in a task; deliveries come out of the channel.
fn spawn(
    subscriber: Subscriber,
    hang_on: Option<String>,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Delivery>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let handler = move |d: Delivery| {
            let tx = tx.clone();
            let hang = hang_on.as_deref() == Some(d.event.id.as_str());
            async move {
                let _ = tx.send(d);
                if hang {
                    // Killed before finishing this one.
                    std::future::pending::<()>().await;
                }
                Ok::<(), String>(())
            }
        };
        let _ = subscriber.run(handler, std::future::pending()).await;
    });
    (task, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a delivery within 60 s")
        .expect("the subscriber is running")
}

#[tokio::test]
async fn a_killed_subscriber_resumes_at_the_next_unacked_event() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let events: Vec<Event> = (0..30)
        .map(|i| Event::new("purchase").user(format!("u-{}", i % 7)))
        .collect();
    stored_events(&nats, &services, &events).await;
    let all: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();

    let client = nats.client().await;
    let subscriber = || {
        Subscriber::durable(client.clone(), SITE, "billing")
            .ack_wait(Duration::from_secs(2))
            .prefetch(8)
    };
    // The first run finishes ten events and is killed during the eleventh.
    let stored = support::stored(&services.js).await;
    let eleventh = stored[10]["id"].as_str().expect("id").to_owned();
    let (task, mut rx) = spawn(subscriber(), Some(eleventh.clone()));
    let mut finished = Vec::new();
    loop {
        let d = next(&mut rx).await;
        if d.event.id == eleventh {
            break;
        }
        finished.push(d.event.id);
    }
    task.abort();
    let _ = task.await;
    assert_eq!(finished.len(), 10);

    let (task, mut rx) = spawn(subscriber(), None);
    let mut second: Vec<Delivery> = Vec::new();
    while second.len() < 20 {
        second.push(next(&mut rx).await);
    }
    // Nothing more comes: what the first run acked stays acked.
    let extra = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    assert!(extra.is_err(), "a finished event came again: {extra:?}");
    task.abort();

    let resumed: HashSet<String> = second.iter().map(|d| d.event.id.clone()).collect();
    assert_eq!(resumed.len(), 20, "each remaining event once");
    for id in &finished {
        assert!(!resumed.contains(id), "{id} was acked, yet delivered again");
    }
    let handled: HashSet<String> = finished.iter().cloned().chain(resumed).collect();
    assert_eq!(handled, all, "nothing lost");
    let redelivered = second
        .iter()
        .find(|d| d.event.id == eleventh)
        .expect("the interrupted event is delivered again");
    assert_eq!(redelivered.attempt, 2);
}

#[tokio::test]
async fn a_failing_handler_is_retried_then_dead_lettered() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let client = nats.client().await;
    dead_letter_stream(&client, "APP_DEAD", "app.dead")
        .await
        .expect("dead-letter stream");
    let poison = Event::new("purchase").user("u-poison");
    let flaky = Event::new("purchase").user("u-flaky");
    let fine = Event::new("purchase").user("u-fine");
    stored_events(
        &nats,
        &services,
        &[poison.clone(), flaky.clone(), fine.clone()],
    )
    .await;

    let attempts: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let handler = {
        let attempts = attempts.clone();
        let (poison, flaky) = (poison.id.clone(), flaky.id.clone());
        move |d: Delivery| {
            attempts
                .lock()
                .expect("lock")
                .push((d.event.id.clone(), d.attempt));
            let fails = d.event.id == poison || (d.event.id == flaky && d.attempt < 3);
            async move {
                if fails {
                    Err(format!("receiver down (attempt {})", d.attempt))
                } else {
                    Ok(())
                }
            }
        }
    };
    let subscriber = Subscriber::durable(client.clone(), SITE, "mailer")
        .max_failures(3)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(200))
        .dead_letter(DeadLetter::Subject("app.dead".into()));
    let run = tokio::spawn(subscriber.run(handler, std::future::pending()));

    let js = async_nats::jetstream::new(client);
    let mut dead = js.get_stream("APP_DEAD").await.expect("stream");
    support::eventually("the poison event is dead-lettered", || {
        let mut dead = dead.clone();
        async move { dead.info().await.is_ok_and(|i| i.state.messages == 1) }
    })
    .await;
    let letter = dead.get_raw_message(1).await.expect("dead letter");
    let stored: serde_json::Value = serde_json::from_slice(&letter.payload).expect("json");
    assert_eq!(stored["id"], poison.id.as_str());
    assert_eq!(
        letter.headers.get("Beacon-Attempts").map(|v| v.as_str()),
        Some("3")
    );
    assert_eq!(
        letter.headers.get("Beacon-Error").map(|v| v.as_str()),
        Some("receiver down (attempt 3)")
    );
    support::eventually("the flaky event succeeds", || async {
        attempts
            .lock()
            .expect("lock")
            .contains(&(flaky.id.clone(), 3))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.abort();

    let seen = attempts.lock().expect("lock").clone();
    let tries = |id: &str| -> Vec<u32> {
        seen.iter()
            .filter(|(i, _)| i == id)
            .map(|(_, a)| *a)
            .collect()
    };
    assert_eq!(tries(&poison.id), vec![1, 2, 3], "retried, then given up");
    assert_eq!(tries(&flaky.id), vec![1, 2, 3]);
    assert_eq!(tries(&fine.id), vec![1]);
    assert_eq!(dead.info().await.expect("info").state.messages, 1);
}

#[tokio::test]
async fn a_dead_letter_callback_gets_the_failure() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let poison = Event::new("refund").user("u-1");
    stored_events(&nats, &services, std::slice::from_ref(&poison)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscriber = Subscriber::durable(nats.client().await, SITE, "refunds")
        .max_failures(2)
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(50))
        .dead_letter(DeadLetter::Callback(Arc::new(move |f| {
            let _ = tx.send(f.clone());
        })));
    let run = tokio::spawn(subscriber.run(
        |_d: Delivery| async { Err::<(), _>("always fails") },
        std::future::pending(),
    ));
    let failure = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("in time")
        .expect("a failure");
    run.abort();
    assert_eq!(failure.attempts, 2);
    assert_eq!(failure.error, "always fails");
    let stored: serde_json::Value = serde_json::from_slice(&failure.payload).expect("json");
    assert_eq!(stored["id"], poison.id.as_str());
}

#[tokio::test]
async fn a_live_subscriber_sees_only_new_events_of_the_names_asked() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let old = Event::new("signup").user("u-old");
    stored_events(&nats, &services, std::slice::from_ref(&old)).await;

    let subscriber = Subscriber::live(nats.client().await, SITE).events(["signup"]);
    let (task, mut rx) = spawn(subscriber, None);
    // The consumer exists once the subscriber runs; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new = Event::new("signup").user("u-new");
    let other = Event::new("pageview").user("u-new");
    stored_events(&nats, &services, &[other, new.clone()]).await;
    let got = next(&mut rx).await;
    assert_eq!(got.event.id, new.id);
    assert_eq!(got.event.site, SITE);
    let extra = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(extra.is_err(), "only the new signup: {extra:?}");
    task.abort();
}

#[tokio::test]
async fn names_added_to_a_durable_apply_from_its_place_on() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let signup = Event::new("signup").user("u-1");
    let early_purchase = Event::new("purchase").user("u-1");
    stored_events(&nats, &services, &[signup.clone(), early_purchase.clone()]).await;

    let client = nats.client().await;
    let (task, mut rx) = spawn(
        Subscriber::durable(client.clone(), SITE, "crm").events(["signup"]),
        None,
    );
    assert_eq!(next(&mut rx).await.event.id, signup.id);
    // Let the ack be confirmed before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();

    // Started again with both names: the filter is updated, the place kept.
    // The purchase stored before lies behind that place; a new one comes.
    let (task, mut rx) = spawn(
        Subscriber::durable(client, SITE, "crm").events(["signup", "purchase"]),
        None,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late_purchase = Event::new("purchase").user("u-2");
    stored_events(&nats, &services, std::slice::from_ref(&late_purchase)).await;
    assert_eq!(next(&mut rx).await.event.id, late_purchase.id);
    let extra = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(extra.is_err(), "nothing else: {extra:?}");
    task.abort();
}
