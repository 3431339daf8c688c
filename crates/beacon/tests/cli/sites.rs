//! `beacon sites`: the config file changes as asked and nothing else (its
//! comments and order stay), a bad change writes nothing, and the keys and
//! domains it writes work against a running collector; `beacon up`'s first
//! start says how to name a domain, and takes Plausible events from any.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::process::{beacon, run, sigterm, spawn_until, url_in};

const COMMENTED: &str = "# Our analytics.\n[collector]\nlisten = \"127.0.0.1:0\" # any port\n\n[normalizer]\nack_wait = \"1s\"\n\n# The shop first.\n[[sites]]\nid = \"shop\"\nwrite_keys = [\"wk_test_shop_000000000\"]\nread_keys = [\"rk_test_shop_000000000\"]\nrate_limit = 0\n";

/// The value of the first `prefix…` key in `text`.
fn key_in(text: &str, prefix: &str) -> String {
    let start = text.find(prefix).expect("a key in the text");
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

async fn post(url: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().await.expect("collector answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

fn config(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("beacon.toml")).expect("config")
}

#[tokio::test]
async fn sites_edit_the_config_in_place_and_their_keys_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("beacon.toml"), COMMENTED).expect("write config");

    let (ok, out) = run(
        dir.path(),
        &["sites", "add", "blog", "--domain", "Blog.Example"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "<script defer data-site=\"blog\" src=\"http://127.0.0.1:0/js/beacon.js\"></script>"
        ),
        "{out}"
    );
    let (ok, out) = run(
        dir.path(),
        &["sites", "add", "shop", "--domain", "shop.example"],
    )
    .await;
    assert!(ok, "{out}");
    let text = config(dir.path());
    // Untouched above the sites, the shop before the blog, comments kept.
    assert!(
        text.starts_with(&COMMENTED[..COMMENTED.find("[[sites]]").expect("sites")]),
        "{text}"
    );
    assert!(
        text.contains("# The shop first.\n[[sites]]\nid = \"shop\""),
        "{text}"
    );
    assert!(
        text.find("id = \"shop\"") < text.find("id = \"blog\""),
        "{text}"
    );
    assert!(text.contains("domains = [\"blog.example\"]"), "{text}");

    // A change Beacon would refuse writes nothing.
    let before = config(dir.path());
    let (ok, out) = run(dir.path(), &["sites", "add", "Bad Site"]).await;
    assert!(!ok && out.contains("not a valid site id"), "{out}");
    let (ok, out) = run(
        dir.path(),
        &["sites", "add", "wiki", "--domain", "blog.example"],
    )
    .await;
    assert!(!ok && out.contains("belongs to two sites"), "{out}");
    assert_eq!(config(dir.path()), before);

    let (ok, out) = run(dir.path(), &["sites", "list"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("shop") && out.contains("blog.example"),
        "{out}"
    );
    assert!(!out.contains("wk_"), "list never prints a key: {out}");

    let (ok, out) = run(dir.path(), &["sites", "rotate-key", "shop"]).await;
    assert!(ok, "{out}");
    let new_key = key_in(&out, "wk_");
    assert_ne!(new_key, "wk_test_shop_000000000");
    let (ok, out) = run(dir.path(), &["sites", "keys", "shop"]).await;
    assert!(
        ok && out.contains(&new_key) && !out.contains("wk_test_shop_000000000"),
        "{out}"
    );
    let (_, blog) = run(dir.path(), &["sites", "keys", "blog"]).await;
    let blog_read = key_in(&blog, "rk_");

    // The edited file runs: the new key sends, the old one is refused, and
    // the blog's pages (and only those) may use the tracker for it.
    let mut up = beacon(dir.path());
    up.args(["up"]);
    let (mut child, line) = spawn_until(up, "collector  http://").await;
    let url = url_in(&line);
    let event = json!({"id": "k-1", "name": "signup", "user_id": "u-1"});
    let bearer = |key: &str| format!("Bearer {key}");
    let (status, answer) = post(
        &format!("{url}/api/v1/events"),
        &[("authorization", &bearer(&new_key))],
        event.clone(),
    )
    .await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(1)),
        "{answer}"
    );
    let (status, _) = post(
        &format!("{url}/api/v1/events"),
        &[("authorization", &bearer("wk_test_shop_000000000"))],
        event,
    )
    .await;
    assert_eq!(status, 401);
    let view = json!({"site": "blog", "events": [{"id": "b-1", "name": "pageview", "url": "https://blog.example/"}]});
    let track = format!("{url}/api/v1/track");
    let (status, answer) = post(&track, &[("origin", "https://blog.example")], view.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post(&track, &[("origin", "https://shop.example")], view).await;
    assert_eq!(status, 400);
    // The blog's new read key reads its numbers.
    let summary = format!("{url}/api/v1/sites/blog/summary?from=-1h&metrics=pageviews");
    let mut counted = false;
    for _ in 0..100 {
        let answer: Value = reqwest::Client::new()
            .get(&summary)
            .header("authorization", bearer(&blog_read))
            .send()
            .await
            .expect("answer")
            .json()
            .await
            .expect("json");
        if answer["metrics"]["pageviews"]["value"] == 1 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(counted, "the tracker's page view was counted for the blog");
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("beacon stops")
        .expect("exit status");
    assert!(status.success());
}

#[tokio::test]
async fn the_first_start_says_how_to_name_a_domain_and_takes_any_meanwhile() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = beacon(dir.path())
        .args(["up", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("beacon starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Press Ctrl-C") {
                return;
            }
        }
    })
    .await
    .expect("the banner within 120 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = url_in(
        banner
            .lines()
            .find(|l| l.contains("collector  http://"))
            .expect("collector line"),
    );
    assert!(
        banner.contains(&format!(
            "<script defer data-site=\"default\" src=\"{url}/js/beacon.js\"></script>"
        )),
        "{banner}"
    );
    assert!(
        banner.contains("beacon sites add default --domain example.com"),
        "{banner}"
    );
    // A Plausible event for a domain nobody configured is counted for the default site.
    let (status, answer) = post(
        &format!("{url}/api/event"),
        &[("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")],
        json!({"name": "pageview", "url": "https://anything.example/", "domain": "anything.example"}),
    )
    .await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (202, json!(1)),
        "{answer}"
    );
    sigterm(&child);
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
}
