//! The rules API: keys, checks, secrets kept out of answers, and a rule made
//! through it firing on the running service without a restart.

use beacon_actions::api::{RulesApi, router};
use beacon_actions::matcher::MATCHER_CONSUMER;
use beacon_core::Secret;
use serde_json::{Value, json};

use super::events::publish_event;
use super::support::{
    RULE_KEY, Receiver, SECRET, Service, consumer_exists, server, settings, site,
};

#[tokio::test]
async fn a_rule_made_through_the_api_is_checked_kept_and_fires() {
    let (server, _client, js) = server().await;
    let receiver = Receiver::start().await;
    let mut config = settings(vec![]);
    config
        .rule_keys
        .insert("shop".into(), vec![Secret::new(RULE_KEY)]);
    let service = Service::start(&server, config.clone()).await;
    let bucket = beacon_actions::store::open(&js, 1).await.expect("bucket");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!(
        "http://{}/api/v1/sites",
        listener.local_addr().expect("addr")
    );
    let app = router(RulesApi::new(bucket, &config, &[site()]));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let read_key = site().read_keys[0].expose().to_owned();

    let status = |r: reqwest::Response| r.status().as_u16();
    let list = http
        .get(format!("{base}/shop/rules"))
        .send()
        .await
        .expect("answer");
    assert_eq!(status(list), 401);
    let list = http
        .get(format!("{base}/shop/rules"))
        .bearer_auth(&read_key)
        .send()
        .await
        .expect("answer");
    assert_eq!(
        list.json::<Value>().await.expect("JSON"),
        json!({"rules": []})
    );
    let nosite = http
        .get(format!("{base}/blog/rules"))
        .bearer_auth(&read_key)
        .send()
        .await
        .expect("answer");
    assert_eq!(status(nosite), 404);

    let rule = json!({
        "kind": "event", "event": "signup",
        "webhook": format!("{}?token=abc", receiver.url), "secret": SECRET,
    });
    let url = format!("{base}/shop/rules/signups");
    let as_reader = http
        .put(&url)
        .bearer_auth(&read_key)
        .json(&rule)
        .send()
        .await;
    assert_eq!(status(as_reader.expect("answer")), 403);
    let invalid = http
        .put(&url)
        .bearer_auth(RULE_KEY)
        .json(&json!({"kind": "threshold", "webhook": receiver.url, "secret": SECRET}))
        .send()
        .await
        .expect("answer");
    assert_eq!(invalid.status().as_u16(), 400);
    let message = invalid.json::<Value>().await.expect("JSON")["error"].to_string();
    assert!(message.contains("window is required"), "{message}");
    let made = http
        .put(&url)
        .bearer_auth(RULE_KEY)
        .json(&rule)
        .send()
        .await
        .expect("answer");
    assert_eq!(made.status().as_u16(), 200);

    // Listed without its secret or its webhook's token.
    let listed = http
        .get(format!("{base}/shop/rules"))
        .bearer_auth(&read_key)
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("body");
    assert!(
        listed.contains("\"signups\"") && listed.contains("\"(set)\""),
        "{listed}"
    );
    assert!(
        !listed.contains(SECRET) && !listed.contains("token"),
        "{listed}"
    );

    // The running service picks it up and acts on it.
    consumer_exists(&js, beacon_nats::EVENTS_STREAM, MATCHER_CONSUMER).await;
    publish_event(&js, "e-signup-api", "signup", "free").await;
    let got = receiver
        .wait_until("the API rule's webhook", |got| !got.is_empty())
        .await;
    assert_eq!(got[0].key, "signups/e-signup-api");

    let gone = http.delete(&url).bearer_auth(RULE_KEY).send().await;
    assert_eq!(status(gone.expect("answer")), 204);
    let again = http.delete(&url).bearer_auth(RULE_KEY).send().await;
    assert_eq!(status(again.expect("answer")), 404);
    service.stop().await.expect("clean stop");
}
