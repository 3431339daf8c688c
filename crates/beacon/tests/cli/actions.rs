//! `beacon actions` as operators run it: a worker SIGKILLed mid-delivery loses
//! no job, and on real traffic through `beacon up` (plus a second copy of the
//! actions service) threshold and spike alerts fire once per window and a
//! scheduled report reaches the SMTP sink with the right figures.

use std::time::Duration;

use beacon_actions::queue::enqueue;
use beacon_actions::{JOB_VERSION, Job, JobKind};
use beacon_testing::TestServer;
use beacon_testing::actions::{Receiver, SmtpSink};
use chrono::{SecondsFormat, Timelike, Utc};
use serde_json::{Value, json};

use super::process::{SHOP_KEY, beacon, spawn_until, url_in};

const READ_KEY: &str = "rk_test_shop_000000000";
const SECRET: &str = "whsec_test_0123456789";

fn site() -> String {
    format!(
        "[[sites]]\nid = \"shop\"\nwrite_keys = [\"{SHOP_KEY}\"]\nread_keys = [\"{READ_KEY}\"]\nrate_limit = 0\n"
    )
}

#[tokio::test]
async fn a_worker_killed_mid_delivery_loses_no_job() {
    let nats = TestServer::start().await;
    let receiver = Receiver::start().await;
    receiver.stall(1);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("beacon.toml"),
        format!(
            "{}[actions]\nack_wait = \"2s\"\n[[actions.rules]]\nid = \"hook\"\nsite = \"shop\"\nkind = \"event\"\nevent = \"purchase\"\nwebhook = \"{}\"\nsecret = \"{SECRET}\"\n",
            site(),
            receiver.url
        ),
    )
    .expect("config");
    let start = || {
        let mut command = beacon(dir.path());
        command.args(["actions", "--nats-url", &nats.url()]);
        spawn_until(command, "actions running")
    };
    let (mut first, _) = start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    let job = Job {
        v: JOB_VERSION,
        key: "hook/e-kill".into(),
        rule: "hook".into(),
        site: "shop".into(),
        kind: JobKind::Event,
        target: "webhook".into(),
        created_at: Utc::now(),
        data: json!({"name": "purchase"}),
    };
    enqueue(&js, &job).await.expect("enqueued");
    // The first worker has the job in hand and the receiver holds the request.
    receiver
        .wait_until("the first delivery", |got| !got.is_empty())
        .await;
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;

    // The job was never acked: it is still on the queue, and status says so.
    let status = beacon(dir.path())
        .args(["status", "--json", "--nats-url", &nats.url()])
        .output()
        .await
        .expect("status runs");
    let report: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(report["actions"]["pending"], 1, "{report}");
    assert_eq!(report["actions"]["dead"], 0, "{report}");

    let (mut second, _) = start().await;
    let got = receiver
        .wait_until("a completed delivery", |got| {
            got.iter().any(|r| r.status == 200)
        })
        .await;
    assert!(got.len() >= 2, "delivered again after the kill: {got:?}");
    assert!(got.iter().all(|r| r.key == "hook/e-kill"), "{got:?}");
    // Nothing went to the dead letters, and the command says so.
    let replay = beacon(dir.path())
        .args(["actions", "replay-dead", "--nats-url", &nats.url()])
        .output()
        .await
        .expect("replay-dead runs");
    assert!(replay.status.success());
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).trim(),
        "re-queued 0 dead jobs"
    );
    second.start_kill().expect("kill");
}

/// Events for `name`, all stamped `ts`, through the collector.
async fn send(http: &reqwest::Client, url: &str, name: &str, count: usize, ts: &str) {
    let events: Vec<Value> = (0..count)
        .map(|i| json!({"id": format!("{name}-{i}"), "name": name, "user_id": format!("u-{i}"), "ts": ts}))
        .collect();
    let response = http
        .post(format!("{url}/api/v1/events"))
        .bearer_auth(SHOP_KEY)
        .json(&events)
        .send()
        .await
        .expect("collector answers");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test]
async fn alerts_fire_once_per_window_and_the_report_has_the_figures() {
    let receiver = Receiver::start().await;
    let smtp = SmtpSink::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let hook = format!("webhook = \"{}\"\nsecret = \"{SECRET}\"\n", receiver.url);
    std::fs::write(
        dir.path().join("beacon.toml"),
        format!(
            "{}[actions]\nsettle = \"3s\"\ngrace = \"40s\"\n\
             [actions.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nfrom = \"Beacon <beacon@example.com>\"\n\
             [[actions.rules]]\nid = \"many-purchases\"\nsite = \"shop\"\nkind = \"threshold\"\nevent = \"purchase\"\nwindow = \"1m\"\nabove = 5\n{hook}\
             [[actions.rules]]\nid = \"click-spike\"\nsite = \"shop\"\nkind = \"spike\"\nevent = \"click\"\nwindow = \"1m\"\nbaseline = 3\nfactor = 2.0\nmin = 10\n{hook}\
             [[actions.rules]]\nid = \"minutely\"\nsite = \"shop\"\nkind = \"report\"\nschedule = \"every 1m\"\nemail = [\"ops@example.com\"]\n",
            site(),
            smtp.port
        ),
    )
    .expect("config");
    let mut up = beacon(dir.path());
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let (mut up, line) = spawn_until(up, "collector  http://").await;
    let url = url_in(&line);
    let nats_url = std::fs::read_to_string(dir.path().join("beacon-data/nats.url"))
        .expect("local server recorded");
    // A second copy of the service: each window must still fire once.
    let mut copy = beacon(dir.path());
    copy.args(["actions", "--nats-url", nats_url.trim()]);
    let (mut copy, _) = spawn_until(copy, "actions running").await;

    // Every event in one minute, stamped well inside it.
    while !(5..=45).contains(&Utc::now().second()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let minute = Utc::now()
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("minute");
    let ts = (minute + chrono::Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let http = reqwest::Client::new();
    send(&http, &url, "purchase", 12, &ts).await;
    send(&http, &url, "click", 15, &ts).await;
    let window = minute.to_rfc3339_opts(SecondsFormat::Secs, true);

    let threshold_key = format!("many-purchases/{window}");
    let spike_key = format!("click-spike/{window}");
    receiver
        .wait_until("both alerts", |got| {
            got.iter().any(|r| r.key == threshold_key) && got.iter().any(|r| r.key == spike_key)
        })
        .await;
    let report = smtp
        .wait_for("the report for the minute", |m| {
            m.data.contains(&format!("report {window}"))
        })
        .await;
    // Both copies have evaluated the next window too by the time its report
    // is in: still one delivery per key, and no alert for the quiet minute.
    let next = (minute + chrono::Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    smtp.wait_for("the next minute's report", |m| {
        m.data.contains(&format!("report {next}"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = receiver.received();
    for key in [&threshold_key, &spike_key] {
        let deliveries: Vec<_> = got.iter().filter(|r| &r.key == key).collect();
        assert_eq!(deliveries.len(), 1, "{key} once: {got:?}");
    }
    assert!(
        got.iter()
            .all(|r| r.key == threshold_key || r.key == spike_key),
        "only the busy minute fires: {got:?}"
    );
    let body = |key: &str| -> Value {
        let r = got.iter().find(|r| r.key == key).expect("delivered");
        serde_json::from_slice(&r.body).expect("JSON")
    };
    assert_eq!(body(&threshold_key)["data"]["value"], 12);
    assert_eq!(body(&spike_key)["data"]["value"], 15);
    assert_eq!(body(&spike_key)["data"]["baseline_mean"], 0.0);
    let same_period: Vec<_> = smtp
        .mails()
        .into_iter()
        .filter(|m| m.data.contains(&format!("report {window}")))
        .collect();
    assert_eq!(same_period.len(), 1, "one report per period");
    assert!(
        report.data.contains("events: 27 (previous period 0"),
        "{}",
        report.data
    );
    assert!(report.to.iter().any(|t| t.contains("ops@example.com")));
    copy.start_kill().expect("kill");
    super::process::sigterm(&up);
    let _ = tokio::time::timeout(Duration::from_secs(30), up.wait()).await;
}
