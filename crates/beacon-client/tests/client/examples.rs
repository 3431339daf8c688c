//! The examples, built by `cargo test`, run as their own processes against a
//! test server with Beacon's collector and normalizer. (`cargo test --test
//! tests` alone does not rebuild them: after changing an example, run the
//! crate's whole `cargo test -p beacon-client`.)

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use beacon_client::{Event, Publisher};
use beacon_testing::TestServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::support::{self, SITE, assert_once, wait_stored};

/// An example's binary: `cargo test` builds examples into `target/<profile>/examples`,
/// beside the `deps` folder this test runs from.
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path: PathBuf = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with cargo test, which builds the examples",
        path.display()
    );
    let mut command = Command::new(path);
    command.kill_on_drop(true).stdout(Stdio::piped());
    command
}

async fn run(mut command: Command) -> String {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the example finishes")
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{:?}: {stdout}", output.status);
    stdout
}

#[tokio::test]
async fn the_publisher_example_publishes_single_and_batched() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let mut single = example("publisher");
    single.args(["--nats-url", &nats.url(), "--site", SITE, "--count", "12"]);
    assert!(
        run(single)
            .await
            .contains("published 12 events in 12 messages")
    );
    let mut batched = example("publisher");
    batched.args([
        "--nats-url",
        &nats.url(),
        "--site",
        SITE,
        "--count",
        "5",
        "--batch",
    ]);
    assert!(
        run(batched)
            .await
            .contains("published 5 events in 1 messages")
    );
    let ids = wait_stored(&services.js, 17).await;
    assert_eq!(ids.len(), 17);
    assert_once(&ids);
}

#[tokio::test]
async fn the_retrying_publisher_waits_out_nats_and_a_second_run_counts_nothing() {
    let mut nats = TestServer::start().await;
    support::provisioned(&nats).await;
    let url = nats.url();
    let retrying = || {
        let mut command = example("retrying_publisher");
        command.args([
            "--nats-url",
            &url,
            "--site",
            SITE,
            "--orders",
            "15",
            "--deadline",
            "2",
        ]);
        command
    };
    nats.stop().await;
    let first = tokio::spawn(run(retrying()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.resume().await;
    let first = first.await.expect("task");
    assert!(first.contains("dropped 0, failed 0"), "{first}");

    let services = support::start(&nats).await;
    let ids = wait_stored(&services.js, 15).await;
    assert_eq!(ids.len(), 15);
    let second = run(retrying()).await;
    assert!(second.contains("already stored 15"), "{second}");
    let ids = wait_stored(&services.js, 15).await;
    assert_eq!(ids.len(), 15, "the second run stored nothing new");
    assert_once(&ids);
    assert!(ids.contains(&"order-1-paid".to_owned()));
}

#[tokio::test]
async fn the_subscriber_example_resumes_after_kill_9() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let events: Vec<Event> = (0..40)
        .map(|i| Event::new("signup").user(format!("u-{i}")))
        .collect();
    Publisher::builder(nats.client().await, SITE)
        .build()
        .expect("publisher")
        .publish_batch(&events)
        .await
        .expect("published");
    wait_stored(&services.js, 40).await;
    let all: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();

    let url = nats.url();
    let subscriber = || {
        let mut command = example("subscriber");
        command.args([
            "--nats-url",
            &url,
            "--site",
            SITE,
            "--durable",
            "emails",
            "--work-ms",
            "20",
            "--ack-wait-secs",
            "2",
        ]);
        command.spawn().expect("subscriber starts")
    };
    let ids_of = |line: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        v["id"].as_str().expect("id").to_owned()
    };

    let mut first = subscriber();
    let mut lines = BufReader::new(first.stdout.take().expect("stdout")).lines();
    let mut before = Vec::new();
    while before.len() < 10 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("in time")
            .expect("readable")
            .expect("a line");
        before.push(ids_of(&line));
    }
    first.kill().await.expect("SIGKILL");

    let mut second = subscriber();
    let mut lines = BufReader::new(second.stdout.take().expect("stdout")).lines();
    let mut after = HashSet::new();
    let mut handled: HashSet<String> = before.iter().cloned().collect();
    while handled != all {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("every event comes within 60 s")
            .expect("readable")
            .expect("a line");
        let id = ids_of(&line);
        handled.insert(id.clone());
        after.insert(id);
    }
    second.kill().await.expect("stop");
    // Each line is printed before its ack, and events are handled one at a
    // time: all but the last line of the first run were acked, so only that
    // one may come again.
    for id in &before[..before.len() - 1] {
        assert!(!after.contains(id), "{id} was acked, yet handled again");
    }
    assert_eq!(handled, all, "nothing lost");
}
