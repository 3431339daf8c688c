//! The command line: raw flags, turned into config overrides and commands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Overrides};
use crate::services::{self, Roles};

#[derive(Debug, Parser)]
#[command(
    name = "beacon",
    version,
    about = "Real-time event analytics on NATS JetStream"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Config file (default: ./beacon.toml, else <data-dir>/beacon.toml).
    #[arg(long, global = true, env = "BEACON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory for the local NATS store and generated config.
    #[arg(long, global = true, env = "BEACON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// NATS server URL(s), comma-separated; with none, `up` starts a local server.
    #[arg(
        long = "nats-url",
        global = true,
        env = "BEACON_NATS_URL",
        value_delimiter = ','
    )]
    pub nats_urls: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service in one process, with a local nats-server unless --nats-url is given.
    Up {
        /// Collector address (default 127.0.0.1:8080).
        #[arg(long, env = "BEACON_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Run the HTTP collector alone, against a given NATS.
    Collector {
        #[arg(long, env = "BEACON_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Run the normalizer alone (raw events on beacon.ingest.<site> → BEACON_EVENTS).
    Normalizer,
    /// Run an aggregator: own a share of the partitions and keep their rollups.
    Aggregator {
        /// Serve /healthz, /readyz and /metrics here (default: no listener).
        #[arg(long, env = "BEACON_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Run a query node: the HTTP query API, the NATS query service and live streams.
    Query {
        /// API address (default query.listen, 127.0.0.1:8081).
        #[arg(long, env = "BEACON_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Run the actions service: event and metric rules, scheduled reports, and
    /// the workers that deliver webhooks and e-mail (or, with a subcommand,
    /// manage its jobs).
    #[command(args_conflicts_with_subcommands = true)]
    Actions {
        #[command(subcommand)]
        command: Option<ActionsCommand>,
        /// Serve /healthz, /readyz and /metrics here (default: no listener).
        #[arg(long, env = "BEACON_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Send one event to a collector.
    Send(crate::send::SendArgs),
    /// Send realistic traffic (visits, funnels, purchases) and write its ground truth.
    Simulate(crate::simulate::SimulateArgs),
    /// Compare Beacon's answers with a ground-truth file from `simulate --truth`.
    Verify(crate::verify::VerifyArgs),
    /// Rebuild the rollups from BEACON_EVENTS into a new generation beside live
    /// ingest, then switch query nodes and aggregators over to it.
    Replay(crate::replay::ReplayArgs),
    /// Add sites and domains, list them, show and rotate keys (edits the config file).
    Sites(crate::sites::SitesArgs),
    /// Write one site's events of a time range (from the event store) as
    /// Parquet, NDJSON or CSV.
    Export(crate::export::ExportArgs),
    /// Show the NATS server, Beacon's streams and consumers.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput, freshness and query latency on this machine (every
    /// stage in one run, or one stage).
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        stage: Option<crate::bench::Stage>,
        #[command(flatten)]
        all: crate::bench::AllArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// Put every dead-letter job back on the queue (after fixing its receiver).
    ReplayDead,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = |listen: Option<SocketAddr>| Overrides {
        config: cli.global.config.clone(),
        data_dir: cli.global.data_dir.clone(),
        nats_urls: cli.global.nats_urls.clone(),
        listen,
    };
    let load = |o: &Overrides| config::load(o).map_err(anyhow::Error::msg);
    match cli.command {
        Command::Up { listen } => crate::up::run(overrides(listen)).await,
        Command::Collector { listen } => {
            let roles = Roles {
                collector: true,
                ..Roles::NONE
            };
            serve(load(&overrides(listen))?.config, roles, None).await
        }
        Command::Normalizer => {
            let roles = Roles {
                normalizer: true,
                ..Roles::NONE
            };
            serve(load(&overrides(None))?.config, roles, None).await
        }
        Command::Aggregator { listen } => {
            let roles = Roles {
                aggregator: true,
                ..Roles::NONE
            };
            serve(load(&overrides(None))?.config, roles, listen).await
        }
        Command::Query { listen } => {
            let roles = Roles {
                query: true,
                ..Roles::NONE
            };
            let config = load(&overrides(None))?.config;
            let listen = listen.unwrap_or(config.query.listen);
            serve(config, roles, Some(listen)).await
        }
        Command::Actions {
            command: None,
            listen,
        } => {
            let roles = Roles {
                actions: true,
                ..Roles::NONE
            };
            serve(load(&overrides(None))?.config, roles, listen).await
        }
        Command::Actions {
            command: Some(ActionsCommand::ReplayDead),
            ..
        } => crate::status::replay_dead(load(&overrides(None))?.config).await,
        Command::Send(args) => crate::send::run(load(&overrides(None))?.config, args).await,
        Command::Simulate(args) => crate::simulate::run(load(&overrides(None))?.config, args).await,
        Command::Verify(args) => crate::verify::run(load(&overrides(None))?.config, args).await,
        Command::Replay(args) => crate::replay::run(load(&overrides(None))?.config, args).await,
        Command::Sites(args) => crate::sites::run(&overrides(None), args),
        Command::Export(args) => crate::export::run(load(&overrides(None))?.config, args).await,
        Command::Status { json } => crate::status::run(load(&overrides(None))?.config, json).await,
        Command::Bench { stage, all } => {
            // A configuration that does not load only loses its server binary:
            // the benchmarks use nothing else of it.
            let target = crate::bench::Target {
                urls: cli.global.nats_urls.clone(),
                server_binary: load(&overrides(None))
                    .ok()
                    .and_then(|l| l.config.nats.server_binary),
            };
            crate::bench::run(stage, all, &target).await
        }
    }
}

/// Run services against an existing NATS until Ctrl-C or SIGTERM.
async fn serve(
    config: config::Config,
    roles: Roles,
    ops_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    if config.nats.urls.is_empty() {
        anyhow::bail!(
            "no NATS to connect to: pass --nats-url, set BEACON_NATS_URL, or set nats.urls in the config (or use `beacon up`)"
        );
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = services::start(&config, roles, ops_listen, shutdown).await?;
    if let Some(addr) = running.collector_addr {
        println!("collector listening on http://{addr}");
    }
    if roles.normalizer {
        println!("normalizer consuming {}", beacon_nats::INGEST_STREAM);
    }
    if roles.aggregator {
        println!(
            "aggregator sharing {} partitions of {}",
            config.streams.partitions,
            beacon_nats::EVENTS_STREAM
        );
    }
    if roles.actions {
        println!(
            "actions running {} rules, delivering jobs from {}",
            config.actions.rules.len(),
            beacon_actions::ACTIONS_STREAM
        );
    }
    if let Some(addr) = running.ops_addr {
        if roles.query {
            println!("query API on http://{addr}/api/v1/ (NATS service beacon-query)");
            println!("dashboard on http://{addr}/");
        }
        println!("metrics on http://{addr}/metrics");
    }
    running.run_until(stop, services::signal()).await
}
