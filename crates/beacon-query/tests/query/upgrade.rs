//! The golden rollup log of format 1 (written by the first release, see
//! crates/beacon-rollup/tests/fixtures/README.md), stored in a real
//! nats-server: aggregators load it and query nodes follow it into views that
//! give exactly the answers the first release gave.

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

/// Publish every message of the golden log, in order, as it was stored.
async fn store_golden_log(js: &async_nats::jetstream::Context) {
    for line in fixture("rollups-v1.jsonl").lines() {
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

/// Every answer the first release gave, asked again of `view`.
fn assert_same_answers(view: &View, how: &str) {
    let golden: Value = serde_json::from_str(&fixture("answers-v1.json")).expect("answers");
    let now = golden["now_ms"].as_i64().expect("now_ms");
    let answers = golden["answers"].as_object().expect("answers");
    assert!(answers.len() >= 20, "the fixture holds the answers");
    let mut differences = BTreeMap::new();
    for (question, expected) in answers {
        let (site, rest) = question.split_once(' ').expect("site and question");
        let (op, query) = rest.split_once('?').expect("op and query");
        let params = Params::from_query(query).expect("valid parameters");
        let answer = match op {
            "summary" => engine::summary(view, site, &params, now),
            "timeseries" => engine::timeseries(view, site, &params, now),
            _ => engine::breakdown(view, site, &params, now),
        }
        .unwrap_or_else(|e| panic!("{how}: {question}: {e}"));
        let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
        if &answer != expected {
            differences.insert(question.clone(), (expected.clone(), answer));
        }
    }
    assert!(
        differences.is_empty(),
        "{how}: {} answers differ from the first release's, e.g. {:?}",
        differences.len(),
        differences.iter().next()
    );
}

#[tokio::test]
async fn a_format_1_log_loads_with_the_first_releases_answers() {
    let nats = TestServer::start().await;
    let (client, js) = nats.provisioned(PARTITIONS).await;
    store_golden_log(&js).await;

    // As an aggregator loads it.
    let view = beacon_aggregate::view(&js, PARTITIONS)
        .await
        .expect("every record reads");
    assert_same_answers(&view, "loaded");

    // As a query node follows it.
    let node = node(&client).await;
    node.ready().await;
    node.node
        .rollups()
        .read(|followed| assert_same_answers(&followed.view, "followed"));
}
