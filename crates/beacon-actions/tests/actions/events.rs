//! Event rules: a matching event, and only a matching one, triggers its
//! webhook once, signed, even with two copies of the service running.

use std::time::Duration;

use async_nats::HeaderMap;
use beacon_actions::matcher::MATCHER_CONSUMER;
use beacon_actions::signature::verify;

use super::support::{Receiver, SECRET, Service, consumer_exists, rule, server, settings};

pub(super) async fn publish_event(
    js: &async_nats::jetstream::Context,
    id: &str,
    name: &str,
    plan: &str,
) {
    let event = serde_json::json!({
        "id": id, "site": "shop", "name": name, "user_id": "u-1",
        "ts": chrono::Utc::now(), "received_at": chrono::Utc::now(), "partition": 1,
        "props": {"plan": plan},
    });
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("shop:{id}").as_str());
    js.publish_with_headers(
        format!("beacon.events.1.shop.{name}"),
        headers,
        event.to_string().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
}

#[tokio::test]
async fn a_matching_event_triggers_its_webhook_once_with_a_valid_signature() {
    let (server, _client, js) = server().await;
    let receiver = Receiver::start().await;
    let rules = vec![rule(&format!(
        "id = \"pro-purchase\"\nsite = \"shop\"\nkind = \"event\"\nevent = \"purchase\"\nwhere = {{ plan = \"pro\" }}\nwebhook = \"{}\"\nsecret = \"{SECRET}\"\n",
        receiver.url
    ))];
    // Two copies share the work.
    let first = Service::start(&server, settings(rules.clone())).await;
    let second = Service::start(&server, settings(rules)).await;
    consumer_exists(&js, beacon_nats::EVENTS_STREAM, MATCHER_CONSUMER).await;

    publish_event(&js, "e-free", "purchase", "free").await;
    publish_event(&js, "e-signup", "signup", "pro").await;
    publish_event(&js, "e-pro", "purchase", "pro").await;

    let got = receiver
        .wait_until("one delivery", |got| !got.is_empty())
        .await;
    // Time for any second delivery to show up (there must be none).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = {
        let all = receiver.received();
        assert_eq!(all.len(), 1, "exactly one delivery: {all:?}");
        assert_eq!(got[0].key, all[0].key);
        all
    };
    let request = &got[0];
    assert_eq!(request.key, "pro-purchase/e-pro");
    let signature = request.signature.as_deref().expect("signed");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        verify(signature, SECRET.as_bytes(), &request.body, now, 300),
        Ok(())
    );
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(body["id"], "pro-purchase/e-pro");
    assert_eq!(body["kind"], "event");
    assert_eq!(body["data"]["props"]["plan"], "pro");
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}
