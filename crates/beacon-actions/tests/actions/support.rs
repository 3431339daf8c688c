//! What the actions tests share: a real nats-server with the streams, the
//! service running in the test, and the settings and rules they use.

use std::time::Duration;

use beacon_actions::{ActionsSettings, RuleConfig};
use beacon_core::{Secret, Site};
use beacon_testing::TestServer;
pub use beacon_testing::actions::Receiver;
use tokio::sync::watch;

pub const SECRET: &str = "whsec_test_0123456789";

pub fn site() -> Site {
    Site {
        id: "shop".into(),
        write_keys: vec![Secret::new("wk_test_shop_000000000")],
        read_keys: vec![Secret::new("rk_test_shop_000000000")],
        rate_limit: 0,
        rate_burst: 0,
        domains: vec![],
        keep_bots: false,
        manage_keys: vec![],
        goals: vec![],
    }
}

/// Quick retries and a short ack_wait, so a test sees several attempts.
pub fn settings(rules: Vec<RuleConfig>) -> ActionsSettings {
    ActionsSettings {
        max_attempts: 5,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        ack_wait: Duration::from_secs(2),
        webhook_timeout: Duration::from_secs(2),
        rules,
        ..ActionsSettings::default()
    }
}

/// A rule from TOML, as an operator writes it.
pub fn rule(toml_text: &str) -> RuleConfig {
    use figment::providers::{Format, Toml};
    figment::Figment::from(Toml::string(toml_text))
        .extract()
        .expect("rule TOML")
}

/// A nats-server with Beacon's streams and `BEACON_ACTIONS`.
pub async fn server() -> (
    TestServer,
    async_nats::Client,
    async_nats::jetstream::Context,
) {
    let server = TestServer::start().await;
    let (client, js) = server.provisioned(2).await;
    beacon_actions::provision(&js, &beacon_nats::StreamSettings::default())
        .await
        .expect("provision actions");
    (server, client, js)
}

/// The key that manages the test site's rules through the API.
pub const RULE_KEY: &str = "ak_test_shop_000000000";

/// One running copy of the service; stopped when dropped.
pub struct Service {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), beacon_actions::ActionsError>>,
}

impl Service {
    pub async fn start(server: &TestServer, settings: ActionsSettings) -> Service {
        let client = server.client().await;
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(async move {
            beacon_actions::run(client, settings, &[site()], 1, shutdown).await
        });
        Service { stop, task }
    }

    /// Stop and return how the service ended.
    pub async fn stop(self) -> Result<(), beacon_actions::ActionsError> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops in time")
            .expect("no panic")
    }
}

/// Wait (bounded) until a consumer exists on a stream.
pub async fn consumer_exists(js: &async_nats::jetstream::Context, stream: &str, name: &str) {
    for _ in 0..300 {
        if let Ok(s) = js.get_stream(stream).await
            && s.consumer_info(name).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("consumer {name} never appeared on {stream}");
}

/// Wait (bounded) until the job counts satisfy `done`.
pub async fn counts_until(
    js: &async_nats::jetstream::Context,
    what: &str,
    done: impl Fn(&beacon_actions::JobCounts) -> bool,
) -> beacon_actions::JobCounts {
    let mut last = None;
    for _ in 0..600 {
        let counts = beacon_actions::counts(js)
            .await
            .expect("counts")
            .expect("stream");
        if done(&counts) {
            return counts;
        }
        last = Some(counts);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job counts never showed {what}: {last:?}");
}
