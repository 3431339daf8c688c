//! `beacon bench query`: how fast a query node answers the dashboard's
//! questions about a day of events, and how soon an event sent to the
//! collector can be counted by a query.
//!
//! One process runs the collector, an aggregator and a query node on its own
//! nats-server. A day of canonical events is published to `BEACON_EVENTS` and
//! counted; once the query node's view holds all of them, the dashboard's
//! requests are timed one after the other over a keep-alive connection. Then a
//! steady load is sent to the collector while a marker event goes in every
//! 100 ms and a query is polled until it counts each one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use beacon_rollup::Granularity;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::aggregate::{PARTITIONS, events_over_days, publish_events};
use super::{
    BenchNats, READ_KEY, SITE, Target, bench_config, http_ingest, post_events, sample_events,
};
use crate::services::{self, Roles};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Events the queries read (over `--days`).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Days the events are spread over, ending now.
    #[arg(long, default_value_t = 1)]
    pub days: usize,
    /// Events per day: sets `--events` to days × this.
    #[arg(long)]
    pub events_per_day: Option<usize>,
    /// Distinct users behind them.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Sequential query requests to time.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Events/s sent to the collector while freshness is measured.
    #[arg(long, default_value_t = 20_000)]
    pub rate: usize,
    /// How long the freshness load lasts.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// A short run (20,000 events from 2,000 users, 200 requests, 2,000 events/s
    /// for 5 s) that checks every figure can be measured.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Leave the dashboard's lists uncounted until asked
    /// (`query.breakdown_count_ahead = false`), to compare with counting ahead.
    #[arg(long)]
    pub no_count_ahead: bool,
}

/// Events per HTTP request of the freshness load, and requests in flight.
const BATCH: usize = 100;
const CONCURRENCY: usize = 32;
/// How often a marker is sent, how often the query is polled for it, and how
/// long it may take to show before it counts as missed.
const MARKER_EVERY: Duration = Duration::from_millis(100);
const POLL_EVERY: Duration = Duration::from_millis(5);
const MISSED_AFTER: Duration = Duration::from_secs(10);
/// The marker events' name and their one user (one user: one partition, so
/// markers are counted in the order they were sent).
const MARKER: &str = "fresh";
const MARKER_USER: &str = "bench-freshness-probe";
/// The goals the figures are reported against.
const QUERY_P99_GOAL_MS: f64 = 10.0;
const FRESHNESS_P99_GOAL_MS: f64 = 1000.0;

pub async fn run(mut args: QueryArgs, target: &Target) -> anyhow::Result<()> {
    if args.days == 0 {
        bail!("--days must be positive");
    }
    if let Some(per_day) = args.events_per_day {
        args.events = per_day.saturating_mul(args.days);
    }
    if args.quick {
        args.events = args.events.min(20_000);
        args.users = args.users.min(2_000);
        args.requests = args.requests.min(200);
        args.rate = args.rate.min(2_000);
        args.seconds = args.seconds.min(5);
    }
    if args.events == 0 || args.users == 0 || args.requests == 0 || args.rate == 0 {
        bail!("--events, --users, --requests and --rate must be positive");
    }
    if args.seconds == 0 {
        bail!("--seconds must be positive");
    }
    let nats = BenchNats::own(target, "query").await?;
    let mut config = bench_config(nats.urls.clone())?;
    config.streams.partitions = PARTITIONS;
    config.query.breakdown_count_ahead = !args.no_count_ahead;
    let (stop, shutdown) = watch::channel(false);
    let roles = Roles {
        collector: true,
        aggregator: true,
        query: true,
        ..Roles::NONE
    };
    let running = match services::start(&config, roles, None, shutdown).await {
        Ok(running) => running,
        Err(e) => {
            nats.stop().await;
            return Err(e);
        }
    };
    let addr = running.collector_addr.context("collector did not start")?;
    let mut measured = None;
    let services_result = running
        .run_until(stop, async {
            measured = Some(measure(&args, &nats.urls, addr).await);
        })
        .await;
    nats.stop().await;
    let report = match measured {
        Some(report) => report?,
        None => {
            services_result?;
            bail!("the services stopped before the measurement ended");
        }
    };
    services_result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json(&args))?);
    } else {
        report.print(&args);
    }
    Ok(())
}

/// Everything measured.
struct Report {
    /// Seconds from the first publish until the query node counted the whole day.
    queryable_after: f64,
    /// Seconds from the first publish until its live feed had read them all.
    live_after: f64,
    /// Per request kind: its name, latencies (sorted) and response size.
    kinds: Vec<Kind>,
    all: Vec<Duration>,
    load_rate: f64,
    markers: usize,
    freshness: Vec<Duration>,
    misses: usize,
}

pub(super) struct Kind {
    name: &'static str,
    what: &'static str,
    latencies: Vec<Duration>,
    bytes: usize,
}

async fn measure(args: &QueryArgs, urls: &[String], addr: SocketAddr) -> anyhow::Result<Report> {
    let client = async_nats::connect(urls.to_vec()).await?;
    let js = jetstream::new(client);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY + 2)
        .build()?;
    let api = format!("http://{addr}/api/v1/sites/{SITE}");

    // The range: from the start of the first event's minute to just after the
    // last. Over more than a day, from the start of its hour: minute buckets
    // are kept 48 hours, and a range starting on a minute they no longer hold
    // is answered by the event store instead of the rollups.
    let events = events_over_days(args.events, args.users, args.days);
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        bail!("no events");
    };
    let first_bucket = if args.days > 1 {
        Granularity::Hour
    } else {
        Granularity::Minute
    };
    let from = rfc3339(first_bucket.bucket_start(first.ts.timestamp_millis()));
    let to = rfc3339(last.ts.timestamp_millis() + 1);
    let started = Instant::now();
    let published = publish_events(&js, &events).await?;
    drop(events);
    eprintln!(
        "published {} events from {} users over {} day(s) ({published:.0} events/s)",
        args.events, args.users, args.days
    );
    let whole_day = format!("{api}/timeseries?from={from}&to={to}&interval=1h&metrics=events");
    let counted = |v: &Value| v["totals"]["events"].as_u64() == Some(args.events as u64);
    until(
        &http,
        &whole_day,
        started,
        "the query node to count the day",
        counted,
    )
    .await?;
    let queryable_after = started.elapsed().as_secs_f64();
    eprintln!("the query node counts all of them after {queryable_after:.1} s");
    // The node's live feed reads the same events from the stream; time the
    // queries only once it is through them too, so the node is otherwise idle.
    let last = js
        .get_stream(beacon_nats::EVENTS_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let read = |v: &Value| v["last_seq"].as_u64() >= Some(last);
    until(
        &http,
        &format!("{api}/live"),
        started,
        "the live feed to reach the stream's end",
        read,
    )
    .await?;
    let live_after = started.elapsed().as_secs_f64();
    eprintln!("its live feed has read them all after {live_after:.1} s");
    // The store's questions read segments, and the stream's tail only above
    // them: time them once the writers have committed every event, as a
    // node serving steady traffic holds at most a flush interval in its tail.
    let committed = |v: &Value| v["store_lag"].as_u64() == Some(0);
    let status = format!("http://{addr}/api/v1/status");
    until(
        &http,
        &status,
        started,
        "the event store to commit the day",
        committed,
    )
    .await?;
    eprintln!(
        "the event store has committed them all after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (kinds, all) = latencies(&http, &api, &from, &to, args, Questions::All).await?;
    eprintln!(
        "{} requests: p99 {:.2} ms",
        args.requests,
        quantile_ms(&all, 0.99).unwrap_or(f64::NAN)
    );

    let (load_rate, markers, freshness, misses) = freshness(&http, addr, &api, args).await?;
    Ok(Report {
        queryable_after,
        live_after,
        kinds,
        all,
        load_rate,
        markers,
        freshness,
        misses,
    })
}

/// An instant as RFC 3339 in UTC, as the query API takes it.
fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// GET `url` with the read key; the status and the whole body.
async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<(reqwest::StatusCode, Bytes)> {
    let response = http.get(url).bearer_auth(READ_KEY).send().await?;
    let status = response.status();
    Ok((status, response.bytes().await?))
}

/// Ask `url` every 100 ms until a 2xx JSON answer is `done`; fail if
/// `waiting_for` has not happened 30 minutes after `started`.
async fn until(
    http: &reqwest::Client,
    url: &str,
    started: Instant,
    waiting_for: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    loop {
        let (status, body) = get(http, url).await?;
        let answer = serde_json::from_slice::<Value>(&body).ok();
        if status.is_success() && answer.as_ref().is_some_and(&done) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            let text = String::from_utf8_lossy(&body);
            let excerpt: String = text.chars().take(300).collect();
            bail!("waited 30 minutes for {waiting_for}; the last answer was {status}: {excerpt}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which questions [`latencies`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Questions {
    /// The unfiltered questions the rollups answer: the dashboard's time
    /// series, and breakdowns ranked by events (the dashboard's lists rank
    /// by visitors, which the event store answers).
    Rollups,
    /// Those and the filtered ones the event store answers.
    All,
}

/// Send the dashboard's requests in turn, `args.requests` in all, each timed
/// from sending to the last byte of its answer. The first answer of each kind
/// is checked against the day.
pub(super) async fn latencies(
    http: &reqwest::Client,
    api: &str,
    from: &str,
    to: &str,
    args: &QueryArgs,
    asked: Questions,
) -> anyhow::Result<(Vec<Kind>, Vec<Duration>)> {
    let range = format!("from={from}&to={to}");
    // Ranked by events alone, a breakdown is the rollups' question.
    let by_events = "metric=events&metrics=events";
    let requests = [
        // By minute over a day; by hour over more (a series has at most 1,500 points).
        if args.days > 1 {
            (
                "timeseries_1h",
                "timeseries of the days by hour",
                format!("{api}/timeseries?{range}&interval=1h"),
            )
        } else {
            (
                "timeseries_1m",
                "timeseries of the day by minute",
                format!("{api}/timeseries?{range}&interval=1m"),
            )
        },
        // The dashboard's cards: every metric, and the period before (which
        // the summary adds of itself while the rollups still hold it).
        (
            "summary_every_metric",
            "summary, every metric",
            format!(
                "{api}/summary?{range}&metrics=users,pageviews,events,sessions,bounce_rate,avg_session_duration,revenue,avg_engaged_time,avg_scroll_depth,filtered"
            ),
        ),
        (
            "breakdown_path",
            "breakdown by path",
            format!("{api}/breakdown?{range}&dimension=path&{by_events}"),
        ),
        (
            "breakdown_referrer_source",
            "breakdown by referrer source",
            format!("{api}/breakdown?{range}&dimension=referrer_source&{by_events}"),
        ),
        (
            "breakdown_browser",
            "breakdown by browser",
            format!("{api}/breakdown?{range}&dimension=browser&{by_events}"),
        ),
        // The dashboard's lists rank by visitors, which only the store counts per value.
        (
            VISITOR_BREAKDOWN,
            "breakdown by path, by visitors (store)",
            format!(
                "{api}/breakdown?{range}&dimension=path&limit=10&metric=users&metrics=users,events,pageviews"
            ),
        ),
        // The same list as a plain scan of the range (a filter every event
        // passes keeps the node from answering it from the days it keeps).
        (
            VISITOR_BREAKDOWN_SCANNED,
            "the same list, scanned (reference)",
            format!(
                "{api}/breakdown?{range}&dimension=path&limit=10&metric=users&metrics=users,events,pageviews&filters=name%21%3D~none~"
            ),
        ),
        (
            FILTERED_SUMMARY,
            "summary, 2 filters, every metric (store)",
            format!(
                "{api}/summary?{range}&metrics=events,users,pageviews,sessions,bounce_rate,avg_session_duration,revenue,conversion_rate&filters=country%3D%3DDE%7CUS%3Bbrowser%21%3DEdge"
            ),
        ),
        (
            PROPERTY_BREAKDOWN,
            "breakdown by a property (store)",
            format!("{api}/breakdown?{range}&dimension=props.plan&metrics=users,events,revenue"),
        ),
        (
            FUNNEL,
            "3-step funnel, 1-day window (store)",
            format!(
                "{api}/funnel?{range}&steps=path%3A%2F*%3Bevent%3Asignup%3Bevent%3Apurchase&window=1d"
            ),
        ),
        (
            RETENTION,
            "retention table by day (store)",
            format!("{api}/retention?{range}&period=day"),
        ),
    ];
    let requests: Vec<_> = requests
        .into_iter()
        .filter(|(name, ..)| asked == Questions::All || !is_store(name))
        .collect();
    let mut kinds: Vec<Kind> = requests
        .iter()
        .map(|&(name, what, _)| Kind {
            name,
            what,
            latencies: Vec::new(),
            bytes: 0,
        })
        .collect();
    let mut all = Vec::with_capacity(args.requests);
    for i in 0..args.requests {
        let k = i % requests.len();
        let url = &requests[k].2;
        let sent = Instant::now();
        let (status, body) = get(http, url).await?;
        let took = sent.elapsed();
        if !status.is_success() {
            bail!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let kind = &mut kinds[k];
        if kind.latencies.is_empty() {
            check_answer(kind.name, &body, args.events)?;
        }
        kind.latencies.push(took);
        kind.bytes = body.len();
        // The goal is the rollups': the store's questions are reported beside it.
        if !is_store(kind.name) {
            all.push(took);
        }
    }
    for kind in &mut kinds {
        kind.latencies.sort();
    }
    all.sort();
    Ok((kinds, all))
}

/// The filtered questions, answered from the event store.
const VISITOR_BREAKDOWN: &str = "breakdown_path_by_visitors";
const VISITOR_BREAKDOWN_SCANNED: &str = "breakdown_path_by_visitors_scanned";
const FILTERED_SUMMARY: &str = "summary_two_filters_every_metric";
const PROPERTY_BREAKDOWN: &str = "breakdown_property";
const FUNNEL: &str = "funnel_three_steps";
const RETENTION: &str = "retention_by_day";

fn is_store(kind: &str) -> bool {
    [
        VISITOR_BREAKDOWN,
        VISITOR_BREAKDOWN_SCANNED,
        FILTERED_SUMMARY,
        PROPERTY_BREAKDOWN,
        FUNNEL,
        RETENTION,
    ]
    .contains(&kind)
}

/// Whether an answer comes from where its kind should (the rollups or the store)
/// and, from the rollups, counts the whole day, so its time is that of a real answer.
fn check_answer(kind: &str, body: &[u8], events: usize) -> anyhow::Result<()> {
    let answer: Value = serde_json::from_slice(body)?;
    let source = if is_store(kind) { "store" } else { "rollups" };
    if answer["source"] != source {
        bail!(
            "{kind} was answered from {} rather than the {source}",
            answer["source"]
        );
    }
    if is_store(kind) {
        return Ok(());
    }
    let (total, rows) = if kind.starts_with("timeseries") {
        (&answer["totals"]["events"], &answer["points"])
    } else if kind.starts_with("summary") {
        (&answer["metrics"]["events"]["value"], &answer["metrics"])
    } else {
        (&answer["total"], &answer["rows"])
    };
    // Points or rows; for a summary, its figures.
    let rows = rows
        .as_array()
        .map(Vec::len)
        .or_else(|| rows.as_object().map(serde_json::Map::len))
        .unwrap_or(0);
    if total.as_u64() != Some(events as u64) || rows == 0 {
        bail!("{kind} counted {total} of {events} events in {rows} rows");
    }
    Ok(())
}

/// Send a steady load to the collector for `args.seconds` with a marker event
/// every 100 ms, and poll a query until it counts each marker. Returns the
/// load's events/s, the markers sent, the delays from each marker's 2xx to its
/// first query that counted it (sorted), and the markers never seen in time.
pub(super) async fn freshness(
    http: &reqwest::Client,
    addr: SocketAddr,
    api: &str,
    args: &QueryArgs,
) -> anyhow::Result<(f64, usize, Vec<Duration>, usize)> {
    let total = args.rate.saturating_mul(usize::try_from(args.seconds)?);
    let mut bodies = Vec::with_capacity(total.div_ceil(BATCH));
    let mut made = 0;
    while made < total {
        // In chunks, so the users vary without holding every event at once.
        let chunk = sample_events((total - made).min(10_000));
        made += chunk.len();
        for batch in chunk.chunks(BATCH) {
            bodies.push(Bytes::from(serde_json::to_vec(batch)?));
        }
    }
    let every = Duration::from_secs_f64(BATCH as f64 / args.rate as f64);
    eprintln!(
        "sending {total} events at {} events/s for {} s, a marker every {} ms",
        args.rate,
        args.seconds,
        MARKER_EVERY.as_millis()
    );

    let acked: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (sent_all, markers_done) = watch::channel(None);
    let load = http_ingest(addr, &bodies, CONCURRENCY, Some(every));
    let markers = async {
        let result = send_markers(http, addr, &acked, Duration::from_secs(args.seconds)).await;
        let sent = acked.lock().map_or(0, |a| a.len());
        let _ = sent_all.send(Some(sent));
        result
    };
    let poll_url = format!("{api}/timeseries?from=-1h&interval=1h&metrics=events&name={MARKER}");
    let poll = poll_markers(http, &poll_url, &acked, markers_done);
    let (load, markers, visible) = tokio::join!(load, markers, poll);
    let (load_rate, accepted) = load?;
    markers?;
    let visible = visible?;
    if accepted != total {
        bail!("only {accepted} of the {total} load events were accepted");
    }

    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let mut delays: Vec<Duration> = acked
        .iter()
        .zip(&visible)
        .map(|(ack, seen)| seen.saturating_duration_since(*ack))
        .filter(|d| *d <= MISSED_AFTER)
        .collect();
    delays.sort();
    let misses = acked.len() - delays.len();
    Ok((load_rate, acked.len(), delays, misses))
}

/// Send one marker event every [`MARKER_EVERY`] over `duration`, each after
/// the previous one's answer, recording when each 2xx arrived.
async fn send_markers(
    http: &reqwest::Client,
    addr: SocketAddr,
    acked: &Mutex<Vec<Instant>>,
    duration: Duration,
) -> anyhow::Result<()> {
    let url = format!("http://{addr}/api/v1/events");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tick = tokio::time::interval(MARKER_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let count = (duration.as_millis() / MARKER_EVERY.as_millis()).max(1);
    for n in 0..count {
        tick.tick().await;
        let body = json!([{"id": format!("{run}-{n}"), "name": MARKER, "user_id": MARKER_USER}]);
        let accepted = post_events(http, &url, Bytes::from(serde_json::to_vec(&body)?)).await?;
        let at = Instant::now();
        if accepted != 1 {
            bail!("marker {n} was not accepted");
        }
        acked
            .lock()
            .map_err(|_| anyhow::anyhow!("marker list poisoned"))?
            .push(at);
    }
    Ok(())
}

/// Poll the markers' count every [`POLL_EVERY`]; the instant each marker was
/// first counted, in order. Markers go to one partition one after the other,
/// so a count of `k` means the first `k` markers are all counted. Stops once
/// every marker sent is seen, or [`MISSED_AFTER`] after the last one's answer.
async fn poll_markers(
    http: &reqwest::Client,
    url: &str,
    acked: &Mutex<Vec<Instant>>,
    mut done: watch::Receiver<Option<usize>>,
) -> anyhow::Result<Vec<Instant>> {
    let mut visible = Vec::new();
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (status, body) = get(http, url).await?;
        let now = Instant::now();
        if !status.is_success() {
            bail!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let answer: Value = serde_json::from_slice(&body)?;
        let counted = answer["totals"]["events"]
            .as_u64()
            .context("no events total in the marker query's answer")?;
        while (visible.len() as u64) < counted {
            visible.push(now);
        }
        if let Some(sent) = *done.borrow_and_update() {
            let last = acked.lock().ok().and_then(|a| a.last().copied());
            if visible.len() >= sent || last.is_none_or(|l| now.duration_since(l) > MISSED_AFTER) {
                return Ok(visible);
            }
        }
    }
}

/// The `q` quantile (nearest rank) of sorted durations, in milliseconds.
pub(super) fn quantile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).map(|d| d.as_secs_f64() * 1000.0)
}

fn ms3(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |ms| json!((ms * 1000.0).round() / 1000.0))
}

impl Report {
    /// Every request timed, the store's questions included.
    fn requests(&self) -> usize {
        self.kinds.iter().map(|k| k.latencies.len()).sum()
    }

    fn to_json(&self, args: &QueryArgs) -> Value {
        let by_kind: serde_json::Map<String, Value> = self
            .kinds
            .iter()
            .map(|k| {
                (
                    k.name.to_owned(),
                    json!({
                        "requests": k.latencies.len(),
                        "p50_ms": ms3(quantile_ms(&k.latencies, 0.5)),
                        "p99_ms": ms3(quantile_ms(&k.latencies, 0.99)),
                        "response_bytes": k.bytes,
                    }),
                )
            })
            .collect();
        json!({
            "events": args.events, "users": args.users, "days": args.days, "partitions": PARTITIONS,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "queryable_after_seconds": (self.queryable_after * 100.0).round() / 100.0,
            "live_caught_up_after_seconds": (self.live_after * 100.0).round() / 100.0,
            "requests": self.requests(),
            "query_p50_ms": ms3(quantile_ms(&self.all, 0.5)),
            "query_p99_ms": ms3(quantile_ms(&self.all, 0.99)),
            "query_p99_goal_ms": QUERY_P99_GOAL_MS,
            "by_request": by_kind,
            "load_target_events_per_sec": args.rate,
            "load_events_per_sec": self.load_rate.round(),
            "load_seconds": args.seconds,
            "freshness_markers": self.markers,
            "freshness_misses": self.misses,
            "freshness_p50_ms": ms3(quantile_ms(&self.freshness, 0.5)),
            "freshness_p99_ms": ms3(quantile_ms(&self.freshness, 0.99)),
            "freshness_p99_goal_ms": FRESHNESS_P99_GOAL_MS,
        })
    }

    fn print(&self, args: &QueryArgs) {
        println!(
            "\nbeacon bench query: {} events from {} users over {} day(s), {PARTITIONS} partitions; collector, aggregator and query node in one process",
            args.events, args.users, args.days
        );
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |ms| format!("{ms:.2} ms"));
        let goal = |v: Option<f64>, goal: f64| match v {
            Some(v) if v < goal => "met",
            Some(_) => "NOT met",
            None => "-",
        };
        println!(
            "\n{} sequential requests over one keep-alive connection",
            self.requests()
        );
        println!(
            "{:<44} {:>10} {:>10} {:>10}",
            "request", "p50", "p99", "answer"
        );
        for k in &self.kinds {
            println!(
                "{:<44} {:>10} {:>10} {:>8} KB",
                k.what,
                ms(quantile_ms(&k.latencies, 0.5)),
                ms(quantile_ms(&k.latencies, 0.99)),
                k.bytes.div_ceil(1024)
            );
        }
        let p99 = quantile_ms(&self.all, 0.99);
        println!(
            "{:<44} {:>10} {:>10}   goal p99 < {QUERY_P99_GOAL_MS} ms: {}",
            "all rollup requests",
            ms(quantile_ms(&self.all, 0.5)),
            ms(p99),
            goal(p99, QUERY_P99_GOAL_MS)
        );
        println!(
            "\nfreshness under {:.0} events/s ({} asked) for {} s: collector 2xx → counted by a query",
            self.load_rate, args.rate, args.seconds
        );
        let p99 = quantile_ms(&self.freshness, 0.99);
        println!(
            "{:<44} {:>10} {:>10}   goal p99 < {FRESHNESS_P99_GOAL_MS} ms: {}",
            format!("{} markers, {} missed", self.markers, self.misses),
            ms(quantile_ms(&self.freshness, 0.5)),
            ms(p99),
            goal(p99, FRESHNESS_P99_GOAL_MS)
        );
        println!(
            "\nthe whole day was counted by queries {:.1} s after its first publish, and read by the live feed after {:.1} s",
            self.queryable_after, self.live_after
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&v, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&v, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&v[..1], 0.99), Some(1.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }
}
