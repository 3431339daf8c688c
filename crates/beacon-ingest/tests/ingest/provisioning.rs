//! Stream provisioning: idempotent, applies what JetStream can change, refuses what it cannot.

use std::time::Duration;

use beacon_nats::{EVENTS_STREAM, ProvisionError, StreamSettings, provision};
use beacon_testing::TestServer;

#[tokio::test]
async fn provisioning_is_idempotent_and_reports_changes() {
    let nats = TestServer::start().await;
    let js = async_nats::jetstream::new(nats.client().await);
    let settings = StreamSettings::default();

    let first = provision(&js, &settings).await.expect("created");
    assert_eq!(
        first.lines,
        [
            "BEACON_EVENTS: created",
            "BEACON_INGEST: created",
            "BEACON_REJECTS: created",
            "BEACON_REJECTS_UNAUTH: created",
            "BEACON_ROLLUPS: created",
            "KV_BEACON_STORE: created",
            "OBJ_BEACON_SEGMENTS: created",
            "KV_BEACON_GOALS: created",
            "KV_BEACON_FUNNELS: created"
        ]
    );
    let second = provision(&js, &settings).await.expect("unchanged");
    assert_eq!(
        second.lines,
        [
            "BEACON_EVENTS: up to date",
            "BEACON_INGEST: up to date",
            "BEACON_REJECTS: up to date",
            "BEACON_REJECTS_UNAUTH: up to date",
            "BEACON_ROLLUPS: up to date",
            "KV_BEACON_STORE: up to date",
            "OBJ_BEACON_SEGMENTS: up to date",
            "KV_BEACON_GOALS: up to date",
            "KV_BEACON_FUNNELS: up to date"
        ]
    );

    let shorter = StreamSettings {
        events_max_age: Duration::from_secs(7 * 86_400),
        ..settings.clone()
    };
    let third = provision(&js, &shorter).await.expect("updated");
    assert_eq!(
        third.lines[0],
        "BEACON_EVENTS: updated max_age 30days → 7days"
    );
    let info = js
        .get_stream(EVENTS_STREAM)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    assert_eq!(info.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(info.duplicate_window, Duration::from_secs(600));
    // The event store's buckets are usable as what they are.
    let kv = js
        .get_key_value("BEACON_STORE")
        .await
        .expect("manifest bucket");
    assert_eq!(kv.create("p0", "{}".into()).await.expect("create"), 1);
    js.get_object_store("BEACON_SEGMENTS")
        .await
        .expect("segment bucket");

    let repartitioned = StreamSettings {
        partitions: 32,
        ..shorter
    };
    let err = provision(&js, &repartitioned)
        .await
        .expect_err("partitions cannot change");
    assert!(matches!(err, ProvisionError::PartitionsChanged { .. }));
    assert!(
        err.to_string().contains("created with 16 partitions"),
        "{err}"
    );
}
