//! `beacon replay` on a running system: rollups rebuilt from the events into a
//! new generation while traffic keeps coming, with the answers about earlier
//! events unchanged and every figure equal to the truth afterwards; and a
//! replay SIGKILLed part-way that, run again, resumes and ends exact; and a
//! replay of one site that carries the other site's answers over exactly.

use std::path::Path;
use std::time::Duration;

use beacon_aggregate::store;

use super::process::{beacon, run, sigterm, spawn_until, url_in};

const CONFIG: &str = r#"
[[sites]]
id = "web"
write_keys = ["wk_test_web_00000000"]
read_keys = ["rk_test_web_00000000"]
rate_limit = 0
"#;

const READ_KEY: &str = "rk_test_web_00000000";

/// A second site beside `web`, for `beacon replay --site`.
const SHOP: &str = r#"
[[sites]]
id = "shop"
write_keys = ["wk_test_shop_0000000"]
read_keys = ["rk_test_shop_0000000"]
rate_limit = 0
"#;
const PARTITIONS: u32 = 16;

/// Three hours ago, to the second: a period no live traffic of the test touches.
fn hours_ago(hours: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::hours(hours))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `beacon up` in `dir` with `config`: the child, its URL and its NATS.
async fn up(
    dir: &Path,
    config: &str,
) -> (
    tokio::process::Child,
    String,
    async_nats::jetstream::stream::Stream,
) {
    std::fs::write(dir.join("beacon.toml"), config).expect("config");
    let mut up = beacon(dir);
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let (child, line) = spawn_until(up, "collector  http://").await;
    let nats_url = std::fs::read_to_string(dir.join("beacon-data/nats.url")).expect("nats url");
    let client = async_nats::connect(nats_url.trim()).await.expect("NATS");
    let rollups = async_nats::jetstream::new(client)
        .get_stream("BEACON_ROLLUPS")
        .await
        .expect("rollups stream");
    (child, url_in(&line), rollups)
}

/// A simulation three hours back, verified.
async fn simulate_past(dir: &Path, url: &str, events: &str) {
    let start = hours_ago(3);
    let (ok, out) = run(
        dir,
        &[
            "simulate",
            "--site",
            "web",
            "--url",
            url,
            "--truth",
            "past.json",
            "--fast",
            "--quiet",
            "--users",
            "2000",
            "--rate",
            "50",
            "--events",
            events,
            "--seed",
            "1",
            "--start",
            &start,
        ],
    )
    .await;
    assert!(ok, "{out}");
    verify(dir, url, "past.json").await;
}

async fn verify(dir: &Path, url: &str, truth: &str) {
    let (ok, out) = run(dir, &["verify", "--truth", truth, "--url", url]).await;
    assert!(ok, "{truth}: {out}");
    assert!(out.contains("OK: Beacon's answers match"), "{truth}: {out}");
}

/// Beacon's answers over a truth file's period: every figure, and apart from
/// them the unique-user estimates, which are compared within the sketch's
/// error (a sketch rebuilt from the same users in other batches can differ
/// in the last digit of a union's estimate).
#[derive(Debug)]
struct Answers {
    figures: Vec<serde_json::Value>,
    users: Vec<f64>,
}

impl Answers {
    fn assert_same(&self, before: &Answers) {
        assert_eq!(self.figures, before.figures);
        assert_eq!(self.users.len(), before.users.len());
        for (now, then) in self.users.iter().zip(&before.users) {
            assert!(
                (now - then).abs() <= (then * 0.025).max(2.0),
                "users {now} vs {then}"
            );
        }
    }
}

/// Take every `users` figure out of `value` into `users`.
fn take_users(value: &mut serde_json::Value, users: &mut Vec<f64>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(u) = map.remove("users") {
                // A number in series, `{"value": …, "previous": …}` in a summary.
                let value = u.get("value").unwrap_or(&u).as_f64();
                users.push(value.unwrap_or(-1.0));
            }
            for v in map.values_mut() {
                take_users(v, users);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                take_users(v, users);
            }
        }
        _ => {}
    }
}

async fn answers(dir: &Path, url: &str, truth: &str) -> Answers {
    answers_of(dir, url, truth, 0, "web", READ_KEY).await
}

/// Like [`answers`], for the `index`th site of the truth file, `site`.
async fn answers_of(
    dir: &Path,
    url: &str,
    truth: &str,
    index: usize,
    site: &str,
    key: &str,
) -> Answers {
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(truth)).expect("truth"))
            .expect("JSON");
    let (from, to) = (
        truth["sites"][index]["from"].as_str().expect("from"),
        truth["sites"][index]["to"].as_str().expect("to"),
    );
    let http = reqwest::Client::new();
    let mut out = Answers {
        figures: Vec::new(),
        users: Vec::new(),
    };
    for ask in [
        format!("summary?from={from}&to={to}"),
        format!("timeseries?from={from}&to={to}&interval=1m"),
        format!(
            "breakdown?dimension=path&metric=events&metrics=events&limit=1000&from={from}&to={to}"
        ),
        format!(
            "breakdown?dimension=browser&metric=events&metrics=events&limit=1000&from={from}&to={to}"
        ),
    ] {
        let answer = http
            .get(format!("{url}/api/v1/sites/{site}/{ask}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("asked");
        assert!(answer.status().is_success(), "{ask}");
        let mut figures: serde_json::Value = answer.json().await.expect("JSON");
        take_users(&mut figures, &mut out.users);
        // How fresh an answer is says when it was asked, not what it counts.
        if let Some(fields) = figures.as_object_mut() {
            fields.remove("fresh_through");
        }
        out.figures.push(figures);
    }
    out
}

async fn generation(rollups: &async_nats::jetstream::stream::Stream) -> u64 {
    store::current(rollups).await.expect("current").generation
}

/// Every partition's committed position in `generation` (None: no log).
async fn positions(
    rollups: &async_nats::jetstream::stream::Stream,
    generation: u64,
) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        out.push(
            store::committed_seq(rollups, generation, p)
                .await
                .expect("position"),
        );
    }
    out
}

async fn stop(mut child: tokio::process::Child) {
    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success());
}

/// Send 20 s of live traffic to `sites` (truth in live.json) and, 3 s into
/// it, run `beacon replay --quiet EXTRA`: simulate's output, and whether the
/// replay succeeded with what it printed.
async fn replay_beside_traffic(
    dir: &Path,
    url: &str,
    sites: &str,
    seed: &str,
    extra: &[&str],
) -> (std::io::Result<std::process::Output>, (bool, String)) {
    let mut live = beacon(dir);
    live.args([
        "simulate",
        "--site",
        sites,
        "--url",
        url,
        "--truth",
        "live.json",
        "--quiet",
        "--users",
        "500",
        "--rate",
        "200",
        "--duration",
        "20s",
        "--seed",
        seed,
    ]);
    let replay = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let args: Vec<&str> = ["replay", "--quiet"].iter().chain(extra).copied().collect();
        run(dir, &args).await
    };
    tokio::join!(live.output(), replay)
}

#[tokio::test]
async fn replay_beside_live_ingest_keeps_the_answers_and_ends_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, url, rollups) = up(dir.path(), CONFIG).await;
    simulate_past(dir.path(), &url, "20000").await;
    let before = answers(dir.path(), &url, "past.json").await;
    assert_eq!(generation(&rollups).await, 0);

    // Live traffic, in real time, while the replay runs.
    let (live, (ok, out)) = replay_beside_traffic(dir.path(), &url, "web", "2", &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("switched: generation 1 counts now"), "{out}");
    let live = live.expect("simulate ran");
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );

    assert_eq!(generation(&rollups).await, 1);
    assert!(
        positions(&rollups, 0).await.iter().all(Option::is_none),
        "generation 0 is removed"
    );
    verify(dir.path(), &url, "past.json").await;
    verify(dir.path(), &url, "live.json").await;
    answers(dir.path(), &url, "past.json")
        .await
        .assert_same(&before);
    stop(child).await;
}

#[tokio::test]
async fn a_replay_killed_midway_resumes_and_ends_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Small commits make the replay long enough to be killed part-way.
    let config = format!("{CONFIG}\n[aggregator]\ncommit_max_events = 20\n");
    let (child, url, rollups) = up(dir.path(), &config).await;
    simulate_past(dir.path(), &url, "40000").await;
    let before = answers(dir.path(), &url, "past.json").await;

    let mut replay = beacon(dir.path())
        .args(["replay", "--quiet"])
        .spawn()
        .expect("replay starts");
    // Kill it once it has committed part of the new generation.
    let live = positions(&rollups, 0).await;
    let started = tokio::time::Instant::now();
    loop {
        let mine = positions(&rollups, 1).await;
        let done: u64 = mine.iter().map(|p| p.unwrap_or(0)).sum();
        if done > 0 {
            replay.start_kill().expect("SIGKILL");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the replay never committed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = replay.wait().await;
    let mine = positions(&rollups, 1).await;
    assert_eq!(generation(&rollups).await, 0, "killed before the switch");
    assert!(
        mine.iter()
            .zip(&live)
            .any(|(m, l)| m.unwrap_or(0) < l.unwrap_or(0)),
        "killed part-way: {mine:?} of {live:?}"
    );
    // The numbers are still those of generation 0 meanwhile.
    answers(dir.path(), &url, "past.json")
        .await
        .assert_same(&before);

    let (ok, out) = run(dir.path(), &["replay", "--quiet"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("resuming generation 1"), "{out}");
    assert_eq!(generation(&rollups).await, 1);
    verify(dir.path(), &url, "past.json").await;
    answers(dir.path(), &url, "past.json")
        .await
        .assert_same(&before);
    stop(child).await;
}

#[tokio::test]
async fn a_replay_of_one_site_carries_the_other_over_exactly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, url, rollups) = up(dir.path(), &format!("{CONFIG}{SHOP}")).await;
    // Both sites' past, in one simulation (so their events share partitions).
    let start = hours_ago(3);
    let (ok, out) = run(
        dir.path(),
        &[
            "simulate",
            "--site",
            "web,shop",
            "--url",
            &url,
            "--truth",
            "past.json",
            "--fast",
            "--quiet",
            "--users",
            "2000",
            "--rate",
            "50",
            "--events",
            "20000",
            "--seed",
            "3",
            "--start",
            &start,
        ],
    )
    .await;
    assert!(ok, "{out}");
    verify(dir.path(), &url, "past.json").await;
    let shop_key = "rk_test_shop_0000000";
    let web_before = answers_of(dir.path(), &url, "past.json", 0, "web", READ_KEY).await;
    let shop_before = answers_of(dir.path(), &url, "past.json", 1, "shop", shop_key).await;

    // Live traffic on both sites while only `web` is replayed.
    let (live, (ok, out)) =
        replay_beside_traffic(dir.path(), &url, "web,shop", "4", &["--site", "web"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("switched: generation 1 counts now"), "{out}");
    assert!(out.contains("(sites web)"), "{out}");
    let live = live.expect("simulate ran");
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    assert_eq!(generation(&rollups).await, 1);

    // Every figure of both sites equals the truth, the live traffic's too.
    verify(dir.path(), &url, "past.json").await;
    verify(dir.path(), &url, "live.json").await;
    // `shop` was carried over, not rebuilt: its answers are the very same,
    // down to the unique-user sketches' last digit.
    let shop_after = answers_of(dir.path(), &url, "past.json", 1, "shop", shop_key).await;
    assert_eq!(shop_after.figures, shop_before.figures);
    assert_eq!(shop_after.users, shop_before.users);
    // `web` was rebuilt from the events, to the same figures.
    answers_of(dir.path(), &url, "past.json", 0, "web", READ_KEY)
        .await
        .assert_same(&web_before);
    stop(child).await;
}
