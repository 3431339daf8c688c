//! Workers: retries with the same key, dead letters with the error, replay.

use beacon_actions::queue::{ACTIONS_STREAM, ERROR_HEADER, enqueue};
use beacon_actions::{JOB_VERSION, Job, JobKind};

use super::support::{Receiver, SECRET, Service, counts_until, rule, server, settings};

fn hook_rule(url: &str) -> beacon_actions::RuleConfig {
    rule(&format!(
        "id = \"big-purchase\"\nsite = \"shop\"\nkind = \"event\"\nevent = \"purchase\"\nwebhook = \"{url}\"\nsecret = \"{SECRET}\"\n"
    ))
}

fn job(key: &str) -> Job {
    Job {
        v: JOB_VERSION,
        key: key.to_owned(),
        rule: "big-purchase".into(),
        site: "shop".into(),
        kind: JobKind::Event,
        target: "webhook".into(),
        created_at: chrono::Utc::now(),
        data: serde_json::json!({"name": "purchase"}),
    }
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_the_job_again_with_the_same_key() {
    let (server, _client, js) = server().await;
    let receiver = Receiver::start().await;
    receiver.fail(3);
    let service = Service::start(&server, settings(vec![hook_rule(&receiver.url)])).await;
    enqueue(&js, &job("big-purchase/e-3"))
        .await
        .expect("enqueued");

    let got = receiver
        .wait_until("a success", |got| got.iter().any(|r| r.status == 200))
        .await;
    assert_eq!(got.len(), 4, "three failures, then the success: {got:?}");
    assert!(got.iter().all(|r| r.key == "big-purchase/e-3"), "{got:?}");
    let attempts: Vec<&str> = got.iter().map(|r| r.attempt.as_str()).collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    // Acked after the success: nothing waits, nothing is dead, and no further
    // delivery comes.
    counts_until(&js, "an empty queue", |c| {
        c.pending == 0 && c.retrying == 0 && c.dead == 0
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(receiver.received().len(), 4);
    service.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_receiver_that_always_fails_sends_the_job_to_the_dead_letters_and_replay_delivers_it() {
    let (server, _client, js) = server().await;
    let receiver = Receiver::start().await;
    receiver.fail(-1);
    let mut config = settings(vec![hook_rule(&receiver.url)]);
    config.max_attempts = 3;
    let service = Service::start(&server, config).await;
    enqueue(&js, &job("big-purchase/e-dead"))
        .await
        .expect("enqueued");

    counts_until(&js, "one dead job", |c| c.dead == 1 && c.pending == 0).await;
    assert_eq!(receiver.received().len(), 3, "max_attempts deliveries");
    let stream = js.get_stream(ACTIONS_STREAM).await.expect("stream");
    let dead = stream
        .get_last_raw_message_by_subject("beacon.actions.dead.shop")
        .await
        .expect("a dead letter");
    let error = dead
        .headers
        .get(ERROR_HEADER)
        .expect("the error is recorded")
        .as_str()
        .to_owned();
    assert!(error.contains("HTTP 500"), "{error}");
    let kept = Job::read(&dead.payload).expect("the job itself");
    assert_eq!(kept.key, "big-purchase/e-dead");

    // Fixed receiver: replay-dead puts it back and it is delivered, same key.
    receiver.fail(0);
    let moved = beacon_actions::replay_dead(&js).await.expect("replay");
    assert_eq!(moved, 1);
    let got = receiver
        .wait_until("the replayed job", |got| {
            got.iter().any(|r| r.status == 200)
        })
        .await;
    assert!(got.iter().all(|r| r.key == "big-purchase/e-dead"));
    counts_until(&js, "no dead job", |c| c.dead == 0 && c.pending == 0).await;
    service.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_job_whose_receiver_refuses_it_is_dead_at_once() {
    let (server, _client, js) = server().await;
    // Nothing listens on this address's path with a 404: a permanent answer.
    let receiver = Receiver::start().await;
    let wrong = receiver.url.replace("/hook", "/nowhere");
    let service = Service::start(&server, settings(vec![hook_rule(&wrong)])).await;
    enqueue(&js, &job("big-purchase/e-404"))
        .await
        .expect("enqueued");
    counts_until(&js, "one dead job", |c| c.dead == 1).await;
    let stream = js.get_stream(ACTIONS_STREAM).await.expect("stream");
    let dead = stream
        .get_last_raw_message_by_subject("beacon.actions.dead.shop")
        .await
        .expect("a dead letter");
    assert_eq!(
        dead.headers.get("Beacon-Attempts").map(|v| v.as_str()),
        Some("1")
    );
    service.stop().await.expect("clean stop");
}
