//! `beacon up` from nothing: local NATS, a starter site, events in, status out, clean stop.

use std::time::Duration;

use super::process::{beacon, sigterm, spawn_until, url_in};

#[tokio::test]
async fn up_starts_everything_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut up = beacon(dir.path());
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let (mut child, line) = spawn_until(up, "collector  http://").await;
    let url = url_in(&line);

    let config = std::fs::read_to_string(dir.path().join("beacon-data/beacon.toml"))
        .expect("starter config written");
    let key = config
        .split('"')
        .find(|s| s.starts_with("wk_"))
        .expect("a write key")
        .to_owned();
    let nats_url = std::fs::read_to_string(dir.path().join("beacon-data/nats.url"))
        .expect("local server recorded");

    let sent = beacon(dir.path())
        .args([
            "send", "--url", &url, "--key", &key, "--name", "signup", "--user", "u-1", "--id",
            "first", "--prop", "plan=pro",
        ])
        .output()
        .await
        .expect("send runs");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stdout)
    );
    assert!(String::from_utf8_lossy(&sent.stdout).contains("\"accepted\": 1"));

    let status = beacon(dir.path())
        .args(["status", "--json"])
        .output()
        .await
        .expect("status runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let events = report["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|s| s["name"] == "BEACON_EVENTS")
        .expect("events stream")
        .clone();
    assert_eq!(events["messages"], 1);
    assert_eq!(events["partitions"], "16");
    assert!(
        report["server"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("2."))
    );
    // The aggregator inside `up` owns every partition and counts the event.
    let mut caught_up = false;
    for _ in 0..100 {
        let status = beacon(dir.path())
            .args(["status", "--json"])
            .output()
            .await
            .expect("status runs");
        let report: serde_json::Value =
            serde_json::from_slice(&status.stdout).expect("status JSON");
        let partitions = report["partitions"].as_array().expect("partitions").clone();
        assert_eq!(partitions.len(), 16);
        let owned = partitions.iter().all(|p| p["owner"].is_string());
        let counted = partitions
            .iter()
            .any(|p| p["last_event"].as_u64() > Some(0) && p["lag"] == 0);
        // The event store is reported beside the rollups for every partition.
        let stored = partitions.iter().all(|p| p["store"]["lag"].is_u64());
        if owned && counted && stored {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        caught_up,
        "the event was aggregated, every partition has an owner and the store is reported"
    );

    // The query API shares the collector's address; a separate `beacon query`
    // node against the same NATS gives the same answer.
    let read_key = config
        .split('"')
        .find(|s| s.starts_with("rk_"))
        .expect("a read key")
        .to_owned();
    let mut query = beacon(dir.path());
    query.args([
        "query",
        "--nats-url",
        nats_url.trim(),
        "--listen",
        "127.0.0.1:0",
        "--config",
        "beacon-data/beacon.toml",
    ]);
    let (query_node, line) = spawn_until(query, "query API on http://").await;
    let query_url = url_in(&line).trim_end_matches("/api/v1/").to_owned();
    let http = reqwest::Client::new();
    for base in [&url, &query_url] {
        let ask = |path: &str| {
            http.get(format!("{base}{path}"))
                .bearer_auth(&read_key)
                .send()
        };
        let mut ready = false;
        for _ in 0..100 {
            if ask("/readyz").await.is_ok_and(|r| r.status() == 200) {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "{base} never ready");
        let summary: serde_json::Value = ask("/api/v1/sites/default/summary?from=-1h")
            .await
            .expect("summary")
            .json()
            .await
            .expect("JSON");
        assert_eq!(
            summary["metrics"]["events"]["value"], 1,
            "{base}: {summary}"
        );
        let unknown = http
            .get(format!("{base}/api/v1/sites/default/summary"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("asked");
        assert_eq!(unknown.status(), 401, "a write key does not read");
        let openapi = http
            .get(format!("{base}/api/v1/openapi.json"))
            .send()
            .await
            .expect("openapi");
        assert_eq!(openapi.status(), 200);
        // The dashboard is served beside the collector's routes and alone.
        for (path, kind) in [("/", "text/html"), ("/assets/app.js", "text/javascript")] {
            let page = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("dashboard");
            assert_eq!(page.status(), 200, "{base}{path}");
            assert!(
                page.headers()["content-type"]
                    .to_str()
                    .is_ok_and(|t| t.starts_with(kind)),
                "{base}{path}"
            );
        }
    }
    sigterm(&query_node);
    let mut query_node = query_node;
    let exit = tokio::time::timeout(Duration::from_secs(30), query_node.wait())
        .await
        .expect("the query node exits")
        .expect("status");
    assert!(exit.success(), "beacon query exited with {exit}");

    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "beacon up exited with {exit}");
    assert!(!dir.path().join("beacon-data/nats.url").exists());
    // The local server is gone with it.
    let gone = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats_url.trim())
        .await;
    assert!(
        gone.is_err(),
        "the local nats-server still answers after beacon up exited"
    );
}

#[tokio::test]
async fn bad_config_is_reported_in_one_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("beacon.toml"),
        "[streams]\nreplicas = 2\n[[sites]]\nid = \"Shop\"\nwrite_keys = [\"k\"]\n",
    )
    .expect("config");
    let out = beacon(dir.path())
        .args(["collector", "--nats-url", "nats://127.0.0.1:1"])
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    for problem in ["streams.replicas", "not a valid site id", "at least 16"] {
        assert!(text.contains(problem), "missing {problem:?} in {text}");
    }
}

/// `beacon up` without a GeoIP database says so at start-up, and still
/// accepts events (without a country).
#[tokio::test]
async fn up_without_a_geoip_database_says_so_and_accepts_events() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = beacon(dir.path())
        .args(["up", "--listen", "127.0.0.1:0"])
        .env("BEACON_ENRICH__GEOIP_DB", "/nonexistent/GeoLite2-City.mmdb")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("beacon starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    // The message comes before the banner: read stderr to it, then stdout
    // to the collector's address, and keep draining both.
    let said = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains("GeoIP is off") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("a start-up message about GeoIP");
    assert!(said.contains("/nonexistent/GeoLite2-City.mmdb"), "{said}");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let line = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            if line.contains("collector  http://") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the banner");
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let url = url_in(&line);

    let config = std::fs::read_to_string(dir.path().join("beacon-data/beacon.toml"))
        .expect("starter config written");
    let key = config
        .split('"')
        .find(|s| s.starts_with("wk_"))
        .expect("a write key")
        .to_owned();
    let sent = beacon(dir.path())
        .args([
            "send", "--url", &url, "--key", &key, "--name", "signup", "--user", "u-1",
        ])
        .output()
        .await
        .expect("send runs");
    let answer = String::from_utf8_lossy(&sent.stdout);
    assert!(sent.status.success(), "{answer}");
    assert!(answer.contains("\"accepted\": 1"), "{answer}");

    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "beacon up exited with {exit}");
}
