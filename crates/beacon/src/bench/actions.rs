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
use super::{BenchNats, Target, bench_config};
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

/// Enqueue the job for event `id`; the returned future is JetStream's ack.
async fn publish(
    js: &async_nats::jetstream::Context,
    id: &str,
) -> anyhow::Result<async_nats::jetstream::context::PublishAckFuture> {
    let job = Job {
        v: JOB_VERSION,
        key: format!("bench/{id}"),
        rule: "bench".into(),
        site: super::SITE.into(),
        kind: JobKind::Event,
        target: "webhook".into(),
        created_at: chrono::Utc::now(),
        data: json!({"id": id, "name": "purchase", "props": {"plan": "pro"}}),
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", job.msg_id().as_str());
    Ok(js
        .publish_with_headers(
            format!("{}.{}", beacon_actions::queue::JOBS_PREFIX, super::SITE),
            headers,
            serde_json::to_vec(&job)?.into(),
        )
        .await?)
}

/// Wait (at most five minutes) until the receiver has `count` distinct jobs.
async fn wait_for(seen: &Mutex<HashMap<String, Instant>>, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let delivered = seen.lock().map(|s| s.len()).unwrap_or(0);
        if delivered >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {delivered} of {count} jobs were delivered in 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

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

pub async fn run(mut args: ActionsArgs, target: &Target) -> anyhow::Result<()> {
    if args.quick {
        args.jobs = args.jobs.min(1_000);
    }
    if args.jobs == 0 || args.concurrency == 0 {
        bail!("--jobs and --concurrency must be positive");
    }
    let nats = BenchNats::own(target, "actions").await?;
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

    // Throughput: a backlog of jobs enqueued in pipelined rounds, timed until
    // the receiver has every one.
    let started = Instant::now();
    let keys: Vec<usize> = (0..args.jobs).collect();
    for chunk in keys.chunks(512) {
        let mut acks = Vec::with_capacity(chunk.len());
        for i in chunk {
            acks.push(publish(&js, &format!("e-{i}")).await?);
        }
        for ack in acks {
            ack.await.context("a job was not stored")?;
        }
    }
    wait_for(&seen, args.jobs).await?;
    let last = seen
        .lock()
        .map(|s| s.values().max().copied())
        .ok()
        .flatten()
        .unwrap_or(started);
    let jobs_per_s = args.jobs as f64 / last.duration_since(started).as_secs_f64().max(1e-9);

    // Latency: jobs one at a time at a steady rate well below the throughput,
    // each timed from its enqueue to its arrival.
    let latency_jobs = (args.jobs / 10).max(100);
    let pace = Duration::from_secs_f64(2.0 / jobs_per_s.max(1.0)).max(Duration::from_millis(2));
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(latency_jobs);
    let mut tick = tokio::time::interval(pace);
    for i in 0..latency_jobs {
        tick.tick().await;
        let id = format!("l-{i}");
        sent.insert(format!("bench/{id}"), Instant::now());
        publish(&js, &id)
            .await?
            .await
            .context("a job was not stored")?;
    }
    wait_for(&seen, args.jobs + latency_jobs).await?;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(key, at)| Some(seen.get(key)?.duration_since(*at)))
        .collect();
    latencies.sort();
    let (p50, p99) = (quantile_ms(&latencies, 0.5), quantile_ms(&latencies, 0.99));
    let result = running.run_until(stop, async {}).await;
    nats.stop().await;
    result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "jobs": args.jobs, "concurrency": args.concurrency,
                "jobs_per_s": jobs_per_s.round(), "latency_jobs": latency_jobs,
                "delivery_p50_ms": p50, "delivery_p99_ms": p99,
            }))?
        );
    } else {
        println!(
            "actions: {} jobs, concurrency {}: {:.0} jobs/s; delivery latency of {} paced jobs p50 {:.1} ms, p99 {:.1} ms",
            args.jobs,
            args.concurrency,
            jobs_per_s,
            latency_jobs,
            p50.unwrap_or(f64::NAN),
            p99.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
