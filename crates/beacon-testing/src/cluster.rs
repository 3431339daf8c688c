//! Three real nats-servers clustered on loopback with JetStream, for tests of
//! Beacon on a cluster: free ports, one temporary store per node, and a node
//! can be SIGKILLed and brought back on the same ports and store.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use beacon_nats::{ClusterOptions, LocalServer, NatsConfig, ServerOptions};
use tempfile::TempDir;

use crate::server_binary;

/// Nodes in a test cluster: the smallest JetStream quorum that survives one loss.
pub const NODES: usize = 3;

/// How long a cluster (or a node back from a crash) may take to be usable.
const SETTLE: Duration = Duration::from_secs(60);

/// A 3-node JetStream cluster for one test, killed and removed when dropped.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<LocalServer>,
    names: Vec<String>,
    _dir: TempDir,
}

/// `n` distinct free TCP ports on loopback. All are held until every one is
/// picked, so the same port is never handed out twice.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

impl TestCluster {
    /// Start three clustered servers and wait until JetStream can place
    /// streams with three replicas on them.
    pub async fn start() -> Self {
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let cluster_name = format!(
            "beacon-test-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("beacon-test-cluster-")
            .tempdir()
            .expect("temporary folder");
        let route_ports = free_ports(NODES);
        let binary = server_binary();
        let mut nodes = Vec::with_capacity(NODES);
        let mut names = Vec::with_capacity(NODES);
        for (i, port) in route_ports.iter().enumerate() {
            let name = format!("{cluster_name}-n{i}");
            let options = ServerOptions {
                server_name: name.clone(),
                cluster: Some(ClusterOptions {
                    name: cluster_name.clone(),
                    port: *port,
                    routes: route_ports.iter().copied().filter(|p| p != port).collect(),
                }),
                ..ServerOptions::default()
            };
            let store = dir.path().join(format!("n{i}"));
            let node = LocalServer::start_with(&binary, &store, 0, options)
                .await
                .unwrap_or_else(|e| panic!("cannot start cluster node {i}: {e}"));
            nodes.push(node);
            names.push(name);
        }
        let cluster = TestCluster {
            nodes,
            names,
            _dir: dir,
        };
        for i in 0..NODES {
            cluster.wait_for_jetstream(i).await;
        }
        cluster.wait_for_replicas().await;
        cluster
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalServer::url).collect()
    }

    /// One node's client URL.
    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    /// Node `node`'s server name, as stream info reports leaders and replicas.
    pub fn name(&self, node: usize) -> &str {
        &self.names[node]
    }

    /// The node whose server name is `name`.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Connection settings naming every node, as Beacon's services take them.
    pub fn nats_config(&self) -> NatsConfig {
        NatsConfig {
            urls: self.urls(),
            ..NatsConfig::default()
        }
    }

    /// A client that knows every node and moves to another when its node dies.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.urls())
            .await
            .expect("connect to the test cluster")
    }

    /// The node leading `stream` now, if it has a leader.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let js = async_nats::jetstream::new(self.client().await);
        let mut stream = js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.as_deref()?;
        self.node_named(leader)
    }

    /// Kill node `node` as a crash would (SIGKILL).
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Start node `node` again on its ports with its store, and wait until it
    /// is back in JetStream.
    pub async fn resume(&mut self, node: usize) {
        self.nodes[node]
            .resume()
            .await
            .unwrap_or_else(|e| panic!("cannot restart cluster node {node}: {e}"));
        self.wait_for_jetstream(node).await;
    }

    /// Wait (bounded) until `node` answers JetStream requests, which needs a
    /// meta leader the node knows.
    async fn wait_for_jetstream(&self, node: usize) {
        let url = self.url(node);
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let answered = async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(url.as_str())
                    .await
                    .ok()?;
                let js = async_nats::jetstream::new(client);
                tokio::time::timeout(Duration::from_secs(2), js.query_account())
                    .await
                    .ok()?
                    .ok()
            };
            if answered.await.is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster node {node} has no JetStream meta leader after {SETTLE:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait (bounded) until a stream with three replicas can be created: every
    /// peer has joined the meta group. The probe stream is removed again.
    async fn wait_for_replicas(&self) {
        let js = async_nats::jetstream::new(self.client().await);
        let deadline = tokio::time::Instant::now() + SETTLE;
        let probe = async_nats::jetstream::stream::Config {
            name: "BEACON_TEST_PROBE".to_owned(),
            subjects: vec!["beacon-test.probe".to_owned()],
            num_replicas: NODES,
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        loop {
            if js.create_stream(probe.clone()).await.is_ok() {
                let _ = js.delete_stream(&probe.name).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test cluster never accepted a stream with {NODES} replicas"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
