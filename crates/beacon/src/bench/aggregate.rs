//! `beacon bench aggregate`: how fast one aggregator process counts a day of
//! events from many users, what its commits cost, and how much memory it needs.
//! The events are published first; then an aggregator is started as its own
//! process and timed until every partition has committed all of them. This is
//! done twice: with the events in time order, and with a fifth of them
//! arriving up to ten minutes late (event-time sessions correct themselves).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use beacon_core::event::{Context, Event, Revenue};
use beacon_core::partition_of;
use beacon_core::subject::event_subject;
use beacon_nats::publish::Outgoing;
use beacon_rollup::Granularity;
use bytes::Bytes;
use clap::Args;
use serde_json::json;

use super::{BenchNats, Target, pipelined_publish};

#[derive(Debug, Args)]
pub struct AggregateArgs {
    /// Events in the day to count.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Distinct users behind them.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// A short run (50,000 events from 5,000 users) that checks every figure can be measured.
    #[arg(long)]
    pub quick: bool,
    /// Write no event store segments, to measure what writing them costs.
    #[arg(long)]
    pub no_store: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) const PARTITIONS: u32 = 16;
const SITE: &str = "bench";

pub async fn run(mut args: AggregateArgs, target: &Target) -> anyhow::Result<()> {
    if args.quick {
        args.events = args.events.min(50_000);
        args.users = args.users.min(5_000);
    }
    if args.events == 0 || args.users == 0 {
        bail!("--events and --users must be positive");
    }
    let in_order = day_of_events(args.events, args.users);
    let exact_users = in_order
        .iter()
        .filter_map(|e| e.user_id.as_deref())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut out_of_order = in_order.clone();
    arrive_late(&mut out_of_order);
    let store = !args.no_store;
    let a = measure(&in_order, target, "in order", store).await?;
    let b = measure(&out_of_order, target, "out of order", store).await?;
    // Both orders hold the same events, so event-time sessions must agree.
    if a.sessions != b.sessions {
        bail!(
            "session figures differ: (started, bounces, duration ms, page views) {:?} in order, {:?} out of order",
            a.sessions,
            b.sessions
        );
    }
    let user_error = (a.estimated_users - exact_users as f64).abs() / exact_users as f64;
    let ratio = b.rate / a.rate;
    let mb = |bytes: f64| (bytes / 1048576.0).round();
    let report = json!({
        "events": args.events, "users": args.users, "partitions": PARTITIONS,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "aggregate_events_per_sec": a.rate.round(),
        "aggregate_events_per_cpu_sec": a.per_cpu_second.round(),
        "cpu_seconds_per_million_events": (a.cpu_seconds / args.events as f64 * 1e6 * 100.0).round() / 100.0,
        "commit_seconds_p50_at_most": a.p50, "commit_seconds_p99_at_most": a.p99,
        "peak_rss_mb": a.memory.peak_kb / 1024, "rss_mb": a.memory.rss_kb / 1024,
        "state_bytes_estimate_mb": mb(a.state_bytes),
        "session_bytes_estimate_mb": mb(a.session_bytes),
        "sessions": a.sessions.0,
        "store": store,
        "segment_bytes_per_event": a.segment_bytes_per_event.map(|b| (b * 10.0).round() / 10.0),
        "segments": a.segments,
        "unique_users_exact": exact_users, "unique_users_estimated": a.estimated_users.round(),
        "unique_users_error_pct": (user_error * 10000.0).round() / 100.0,
        "out_of_order": {
            "late_share_pct": LATE_PER_MILLE / 10, "late_by_at_most_minutes": MAX_LATE_MS / 60_000,
            "aggregate_events_per_sec": b.rate.round(),
            "aggregate_events_per_cpu_sec": b.per_cpu_second.round(),
            "commit_seconds_p50_at_most": b.p50, "commit_seconds_p99_at_most": b.p99,
            "peak_rss_mb": b.memory.peak_kb / 1024,
            "state_bytes_estimate_mb": mb(b.state_bytes),
            "session_bytes_estimate_mb": mb(b.session_bytes),
            "session_late_events": b.session_late,
        },
        "out_of_order_throughput_ratio": (ratio * 1000.0).round() / 1000.0,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "\nbeacon bench aggregate: {} events from {} users over one day, {PARTITIONS} partitions, one aggregator process",
        args.events, args.users
    );
    println!(
        "out of order: {}% of the events arrive up to {} minutes late\n",
        LATE_PER_MILLE / 10,
        MAX_LATE_MS / 60_000
    );
    println!("{:<44} {:>16} {:>16}", "", "in order", "out of order");
    let row = |what: &str, a: String, b: String| println!("{what:<44} {a:>16} {b:>16}");
    row(
        "events/s applied and committed (wall clock)",
        format!("{:.0}", a.rate),
        format!("{:.0} ({:.0}%)", b.rate, ratio * 100.0),
    );
    row(
        "events per CPU-second of the aggregator",
        format!("{:.0}", a.per_cpu_second),
        format!("{:.0}", b.per_cpu_second),
    );
    let per_million = |m: &Measured| format!("{:.2}", m.cpu_seconds / args.events as f64 * 1e6);
    row(
        "CPU seconds per million events",
        per_million(&a),
        per_million(&b),
    );
    let ms = |q: Option<f64>| q.map_or("-".to_owned(), |s| format!("≤ {:.1} ms", s * 1000.0));
    row("commit latency p50", ms(a.p50), ms(b.p50));
    row("commit latency p99", ms(a.p99), ms(b.p99));
    let peak = |m: &Measured| format!("{} MB", m.memory.peak_kb / 1024);
    row("peak resident memory", peak(&a), peak(&b));
    let sessions = |m: &Measured| format!("{} MB", mb(m.session_bytes));
    row("remembered sessions (estimate)", sessions(&a), sessions(&b));
    row(
        "sessions counted",
        a.sessions.0.to_string(),
        b.sessions.0.to_string(),
    );
    let per_event = |m: &Measured| {
        m.segment_bytes_per_event
            .map_or("store off".to_owned(), |b| {
                format!("{b:.1} B ({} seg.)", m.segments)
            })
    };
    row("segment bytes per event", per_event(&a), per_event(&b));
    println!(
        "{:<44} {:>16}",
        "unique users: sketch / exact",
        format!(
            "{:.0} / {exact_users} ({:.2}%)",
            a.estimated_users,
            user_error * 100.0
        )
    );
    Ok(())
}

/// What one aggregator run measured.
struct Measured {
    rate: f64,
    per_cpu_second: f64,
    cpu_seconds: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    memory: Memory,
    state_bytes: f64,
    session_bytes: f64,
    estimated_users: f64,
    /// Sessions started, bounces, total duration (ms) and page views, over the day.
    sessions: (i64, i64, i64, i64),
    session_late: u64,
    /// Bytes of committed segments per event (with the store on).
    segment_bytes_per_event: Option<f64>,
    segments: usize,
}

/// Publish `events` in their order to a fresh nats-server, then time an
/// aggregator process until it has committed them all.
async fn measure(
    events: &[Event],
    target: &Target,
    order: &str,
    store: bool,
) -> anyhow::Result<Measured> {
    let nats = BenchNats::own(target, "aggregation").await?;
    let (client, js) = nats.provisioned().await?;
    let published = publish_events(&js, events).await?;
    eprintln!(
        "published {} events {order} ({published:.0} events/s)",
        events.len()
    );

    let config = nats.process_config(store)?;
    let (mut child, metrics_url) = spawn_aggregator(&config, &nats.urls.join(",")).await?;
    let pid = child.id().context("aggregator pid")?;
    let started = Instant::now();
    let mut stored = Vec::new();
    loop {
        // With the store on, every event must be in a committed segment too
        // (the last rows wait up to `store.flush_interval`; the CPU time
        // measured is what counts then, not the wall clock).
        let progress = beacon_aggregate::progress(&js, PARTITIONS).await?;
        if progress.iter().all(|p| p.lag() == 0) {
            if !store {
                break;
            }
            stored = beacon_aggregate::stored(&js, PARTITIONS).await?;
            if stored.iter().all(|s| s.lag() == 0) {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the aggregator did not catch up within 30 minutes: {progress:?}");
        }
        if let Some(exit) = child.try_wait()? {
            bail!("the aggregator exited early: {exit}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let memory = proc_status(pid)?;
    let cpu_seconds = proc_cpu_seconds(pid)?;
    let segment_rows: u64 = stored.iter().map(|s| s.rows).sum();
    let segment_bytes: u64 = stored.iter().map(|s| s.bytes).sum();
    if store && segment_rows != events.len() as u64 {
        bail!(
            "the segments hold {segment_rows} of {} events",
            events.len()
        );
    }
    // Owners estimate their state's size every 10 s: wait for a fresh estimate.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let metrics = reqwest::get(&metrics_url).await?.text().await?;
    let (p50, p99) = (
        histogram_quantile(&metrics, "beacon_aggregator_commit_seconds", 0.5),
        histogram_quantile(&metrics, "beacon_aggregator_commit_seconds", 0.99),
    );
    let state_bytes: f64 = metric_values(&metrics, "beacon_aggregator_state_bytes").sum();
    let session_bytes: f64 = metric_values(&metrics, "beacon_aggregator_session_bytes").sum();
    super::sigterm(pid);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;

    // The figures are only worth something if every event was counted.
    let view = beacon_aggregate::view(&js, PARTITIONS).await?;
    let day = view.total(SITE, Granularity::Day, i64::MIN..i64::MAX);
    let estimated_users = view.unique_users(SITE, Granularity::Day, i64::MIN..i64::MAX);
    let session_late = view.partitions().iter().map(|p| p.session_late).sum();
    drop(client);
    nats.stop().await;
    if day.total_events() != events.len() as i64 {
        bail!(
            "the aggregator counted {} of {} events",
            day.total_events(),
            events.len()
        );
    }
    let s = &day.sessions;
    Ok(Measured {
        rate: events.len() as f64 / elapsed,
        per_cpu_second: events.len() as f64 / cpu_seconds.max(1e-9),
        cpu_seconds,
        p50,
        p99,
        memory,
        state_bytes,
        session_bytes,
        estimated_users,
        sessions: (s.started, s.bounces, s.duration_ms, s.pageviews),
        session_late,
        segment_bytes_per_event: store.then(|| segment_bytes as f64 / segment_rows.max(1) as f64),
        segments: stored.iter().map(|s| s.segments).sum(),
    })
}

/// Share of events (per mille) that arrive late, and by how much at most.
const LATE_PER_MILLE: u64 = 200;
const MAX_LATE_MS: i64 = 10 * 60_000;

/// Reorder a day of events as they would arrive from SDKs that batch and
/// phones that flush later: every event chosen (by a hash of its place, so
/// every run is the same) arrives up to [`MAX_LATE_MS`] after its event time;
/// the others keep their order.
fn arrive_late(events: &mut [Event]) {
    let mut arrival: Vec<(i64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            // A multiplicative hash and a fold, as in `day_of_events`.
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let h = h ^ (h >> 29);
            let delay = if h % 1000 < LATE_PER_MILLE {
                1 + ((h >> 10) % MAX_LATE_MS as u64) as i64
            } else {
                0
            };
            (e.ts.timestamp_millis() + delay, i)
        })
        .collect();
    arrival.sort_by_key(|(at, _)| *at);
    let ordered: Vec<Event> = arrival.iter().map(|(_, i)| events[*i].clone()).collect();
    events.clone_from_slice(&ordered);
}

/// A day of traffic ending now: page views over a catalogue with a few popular
/// pages, clicks, sign-ups and purchases in three currencies.
pub(super) fn day_of_events(n: usize, users: usize) -> Vec<Event> {
    events_over_days(n, users, 1)
}

/// `n` events from `users` users spread evenly over the `days` days before
/// now, a third of them with a `plan` property.
pub(super) fn events_over_days(n: usize, users: usize, days: usize) -> Vec<Event> {
    const NAMES: [&str; 8] = [
        "pageview",
        "pageview",
        "pageview",
        "pageview",
        "click",
        "signup",
        "add_to_cart",
        "purchase",
    ];
    const SOURCES: [&str; 5] = ["Direct", "Google", "Bing", "twitter.com", "newsletter"];
    const BROWSERS: [(&str, &str, &str); 4] = [
        ("Chrome", "Windows 10", "pc"),
        ("Safari", "iPhone", "smartphone"),
        ("Firefox", "Linux", "pc"),
        ("Edge", "Windows 11", "pc"),
    ];
    let now = chrono::Utc::now().timestamp_millis();
    let span = 86_400_000 * days.max(1) as i64;
    let step = span / n.max(1) as i64;
    (0..n)
        .map(|i| {
            // Knuth's multiplicative hash spreads users without a random source,
            // so every run counts the same events.
            let h = (i as u64).wrapping_mul(2_654_435_761) >> 7;
            let user = (h as usize) % users;
            let name = NAMES[i % NAMES.len()];
            let page = ((h >> 20) % 40) as usize;
            let page = if page < 30 { page % 6 } else { page };
            let (browser, os, device) = BROWSERS[user % BROWSERS.len()];
            let user_id = format!("user-{user}");
            let ts = chrono::DateTime::from_timestamp_millis(now - span + i as i64 * step)
                .unwrap_or_default();
            Event {
                id: format!("bench-{i}"),
                site: SITE.to_owned(),
                name: name.to_owned(),
                partition: partition_of(SITE, &user_id, PARTITIONS),
                user_id: Some(user_id),
                anonymous_id: None,
                ts,
                received_at: ts,
                props: if i % 3 == 0 {
                    [(
                        "plan".to_owned(),
                        serde_json::Value::from(["free", "pro", "team"][user % 3]),
                    )]
                    .into_iter()
                    .collect()
                } else {
                    Default::default()
                },
                revenue: (name == "purchase").then(|| Revenue {
                    amount: rust_decimal::Decimal::new(1999 + (i % 5000) as i64, 2),
                    currency: ["USD", "EUR", "GBP"][i % 3].to_owned(),
                }),
                context: Context {
                    path: Some(format!("/page/{page}")),
                    referrer_source: Some(SOURCES[user % SOURCES.len()].to_owned()),
                    browser: Some(browser.to_owned()),
                    os: Some(os.to_owned()),
                    device: Some(device.to_owned()),
                    country: Some(["US", "DE", "FR", "JP", "BR"][user % 5].to_owned()),
                    ..Context::default()
                },
            }
        })
        .collect()
}

/// Publish canonical events to `BEACON_EVENTS` with their dedupe ids,
/// pipelined; returns events/s.
pub(super) async fn publish_events(
    js: &jetstream::Context,
    events: &[Event],
) -> anyhow::Result<f64> {
    let outgoing: Vec<Outgoing> = events
        .iter()
        .map(|e| {
            Ok(Outgoing::deduped(
                event_subject(e.partition, &e.site, &e.name),
                &e.dedupe_id(),
                Bytes::from(serde_json::to_vec(e)?),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    pipelined_publish(js, outgoing, 4096).await
}

/// Start `beacon aggregator` and return it with its metrics URL.
async fn spawn_aggregator(
    config: &Path,
    nats_url: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let (child, line) = super::spawn_service(
        config,
        nats_url,
        &["aggregator", "--listen", "127.0.0.1:0"],
        "http://",
    )
    .await?;
    let url = line.find("http://").map(|at| line[at..].trim().to_owned());
    Ok((child, url.context("no metrics URL")?))
}

pub(super) struct Memory {
    pub(super) peak_kb: u64,
    pub(super) rss_kb: u64,
}

pub(super) fn proc_status(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading the aggregator's memory from /proc (Linux only)")?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        peak_kb: field("VmHWM:"),
        rss_kb: field("VmRSS:"),
    })
}

/// User plus system CPU time of a process, from /proc (clock ticks of 1/100 s).
pub(super) fn proc_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// Values of every series of a metric in Prometheus text.
fn metric_values<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(move |l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The upper bound of the histogram bucket holding quantile `q`.
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let text = "x_bucket{le=\"0.001\"} 50\nx_bucket{le=\"0.01\"} 98\nx_bucket{le=\"0.1\"} 100\nx_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_quantile(text, "x", 0.5), Some(0.001));
        assert_eq!(histogram_quantile(text, "x", 0.99), Some(0.1));
        assert_eq!(
            metric_values("y{p=\"1\"} 2\ny{p=\"2\"} 3\nyz 9\n", "y").sum::<f64>(),
            5.0
        );
    }

    #[test]
    fn a_day_of_events_is_the_same_every_time() {
        let a = day_of_events(1000, 100);
        let b = day_of_events(1000, 100);
        assert_eq!(
            a.iter().map(|e| (&e.name, &e.user_id)).collect::<Vec<_>>(),
            b.iter().map(|e| (&e.name, &e.user_id)).collect::<Vec<_>>()
        );
        let users: std::collections::HashSet<_> = a.iter().map(|e| &e.user_id).collect();
        assert!(users.len() > 80, "users spread: {}", users.len());
    }
}
