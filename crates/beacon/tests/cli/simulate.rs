//! `beacon simulate` and `beacon verify` as a user runs them: the same seed
//! gives the same events and truth; traffic sent over HTTP and over NATS is
//! verified against Beacon's answers; an altered truth fails, naming the
//! difference.

use std::path::Path;
use std::time::Duration;

use super::process::{beacon, sigterm, spawn_until, url_in};

const CONFIG: &str = r#"
[[sites]]
id = "web"
write_keys = ["wk_test_web_00000000"]
read_keys = ["rk_test_web_00000000"]
rate_limit = 0

[[sites]]
id = "app"
write_keys = ["wk_test_app_00000000"]
read_keys = ["rk_test_app_00000000"]
rate_limit = 0

[[sites]]
id = "api"
write_keys = ["wk_test_api_00000000"]
read_keys = ["rk_test_api_00000000"]
rate_limit = 0
"#;

async fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = beacon(dir).args(args).output().await.expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_same_seed_gives_the_same_events_and_truth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = |n: &str| {
        [
            "simulate",
            "--seed",
            "3",
            "--start",
            "2026-11-25T10:00:00Z",
            "--events",
            "3000",
            "--users",
            "300",
            "--rate",
            "20",
            "--site",
            "web",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            "--dry-run".into(),
            format!("events-{n}.ndjson"),
            "--truth".into(),
            format!("truth-{n}.json"),
        ])
        .collect::<Vec<_>>()
    };
    for n in ["a", "b"] {
        let args = args(n);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = run(dir.path(), &args).await;
        assert!(ok, "{out}");
    }
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("written");
    assert_eq!(read("events-a.ndjson"), read("events-b.ndjson"));
    assert_eq!(read("truth-a.json"), read("truth-b.json"));
    assert_eq!(read("events-a.ndjson").lines().count(), 3000);
    let truth: serde_json::Value = serde_json::from_str(&read("truth-a.json")).expect("JSON");
    let site = &truth["sites"][0];
    assert_eq!(site["site"], "web");
    assert_eq!(site["events"], 3000);
    assert_eq!(site["from"], "2026-11-25T10:00:00Z");
    assert!(
        site["events_by_name"]["purchase"].as_u64() > Some(0),
        "{truth}"
    );
}

#[tokio::test]
async fn simulated_traffic_verifies_and_an_altered_truth_does_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("beacon.toml"), CONFIG).expect("config");
    let mut up = beacon(dir.path());
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let (child, line) = spawn_until(up, "collector  http://").await;
    let url = url_in(&line);
    let nats_url = std::fs::read_to_string(dir.path().join("beacon-data/nats.url"))
        .expect("local server recorded");

    let common = [
        "--fast", "--quiet", "--users", "400", "--rate", "50", "--events", "4000",
    ];
    let (ok, out) = run(
        dir.path(),
        &[
            &[
                "simulate", "--site", "web,app", "--url", &url, "--truth", "web.json", "--seed",
                "1",
            ],
            &common[..],
        ]
        .concat(),
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("4000 accepted"), "{out}");
    let (ok, out) = run(
        dir.path(),
        &[
            &[
                "simulate",
                "--site",
                "api",
                "--via",
                "nats",
                "--nats-url",
                nats_url.trim(),
                "--truth",
                "api.json",
                "--seed",
                "2",
            ],
            &common[..],
        ]
        .concat(),
    )
    .await;
    assert!(ok, "{out}");

    for truth in ["web.json", "api.json"] {
        let (ok, out) = run(
            dir.path(),
            &["verify", "--truth", truth, "--url", &url, "--wait", "60s"],
        )
        .await;
        assert!(ok, "{truth}: {out}");
        assert!(out.contains("OK: Beacon's answers match"), "{out}");
    }

    // One more page view in one minute, and different revenue: both named.
    let path = dir.path().join("web.json");
    let mut truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("truth")).expect("JSON");
    assert_eq!(truth["sites"][1]["site"], "app", "{truth}");
    assert!(truth["sites"][1]["events"].as_u64() > Some(0), "{truth}");
    let web = &mut truth["sites"][0];
    let minute = web["events_by_minute"]
        .as_object()
        .and_then(|m| m.keys().nth(1).cloned())
        .expect("a minute");
    let views = web["events_by_minute"][&minute]["pageview"]
        .as_u64()
        .unwrap_or(0);
    web["events_by_minute"][&minute]["pageview"] = (views + 1).into();
    web["revenue"]["USD"] = "0.01".into();
    std::fs::write(dir.path().join("altered.json"), truth.to_string()).expect("write");
    let (ok, out) = run(
        dir.path(),
        &["verify", "--truth", "altered.json", "--url", &url],
    )
    .await;
    assert!(!ok, "an altered truth must fail: {out}");
    assert!(
        out.contains(&format!(
            "web: pageview events in minute {minute}: Beacon {views}, truth {}",
            views + 1
        )),
        "{out}"
    );
    assert!(out.contains("web: revenue: Beacon"), "{out}");
    assert!(out.contains("2 differences"), "{out}");

    sigterm(&child);
    let mut child = child;
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success());
}
