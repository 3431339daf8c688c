//! Wiring services together: connect, check the server, provision streams, then
//! run the chosen services until shutdown. `up`, `collector` and `normalizer`
//! all start services through here, and so do the tests.

use std::collections::HashSet;
use std::future::Future;

use anyhow::Context as _;
use beacon_ingest::collector::Collector;
use beacon_ingest::ops::Gate;
use beacon_ingest::{Pipeline, run_collector, run_normalizer};
use beacon_nats::{Publisher, check_server, connect, provision};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;

/// Which services this process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub collector: bool,
    pub normalizer: bool,
    pub aggregator: bool,
    pub query: bool,
    pub actions: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        collector: true,
        normalizer: true,
        aggregator: true,
        query: true,
        actions: true,
    };
    pub const NONE: Roles = Roles {
        collector: false,
        normalizer: false,
        aggregator: false,
        query: false,
        actions: false,
    };
}

/// Services started and running.
#[derive(Debug)]
pub struct Running {
    pub collector_addr: Option<std::net::SocketAddr>,
    /// Where `/metrics` (and the query API, with the query role) is served
    /// when there is no collector.
    pub ops_addr: Option<std::net::SocketAddr>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Run until `until` resolves or a service stops on its own (a failure), then
    /// signal every service to stop, wait for them to finish their in-flight
    /// work, and return the first failure.
    pub async fn run_until(
        mut self,
        stop: watch::Sender<bool>,
        until: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut result = Ok(());
        tokio::select! {
            _ = until => tracing::info!("shutting down: finishing in-flight work"),
            Some(joined) = self.tasks.join_next() => {
                result = flatten(joined);
                tracing::error!("a service stopped on its own; shutting down the others");
            }
        }
        let _ = stop.send(true);
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = flatten(joined);
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    joined.context("a service panicked").and_then(|r| r)
}

/// Connect to the configured NATS, check it, provision, and start `roles`.
/// `ops_listen` serves `/healthz`, `/readyz` and `/metrics` for a process
/// without a collector (whose listener has them already), and the query API
/// when the process is a query node. With a collector, the query API shares
/// its listener.
pub async fn start(
    config: &Config,
    roles: Roles,
    ops_listen: Option<std::net::SocketAddr>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Running> {
    let client = connect(&config.nats, "beacon").await?;
    check_server(&client).await?;
    let publisher = Publisher::new(client.clone(), config.publish);
    let report = provision(publisher.jetstream(), &config.streams).await?;
    for line in &report.lines {
        tracing::info!("{line}");
    }
    let line = beacon_actions::provision(publisher.jetstream(), &config.streams).await?;
    tracing::info!("{line}");
    let mut pipeline = Pipeline::new(publisher, config.limits.clone());
    if roles.collector || roles.normalizer {
        pipeline =
            pipeline.with_enricher(beacon_ingest::enrich::load(&config.enrich, &config.sites));
    }
    let mut tasks = JoinSet::new();
    let mut gates = Vec::new();
    let mut api = axum::Router::new();
    if roles.query {
        let node = beacon_query::QueryNode::new(
            client.clone(),
            &config.sites,
            config.streams.partitions,
            shutdown.clone(),
        )
        .with_session_timeout(config.aggregator.session_timeout)
        .with_store(&config.query_settings())
        .context("cannot open the segment cache (query.segment_cache.dir)")?;
        let ready = node.clone();
        gates.push(Gate::new("rollups", move || ready.is_ready()));
        api = beacon_query::http::router(node.clone());
        tasks.spawn(async move { node.run().await.context("query node failed") });
    }
    if roles.actions {
        let js = async_nats::jetstream::new(client.clone());
        let bucket = beacon_actions::store::open(&js, config.streams.replicas)
            .await
            .context("cannot open the action rules bucket")?;
        let rules = beacon_actions::api::RulesApi::new(bucket, &config.actions, &config.sites);
        api = api.merge(beacon_actions::api::router(rules));
    }
    let mut collector_addr = None;
    if roles.collector {
        let listen = config.collector.listen;
        let listener = TcpListener::bind(listen).await.with_context(|| {
            format!(
                "cannot listen on {listen} (collector.listen, --listen or BEACON_COLLECTOR__LISTEN)"
            )
        })?;
        collector_addr = Some(listener.local_addr()?);
        let collector = Collector::new(
            pipeline.clone(),
            client.clone(),
            config.collector.clone(),
            &config.sites,
            config.streams.partitions,
        );
        let collector = gates.iter().cloned().fold(collector, Collector::with_gate);
        let (stop, api) = (stopped(shutdown.clone()), std::mem::take(&mut api));
        tasks.spawn(async move {
            run_collector(collector, api, listener, stop)
                .await
                .context("collector failed")
        });
    }
    if roles.normalizer {
        let sites: HashSet<String> = config.sites.iter().map(|s| s.id.clone()).collect();
        let (partitions, settings) = (config.streams.partitions, config.normalizer.clone());
        let stop = stopped(shutdown.clone());
        tasks.spawn(async move {
            run_normalizer(pipeline, sites, partitions, settings, stop)
                .await
                .context("normalizer failed")
        });
    }
    if roles.aggregator {
        let (settings, store) = (config.aggregator.clone(), config.store.clone());
        let (client, partitions, replicas) = (
            client.clone(),
            config.streams.partitions,
            config.streams.replicas,
        );
        let stop = stopped(shutdown.clone());
        tasks.spawn(async move {
            beacon_aggregate::run(client, settings, store, partitions, replicas, stop)
                .await
                .context("aggregator failed")
        });
    }
    if roles.actions {
        let (client, settings, sites) =
            (client.clone(), config.actions.clone(), config.sites.clone());
        let (replicas, shutdown) = (config.streams.replicas, shutdown.clone());
        tasks.spawn(async move {
            beacon_actions::run(client, settings, &sites, replicas, shutdown)
                .await
                .context("actions failed")
        });
    }
    let mut ops_addr = None;
    if let Some(listen) = ops_listen.filter(|_| !roles.collector) {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
        ops_addr = Some(listener.local_addr()?);
        let (client, stop) = (client.clone(), stopped(shutdown.clone()));
        let header_read_timeout = config.collector.header_read_timeout;
        tasks.spawn(async move {
            beacon_ingest::ops::serve(client, gates, api, listener, header_read_timeout, stop)
                .await
                .context("metrics listener failed")
        });
    }
    Ok(Running {
        collector_addr,
        ops_addr,
        tasks,
    })
}

/// A future that resolves when shutdown is signalled (or the sender is gone).
pub async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Resolves on Ctrl-C or SIGTERM.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    // Installed now, not when the future is first polled: a signal that
    // arrives in between (say, right after `up` prints its banner) must stop
    // Beacon cleanly rather than kill it by the default action.
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt()).and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
    };
    async move {
        #[cfg(unix)]
        if let Ok((mut int, mut term)) = handlers {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
