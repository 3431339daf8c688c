//! `beacon simulate`: realistic traffic for a site, sent through the real
//! ingest paths (HTTP batches to the collector, or JetStream publishes to
//! `beacon.ingest.<site>`), at a target rate or as fast as possible, and the
//! exact ground truth of what was accepted.

pub mod traffic;
pub mod truth;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use self::traffic::{SimEvent, Traffic};
use self::truth::{GroundTruth, TruthFile};
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// HTTP batches to the collector's `POST /api/v1/events`.
    Http,
    /// JetStream publishes to `beacon.ingest.<site>` (the normalizer's input).
    Nats,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Visitors.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Events per second of simulated time (and the sending rate unless --fast).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Simulated time to cover, e.g. 60s, 10m, 2h (events = rate × duration).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "events")]
    pub duration: Option<Duration>,
    /// Events to send (default: 60 seconds' worth at --rate).
    #[arg(long)]
    pub events: Option<u64>,
    /// Send as fast as Beacon takes them; event times still follow --rate and
    /// end now.
    #[arg(long)]
    pub fast: bool,
    /// Seed: the same seed, start and rate give the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time of the first event (RFC 3339; default now, or earlier with --fast).
    #[arg(long)]
    pub start: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Sites to send for, repeatable or comma-separated (default: the first
    /// site in the config). Each visitor belongs to one; the first site gets
    /// the most visitors, the second half as many, and so on.
    #[arg(long = "site", value_delimiter = ',')]
    pub sites: Vec<String>,
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,
    /// Collector URL (default: from collector.listen).
    #[arg(long, env = "BEACON_URL")]
    pub url: Option<String>,
    /// Write key, for a single site (default: each site's first write key in the config).
    #[arg(long, env = "BEACON_WRITE_KEY")]
    pub key: Option<String>,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Requests (or publishes, ×batch) in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Write the ground truth here (JSON) as well as summing it up.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Do not send: write the events (NDJSON) here instead.
    #[arg(long)]
    pub dry_run: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What came of sending one batch.
struct Sent {
    /// Index in the batch of each event Beacon accepted (or had already).
    accepted: Vec<usize>,
    rejected: Vec<(usize, String)>,
}

pub async fn run(config: Config, args: SimulateArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.users == 0 || args.batch == 0 {
        bail!("--rate, --users and --batch must be positive");
    }
    let total = match (args.events, args.duration) {
        (Some(n), _) => n,
        (None, Some(d)) => (d.as_secs_f64() * args.rate).round() as u64,
        (None, None) => (60.0 * args.rate).round() as u64,
    };
    let span_ms = (total as f64 / args.rate * 1000.0) as i64;
    let now = chrono::Utc::now().timestamp_millis();
    let start_ms = match (args.start, args.fast) {
        (Some(t), _) => t.timestamp_millis(),
        (None, true) => now - span_ms,
        (None, false) => now,
    };
    let sites =
        if args.sites.is_empty() {
            vec![
                config.sites.first().map(|s| s.id.clone()).context(
                    "no site: pass --site (or run `beacon up` first, which creates one)",
                )?,
            ]
        } else {
            args.sites.clone()
        };
    let events =
        Traffic::new(args.seed, args.users, sites.len(), start_ms, args.rate).take(total as usize);
    if let Some(path) = &args.dry_run {
        let events: Vec<SimEvent> = events.collect();
        let mut out = String::new();
        for e in &events {
            let mut line = e.to_json();
            line["site"] = sites[e.site].clone().into();
            out.push_str(&line.to_string());
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
        return finish(&args, &sites, &events, 0);
    }

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut senders = Vec::with_capacity(sites.len());
    for site in &sites {
        senders.push(Sender::new(&config, &args, site, sites.len()).await?);
    }
    let started = Instant::now();
    let pace = !args.fast;
    let batches = futures::stream::iter(batches(events, sites.len(), args.batch))
        .map(|(sent_before, batch)| {
            let sender = senders[batch[0].site].clone();
            let due = started + Duration::from_secs_f64(sent_before as f64 / args.rate);
            async move {
                if pace {
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = sender.send(&batch).await;
                (batch, sent)
            }
        })
        .buffered(args.concurrency.max(1));
    futures::pin_mut!(batches);
    let mut accepted = Vec::with_capacity(total as usize);
    let mut rejected = 0usize;
    while let Some((batch, sent)) = batches.next().await {
        let sent = sent?;
        for (i, reason) in &sent.rejected {
            rejected += 1;
            if rejected <= 5 {
                bar.println(format!("rejected {}: {reason}", batch[*i].id));
            }
        }
        bar.inc(batch.len() as u64);
        accepted.extend(sent.accepted.into_iter().map(|i| batch[i].clone()));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "sent {total} events via {:?} in {seconds:.1} s ({:.0} events/s): {} accepted, {rejected} rejected",
        args.via,
        total as f64 / seconds.max(1e-9),
        accepted.len(),
    );
    // Sent out of order across sites and batches: the truth takes them in event order.
    accepted.sort_by_key(|e| (e.ts_ms, e.id.clone()));
    finish(&args, &sites, &accepted, rejected)
}

fn finish(
    args: &SimulateArgs,
    sites: &[String],
    events: &[SimEvent],
    rejected: usize,
) -> anyhow::Result<()> {
    let file = TruthFile {
        seed: args.seed,
        sites: sites
            .iter()
            .enumerate()
            .map(|(i, site)| {
                let of_site: Vec<&SimEvent> = events.iter().filter(|e| e.site == i).collect();
                GroundTruth::of(site, &of_site)
            })
            .collect(),
    };
    for truth in &file.sites {
        println!(
            "site {}  events {}  users {}  pageviews {}  sessions {}  bounces {}  revenue {}  from {} to {}",
            truth.site,
            truth.events,
            truth.unique_users,
            truth.pageviews,
            truth.sessions,
            truth.bounces,
            truth
                .revenue
                .iter()
                .map(|(c, a)| format!("{a} {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            truth.from,
            truth.to
        );
    }
    if let Some(path) = &args.truth {
        let text = serde_json::to_string_pretty(&file)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("ground truth written to {}", path.display());
    }
    if rejected > 0 {
        bail!("{rejected} events were rejected (left out of the truth)");
    }
    Ok(())
}

/// Batches of at most `n` events of one site each, in the order their last
/// event was generated, with the number of events generated before each
/// batch was complete (for pacing).
fn batches(
    events: impl Iterator<Item = SimEvent>,
    sites: usize,
    n: usize,
) -> impl Iterator<Item = (usize, Vec<SimEvent>)> {
    let mut events = events.into_iter();
    let mut open: Vec<Vec<SimEvent>> = vec![Vec::new(); sites.max(1)];
    let mut generated = 0;
    std::iter::from_fn(move || {
        for e in events.by_ref() {
            generated += 1;
            let site = e.site;
            open[site].push(e);
            if open[site].len() >= n {
                return Some((generated, std::mem::take(&mut open[site])));
            }
        }
        // The rest of each site's events, once all are generated.
        let site = open.iter().position(|b| !b.is_empty())?;
        Some((generated, std::mem::take(&mut open[site])))
    })
}

/// Where events go.
#[derive(Clone)]
enum Sender {
    Http {
        client: reqwest::Client,
        endpoint: Arc<str>,
        key: Arc<str>,
    },
    Nats {
        js: async_nats::jetstream::Context,
        subject: Arc<str>,
    },
}

impl Sender {
    async fn new(
        config: &Config,
        args: &SimulateArgs,
        site: &str,
        sites: usize,
    ) -> anyhow::Result<Sender> {
        Ok(match args.via {
            Via::Http => {
                let key = match &args.key {
                    Some(_) if sites > 1 => {
                        bail!(
                            "--key is for one site; with several, each site's key comes from the config"
                        )
                    }
                    Some(k) => k.clone(),
                    None => config
                        .sites
                        .iter()
                        .find(|s| s.id == site)
                        .and_then(|s| s.write_keys.first().map(|k| k.expose().to_owned()))
                        .with_context(|| format!("no write key for site {site:?}: pass --key"))?,
                };
                let url = crate::send::collector_url(config, args.url.as_deref());
                Sender::Http {
                    client: reqwest::Client::new(),
                    endpoint: format!("{url}/api/v1/events").into(),
                    key: key.into(),
                }
            }
            Via::Nats => {
                if config.nats.urls.is_empty() {
                    bail!("--via nats needs a NATS URL: pass --nats-url or set nats.urls");
                }
                let client = beacon_nats::connect(&config.nats, "beacon-simulate").await?;
                Sender::Nats {
                    js: async_nats::jetstream::new(client),
                    subject: beacon_core::subject::ingest_subject(site).into(),
                }
            }
        })
    }

    /// Send one batch, retrying while Beacon is busy or away (the ids make
    /// a retry safe: an event stored already is answered as a duplicate).
    async fn send(&self, batch: &[SimEvent]) -> anyhow::Result<Sent> {
        let mut delay = Duration::from_millis(100);
        for attempt in 0.. {
            match self.try_send(batch).await {
                Ok(sent) => return Ok(sent),
                Err(e) if attempt < 20 => {
                    tracing::debug!(error = %e, "retrying a batch");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    async fn try_send(&self, batch: &[SimEvent]) -> anyhow::Result<Sent> {
        match self {
            Sender::Http {
                client,
                endpoint,
                key,
            } => {
                let body: Vec<Value> = batch.iter().map(SimEvent::to_json).collect();
                let response = client
                    .post(endpoint.as_ref())
                    .bearer_auth(key.as_ref())
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach the collector at {endpoint}"))?;
                let status = response.status();
                if status.as_u16() == 503 || status.as_u16() == 429 {
                    bail!("the collector answered {status}");
                }
                let answer: Value = response.json().await.context("the collector's answer")?;
                if !status.is_success() && answer["results"].is_null() {
                    bail!("the collector answered {status}: {answer}");
                }
                let mut sent = Sent {
                    accepted: Vec::new(),
                    rejected: Vec::new(),
                };
                for result in answer["results"].as_array().into_iter().flatten() {
                    let i = result["index"].as_u64().unwrap_or(0) as usize;
                    match result["status"].as_str() {
                        Some("accepted" | "duplicate") => sent.accepted.push(i),
                        _ => sent.rejected.push((i, result["message"].to_string())),
                    }
                }
                Ok(sent)
            }
            Sender::Nats { js, subject } => {
                let mut acks = Vec::with_capacity(batch.len());
                for e in batch {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", e.id.as_str());
                    let payload = Bytes::from(e.to_json().to_string());
                    acks.push(
                        js.publish_with_headers(subject.to_string(), headers, payload)
                            .await?,
                    );
                }
                for ack in acks {
                    ack.await?;
                }
                Ok(Sent {
                    accepted: (0..batch.len()).collect(),
                    rejected: Vec::new(),
                })
            }
        }
    }
}
