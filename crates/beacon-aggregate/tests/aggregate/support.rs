//! A test nats-server with Beacon's streams, in-process aggregators, and
//! reading the committed rollups back.

use std::time::Duration;

use async_nats::jetstream;
use beacon_aggregate::AggregatorSettings;
use beacon_rollup::{Retention, View};
use beacon_testing::TestServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const PARTITIONS: u32 = 8;

pub struct Setup {
    pub nats: TestServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

pub async fn setup() -> Setup {
    let nats = TestServer::start().await;
    let (client, js) = nats.provisioned(PARTITIONS).await;
    Setup { nats, client, js }
}

/// Fast commits and leases; minute buckets kept for a month so data spread over
/// days is counted at every granularity.
pub fn settings() -> AggregatorSettings {
    AggregatorSettings {
        commit_interval: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(3),
        retention: Retention {
            minute: Duration::from_secs(40 * 86_400),
            ..Retention::default()
        },
        ..AggregatorSettings::default()
    }
}

/// An aggregator running in this process until the sender is set to true.
pub struct Running {
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<Result<(), beacon_aggregate::AggregateError>>,
}

pub fn aggregator(client: &async_nats::Client, settings: AggregatorSettings) -> Running {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(beacon_aggregate::run(
        client.clone(),
        settings,
        store_settings(),
        PARTITIONS,
        1,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    Running { stop, task }
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.send(true).expect("running");
        self.task.await.expect("joined").expect("clean stop");
    }
}

/// Wait (bounded) until every partition has committed all of its events.
pub async fn wait_committed(js: &jetstream::Context, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let behind: Vec<_> = beacon_aggregate::progress(js, PARTITIONS)
            .await
            .expect("progress")
            .into_iter()
            .filter(|p| p.lag() > 0)
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions still behind: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every partition's committed state, loaded as a new owner would.
pub async fn view(js: &jetstream::Context) -> View {
    beacon_aggregate::view(js, PARTITIONS).await.expect("view")
}

/// Small segments flushed often, merged three at a time: a test's few
/// thousand events make several segments and several merges.
pub fn store_settings() -> beacon_aggregate::StoreSettings {
    beacon_aggregate::StoreSettings {
        flush_rows: 1_000,
        flush_interval: Duration::from_secs(1),
        compaction_fan_in: 3,
        ..beacon_aggregate::StoreSettings::default()
    }
}
