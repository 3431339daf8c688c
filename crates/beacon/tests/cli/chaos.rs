//! Aggregator processes killed, paused, joining and leaving while events
//! stream in, and the nats-server restarted under them: at the end every
//! number equals a ground truth computed by the test, exactly, also with
//! events arriving out of event-time order; and the event store's segments
//! hold every event exactly once, and SQL through a query node's API counts
//! every event, name, user and revenue exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use beacon_rollup::Granularity;
use beacon_testing::TestServer;
use beacon_testing::truth::{Shape, Truth, arrive_late, generate, publish};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::process::Child;

use super::process::{beacon, sigterm, spawn_until, url_in};
use super::stored;

const PARTITIONS: u32 = 8;
/// The site whose events the SQL API is asked about.
const SITE: &str = "site-0";
const READ_KEY: &str = "rk_test_site_000000000";

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("beacon.toml");
    std::fs::write(
        &path,
        format!(
            "[streams]\npartitions = {PARTITIONS}\n\
             [aggregator]\ncommit_interval = \"100ms\"\nlease_ttl = \"3s\"\n\
             [aggregator.retention]\nminute = \"40days\"\n\
             [store]\nflush_rows = 5000\nflush_interval = \"1s\"\ncompaction_fan_in = 3\n\
             [[sites]]\nid = \"{SITE}\"\nwrite_keys = [\"wk_test_site_000000000\"]\nread_keys = [\"{READ_KEY}\"]\n"
        ),
    )
    .expect("write config");
    path
}

async fn aggregator(dir: &Path, config: &Path, nats: &TestServer) -> Child {
    let mut command = beacon(dir);
    command
        .args(["aggregator", "--nats-url", &nats.url(), "--config"])
        .arg(config);
    spawn_until(command, "aggregator sharing").await.0
}

fn signal(child: &Child, signal: Signal) {
    let pid = i32::try_from(child.id().expect("running")).expect("pid");
    kill(Pid::from_raw(pid), signal).expect("signal");
}

async fn sigkill(mut child: Child) {
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
}

fn shape(seed: u64) -> Shape {
    Shape {
        seed,
        sites: 2,
        users: 5_000,
        events: 60_000,
        days: 3,
        end_ms: chrono::Utc::now().timestamp_millis(),
        partitions: PARTITIONS,
    }
}

/// Wait until no partition lags, then compare every cell with the truth, and
/// every stored row with the events sent.
async fn assert_truth(
    dir: &Path,
    config: &Path,
    nats: &TestServer,
    truth: &Truth,
    events: &[beacon_core::Event],
) {
    let js = async_nats::jetstream::new(nats.client().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let progress = beacon_aggregate::progress(&js, PARTITIONS)
            .await
            .expect("progress");
        if progress.iter().all(|p| p.lag() == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregation never caught up: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let view = beacon_aggregate::view(&js, PARTITIONS).await.expect("view");
    let diffs = truth.differences(&view, 0.02);
    assert!(
        diffs.is_empty(),
        "{} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
    stored::wait_stored(&js, PARTITIONS, Duration::from_secs(180)).await;
    let (summary, _) = stored::read(&js, PARTITIONS).await;
    let diffs = summary.differences(&stored::Summary::of_events(events));
    assert!(diffs.is_empty(), "segments: {diffs:#?}");
    assert_sql_truth(dir, config, nats, events).await;
}

/// What SQL over the site's `events` should answer, computed from the events sent.
#[derive(Debug, PartialEq)]
struct SqlTruth {
    rows: u64,
    names: BTreeMap<String, u64>,
    users: u64,
    /// Revenue per currency in units of 10^-18.
    revenue: BTreeMap<String, i128>,
}

impl SqlTruth {
    fn of(events: &[beacon_core::Event]) -> SqlTruth {
        let mine: Vec<_> = events.iter().filter(|e| e.site == SITE).collect();
        let mut names = BTreeMap::new();
        let mut revenue = BTreeMap::new();
        for e in &mine {
            *names.entry(e.name.clone()).or_default() += 1;
            if let Some(r) = &e.revenue {
                *revenue.entry(r.currency.clone()).or_default() += units(&r.amount.to_string());
            }
        }
        let users: BTreeSet<&str> = mine.iter().map(|e| e.user_key()).collect();
        SqlTruth {
            rows: mine.len() as u64,
            names,
            users: users.len() as u64,
            revenue,
        }
    }
}

/// A decimal's text in units of 10^-18, exactly.
fn units(text: &str) -> i128 {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(fraction.len() <= 18, "{text}");
    let value = format!("{whole}{fraction:0<18}")
        .parse::<i128>()
        .expect("a decimal");
    if negative { -value } else { value }
}

/// Ask a fresh `beacon query` node, over its SQL API, for the rows, names,
/// users and revenue of one site, and compare them with the events sent.
async fn assert_sql_truth(
    dir: &Path,
    config: &Path,
    nats: &TestServer,
    events: &[beacon_core::Event],
) {
    let mut command = beacon(dir);
    command
        .args([
            "query",
            "--nats-url",
            &nats.url(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--data-dir", "query-data", "--config"])
        .arg(config);
    let (node, line) = spawn_until(command, "query API on http://").await;
    let base = url_in(&line).trim_end_matches("/api/v1/").to_owned();
    let http = reqwest::Client::new();
    let post = async |sql: &str| -> (reqwest::StatusCode, Value) {
        let response = http
            .post(format!("{base}/api/v1/sites/{SITE}/sql"))
            .bearer_auth(READ_KEY)
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .expect("asked");
        let status = response.status();
        (status, response.json().await.expect("JSON"))
    };
    let ask = async |sql: &str| -> Vec<Value> {
        let (status, body) = post(sql).await;
        assert!(status.is_success(), "{sql}: {status} {body}");
        body["rows"].as_array().expect("rows").clone()
    };
    let want = SqlTruth::of(events);
    // The node loads the manifests and reads the stream's tail on its own
    // (answering 503 until it has loaded): wait, bounded, until it has read
    // as many rows as were sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = post("SELECT count(*) AS n FROM events").await;
        if status.is_success() && body["rows"][0]["n"] == want.rows {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SQL answers {status} {body}; {} rows were sent",
            want.rows
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let names = ask("SELECT name, count(*) AS n FROM events GROUP BY name").await;
    let users = ask("SELECT count(DISTINCT user_key) AS n FROM events").await;
    let revenue = ask(
        "SELECT revenue_currency AS currency, sum(revenue_amount) AS total FROM events \
         WHERE revenue_amount IS NOT NULL GROUP BY revenue_currency",
    )
    .await;
    let got = SqlTruth {
        rows: want.rows,
        names: names
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().expect("name").to_owned(),
                    r["n"].as_u64().expect("n"),
                )
            })
            .collect(),
        users: users[0]["n"].as_u64().expect("n"),
        revenue: revenue
            .iter()
            .map(|r| {
                (
                    r["currency"].as_str().expect("currency").to_owned(),
                    units(r["total"].as_str().expect("decimal text")),
                )
            })
            .collect(),
    };
    assert_eq!(got, want);
    assert!(!want.revenue.is_empty(), "the generator sends revenue");
    sigterm(&node);
    let mut node = node;
    let _ = tokio::time::timeout(Duration::from_secs(30), node.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregators_killed_paused_joining_and_leaving_count_each_event_once() {
    let nats = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let mut events = generate(shape(11));
    // A fifth of the events arrive up to 6 hours late: sessions are corrected
    // across the kills, pauses and handovers too.
    arrive_late(&mut events, 11, 0.2, 6 * 3_600_000);
    let truth = Truth::of(&events, &Granularity::ALL, 30 * 60_000);
    let js = async_nats::jetstream::new(nats.client().await);

    let mut a = aggregator(dir.path(), &config, &nats).await;
    let mut b = None;
    let mut c = None;
    for (i, chunk) in events.chunks(events.len() / 10).enumerate() {
        publish(&js, chunk).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        match i {
            0 => b = Some(aggregator(dir.path(), &config, &nats).await),
            1 => c = Some(aggregator(dir.path(), &config, &nats).await),
            2 => {
                sigkill(a).await;
                a = aggregator(dir.path(), &config, &nats).await;
            }
            // A paused owner: its leases expire and move while it sleeps; when it
            // wakes up it must not write over its successors.
            3 => signal(b.as_ref().expect("b"), Signal::SIGSTOP),
            4 => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                signal(b.as_ref().expect("b"), Signal::SIGCONT);
            }
            5 => sigkill(c.take().expect("c")).await,
            6 => {
                sigterm(&a);
                let _ = a.wait().await;
                a = aggregator(dir.path(), &config, &nats).await;
            }
            7 => sigkill(b.take().expect("b")).await,
            _ => {}
        }
    }
    assert_truth(dir.path(), &config, &nats, &truth, &events).await;
    sigterm(&a);
    let stopped = a.wait().await.expect("exit");
    assert!(stopped.success(), "a clean stop exits 0: {stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restarted_mid_stream_loses_and_doubles_nothing() {
    let mut nats = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    let events = generate(shape(12));
    let truth = Truth::of(&events, &Granularity::ALL, 30 * 60_000);

    let mut a = aggregator(dir.path(), &config, &nats).await;
    let b = aggregator(dir.path(), &config, &nats).await;
    for (i, chunk) in events.chunks(events.len() / 8).enumerate() {
        let js = async_nats::jetstream::new(nats.client().await);
        publish(&js, chunk).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        match i {
            2 => nats.restart().await,
            4 => {
                sigkill(a).await;
                a = aggregator(dir.path(), &config, &nats).await;
            }
            5 => {
                // A crash of the server, not a clean stop.
                nats.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                nats.resume().await;
            }
            _ => {}
        }
    }
    assert_truth(dir.path(), &config, &nats, &truth, &events).await;
    for child in [a, b] {
        sigterm(&child);
        let _ = tokio::time::timeout(Duration::from_secs(30), async move {
            let mut child = child;
            child.wait().await
        })
        .await
        .expect("stops");
    }
}
