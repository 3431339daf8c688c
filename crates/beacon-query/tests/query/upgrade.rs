//! The golden rollup logs of every released format (see
//! crates/beacon-rollup/tests/fixtures/README.md), stored in a real
//! nats-server: aggregators load them and query nodes follow them into views
//! that give exactly the answers the release that wrote them gave.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use base64::Engine;
use beacon_query::{Params, engine};
use beacon_rollup::View;
use beacon_testing::TestServer;
use serde_json::Value;

use crate::support::{PARTITIONS, node};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../beacon-rollup/tests/fixtures"
);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("golden fixture")
}

/// Publish every message of a golden log, in order, as it was stored.
async fn store_golden_log(js: &async_nats::jetstream::Context, version: u32) {
    for line in fixture(&format!("rollups-v{version}.jsonl")).lines() {
        let m: Value = serde_json::from_str(line).expect("JSON line");
        let mut headers = HeaderMap::new();
        for kv in m["headers"].as_array().expect("headers") {
            let name = kv[0].as_str().expect("name");
            // The writer's fencing directive was for its own stream's sequences.
            if !name.starts_with("Nats-Expected") {
                headers.append(name, kv[1].as_str().expect("value"));
            }
        }
        let payload = base64::engine::general_purpose::STANDARD
            .decode(m["payload"].as_str().expect("payload"))
            .expect("base64");
        js.publish_with_headers(
            m["subject"].as_str().expect("subject").to_owned(),
            headers,
            payload.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
}

/// The metrics every summary and time series answered by default when the
/// golden logs were written; later releases answer more by default, so the
/// golden questions name these.
const GOLDEN_METRICS: &str =
    "events,users,pageviews,sessions,bounce_rate,avg_session_duration,revenue";

/// Ask `view` a question written `<site> <op>?<query>`.
fn ask(view: &View, question: &str, now: i64) -> Value {
    let (site, rest) = question.split_once(' ').expect("site and question");
    let (op, query) = rest.split_once('?').expect("op and query");
    let mut params = Params::from_query(query).expect("valid parameters");
    if op != "breakdown" && params.metrics.is_none() {
        params.metrics = Some(GOLDEN_METRICS.to_owned());
    }
    let answer = match op {
        "summary" => engine::summary(view, site, &params, now),
        "timeseries" => engine::timeseries(view, site, &params, now),
        _ => engine::breakdown(view, site, &params, now),
    }
    .unwrap_or_else(|e| panic!("{question}: {e}"));
    let mut answer: Value = serde_json::from_str(&answer).expect("JSON answer");
    // Added since the fixtures were written; every field they hold is compared.
    if let Some(fields) = answer.as_object_mut() {
        fields.remove("total_rows");
    }
    answer
}

/// Every answer the release that wrote format `version` gave, asked again of `view`.
fn assert_same_answers(view: &View, how: &str, version: u32) {
    let golden: Value =
        serde_json::from_str(&fixture(&format!("answers-v{version}.json"))).expect("answers");
    let now = golden["now_ms"].as_i64().expect("now_ms");
    let answers = golden["answers"].as_object().expect("answers");
    assert!(answers.len() >= 20, "the fixture holds the answers");
    let mut differences = BTreeMap::new();
    for (question, expected) in answers {
        let answer = ask(view, question, now);
        if &answer != expected {
            differences.insert(question.clone(), (expected.clone(), answer));
        }
    }
    assert!(
        differences.is_empty(),
        "{how}: {} answers differ from the format-{version} release's, e.g. {:?}",
        differences.len(),
        differences.iter().next()
    );
}

/// Store the golden log of `version`, load it as an aggregator does and
/// follow it as a query node does: both give that release's answers.
async fn a_golden_log_gives_its_releases_answers(version: u32) {
    let nats = TestServer::start().await;
    let (client, js) = nats.provisioned(PARTITIONS).await;
    store_golden_log(&js, version).await;

    // As an aggregator loads it.
    let view = beacon_aggregate::view(&js, PARTITIONS)
        .await
        .expect("every record reads");
    assert_same_answers(&view, "loaded", version);

    // As a query node follows it.
    let node = node(&client).await;
    node.ready().await;
    node.node
        .rollups()
        .read(|followed| assert_same_answers(&followed.view, "followed", version));
}

#[tokio::test]
async fn a_format_1_log_loads_with_the_first_releases_answers() {
    a_golden_log_gives_its_releases_answers(1).await;
}

#[tokio::test]
async fn a_format_2_log_loads_with_its_releases_answers() {
    a_golden_log_gives_its_releases_answers(2).await;
}

/// Writes the golden log and answers of the format this release writes
/// (`rollups-v<N>.jsonl`, `answers-v<N>.json`) into the folder named by
/// `BEACON_WRITE_GOLDEN`, the way tests/fixtures/README.md describes. Run it
/// once, with the release that introduces a format, before the next change
/// of a stored type; never to refresh a fixture already committed.
#[tokio::test]
#[ignore = "writes a golden fixture; run by hand with BEACON_WRITE_GOLDEN=<folder>"]
async fn write_the_golden_log_of_this_format() {
    use std::time::Duration;

    use beacon_aggregate::AggregatorSettings;
    use beacon_rollup::Retention;
    use beacon_rollup::record::FORMAT_VERSION;
    use beacon_testing::truth::{Shape, generate, publish};
    use futures::StreamExt;

    let folder = std::env::var("BEACON_WRITE_GOLDEN").expect("BEACON_WRITE_GOLDEN=<folder>");
    let nats = TestServer::start().await;
    let (client, js) = nats.provisioned(PARTITIONS).await;
    let end_ms = 1_795_910_400_000; // 2026-11-28T00:00:00Z
    let events = generate(Shape {
        seed: 11,
        sites: 2,
        users: 300,
        events: 6000,
        days: 3,
        end_ms,
        partitions: PARTITIONS,
    });
    let ten_years = Duration::from_secs(3650 * 86_400);
    let settings = AggregatorSettings {
        commit_interval: Duration::from_millis(100),
        commit_max_events: 700,
        snapshot_min_bytes: 64 * 1024,
        lease_ttl: Duration::from_secs(3),
        retention: Retention {
            minute: ten_years,
            hour: ten_years,
            day: ten_years,
        },
        ..AggregatorSettings::default()
    };
    // One aggregator counts the first 4,000 events and stops cleanly; a
    // second takes over (takeover markers) and counts the rest.
    for chunk in [&events[..4000], &events[4000..]] {
        publish(&js, chunk).await;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(beacon_aggregate::run(
            client.clone(),
            settings.clone(),
            beacon_aggregate::StoreSettings::default(),
            PARTITIONS,
            1,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let progress = beacon_aggregate::progress(&js, PARTITIONS)
                .await
                .expect("progress");
            if progress.iter().all(|p| p.lag() == 0 && p.committed > 0) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not committed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.send(true).expect("running");
        task.await.expect("joined").expect("clean stop");
    }

    let stream = js.get_stream("BEACON_ROLLUPS").await.expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let last = stream.get_info().await.expect("info").state.last_sequence;
    let mut messages = consumer.messages().await.expect("messages");
    let mut lines = String::new();
    let mut seq = 0;
    while seq < last {
        let m = messages.next().await.expect("a message").expect("readable");
        seq = m.info().expect("info").stream_sequence;
        let mut headers: Vec<(String, String)> = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        headers.sort();
        let line = serde_json::json!({
            "subject": m.subject.as_str(),
            "headers": headers,
            "payload": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    std::fs::write(format!("{folder}/rollups-v{FORMAT_VERSION}.jsonl"), lines).expect("write");

    // The same questions the first release was asked, answered by this one.
    let questions: Value = serde_json::from_str(&fixture("answers-v1.json")).expect("answers");
    let now = questions["now_ms"].as_i64().expect("now_ms");
    let view = beacon_aggregate::view(&js, PARTITIONS)
        .await
        .expect("every record reads");
    let mut answers = serde_json::Map::new();
    for question in questions["answers"].as_object().expect("answers").keys() {
        answers.insert(question.clone(), ask(&view, question, now));
    }
    let golden = serde_json::json!({"now_ms": now, "answers": answers});
    std::fs::write(
        format!("{folder}/answers-v{FORMAT_VERSION}.json"),
        serde_json::to_string_pretty(&golden).expect("JSON"),
    )
    .expect("write");
}
