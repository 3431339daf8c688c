//! The NATS-native path: plain NATS publishes become canonical events; poison
//! messages end in rejects instead of looping.

use beacon_nats::{INGEST_STREAM, StreamSettings};
use beacon_testing::TestServer;
use serde_json::json;

use super::support::{self, Setup, events, eventually, reject_reasons};

async fn ingest_settled(js: &async_nats::jetstream::Context) -> bool {
    let Ok(stream) = js.get_stream(INGEST_STREAM).await else {
        return false;
    };
    let Ok(mut consumer) = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("beacon-normalizer")
        .await
    else {
        return false;
    };
    consumer
        .info()
        .await
        .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
}

#[tokio::test]
async fn a_plain_nats_publish_arrives_normalized() {
    let nats = TestServer::start().await;
    let svc = support::start(
        &nats,
        Setup {
            streams: StreamSettings {
                partitions: 4,
                ..StreamSettings::default()
            },
            ..Setup::default()
        },
    )
    .await;
    // Any NATS client: core publish to the subject, no Beacon code.
    let client = nats.client().await;
    let event = json!({"name": "login", "user_id": "u-9", "props": {"path": "/account"},
        "context": {"user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                    "referrer": "https://www.bing.com/search?q=x"}});
    client
        .publish("beacon.ingest.shop", event.to_string().into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    eventually("the event is in BEACON_EVENTS", || async {
        events(&svc.js).await.len() == 1
    })
    .await;
    let stored = &events(&svc.js).await[0];
    assert_eq!(stored["site"], "shop");
    assert_eq!(stored["name"], "login");
    assert_eq!(
        stored["partition"],
        json!(beacon_core::partition_of("shop", "u-9", 4))
    );
    assert_eq!(stored["context"]["device"], "mobile");
    assert_eq!(stored["context"]["referrer_source"], "Bing");
    assert_eq!(stored["context"]["path"], "/account");
    assert!(
        stored["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("ingest-")),
        "{stored}"
    );
    eventually("the ingest message is acknowledged", || {
        ingest_settled(&svc.js)
    })
    .await;
    svc.shutdown().await;
}

#[tokio::test]
async fn poison_messages_end_in_rejects_not_in_a_loop() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let js = async_nats::jetstream::new(nats.client().await);
    let publish = |subject: &'static str, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, payload.into())
                .await
                .expect("publish")
                .await
                .expect("stored")
        }
    };
    publish("beacon.ingest.shop", b"{not json".to_vec()).await;
    publish(
        "beacon.ingest.nosuchsite",
        json!({"name": "x", "user_id": "u"})
            .to_string()
            .into_bytes(),
    )
    .await;
    publish(
        "beacon.ingest.shop",
        json!([{"name": "ok", "user_id": "u", "id": "n-1"}, {"name": 7, "user_id": "u"}])
            .to_string()
            .into_bytes(),
    )
    .await;

    eventually("every ingest message is settled", || {
        ingest_settled(&svc.js)
    })
    .await;
    eventually("three rejects are recorded", || async {
        reject_reasons(&svc.js).await.len() == 3
    })
    .await;
    let mut reasons = reject_reasons(&svc.js).await;
    reasons.sort();
    assert_eq!(reasons, ["invalid_name", "malformed_json", "unknown_site"]);
    let ids: Vec<_> = events(&svc.js)
        .await
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("n-1")]);
    // Nothing is redelivered afterwards: the counts stay put.
    let consumer_info = svc
        .js
        .get_stream(INGEST_STREAM)
        .await
        .expect("stream")
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("beacon-normalizer")
        .await
        .expect("consumer")
        .info()
        .await
        .expect("info")
        .clone();
    assert_eq!(consumer_info.num_redelivered, 0);
    svc.shutdown().await;
}
