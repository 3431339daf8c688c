//! `beacon up`: every service in one process and, unless told a NATS URL, a
//! supervised local nats-server whose store lives in the data directory.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use beacon_core::Secret;
use beacon_nats::server::binary_version;
use beacon_nats::{LocalServer, find_server_binary};
use tokio::sync::{Mutex, watch};

use crate::config::{self, Overrides, write_starter_config};
use crate::services::{self, Roles};

/// File in the data directory naming the running local server, for `status`.
pub const NATS_URL_FILE: &str = "nats.url";

pub async fn run(overrides: Overrides) -> anyhow::Result<()> {
    let mut loaded = config::load(&overrides).map_err(anyhow::Error::msg)?;
    if loaded.config.sites.is_empty() && loaded.file.is_none() {
        let (path, _) = write_starter_config(&loaded.config.data_dir).with_context(|| {
            format!(
                "cannot write a starter config in {}",
                loaded.config.data_dir.display()
            )
        })?;
        println!(
            "First start: created site \"default\" with new keys in {}",
            path.display()
        );
        loaded = config::load(&Overrides {
            config: Some(path),
            ..overrides.clone()
        })
        .map_err(anyhow::Error::msg)?;
    }
    let mut config = loaded.config;
    let data_dir = config.data_dir.clone();

    let local = if config.nats.urls.is_empty() {
        let binary = find_server_binary(config.nats.server_binary.as_deref())?;
        let store = data_dir.join("nats");
        let server = LocalServer::start(&binary, &store, config.nats.server_port)
            .await
            .with_context(|| {
                format!("cannot start the local nats-server ({})", binary.display())
            })?;
        let version = binary_version(&binary).unwrap_or_default();
        config.nats.urls = vec![server.url()];
        std::fs::write(data_dir.join(NATS_URL_FILE), server.url())?;
        println!(
            "Started nats-server {version} on {} (store {})",
            server.url(),
            store.display()
        );
        Some(Arc::new(Mutex::new(server)))
    } else {
        None
    };

    let (stop, shutdown) = watch::channel(false);
    let running = services::start(&config, Roles::ALL, None, shutdown.clone()).await?;
    if let Some(server) = &local {
        tokio::spawn(supervise(server.clone(), shutdown));
    }
    let signal = services::signal();
    print_banner(
        &config,
        running.collector_addr,
        loaded
            .file
            .as_deref()
            .or(Some(&data_dir.join(config::CONFIG_FILE))),
    );

    let result = running.run_until(stop, signal).await;
    if let Some(server) = local {
        server.lock().await.stop().await;
        let _ = std::fs::remove_file(data_dir.join(NATS_URL_FILE));
        println!("Stopped the local nats-server.");
    }
    result
}

/// Restart the local server if it dies, on the same port and store, until shutdown.
async fn supervise(server: Arc<Mutex<LocalServer>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let mut server = server.lock().await;
        if *shutdown.borrow() || server.is_running() {
            continue;
        }
        tracing::warn!("the local nats-server exited; restarting it");
        if let Err(e) = server.resume().await {
            tracing::error!(error = %e, "cannot restart the local nats-server; retrying");
        }
    }
}

fn print_banner(
    config: &config::Config,
    collector: Option<std::net::SocketAddr>,
    file: Option<&std::path::Path>,
) {
    let Some(addr) = collector else { return };
    println!("\nBeacon is up.");
    println!("  dashboard  http://{addr}/   (sign in with a read key)");
    println!("  collector  http://{addr}/api/v1/events");
    println!(
        "  query API  http://{addr}/api/v1/   (OpenAPI: /api/v1/openapi.json; NATS service beacon-query)"
    );
    println!("  health     http://{addr}/readyz   metrics http://{addr}/metrics");
    println!(
        "  NATS       {}",
        beacon_nats::connect::printable_urls(&config.nats.urls)
    );
    println!(
        "  aggregator {} partitions (beacon status shows owners and lag)",
        config.streams.partitions
    );
    if let Some(file) = file {
        println!("  config     {}", file.display());
    }
    // Keys are secrets: the banner names them only enough to tell them apart.
    let short = |key: Option<&Secret>| key.map_or_else(|| "-".to_owned(), Secret::shortened);
    for site in &config.sites {
        println!(
            "  site {:<10} write key {}   read key {}",
            site.id,
            short(site.write_keys.first()),
            short(site.read_keys.first()),
        );
    }
    let Some(file) = file else { return };
    let file = file.display();
    println!("  (the full keys are in {file})");
    if let Some(site) = config.sites.first()
        && let Some(key) = site.write_keys.first()
    {
        let prefix: String = key.expose().chars().take(3).collect();
        println!("\nSend an event:");
        println!("  KEY=$(grep -o '{prefix}[0-9a-zA-Z_]*' {file} | head -1)");
        println!(
            "  curl -X POST http://{addr}/api/v1/events -H \"Authorization: Bearer $KEY\" \\\n    -d '{{\"name\": \"pageview\", \"user_id\": \"u-1\", \"props\": {{\"path\": \"/\"}}}}'"
        );
    }
    if let Some(site) = config.sites.first() {
        println!("\nCount a website's visits: paste into its pages");
        println!("  {}", crate::sites::script_tag_at(addr, &site.id));
        if site.domains.iter().any(|d| d == crate::sites::ANY_DOMAIN) {
            println!(
                "  Site {} takes events from pages on any domain until you name yours:\n  beacon sites add {} --domain example.com",
                site.id, site.id
            );
        } else if site.domains.is_empty() {
            println!(
                "  Site {} lists no domains yet: beacon sites add {} --domain example.com",
                site.id, site.id
            );
        }
    }
    if let Some(site) = config.sites.first()
        && !site.read_keys.is_empty()
    {
        println!("\nRead the numbers (with a read key from {file} as $READ_KEY):");
        println!(
            "  curl 'http://{addr}/api/v1/sites/{}/summary?from=-24h' -H \"Authorization: Bearer $READ_KEY\"",
            site.id
        );
    }
    println!("\nPress Ctrl-C to stop.");
}
