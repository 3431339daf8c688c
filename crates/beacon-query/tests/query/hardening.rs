//! No query can take a node down: the ranges and parameters that once panicked
//! or grew a node without bound (issue 12) get a clear 400 over HTTP and over
//! NATS, replayed from the corpus in `tests/corpus/`; one Bearer reader; and
//! what `/api/v1/status` shows to a key that reads only some sites.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::*;

/// One input of the corpus and the status it must get.
#[derive(Debug, Deserialize)]
struct Case {
    why: String,
    op: String,
    /// The URL query, percent-encoded as a client would send it.
    query: String,
    status: u16,
}

fn corpus() -> Vec<(String, Case)> {
    beacon_testing::corpus(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_gets_its_statuses_over_http_and_nats_and_the_node_survives() {
    let s = setup(300).await;
    s.committed().await;
    let n = node(&s.client).await;
    n.ready().await;
    for (file, case) in corpus() {
        let path = format!("/api/v1/sites/site-0/{}?{}", case.op, case.query);
        let (status, body) = n.get(&path, Some(READ_ALL)).await;
        assert_eq!(status, case.status, "{file} ({}): {body}", case.why);
        if status == 400 {
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{file}: a 400 says why: {body}"
            );
        }
        // The same parameters over NATS, decoded as the HTTP layer decodes them.
        let params: serde_json::Map<String, Value> =
            serde_urlencoded::from_str::<Vec<(String, String)>>(&case.query)
                .expect("query")
                .into_iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        // A number in JSON, when it is one; else as the text came.
                        "limit" => v.parse::<i64>().map(Value::from).unwrap_or(Value::from(v)),
                        _ => Value::from(v),
                    };
                    (k, v)
                })
                .collect();
        let asked = ask_nats(
            &s.client,
            &case.op,
            json!({"key": READ_ALL, "site": "site-0", "params": params}),
        )
        .await;
        match (case.status, asked) {
            (200, Ok(_)) => {}
            (expected, Err((code, message))) => {
                assert_eq!(code, expected.to_string(), "{file} over NATS: {message}");
            }
            (expected, Ok(answer)) => panic!("{file} over NATS: wanted {expected}, got {answer}"),
        }
    }
    // Still alive and answering.
    let body = n.ok("/api/v1/sites/site-0/summary?metrics=events").await;
    assert!(body["metrics"]["events"]["value"].is_i64(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_read_in_any_case() {
    let s = setup(50).await;
    let n = node(&s.client).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = n
            .http
            .get(format!("http://{}/api/v1/sites", n.addr))
            .header("authorization", format!("{scheme} {READ_ONE}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["sites"], json!(["site-1"]), "{scheme}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_one_site_key_only_how_current_the_numbers_are() {
    let s = setup(200).await;
    s.committed().await;
    let n = node(&s.client).await;
    n.ready().await;
    let (status, all) = n.get("/api/v1/status", Some(READ_ALL)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["scope"], "everything");
    assert!(
        all["streams"].as_array().is_some_and(|s| !s.is_empty()),
        "{all}"
    );
    assert!(all["partitions"][0].get("committed").is_some(), "{all}");
    // The event store beside the rollups: its sizes and sequence, and its lag.
    let store = all["partitions"][0]["store"].as_object().expect("store");
    for field in ["segments", "rows", "bytes", "committed", "lag"] {
        assert!(store[field].is_u64(), "{field}: {all}");
    }
    assert!(all["store_lag"].is_u64(), "{all}");

    let (status, one) = n.get("/api/v1/status", Some(READ_ONE)).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["scope"], "freshness");
    for hidden in ["streams", "view"] {
        assert!(one.get(hidden).is_none(), "{hidden} shown: {one}");
    }
    let partition = one["partitions"][0].as_object().expect("partitions");
    let mut fields: Vec<&str> = partition.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["behind_ms", "lag", "partition", "store"], "{one}");
    // Of the store, only how current it is: its sizes measure every site.
    let store: Vec<&String> = one["partitions"][0]["store"]
        .as_object()
        .expect("store")
        .keys()
        .collect();
    assert_eq!(store, ["lag"], "{one}");
    assert!(one["lag"].is_u64() && one["ready"].is_boolean(), "{one}");
    assert!(one["store_lag"].is_u64(), "{one}");
    // Over NATS the same key gets the same scope.
    let asked = ask_nats(&s.client, "status", json!({"key": READ_ONE}))
        .await
        .expect("status over NATS");
    assert_eq!(asked["scope"], "freshness");
    assert!(asked.get("streams").is_none(), "{asked}");
}
