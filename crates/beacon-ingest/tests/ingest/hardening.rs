//! Bad input gets a clear answer and never crashes the collector (issue 12):
//! the corpus in `tests/corpus/` replayed with its expected outcomes, panics
//! answered 500 with a JSON reason, and `X-Forwarded-For` believed only from
//! trusted proxies.

use std::io::Write;

use beacon_testing::TestServer;
use flate2::{Compression, write::GzEncoder};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::support::{self, SHOP_KEY, Setup, events, reject_reasons};

/// One input of the corpus and what it must get.
#[derive(Debug, Deserialize)]
struct Case {
    why: String,
    path: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// The body; `$SHOP_KEY` stands for the test site's write key.
    #[serde(default)]
    body: String,
    /// Instead of `body`: gzip members, concatenated.
    #[serde(default)]
    gzip_members: Vec<String>,
    status: u16,
    /// The reason the answer names and a reject records.
    reason: Option<String>,
    /// Events stored from it.
    accepted: Option<usize>,
}

impl Case {
    fn body(&self) -> Vec<u8> {
        if self.gzip_members.is_empty() {
            return self.body.replace("$SHOP_KEY", SHOP_KEY).into_bytes();
        }
        let mut out = Vec::new();
        for member in &self.gzip_members {
            let mut gz = GzEncoder::new(Vec::new(), Compression::default());
            gz.write_all(member.as_bytes()).expect("compress");
            out.extend(gz.finish().expect("compress"));
        }
        out
    }
}

fn corpus() -> Vec<(String, Case)> {
    beacon_testing::corpus(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus"))
}

#[tokio::test]
async fn the_corpus_gets_its_answers_and_rejects() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let mut stored = 0;
    for (file, case) in corpus() {
        let headers: Vec<(String, String)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("$SHOP_KEY", SHOP_KEY)))
            .collect();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, answer) = svc
            .send(Method::POST, &case.path, &headers, case.body())
            .await;
        assert_eq!(status, case.status, "{file} ({}): {answer}", case.why);
        if let Some(reason) = &case.reason {
            assert!(
                answer.to_string().contains(&format!("\"{reason}\"")),
                "{file}: the answer names {reason}: {answer}"
            );
            let kept = reject_reasons(&svc.js).await;
            assert!(
                kept.contains(reason),
                "{file}: no {reason} reject in {kept:?}"
            );
        }
        if let Some(accepted) = case.accepted {
            stored += accepted;
            assert_eq!(events(&svc.js).await.len(), stored, "{file}: {answer}");
        }
    }
    // Still serving.
    let (status, _) = svc
        .post(json!({"name": "after", "user_id": "u"}).to_string())
        .await;
    assert_eq!(status, 200);
    svc.shutdown().await;
}

#[tokio::test]
async fn a_panic_is_answered_500_with_a_json_reason_and_the_collector_keeps_serving() {
    let nats = TestServer::start().await;
    let setup = Setup {
        // A route whose handler has a bug, served beside the collector's the
        // way the query API is.
        extra: axum::Router::new().route(
            "/bug",
            axum::routing::get(|| async {
                let numbers: Vec<u32> = Vec::new();
                numbers[0].to_string()
            }),
        ),
        ..Setup::default()
    };
    let svc = support::start(&nats, setup).await;
    let (status, answer) = svc.send(Method::GET, "/bug", &[], "").await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["reason"], "internal_error", "{answer}");
    let (status, _) = svc
        .post(json!({"name": "x", "user_id": "u"}).to_string())
        .await;
    assert_eq!(status, 200);
    svc.shutdown().await;
}

/// The address stored for an event sent from this test (peer 127.0.0.1) with
/// `X-Forwarded-For: 203.0.113.9`, and the Plausible visitor ids of two such
/// requests claiming different addresses.
async fn seen_address(trusted: &[&str]) -> (Value, Value, Value) {
    let nats = TestServer::start().await;
    let mut setup = Setup::default();
    setup.limits.keep_ip = true;
    setup.collector.trusted_proxies = trusted.iter().map(|t| (*t).to_owned()).collect();
    let svc = support::start(&nats, setup).await;
    let (status, answer) = svc
        .post_with(
            SHOP_KEY,
            &[("x-forwarded-for", "203.0.113.9")],
            json!({"id": "n1", "name": "x", "user_id": "u"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    for (id, ip) in [("p1", "198.51.100.1"), ("p2", "198.51.100.2")] {
        let body = json!({"name": "pageview", "url": format!("https://shop.example/{id}"), "domain": "shop.example"});
        let (status, answer) = svc
            .send(
                Method::POST,
                "/api/event",
                &[
                    ("x-forwarded-for", ip),
                    (
                        "user-agent",
                        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                    ),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    let stored = events(&svc.js).await;
    let by_path = |p: &str| {
        stored
            .iter()
            .find(|e| e["context"]["path"] == p)
            .map(|e| e["anonymous_id"].clone())
            .unwrap_or_default()
    };
    let native = support::only(&stored, "n1")["context"]["ip"].clone();
    let (a, b) = (by_path("/p1"), by_path("/p2"));
    svc.shutdown().await;
    (native, a, b)
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // No proxy trusted (the default): the socket peer is the client, whatever the header says.
    let (ip, a, b) = seen_address(&[]).await;
    assert_eq!(ip, "127.0.0.1");
    assert!(a.is_string());
    assert_eq!(a, b, "a client cannot pick its own visitor id");
    // Behind a trusted proxy, its X-Forwarded-For names the client.
    let (ip, a, b) = seen_address(&["127.0.0.0/8"]).await;
    assert_eq!(ip, "203.0.113.9");
    assert_ne!(a, b, "two clients behind the proxy are two visitors");
}
