//! Every example of docs/QUERY.md, read from the document itself, asked of a
//! live `beacon up`: the `curl … "$B/…"` lines and each filter of the filter
//! examples. A new example is tested as soon as it is written.

use std::time::Duration;

use super::process::{beacon, sigterm, spawn_until, url_in};

/// The `$B/…` paths of the doc's curl examples (streams left out: they do not end).
fn curl_paths(doc: &str) -> Vec<String> {
    doc.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl ") && !l.contains(" -N "))
        .filter_map(|l| {
            let start = l.find("\"$B/")? + 4;
            let end = l[start..].find('"')? + start;
            Some(l[start..end].to_owned())
        })
        .collect()
}

/// The filters of the doc's filter examples: the first word of each line of
/// the `text` block after the filter section's "Examples".
fn filter_examples(doc: &str) -> Vec<String> {
    let Some(at) = doc.find("### Filters") else {
        return Vec::new();
    };
    let section = &doc[at..];
    let Some(open) = section.find("```text\n") else {
        return Vec::new();
    };
    let block = &section[open + 8..];
    let close = block.find("```").unwrap_or(block.len());
    block[..close]
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `text` as one URL query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn every_example_of_the_query_doc_is_answered_by_beacon_up() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/QUERY.md"))
        .expect("docs/QUERY.md");
    let paths = curl_paths(&doc);
    let filters = filter_examples(&doc);
    assert!(paths.len() >= 8, "the doc's curl examples: {paths:?}");
    assert!(filters.len() >= 5, "the doc's filter examples: {filters:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut up = beacon(dir.path());
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let (child, line) = spawn_until(up, "collector  http://").await;
    let url = url_in(&line);
    let config = std::fs::read_to_string(dir.path().join("beacon-data/beacon.toml"))
        .expect("starter config written");
    let key_of = |prefix: &str| {
        config
            .split('"')
            .find(|s| s.starts_with(prefix))
            .expect("a key")
            .to_owned()
    };
    let (write, read) = (key_of("wk_"), key_of("rk_"));
    let sent = beacon(dir.path())
        .args([
            "send", "--url", &url, "--key", &write, "--name", "signup", "--user", "u-1", "--prop",
            "plan=pro",
        ])
        .output()
        .await
        .expect("send runs");
    assert!(sent.status.success(), "{sent:?}");

    let http = reqwest::Client::new();
    let base = format!("{url}/api/v1/sites/default");
    // Ready when the store holds the event (the rollups load before it).
    let mut ready = false;
    for _ in 0..300 {
        let answer = http
            .get(format!("{base}/properties?from=-1h"))
            .bearer_auth(&read)
            .send()
            .await;
        if let Ok(a) = answer
            && a.status() == 200
            && let Ok(body) = a.json::<serde_json::Value>().await
            && body["total_rows"] == 1
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the event never reached the store");

    for path in &paths {
        let answer = http
            .get(format!("{base}/{path}"))
            .bearer_auth(&read)
            .send()
            .await
            .expect("asked");
        let status = answer.status();
        let body: serde_json::Value = answer.json().await.expect("JSON");
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body["source"].is_string(), "{path}: {body}");
        assert!(body["range"]["from"].is_string(), "{path}: {body}");
    }
    for filter in &filters {
        let answer = http
            .get(format!(
                "{base}/summary?from=-1h&filters={}",
                encode(filter)
            ))
            .bearer_auth(&read)
            .send()
            .await
            .expect("asked");
        let status = answer.status();
        let body: serde_json::Value = answer.json().await.expect("JSON");
        assert_eq!(status, 200, "{filter}: {body}");
        assert_eq!(body["source"], "store", "{filter}: {body}");
    }
    // The property filter of the examples selects the one event.
    let pro = http
        .get(format!(
            "{base}/summary?from=-1h&filters={}",
            encode("props.plan==pro|team")
        ))
        .bearer_auth(&read)
        .send()
        .await
        .expect("asked")
        .json::<serde_json::Value>()
        .await
        .expect("JSON");
    assert_eq!(pro["metrics"]["events"]["value"], 1, "{pro}");

    sigterm(&child);
    let mut child = child;
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("beacon up exits")
        .expect("status");
    assert!(exit.success(), "beacon up exited with {exit}");
}
