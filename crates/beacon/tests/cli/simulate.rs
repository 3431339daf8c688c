//! `beacon simulate` and `beacon verify` as a user runs them: the same seed
//! gives the same events and truth; traffic sent over HTTP and over NATS is
//! verified against Beacon's answers; an altered truth fails, naming the
//! difference; the README's tour verifies twice in a row; shuffled traffic
//! verifies, sessions included.

use std::time::Duration;

use super::process::{beacon, run, sigterm, spawn_until, url_in};

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
                "--url",
                &url,
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
    // One aligned row per difference: site, what, Beacon's figure, the expected one.
    let row = |what: &str| {
        out.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no row for {what}: {out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let views_row = row(&format!("pageview events in minute {minute}"));
    assert_eq!(views_row[0], "web", "{out}");
    assert_eq!(
        views_row[views_row.len() - 2..],
        [views.to_string(), (views + 1).to_string()],
        "{out}"
    );
    assert!(row("revenue").last().is_some_and(|c| c == "USD"), "{out}");
    assert_eq!(out.matches("pageview events in minute").count(), 1, "{out}");
    assert!(out.contains("2 differences"), "{out}");
    let header = out
        .lines()
        .find(|l| l.starts_with("SITE"))
        .expect("a header");
    let column = header.find("EXPECTED").expect("EXPECTED column");
    let line = out
        .lines()
        .find(|l| l.contains("pageview events in minute"))
        .expect("row");
    assert_eq!(line.rfind(' ').map(|i| i + 1), Some(column), "{out}");

    stop(child).await;
}

/// The README's tour, step by step, against one `beacon up`: the curl events
/// (one sent twice), `beacon send`, then its simulate and verify commands,
/// twice in a row. Both runs verify: the second neither dedupes against the
/// first nor continues its visitors' sessions, and the tour's own events in
/// the same minutes are not mistaken for differences.
#[tokio::test]
async fn the_readme_tour_verifies_twice_in_a_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut up = beacon(dir.path());
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let (child, line) = spawn_until(up, "collector  http://").await;
    let url = url_in(&line);
    let config = std::fs::read_to_string(dir.path().join("beacon-data/beacon.toml"))
        .expect("starter config");
    let key_of = |prefix: &str| {
        config
            .split('"')
            .find(|s| s.starts_with(prefix))
            .expect("a key")
            .to_owned()
    };
    let write_key = key_of("wk_");

    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        http.post(format!("{url}/api/v1/events"))
            .bearer_auth(&write_key)
            .json(&body)
            .send()
    };
    let purchase = serde_json::json!({"id": "order-1001", "name": "purchase", "user_id": "u-1",
        "props": {"path": "/checkout"}, "revenue": {"amount": "19.99", "currency": "USD"}});
    for status in ["accepted", "duplicate"] {
        let answer: serde_json::Value = post(purchase.clone())
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        assert_eq!(answer["results"][0]["status"], status, "{answer}");
    }
    let answer: serde_json::Value = post(serde_json::json!(
        [{"name": "pageview", "user_id": "u-2"}, {"name": "pageview"}]
    ))
    .await
    .expect("sent")
    .json()
    .await
    .expect("JSON");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    let (ok, out) = run(
        dir.path(),
        &[
            "send", "--url", &url, "--name", "signup", "--user", "u-3", "--prop", "plan=pro",
        ],
    )
    .await;
    assert!(ok, "{out}");

    for round in 1..=2 {
        let (ok, out) = run(
            dir.path(),
            &[
                "simulate",
                "--users",
                "5000",
                "--rate",
                "500",
                "--duration",
                "1m",
                "--truth",
                "truth.json",
                "--url",
                &url,
            ],
        )
        .await;
        assert!(ok, "round {round}: {out}");
        assert!(
            out.contains("30000 accepted, 0 duplicates, 0 rejected"),
            "round {round}: {out}"
        );
        let (ok, out) = run(
            dir.path(),
            &["verify", "--truth", "truth.json", "--url", &url],
        )
        .await;
        assert!(ok, "round {round}: {out}");
        assert!(
            out.contains("OK: Beacon's answers match truth.json (30000 events"),
            "round {round}: {out}"
        );
    }
    stop(child).await;
}

/// Traffic sent out of order (a fifth of the events up to an hour late, every
/// batch shuffled) over three hours of event time with pauses longer than the
/// session timeout: every figure, sessions and bounces included, must be
/// what the events say in event time. This needs event-time sessions in the
/// aggregator.
#[tokio::test]
async fn shuffled_traffic_verifies_sessions_in_event_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("beacon.toml"), CONFIG).expect("config");
    let mut up = beacon(dir.path());
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let (child, line) = spawn_until(up, "collector  http://").await;
    let url = url_in(&line);

    let (ok, out) = run(
        dir.path(),
        &[
            "simulate",
            "--site",
            "web",
            "--url",
            &url,
            "--truth",
            "shuffled.json",
            "--fast",
            "--quiet",
            "--shuffle",
            "--late-share",
            "0.2",
            "--late-by",
            "1h",
            "--users",
            "200",
            "--rate",
            "1",
            "--duration",
            "3h",
            "--seed",
            "5",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("10800 accepted"), "{out}");
    let (ok, out) = run(
        dir.path(),
        &["verify", "--truth", "shuffled.json", "--url", &url],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("OK: Beacon's answers match"), "{out}");
    stop(child).await;
}

async fn stop(mut child: tokio::process::Child) {
    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success());
}
