//! `beacon bench actions`: jobs per second through the actions workers to a
//! local webhook receiver, and each job's latency from enqueue to receipt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use beacon_actions::{JOB_VERSION, Job, JobKind, RuleConfig};
use clap::Args;
use serde_json::json;

use super::query::quantile_ms;
use super::{BenchNats, bench_config};
use crate::services::{self, Roles};

#[derive(Debug, Args)]
pub struct ActionsArgs {
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Jobs one worker process delivers at once (actions.concurrency).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// A short run (1,000 jobs) that checks every figure can be measured.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

const SECRET: &str = "whsec_bench_0123456789";

/// A receiver that answers 200 at once and notes when each key arrived.
async fn receiver() -> anyhow::Result<(String, Arc<Mutex<HashMap<String, Instant>>>)> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let kept = kept.clone();
            async move {
                let at = Instant::now();
                if let Some(key) = headers
                    .get(beacon_actions::deliver::KEY_HEADER)
                    .and_then(|v| v.to_str().ok())
                    && let Ok(mut seen) = kept.lock()
                {
                    seen.entry(key.to_owned()).or_insert(at);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}

pub async fn run(mut args: ActionsArgs, nats_urls: &[String]) -> anyhow::Result<()> {
    if args.quick {
        args.jobs = args.jobs.min(1_000);
    }
    if args.jobs == 0 || args.concurrency == 0 {
        bail!("--jobs and --concurrency must be positive");
    }
    let nats = BenchNats::own(nats_urls, "actions").await?;
    let (url, seen) = receiver().await?;
    let mut config = bench_config(nats.urls.clone())?;
    config.actions.concurrency = args.concurrency;
    config.actions.rules = vec![RuleConfig {
        id: "bench".into(),
        site: super::SITE.into(),
        kind: beacon_actions::rule::RuleKind::Event,
        event: Some("purchase".into()),
        conditions: Default::default(),
        metric: None,
        window: None,
        above: None,
        below: None,
        factor: None,
        baseline: None,
        min: None,
        schedule: None,
        webhook: Some(url),
        secret: Some(SECRET.into()),
        format: None,
        email: vec![],
    }];
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let roles = Roles {
        actions: true,
        ..Roles::NONE
    };
    let running = services::start(&config, roles, None, shutdown).await?;
    let client = async_nats::connect(nats.urls.clone()).await?;
    let js = async_nats::jetstream::new(client);

    // Enqueue in pipelined rounds, noting when each job was sent.
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(args.jobs);
    let started = Instant::now();
    for chunk in (0..args.jobs).collect::<Vec<_>>().chunks(512) {
        let mut acks = Vec::with_capacity(chunk.len());
        for i in chunk {
            let job = Job {
                v: JOB_VERSION,
                key: format!("bench/e-{i}"),
                rule: "bench".into(),
                site: super::SITE.into(),
                kind: JobKind::Event,
                target: "webhook".into(),
                created_at: chrono::Utc::now(),
                data: json!({"id": format!("e-{i}"), "name": "purchase", "props": {"plan": "pro"}}),
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", job.msg_id().as_str());
            sent.insert(job.key.clone(), Instant::now());
            acks.push(
                js.publish_with_headers(
                    format!("{}.{}", beacon_actions::queue::JOBS_PREFIX, super::SITE),
                    headers,
                    serde_json::to_vec(&job)?.into(),
                )
                .await?,
            );
        }
        for ack in acks {
            ack.await.context("a job was not stored")?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let delivered = seen.lock().map(|s| s.len()).unwrap_or(0);
        if delivered >= args.jobs {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {delivered} of {} jobs were delivered in 5 minutes",
                args.jobs
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let last = seen.values().max().copied().unwrap_or(started);
    let elapsed = last.duration_since(started).as_secs_f64();
    let mut latencies: Vec<Duration> = seen
        .iter()
        .filter_map(|(key, at)| Some(at.duration_since(*sent.get(key)?)))
        .collect();
    latencies.sort();
    let jobs_per_s = args.jobs as f64 / elapsed.max(1e-9);
    let (p50, p99) = (quantile_ms(&latencies, 0.5), quantile_ms(&latencies, 0.99));
    let result = running.run_until(stop, async {}).await;
    nats.stop().await;
    result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "jobs": args.jobs, "concurrency": args.concurrency,
                "jobs_per_s": jobs_per_s.round(), "delivery_p50_ms": p50, "delivery_p99_ms": p99,
            }))?
        );
    } else {
        println!(
            "actions: {} jobs, concurrency {}: {:.0} jobs/s; delivery latency p50 {:.1} ms, p99 {:.1} ms",
            args.jobs,
            args.concurrency,
            jobs_per_s,
            p50.unwrap_or(f64::NAN),
            p99.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
