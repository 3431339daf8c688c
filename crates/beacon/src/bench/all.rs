//! `beacon bench` with no stage: the whole pipeline in one run, each Beacon
//! service as its own process (so each one's memory and CPU can be read), side
//! by side with the raw JetStream ceiling measured in the same run.
//!
//! 1. raw JetStream publish of the same events, pre-serialized (no Beacon code);
//! 2. collector: HTTP batches, the aggregator not yet running;
//! 3. normalizer: the same number published to `beacon.ingest.<site>`, timed
//!    until all are in `BEACON_EVENTS`;
//! 4. aggregator: started now, timed until it has counted that backlog;
//! 5. end to end: another burst over HTTP, timed until a query counts it all;
//! 6. freshness under a steady load of half the end-to-end rate;
//! 7. the dashboard's queries;
//! 8. each process's peak memory and CPU seconds per million events.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use beacon_core::subject::ingest_subject;
use beacon_nats::EVENTS_STREAM;
use beacon_nats::publish::Outgoing;
use bytes::Bytes;
use clap::Args;
use serde_json::{Value, json};

use super::aggregate::{proc_cpu_seconds, proc_status};
use super::query::{QueryArgs, Questions, freshness, latencies, quantile_ms};
use super::{
    BenchNats, READ_KEY, SITE, Target, canonical_payloads, http_ingest, pipelined_publish,
    raw_ceiling, sample_events, sigterm, spawn_service,
};

#[derive(Debug, Args)]
pub struct AllArgs {
    /// Events in each throughput measurement (collector, normalizer, end to end).
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Seconds of steady load for the freshness measurement.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Dashboard requests timed.
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// A short run (20,000 events, 3 s of load) that checks every figure can be measured.
    #[arg(long)]
    pub quick: bool,
    /// Run the aggregator without writing event store segments, to measure what they cost.
    #[arg(long)]
    pub no_store: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

const BATCH: usize = 100;
const CONCURRENCY: usize = 32;
const WINDOW: usize = 4096;

/// One Beacon process and what it handled.
struct Service {
    name: &'static str,
    child: tokio::process::Child,
    events: u64,
}

pub async fn run(mut args: AllArgs, target: &Target) -> anyhow::Result<()> {
    if args.quick {
        args.events = args.events.min(20_000);
        args.seconds = args.seconds.min(3);
        args.requests = args.requests.min(100);
    }
    if args.events == 0 || args.seconds == 0 || args.requests == 0 {
        bail!("--events, --seconds and --requests must be positive");
    }
    let nats = BenchNats::own(target, "end-to-end").await?;
    let result = measure(&args, &nats).await;
    nats.stop().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(())
}

async fn measure(args: &AllArgs, nats: &BenchNats) -> anyhow::Result<Value> {
    let url = nats.urls.join(",");
    let (client, js) = nats.provisioned().await?;
    let n = args.events;

    // 1. The broker's own ceiling for these events.
    let http_events = sample_events(n);
    let canonical = canonical_payloads(&http_events)?;
    let payload_bytes = canonical.iter().map(|(_, p)| p.len()).sum::<usize>() / n;
    let raw = raw_ceiling(&client, &canonical, WINDOW).await?;
    drop(canonical);
    eprintln!("raw JetStream publish: {raw:.0} events/s ({payload_bytes} bytes each)");

    let config = nats.process_config(!args.no_store)?;
    let (collector, line) = spawn_service(
        &config,
        &url,
        &["collector", "--listen", "127.0.0.1:0"],
        "collector listening on http://",
    )
    .await?;
    let addr: std::net::SocketAddr = address_in(&line)?;
    let (normalizer, _) =
        spawn_service(&config, &url, &["normalizer"], "normalizer consuming").await?;
    let (query, line) = spawn_service(
        &config,
        &url,
        &["query", "--listen", "127.0.0.1:0"],
        "query API on http://",
    )
    .await?;
    let query_addr = address_in(&line)?;
    let mut services = vec![
        Service {
            name: "collector",
            child: collector,
            events: 0,
        },
        Service {
            name: "normalizer",
            child: normalizer,
            events: 0,
        },
        Service {
            name: "query",
            child: query,
            events: 0,
        },
    ];

    // 2. The collector, over HTTP.
    let bodies = batches(&http_events)?;
    drop(http_events);
    let (collector_rate, accepted) = http_ingest(addr, &bodies, CONCURRENCY, None).await?;
    if accepted != n {
        bail!("the collector accepted {accepted} of {n} events");
    }
    eprintln!("collector over HTTP: {collector_rate:.0} events/s");

    // 3. The normalizer: raw events published to beacon.ingest.<site>.
    let raw_events: Vec<Outgoing> = sample_events(n)
        .iter()
        .map(|e| {
            Ok(Outgoing::deduped(
                ingest_subject(SITE),
                e["id"].as_str().unwrap_or_default(),
                Bytes::from(serde_json::to_vec(e)?),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    pipelined_publish(&js, raw_events, WINDOW).await?;
    wait_stored(&js, 2 * n as u64, started).await?;
    let normalizer_rate = n as f64 / started.elapsed().as_secs_f64();
    eprintln!("NATS-native path through the normalizer: {normalizer_rate:.0} events/s");

    // 4. The aggregator, on the backlog of both.
    let started = Instant::now();
    let (aggregator, _) = spawn_service(
        &config,
        &url,
        &["aggregator", "--listen", "127.0.0.1:0"],
        "http://",
    )
    .await?;
    services.push(Service {
        name: "aggregator",
        child: aggregator,
        events: 0,
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY + 2)
        .build()?;
    let api = format!("http://{query_addr}/api/v1/sites/{SITE}");
    wait_queryable(&http, &api, 2 * n as u64, started).await?;
    let aggregate_rate = 2.0 * n as f64 / started.elapsed().as_secs_f64();
    eprintln!("aggregator on a backlog (counted and queryable): {aggregate_rate:.0} events/s");

    // 5. End to end: accepted over HTTP → counted in a query.
    let bodies = batches(&sample_events(n))?;
    let started = Instant::now();
    let (_, accepted) = http_ingest(addr, &bodies, CONCURRENCY, None).await?;
    if accepted != n {
        bail!("the collector accepted {accepted} of {n} events");
    }
    wait_queryable(&http, &api, 3 * n as u64, started).await?;
    let e2e_rate = n as f64 / started.elapsed().as_secs_f64();
    eprintln!("end to end (accepted → queryable): {e2e_rate:.0} events/s");

    // 6. Freshness at half the end-to-end rate, through the collector.
    let load_rate = ((e2e_rate / 2.0) as usize).max(100);
    let q = QueryArgs {
        events: 3 * n,
        days: 1,
        events_per_day: None,
        users: 0,
        requests: args.requests,
        rate: load_rate,
        seconds: args.seconds,
        quick: args.quick,
        json: false,
        no_count_ahead: false,
    };
    let (achieved, markers, fresh, misses) = freshness(&http, addr, &api, &q)
        .await
        .context("freshness")?;
    let counted = (3 * n + q.rate * q.seconds as usize + markers) as u64;

    // 7. The dashboard's requests over what is stored now.
    wait_queryable(&http, &api, counted, Instant::now()).await?;
    let now = chrono::Utc::now();
    let from =
        (now - chrono::Duration::hours(24)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to =
        (now + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let q = QueryArgs {
        events: counted as usize,
        ..q
    };
    // The dashboard's rollup questions: the filtered ones, from the event store,
    // take seconds each and are `bench query`'s to measure.
    let (_, all) = latencies(&http, &api, &from, &to, &q, Questions::Rollups).await?;

    // 8. Each process: peak memory and CPU per million events it handled.
    let total = counted;
    for s in &mut services {
        s.events = match s.name {
            "collector" => (2 * n + q.rate * q.seconds as usize + markers) as u64,
            "normalizer" => n as u64,
            _ => total,
        };
    }
    let mut per_service = Vec::new();
    for s in &mut services {
        let pid = s.child.id().context("a service exited early")?;
        let memory = proc_status(pid)?;
        let cpu = proc_cpu_seconds(pid)?;
        per_service.push(json!({
            "service": s.name,
            "events": s.events,
            "peak_rss_mb": memory.peak_kb / 1024,
            "cpu_seconds": (cpu * 100.0).round() / 100.0,
            "cpu_seconds_per_million_events": (cpu / s.events.max(1) as f64 * 1e6 * 100.0).round() / 100.0,
        }));
        sigterm(pid);
    }
    for s in &mut services {
        let _ = tokio::time::timeout(Duration::from_secs(30), s.child.wait()).await;
    }
    let ms = |v: Option<f64>| v.map_or(Value::Null, |ms| json!((ms * 100.0).round() / 100.0));
    Ok(json!({
        "events_per_measurement": n,
        "payload_bytes": payload_bytes,
        "cores": std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1),
        "raw_jetstream_events_per_sec": raw.round(),
        "collector_events_per_sec": collector_rate.round(),
        "collector_ratio_to_raw": (collector_rate / raw * 1000.0).round() / 1000.0,
        "normalizer_events_per_sec": normalizer_rate.round(),
        "normalizer_ratio_to_raw": (normalizer_rate / raw * 1000.0).round() / 1000.0,
        "aggregator_events_per_sec": aggregate_rate.round(),
        "end_to_end_events_per_sec": e2e_rate.round(),
        "freshness_load_events_per_sec": achieved.round(),
        "freshness_markers": markers,
        "freshness_misses": misses,
        "freshness_p50_ms": ms(quantile_ms(&fresh, 0.5)),
        "freshness_p99_ms": ms(quantile_ms(&fresh, 0.99)),
        "query_requests": all.len(),
        "query_p50_ms": ms(quantile_ms(&all, 0.5)),
        "query_p99_ms": ms(quantile_ms(&all, 0.99)),
        "services": per_service,
    }))
}

pub(super) fn address_in(line: &str) -> anyhow::Result<std::net::SocketAddr> {
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ' ']).next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {line:?}"))
}

fn batches(events: &[Value]) -> anyhow::Result<Vec<Bytes>> {
    events
        .chunks(BATCH)
        .map(|b| Ok(Bytes::from(serde_json::to_vec(b)?)))
        .collect()
}

/// Wait (bounded) until `BEACON_EVENTS` holds `n` events.
async fn wait_stored(js: &jetstream::Context, n: u64, since: Instant) -> anyhow::Result<()> {
    loop {
        let stored = js
            .get_stream(EVENTS_STREAM)
            .await?
            .info()
            .await?
            .state
            .messages;
        if stored >= n {
            return Ok(());
        }
        if since.elapsed() > Duration::from_secs(1800) {
            bail!("only {stored} of {n} events were stored within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (bounded) until a query counts `n` events over the last day.
async fn wait_queryable(
    http: &reqwest::Client,
    api: &str,
    n: u64,
    since: Instant,
) -> anyhow::Result<()> {
    let url = format!("{api}/summary?from=-24h&to=now&metrics=events");
    loop {
        let response = http.get(&url).bearer_auth(READ_KEY).send().await?;
        if response.status().is_success() {
            let answer: Value = response.json().await?;
            if answer["metrics"]["events"]["value"].as_u64() >= Some(n) {
                return Ok(());
            }
        }
        if since.elapsed() > Duration::from_secs(1800) {
            bail!("a query did not count {n} events within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn print(r: &Value) {
    let num = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "\nbeacon bench: {} events per measurement, {} bytes each, {} cores, every service its own process\n",
        r["events_per_measurement"], r["payload_bytes"], r["cores"]
    );
    let row = |what: &str, value: String| println!("{what:<64} {value:>18}");
    row(
        "raw JetStream publish (pipelined, no Beacon code)",
        format!("{:.0} /s", num("raw_jetstream_events_per_sec")),
    );
    row(
        "collector: HTTP batches of 100 → BEACON_EVENTS",
        format!(
            "{:.0} /s  {:.0} %",
            num("collector_events_per_sec"),
            num("collector_ratio_to_raw") * 100.0
        ),
    );
    row(
        "normalizer: beacon.ingest.<site> → BEACON_EVENTS",
        format!(
            "{:.0} /s  {:.0} %",
            num("normalizer_events_per_sec"),
            num("normalizer_ratio_to_raw") * 100.0
        ),
    );
    row(
        "aggregator: a backlog counted and queryable",
        format!("{:.0} /s", num("aggregator_events_per_sec")),
    );
    row(
        "end to end: accepted over HTTP → counted in a query",
        format!("{:.0} /s", num("end_to_end_events_per_sec")),
    );
    row(
        &format!(
            "freshness p50 / p99 at {:.0} events/s ({} markers, {} missed)",
            num("freshness_load_events_per_sec"),
            r["freshness_markers"],
            r["freshness_misses"]
        ),
        format!(
            "{:.0} / {:.0} ms",
            num("freshness_p50_ms"),
            num("freshness_p99_ms")
        ),
    );
    row(
        &format!(
            "dashboard queries p50 / p99 ({} requests)",
            r["query_requests"]
        ),
        format!("{:.2} / {:.2} ms", num("query_p50_ms"), num("query_p99_ms")),
    );
    println!(
        "\n{:<12} {:>12} {:>14} {:>16}",
        "SERVICE", "PEAK RSS", "CPU SECONDS", "CPU-S / MILLION"
    );
    for s in r["services"].as_array().into_iter().flatten() {
        let n = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<12} {:>9.0} MB {:>14.2} {:>16.2}",
            s["service"].as_str().unwrap_or("?"),
            n("peak_rss_mb"),
            n("cpu_seconds"),
            n("cpu_seconds_per_million_events")
        );
    }
}
