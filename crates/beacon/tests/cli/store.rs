//! The event store's read side end to end: on a fresh `beacon up` an event
//! sent over HTTP is counted by SQL at once (from the tail, no segment
//! needed), a separate `beacon query` node answers the same, and `beacon
//! export` writes the event out.

use std::time::Duration;

use serde_json::{Value, json};

use super::process::{SHOP_KEY, beacon, run, sigterm, spawn_until, url_in, write_config};

const READ_KEY: &str = "rk_test_shop_000000000";

async fn sql(http: &reqwest::Client, base: &str, query: &str) -> (u16, Value) {
    let response = http
        .post(format!("{base}/api/v1/sites/shop/sql"))
        .bearer_auth(READ_KEY)
        .json(&json!({ "sql": query }))
        .send()
        .await
        .expect("asked");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// Wait (bounded) until `base` counts `want` events of `name`.
async fn until_counted(http: &reqwest::Client, base: &str, name: &str, want: i64) {
    let query = format!("SELECT count(*) AS n FROM events WHERE name = '{name}'");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = sql(http, base, &query).await;
        if status == 200 && body["rows"][0]["n"] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sql_and_export_work_on_a_fresh_up_and_a_separate_query_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_config(dir.path());
    let mut up = beacon(dir.path());
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let (child, line) = spawn_until(up, "collector  http://").await;
    let url = url_in(&line);
    let nats_url = std::fs::read_to_string(dir.path().join("beacon-data/nats.url"))
        .expect("local server recorded");
    let http = reqwest::Client::new();

    // Freshness: the event is in SQL counts as soon as the node has read it
    // from the stream, whether or not any segment holds it.
    let sent = http
        .post(format!("{url}/api/v1/events"))
        .bearer_auth(SHOP_KEY)
        .json(
            &json!({"name": "signup", "user_id": "u-1", "id": "fresh-1", "props": {"plan": "pro"}}),
        )
        .send()
        .await
        .expect("sent");
    assert!(sent.status().is_success(), "{:?}", sent.text().await);
    until_counted(&http, &url, "signup", 1).await;
    let (status, body) = sql(
        &http,
        &url,
        "SELECT props['plan'] AS plan, user_key FROM events WHERE id = 'fresh-1'",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([{"plan": "pro", "user_key": "u-1"}]));

    // A separate query node on the same NATS answers the same.
    let mut query = beacon(dir.path());
    query.args([
        "query",
        "--nats-url",
        nats_url.trim(),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "query-data",
    ]);
    let (mut query_node, line) = spawn_until(query, "query API on http://").await;
    let query_url = url_in(&line).trim_end_matches("/api/v1/").to_owned();
    until_counted(&http, &query_url, "signup", 1).await;

    // `beacon export` writes the event; the range is given as dates.
    let today = chrono::Utc::now().date_naive();
    let out = dir.path().join("shop.ndjson");
    let (ok, printed) = run(
        dir.path(),
        &[
            "export",
            "--nats-url",
            nats_url.trim(),
            "--site",
            "shop",
            "--from",
            &today.pred_opt().expect("yesterday").to_string(),
            "--to",
            &today.to_string(),
            "--format",
            "ndjson",
            "--output",
            out.to_str().expect("path"),
        ],
    )
    .await;
    assert!(ok, "{printed}");
    let text = std::fs::read_to_string(&out).expect("export written");
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0]["id"], "fresh-1");
    assert_eq!(rows[0]["props"]["plan"], "pro");

    sigterm(&query_node);
    let exit = tokio::time::timeout(Duration::from_secs(30), query_node.wait())
        .await
        .expect("the query node exits")
        .expect("status");
    assert!(exit.success(), "beacon query exited with {exit}");
    let mut child = child;
    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "beacon up exited with {exit}");
}
