//! `beacon simulate`: realistic traffic for a site, sent through the real
//! ingest paths (HTTP batches to the collector, or JetStream publishes to
//! `beacon.ingest.<site>`), at a target rate or as fast as possible, and the
//! exact ground truth of what was accepted. With `--shuffle` a share of the
//! events arrives late, in shuffled batches, as real SDKs and collectors send.

pub mod traffic;
pub mod truth;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use self::traffic::{SimEvent, Traffic};
use self::truth::{Figures, GroundTruth, TruthFile, minute_of, utc};
use crate::config::Config;
use crate::verify::Api;

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
    /// Read key, for a single site, to ask what Beacon counted in the
    /// simulated period before (default: each site's first read key).
    #[arg(long, env = "BEACON_READ_KEY")]
    pub read_key: Option<String>,
    /// Send out of order: a share of the events (--late-share) arrives up to
    /// --late-by after its event time, and every batch is shuffled.
    #[arg(long)]
    pub shuffle: bool,
    /// With --shuffle: the share of events that arrive late.
    #[arg(long, default_value_t = 0.2, requires = "shuffle")]
    pub late_share: f64,
    /// With --shuffle: how late, at most, in event time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m", requires = "shuffle")]
    pub late_by: Duration,
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
    /// Index in the batch of each event Beacon stored for this run: answered
    /// `accepted`, or `duplicate` after an attempt of ours whose answer was
    /// lost (that attempt stored it).
    accepted: Vec<usize>,
    /// Events Beacon had stored before this run sent them.
    duplicates: Vec<usize>,
    rejected: Vec<(usize, String)>,
}

pub async fn run(config: Config, args: SimulateArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.users == 0 || args.batch == 0 {
        bail!("--rate, --users and --batch must be positive");
    }
    if !(0.0..=1.0).contains(&args.late_share) || args.late_by.is_zero() {
        bail!("--late-share must be between 0 and 1, and --late-by positive");
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
    let traffic = Traffic::new(args.seed, args.users, sites.len(), start_ms, args.rate);
    let run = traffic.run().to_owned();
    // The simulated period, whole minutes: what verify asks about.
    let range = (
        minute_of(start_ms),
        minute_of(traffic.time_of(total.saturating_sub(1))) + 60_000,
    );
    let events = in_sending_order(traffic.take(total as usize), &args);
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
        let before = vec![Figures::default(); sites.len()];
        return finish(
            &args,
            &run,
            &sites,
            range,
            &before,
            &events,
            Tally::default(),
        );
    }

    // What Beacon already counted in the period, so that verify compares only
    // what this run adds.
    let mut before = Vec::with_capacity(sites.len());
    for site in &sites {
        let read_key = match &args.read_key {
            Some(_) if sites.len() > 1 => {
                bail!(
                    "--read-key is for one site; with several, each site's key comes from the config"
                )
            }
            key => key.as_deref(),
        };
        let api = Api::new(&config, args.url.as_deref(), read_key, site)?;
        api.wait_counted(Duration::from_secs(60))
            .await
            .context("simulate asks the query API (--url) what Beacon counted before it sends")?;
        let (figures, _) = api.figures(site, &utc(range.0), &utc(range.1)).await?;
        before.push(figures);
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
    let shuffle = args.shuffle.then(|| StdRng::seed_from_u64(args.seed));
    let batches = futures::stream::iter(batches(events, sites.len(), args.batch, shuffle))
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
    let mut tally = Tally::default();
    while let Some((batch, sent)) = batches.next().await {
        let sent = sent?;
        for (i, reason) in &sent.rejected {
            tally.rejected += 1;
            if tally.rejected <= 5 {
                bar.println(format!("rejected {}: {reason}", batch[*i].id));
            }
        }
        tally.duplicates += sent.duplicates.len();
        bar.inc(batch.len() as u64);
        accepted.extend(sent.accepted.into_iter().map(|i| batch[i].clone()));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "sent {total} events via {:?} in {seconds:.1} s ({:.0} events/s): {} accepted, {} duplicates, {} rejected",
        args.via,
        total as f64 / seconds.max(1e-9),
        accepted.len(),
        tally.duplicates,
        tally.rejected,
    );
    if tally.duplicates > 0 {
        eprintln!(
            "{} events were stored before this run (the same --seed and --start again?): \
             left out of the truth, which counts what this run added",
            tally.duplicates
        );
    }
    finish(&args, &run, &sites, range, &before, &accepted, tally)
}

/// Events that were not stored as this run's own.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    duplicates: usize,
    rejected: usize,
}

fn finish(
    args: &SimulateArgs,
    run: &str,
    sites: &[String],
    range: (i64, i64),
    before: &[Figures],
    accepted: &[SimEvent],
    tally: Tally,
) -> anyhow::Result<()> {
    let file = TruthFile {
        seed: args.seed,
        run: run.to_owned(),
        sites: sites
            .iter()
            .zip(before)
            .enumerate()
            .map(|(i, (site, before))| {
                let of_site: Vec<&SimEvent> = accepted.iter().filter(|e| e.site == i).collect();
                GroundTruth {
                    site: site.clone(),
                    from: utc(range.0),
                    to: utc(range.1),
                    sent: Figures::of(&of_site),
                    before: before.clone(),
                }
            })
            .collect(),
    };
    for truth in &file.sites {
        let sent = &truth.sent;
        println!(
            "site {}  events {}  users {}  pageviews {}  sessions {}  bounces {}  revenue {}  from {} to {}",
            truth.site,
            sent.events,
            sent.unique_users,
            sent.pageviews,
            sent.sessions,
            sent.bounces,
            sent.revenue
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
    if tally.rejected > 0 {
        bail!(
            "{} events were rejected (left out of the truth)",
            tally.rejected
        );
    }
    Ok(())
}

/// The events in the order they are sent: as generated, or with `--shuffle`
/// a share of them held back until up to `--late-by` of event time has
/// passed after their own (then batches are shuffled too, in `batches`).
fn in_sending_order(
    events: impl Iterator<Item = SimEvent>,
    args: &SimulateArgs,
) -> impl Iterator<Item = SimEvent> {
    /// An event held back, due when the generated events reach `due`.
    struct Late {
        due: i64,
        n: u64,
        event: SimEvent,
    }
    impl PartialEq for Late {
        fn eq(&self, other: &Self) -> bool {
            (self.due, self.n) == (other.due, other.n)
        }
    }
    impl Eq for Late {}
    impl PartialOrd for Late {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Late {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.due, self.n).cmp(&(other.due, other.n))
        }
    }

    let share = if args.shuffle { args.late_share } else { 0.0 };
    let late_by = i64::try_from(args.late_by.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    // Its own stream of randomness, so the events themselves do not change.
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed_1a7e);
    let mut events = events.peekable();
    let mut held: BinaryHeap<Reverse<Late>> = BinaryHeap::new();
    let mut n = 0;
    std::iter::from_fn(move || {
        loop {
            let now = events.peek().map(|e| e.ts_ms);
            if let Some(Reverse(first)) = held.peek()
                && now.is_none_or(|t| first.due <= t)
            {
                return held.pop().map(|Reverse(late)| late.event);
            }
            let event = events.next()?;
            if share > 0.0 && rng.random_bool(share) {
                n += 1;
                held.push(Reverse(Late {
                    due: event.ts_ms.saturating_add(rng.random_range(1..=late_by)),
                    n,
                    event,
                }));
                continue;
            }
            return Some(event);
        }
    })
}

/// Batches of at most `n` events of one site each, in the order their last
/// event was generated, with the number of events generated before each
/// batch was complete (for pacing).
fn batches(
    events: impl Iterator<Item = SimEvent>,
    sites: usize,
    n: usize,
    mut shuffle: Option<StdRng>,
) -> impl Iterator<Item = (usize, Vec<SimEvent>)> {
    let mut events = events.into_iter();
    let mut open: Vec<Vec<SimEvent>> = vec![Vec::new(); sites.max(1)];
    let mut generated = 0;
    let mut next = move || {
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
    };
    std::iter::from_fn(move || {
        let (generated, mut batch) = next()?;
        if let Some(rng) = &mut shuffle {
            batch.shuffle(rng);
        }
        Some((generated, batch))
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
            match self.try_send(batch, attempt > 0).await {
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

    /// One attempt. On a `retry`, a duplicate is an event our failed attempt
    /// stored (the ids are this run's), so it counts as accepted, as Beacon's
    /// own publisher counts it.
    async fn try_send(&self, batch: &[SimEvent], retry: bool) -> anyhow::Result<Sent> {
        let mut sent = Sent {
            accepted: Vec::new(),
            duplicates: Vec::new(),
            rejected: Vec::new(),
        };
        let mut stored = |i: usize, duplicate: bool| {
            if duplicate && !retry {
                sent.duplicates.push(i);
            } else {
                sent.accepted.push(i);
            }
        };
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
                let mut rejected = Vec::new();
                for result in answer["results"].as_array().into_iter().flatten() {
                    let Some(i) = result["index"]
                        .as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .filter(|i| *i < batch.len())
                    else {
                        bail!("the collector answered a result without a valid index: {result}");
                    };
                    match result["status"].as_str() {
                        Some("accepted") => stored(i, false),
                        Some("duplicate") => stored(i, true),
                        _ => rejected.push((i, result["message"].to_string())),
                    }
                }
                sent.rejected = rejected;
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
                for (i, ack) in acks.into_iter().enumerate() {
                    stored(i, ack.await?.duplicate);
                }
                Ok(sent)
            }
        }
    }
}
