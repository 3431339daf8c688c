//! Dev-only test harness: real `nats-server`s on free ports with temporary stores,
//! killed and cleaned up when dropped. Never a mock of NATS, never a fixed port.

pub mod actions;
pub mod cluster;
pub mod truth;

use std::path::PathBuf;

use beacon_nats::{LocalServer, NatsConfig, ServerOptions, find_server_binary};
use tempfile::TempDir;

pub use self::cluster::TestCluster;

/// A nats-server for one test. Its store lives in a temporary folder.
#[derive(Debug)]
pub struct TestServer {
    server: LocalServer,
    _dir: TempDir,
}

/// The nats-server binary tests use: `BEACON_TEST_NATS_SERVER`, else the same
/// search `beacon up` does (PATH, then the project's tools/ folder).
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BEACON_TEST_NATS_SERVER") {
        return PathBuf::from(path);
    }
    find_server_binary(None).unwrap_or_else(|e| {
        panic!("tests need a real nats-server: {e}\n(run scripts/test.sh, which installs the pinned one)")
    })
}

impl TestServer {
    /// Start a JetStream-enabled server on a free port.
    pub async fn start() -> Self {
        Self::start_with(&server_binary(), ServerOptions::default()).await
    }

    /// Start a given binary with options (no JetStream, credentials required, …).
    pub async fn start_with(binary: &std::path::Path, options: ServerOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("beacon-test-nats-")
            .tempdir()
            .expect("temporary folder");
        let server = LocalServer::start_with(binary, dir.path(), 0, options)
            .await
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        TestServer { server, _dir: dir }
    }

    /// A folder that lives as long as the server, for files a test hands it.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Connection settings for Beacon's services.
    pub fn nats_config(&self) -> NatsConfig {
        NatsConfig {
            urls: vec![self.url()],
            ..NatsConfig::default()
        }
    }

    /// A client and JetStream context on this server, with Beacon's streams
    /// provisioned for `partitions` partitions.
    pub async fn provisioned(
        &self,
        partitions: u32,
    ) -> (async_nats::Client, async_nats::jetstream::Context) {
        let client = self.client().await;
        let js = async_nats::jetstream::new(client.clone());
        beacon_nats::provision(
            &js,
            &beacon_nats::StreamSettings {
                partitions,
                ..beacon_nats::StreamSettings::default()
            },
        )
        .await
        .expect("provision");
        (client, js)
    }

    /// A plain client, as any NATS user would have.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the test server")
    }

    /// Stop cleanly (SIGTERM); `resume` brings it back on the same port and store.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Kill as a crash would (SIGKILL).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Freeze the server (SIGSTOP): connections stay open and nothing is answered.
    pub fn pause(&self) {
        self.server.pause();
    }

    /// Let a paused server run again (SIGCONT).
    pub fn unpause(&self) {
        self.server.unpause();
    }

    pub async fn resume(&mut self) {
        self.server.resume().await.expect("restart the test server");
    }

    pub async fn restart(&mut self) {
        self.server
            .restart()
            .await
            .expect("restart the test server");
    }
}

/// Every case of a corpus folder: one JSON file per case, named by its path,
/// in file-name order. Panics (failing the test) on an unreadable case, and
/// on a folder holding fewer than ten.
pub fn corpus<T: serde::de::DeserializeOwned>(dir: &std::path::Path) -> Vec<(String, T)> {
    let mut cases: Vec<(String, T)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus folder {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("readable");
            let case =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), case)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        cases.len() >= 10,
        "the corpus in {} is missing",
        dir.display()
    );
    cases
}

/// Pause, on the server, every consumer of `stream` whose name starts with
/// `prefix`, for an hour. The server then stops feeding them while it still
/// answers their heartbeats: a stalled reader its client cannot tell from an
/// idle one. Returns the names paused (panics, failing the test, when one
/// cannot be).
pub async fn pause_consumers(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
) -> Vec<String> {
    use futures::TryStreamExt;
    let names: Vec<String> = js
        .get_stream(stream)
        .await
        .expect("stream")
        .consumer_names()
        .try_collect()
        .await
        .expect("consumer names");
    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut paused = Vec::new();
    for name in names.into_iter().filter(|n| n.starts_with(prefix)) {
        let answer: serde_json::Value = js
            .request(
                format!("CONSUMER.PAUSE.{stream}.{name}"),
                &serde_json::json!({ "pause_until": until.to_rfc3339() }),
            )
            .await
            .expect("pause request");
        assert_eq!(answer["paused"], true, "pausing {name}: {answer}");
        paused.push(name);
    }
    paused
}
