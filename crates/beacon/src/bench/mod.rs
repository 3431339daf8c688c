//! `beacon bench`: throughput measured on this machine, side by side with the
//! raw JetStream ceiling for the same payloads in the same run.

mod actions;
mod aggregate;
mod all;
mod client;
mod query;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, stream};
use beacon_core::{IdSource, Limits, Origin, Site, normalize};
use beacon_nats::publish::Outgoing;
use beacon_nats::{LocalServer, find_server_binary};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::config::Config;
use crate::services::{self, Roles};

#[derive(Debug, Subcommand)]
pub enum Stage {
    /// Raw JetStream publish ceiling vs. events/s through the HTTP collector.
    Ingest(IngestArgs),
    /// Events/s one aggregator process counts, commit latency, memory.
    Aggregate(aggregate::AggregateArgs),
    /// Query latency over a day of events, and how soon a new event is queryable.
    Query(query::QueryArgs),
    /// The beacon-client crate's publish throughput vs. the raw JetStream ceiling.
    Client(client::ClientArgs),
    /// Jobs/s through the actions workers and delivery latency to a local receiver.
    Actions(actions::ActionsArgs),
    /// The event store's SQL questions over days of segments, beside DuckDB.
    Store(store::StoreArgs),
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Events to send in each measurement.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// HTTP requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Publishes awaiting their ack at once in the raw measurement.
    #[arg(long, default_value_t = 4096)]
    pub window: usize,
    /// A short run (20,000 events) that checks every figure can be measured.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub use all::AllArgs;

/// Where a benchmark's NATS comes from: the servers of `--nats-url`, or else a
/// scratch server of its own, started from `nats.server_binary` when the
/// configuration names one (as for `beacon up`), else the one found on PATH or in tools/.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub urls: Vec<String>,
    pub server_binary: Option<std::path::PathBuf>,
}

/// Run one stage, or with none the whole pipeline in one run.
pub async fn run(stage: Option<Stage>, all: AllArgs, target: &Target) -> anyhow::Result<()> {
    let Some(stage) = stage else {
        return all::run(all, target).await;
    };
    match stage {
        Stage::Ingest(args) => ingest(args, target).await,
        Stage::Aggregate(args) => aggregate::run(args, target).await,
        Stage::Query(args) => query::run(args, target).await,
        Stage::Client(args) => client::run(args, target).await,
        Stage::Actions(args) => actions::run(args, target).await,
        Stage::Store(args) => store::run(args, target).await,
    }
}

const SITE: &str = "bench";
const WRITE_KEY: &str = "wk_bench_0000000000000000";
const READ_KEY: &str = "rk_bench_0000000000000000";

/// A config for in-process services on `urls`: the collector on a free port,
/// and the bench site with its write and read keys, without a rate limit.
fn bench_config(urls: Vec<String>) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.nats.urls = urls;
    config.collector.listen = "127.0.0.1:0".parse()?;
    config.sites = vec![Site {
        id: SITE.to_owned(),
        write_keys: vec![WRITE_KEY.into()],
        read_keys: vec![READ_KEY.into()],
        rate_limit: 0,
        rate_burst: 0,
        domains: vec![],
        keep_bots: false,
        manage_keys: vec![],
        goals: vec![],
    }];
    Ok(config)
}

async fn ingest(mut args: IngestArgs, target: &Target) -> anyhow::Result<()> {
    if args.quick {
        args.events = args.events.min(20_000);
    }
    if args.events == 0 || args.batch == 0 || args.concurrency == 0 || args.window == 0 {
        bail!("--events, --batch, --concurrency and --window must be positive");
    }
    let nats = BenchNats::start(target).await?;
    let urls = nats.urls.clone();

    let events = sample_events(args.events);
    let canonical = canonical_payloads(&events)?;
    let payload_bytes = canonical.iter().map(|(_, p)| p.len()).sum::<usize>() / canonical.len();
    eprintln!(
        "{} events of {payload_bytes} bytes on average; nats {}",
        args.events,
        urls.join(",")
    );

    let client = async_nats::connect(urls.clone()).await?;
    let raw = raw_ceiling(&client, &canonical, args.window).await?;
    eprintln!("raw JetStream publish: {raw:.0} events/s");

    let config = bench_config(urls)?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = services::start(
        &config,
        Roles {
            collector: true,
            ..Roles::NONE
        },
        None,
        shutdown,
    )
    .await?;
    let addr = running.collector_addr.context("collector did not start")?;
    let bodies: Vec<Bytes> = events
        .chunks(args.batch)
        .map(|chunk| Bytes::from(serde_json::to_vec(chunk).unwrap_or_default()))
        .collect();
    let (collector, accepted) = http_ingest(addr, &bodies, args.concurrency, None).await?;
    eprintln!("collector over HTTP: {collector:.0} events/s ({accepted} accepted)");
    let service_result = running.run_until(stop, async {}).await;
    if let Err(e) = service_result {
        nats.stop().await;
        return Err(e);
    }
    if accepted != args.events {
        nats.stop().await;
        bail!("only {accepted} of {} events were accepted", args.events);
    }
    let cpu = enrichment_cpu(&nats, &args).await;
    nats.stop().await;
    let cpu = cpu?;

    let ratio = collector / raw;
    let report = json!({
        "events": args.events, "payload_bytes": payload_bytes, "batch": args.batch,
        "concurrency": args.concurrency, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "raw_jetstream_events_per_sec": raw.round(), "collector_events_per_sec": collector.round(),
        "collector_to_raw_ratio": (ratio * 1000.0).round() / 1000.0,
        "collector_cpu_seconds_per_million_events": {
            "enrichment_off": round2(cpu.off),
            "geoip_and_bots_on": round2(cpu.on),
            "increase": ((cpu.on / cpu.off - 1.0) * 1000.0).round() / 1000.0,
            "geoip_db": cpu.geoip_db.as_ref().map(|p| p.display().to_string()),
        },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "\nbeacon bench ingest: {} events, {payload_bytes} B each, HTTP batches of {}, {} in flight",
            args.events, args.batch, args.concurrency
        );
        println!("{:<46} {:>14}", "measurement", "events/s");
        println!(
            "{:<46} {:>14.0}",
            "raw JetStream publish (pipelined, msg ids)", raw
        );
        println!(
            "{:<46} {:>14.0}",
            "collector (HTTP → validate → JetStream ack)", collector
        );
        println!("{:<46} {:>13.1}%", "collector / raw ceiling", ratio * 100.0);
        println!(
            "\ncollector CPU seconds per million events (its own process, {}):",
            cpu.geoip_db.as_ref().map_or_else(
                || "no GeoIP database found: run scripts/install-geoip.sh".to_owned(),
                |p| format!("GeoIP from {}", p.display())
            )
        );
        println!("{:<46} {:>14.2}", "GeoIP and bot detection off", cpu.off);
        println!("{:<46} {:>14.2}", "GeoIP and bot detection on", cpu.on);
        println!(
            "{:<46} {:>13.1}%",
            "increase",
            (cpu.on / cpu.off - 1.0) * 100.0
        );
    }
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The collector's CPU per million events, with and without enrichment.
struct EnrichmentCpu {
    off: f64,
    on: f64,
    geoip_db: Option<std::path::PathBuf>,
}

/// Run the collector as its own process twice, with GeoIP and bot detection
/// off and then on (the installed database), and read the CPU it spent on the
/// same number of events from /proc. A first batch warms each one up (the bot
/// list compiles on first use) before its CPU is read.
async fn enrichment_cpu(nats: &BenchNats, args: &IngestArgs) -> anyhow::Result<EnrichmentCpu> {
    let geoip_db = beacon_ingest::enrich::geoip_path(&beacon_ingest::EnrichSettings::default());
    let base = std::fs::read_to_string(nats.process_config(false)?)?;
    let url = nats.urls.join(",");
    let mut spent = Vec::new();
    for (name, enrich) in [
        (
            "off",
            "[enrich]\ngeoip_db = \"\"\nbots = false\n".to_owned(),
        ),
        (
            "on",
            match &geoip_db {
                Some(path) => format!("[enrich]\ngeoip_db = {:?}\n", path.display().to_string()),
                None => String::new(),
            },
        ),
    ] {
        let config = nats
            .scratch
            .path()
            .join(format!("beacon-enrich-{name}.toml"));
        std::fs::write(&config, format!("{base}\n{enrich}"))?;
        let (mut child, line) = spawn_service(
            &config,
            &url,
            &["collector", "--listen", "127.0.0.1:0"],
            "collector listening on http://",
        )
        .await?;
        let pid = child.id().context("the collector exited early")?;
        let addr = all::address_in(&line)?;
        let warm_up: Vec<Bytes> = sample_events(args.batch.min(args.events))
            .chunks(args.batch)
            .map(|chunk| Bytes::from(serde_json::to_vec(chunk).unwrap_or_default()))
            .collect();
        http_ingest(addr, &warm_up, 1, None).await?;
        let bodies: Vec<Bytes> = sample_events(args.events)
            .chunks(args.batch)
            .map(|chunk| Bytes::from(serde_json::to_vec(chunk).unwrap_or_default()))
            .collect();
        let before = aggregate::proc_cpu_seconds(pid)?;
        let (_, accepted) = http_ingest(addr, &bodies, args.concurrency, None).await?;
        let cpu = aggregate::proc_cpu_seconds(pid)? - before;
        sigterm(pid);
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        if accepted != args.events {
            bail!(
                "enrichment {name}: only {accepted} of {} events were accepted",
                args.events
            );
        }
        eprintln!("collector CPU with enrichment {name}: {cpu:.2} s for {accepted} events");
        spent.push(cpu / args.events as f64 * 1e6);
    }
    Ok(EnrichmentCpu {
        off: spent[0],
        on: spent[1],
        geoip_db,
    })
}

/// Native events as a site would send them: page views, clicks, sign-ups, purchases.
fn sample_events(n: usize) -> Vec<Value> {
    const PAGES: [&str; 6] = [
        "/",
        "/pricing",
        "/docs",
        "/blog/launch",
        "/checkout",
        "/signup",
    ];
    const AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..n)
        .map(|i| {
            let name = ["pageview", "pageview", "pageview", "click", "signup", "purchase"][i % 6];
            let mut event = json!({
                "id": format!("{run}-{i}"), "name": name, "user_id": format!("user-{}", i % 10_007),
                "props": {"path": PAGES[i % PAGES.len()], "plan": "pro"},
                "context": {"user_agent": AGENT, "referrer": "https://www.google.com/", "url": format!("https://shop.example{}", PAGES[i % PAGES.len()]),
                    // Addresses all over the public ranges, for the GeoIP lookup.
                    "ip": format!("{}.{}.{}.{}", 1 + i % 223, (i / 223) % 256, (i * 7) % 256, 1 + i % 254)},
            });
            if name == "purchase" {
                event["revenue"] = json!({"amount": "19.99", "currency": "USD"});
            }
            event
        })
        .collect()
}

/// The stored form of each event, prepared before timing so the raw run does no Beacon work.
fn canonical_payloads(events: &[Value]) -> anyhow::Result<Vec<(String, Bytes)>> {
    let limits = Limits::default();
    let origin = Origin {
        site: SITE,
        received_at: chrono::Utc::now(),
        user_agent: None,
        ip: None,
        id_source: IdSource::Random,
        partitions: 16,
    };
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let event = normalize(e.clone(), i, &origin, &limits)?;
            Ok((event.dedupe_id(), Bytes::from(serde_json::to_vec(&event)?)))
        })
        .collect()
}

/// Pipelined publishes of pre-serialized events with message ids to a file stream
/// configured like `BEACON_EVENTS`, `window` acks outstanding.
async fn raw_ceiling(
    client: &async_nats::Client,
    payloads: &[(String, Bytes)],
    window: usize,
) -> anyhow::Result<f64> {
    let js = jetstream::new(client.clone());
    let name = "BEACON_BENCH_RAW";
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec!["beacon-bench.raw.>".to_owned()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await?;
    let messages = payloads.iter().enumerate().map(|(i, (id, payload))| {
        Outgoing::deduped(format!("beacon-bench.raw.{}", i % 16), id, payload.clone())
    });
    let rate = pipelined_publish(&js, messages, window).await?;
    js.delete_stream(name).await?;
    Ok(rate)
}

/// Publish every message with `window` acks outstanding; returns messages/s.
async fn pipelined_publish(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = Outgoing>,
    window: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut sent = 0usize;
    let mut acks = futures::stream::FuturesUnordered::new();
    for m in messages {
        let publish = jetstream::message::PublishMessage::build()
            .headers(m.headers)
            .payload(m.payload);
        acks.push(js.send_publish(m.subject, publish).await?.into_future());
        sent += 1;
        if acks.len() >= window {
            acks.next().await.transpose()?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}

/// The NATS a benchmark runs against: its own scratch server unless pointed at
/// one; the scratch server is stopped and its store removed at the end.
struct BenchNats {
    urls: Vec<String>,
    local: Option<LocalServer>,
    scratch: tempfile::TempDir,
}

impl BenchNats {
    async fn start(target: &Target) -> anyhow::Result<BenchNats> {
        let scratch = tempfile::Builder::new().prefix("beacon-bench-").tempdir()?;
        if !target.urls.is_empty() {
            return Ok(BenchNats {
                urls: target.urls.clone(),
                local: None,
                scratch,
            });
        }
        let binary = find_server_binary(target.server_binary.as_deref())?;
        let server = LocalServer::start(&binary, &scratch.path().join("nats"), 0).await?;
        Ok(BenchNats {
            urls: vec![server.url()],
            local: Some(server),
            scratch,
        })
    }

    /// A scratch server only: for benchmarks that fill Beacon's own streams.
    async fn own(target: &Target, bench: &str) -> anyhow::Result<BenchNats> {
        if !target.urls.is_empty() {
            bail!(
                "the {bench} benchmark fills Beacon's own streams, so it only runs on the empty nats-server it starts itself; drop --nats-url"
            );
        }
        BenchNats::start(target).await
    }

    /// A client on this server, with Beacon's streams provisioned for
    /// [`aggregate::PARTITIONS`] partitions.
    async fn provisioned(&self) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
        let client = async_nats::connect(self.urls.clone()).await?;
        let js = jetstream::new(client.clone());
        beacon_nats::provision(
            &js,
            &beacon_nats::StreamSettings {
                partitions: aggregate::PARTITIONS,
                ..beacon_nats::StreamSettings::default()
            },
        )
        .await?;
        Ok((client, js))
    }

    /// A config file for Beacon processes started against this server: the
    /// partitions and the bench site with its keys, without a rate limit;
    /// `store` turns the event store's segments on or off (`--no-store`
    /// measures their cost).
    fn process_config(&self, store: bool) -> anyhow::Result<std::path::PathBuf> {
        let path = self.scratch.path().join("beacon.toml");
        std::fs::write(
            &path,
            format!(
                "[streams]\npartitions = {}\n\n[store]\nenabled = {store}\n\n[[sites]]\nid = \"{SITE}\"\nwrite_keys = [\"{WRITE_KEY}\"]\nread_keys = [\"{READ_KEY}\"]\nrate_limit = 0\n",
                aggregate::PARTITIONS
            ),
        )?;
        Ok(path)
    }

    async fn stop(self) {
        if let Some(mut server) = self.local {
            server.stop().await;
        }
    }
}

/// Start `beacon <args> --nats-url … --config …` as its own process and wait
/// (bounded) for the stdout line containing `marker`; the child and that line.
async fn spawn_service(
    config: &std::path::Path,
    nats_url: &str,
    args: &[&str],
    marker: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .args(["--nats-url", nats_url, "--config"])
        .arg(config)
        .env("BEACON_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("service stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(marker) {
                return Ok(line);
            }
        }
        bail!("`beacon {}` exited before it was ready", args.join(" "))
    })
    .await
    .with_context(|| format!("`beacon {}` did not start within 60 s", args.join(" ")))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, line))
}

fn sigterm(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Send every body to the collector from `concurrency` workers; events/s and
/// accepted count. With `every`, body `i` is sent no sooner than `i * every`
/// after the start (a steady load); without it, as fast as answers come.
async fn http_ingest(
    addr: std::net::SocketAddr,
    bodies: &[Bytes],
    concurrency: usize,
    every: Option<Duration>,
) -> anyhow::Result<(f64, usize)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("http://{addr}/api/v1/events");
    let next = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(bodies.to_vec());
    let started = tokio::time::Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, next, bodies) =
            (client.clone(), url.clone(), next.clone(), bodies.clone());
        workers.spawn(async move {
            let mut accepted = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return Ok::<_, anyhow::Error>(accepted);
                };
                if let Some(every) = every {
                    tokio::time::sleep_until(started + every.mul_f64(i as f64)).await;
                }
                accepted += post_events(&client, &url, body.clone()).await?;
            }
        });
    }
    let mut accepted = 0;
    while let Some(done) = workers.join_next().await {
        accepted += done??;
    }
    Ok((accepted as f64 / started.elapsed().as_secs_f64(), accepted))
}

/// POST one JSON body of events to the collector's `url`; how many it accepted.
async fn post_events(client: &reqwest::Client, url: &str, body: Bytes) -> anyhow::Result<usize> {
    let response = client
        .post(url)
        .bearer_auth(WRITE_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    if !status.is_success() {
        bail!("collector answered {status}: {answer}");
    }
    Ok(answer["accepted"].as_u64().unwrap_or(0) as usize)
}
