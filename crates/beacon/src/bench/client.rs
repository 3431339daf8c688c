//! `beacon bench client`: the `beacon-client` crate's publish throughput over
//! NATS, against raw JetStream publishes of the same events in the same run.

use std::time::Instant;

use anyhow::bail;
use beacon_client::{Event, Published, Publisher, RetryPolicy};
use beacon_nats::publish::Outgoing;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;

use super::{BenchNats, SITE, Target, pipelined_publish};

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Events to publish in each measurement.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Publishes awaiting their ack at once, in both measurements.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Rounds of both measurements, taken in turn; the medians are reported,
    /// so a burst of other load on the machine skews neither side alone.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// A short run (20,000 events) that checks every figure can be measured.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(mut args: ClientArgs, target: &Target) -> anyhow::Result<()> {
    if args.quick {
        args.events = args.events.min(20_000);
    }
    if args.events == 0 || args.window == 0 || args.rounds == 0 {
        bail!("--events, --window and --rounds must be positive");
    }
    // It fills BEACON_INGEST, so only on its own scratch server.
    let nats = BenchNats::own(target, "client").await?;
    let (client, js) = nats.provisioned().await?;
    let subject = format!("beacon.ingest.{SITE}");

    let publisher = Publisher::builder(client, SITE)
        .retry(RetryPolicy::default())
        .build()?;
    let mut raw_rates = Vec::new();
    let mut client_rates = Vec::new();
    let mut payload_bytes = 0;
    for round in 1..=args.rounds {
        // Every measurement gets events with ids of their own: none may be
        // answered as a duplicate of an earlier one.
        let raw_events = sample(args.events);
        payload_bytes = raw_events
            .iter()
            .map(|e| serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0))
            .sum::<usize>()
            / args.events;
        let raw_messages: Vec<Outgoing> = raw_events
            .iter()
            .map(|e| {
                let payload = Bytes::from(serde_json::to_vec(e).unwrap_or_default());
                Outgoing::deduped(subject.clone(), &format!("{SITE}:{}", e.id), payload)
            })
            .collect();
        let client_events = sample(args.events);
        // Taken in turn, each side going first every other round: neither
        // always meets a stream still cleaning up after the other.
        let (raw, with_client) = if round % 2 == 1 {
            let raw = pipelined_publish(&js, raw_messages, args.window).await?;
            purge(&js).await?;
            let with_client = client_rate(&publisher, &client_events, args.window).await?;
            (raw, with_client)
        } else {
            let with_client = client_rate(&publisher, &client_events, args.window).await?;
            purge(&js).await?;
            let raw = pipelined_publish(&js, raw_messages, args.window).await?;
            (raw, with_client)
        };
        purge(&js).await?;
        eprintln!(
            "round {round}: raw JetStream {raw:.0} events/s, beacon-client {with_client:.0} events/s"
        );
        raw_rates.push(raw);
        client_rates.push(with_client);
    }
    nats.stop().await;
    let round_ratios: Vec<f64> = raw_rates
        .iter()
        .zip(&client_rates)
        .map(|(raw, with_client)| (with_client / raw * 1000.0).round() / 1000.0)
        .collect();
    let raw = median(&mut raw_rates);
    let with_client = median(&mut client_rates);

    let ratio = with_client / raw;
    let report = json!({
        "events": args.events, "payload_bytes": payload_bytes, "window": args.window,
        "rounds": args.rounds,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "raw_jetstream_events_per_sec": raw.round(),
        "client_events_per_sec": with_client.round(),
        "client_to_raw_ratio": (ratio * 1000.0).round() / 1000.0,
        "round_ratios": round_ratios,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "\nbeacon bench client: {} events, {payload_bytes} B each, one per message, {} in flight, median of {} rounds",
            args.events, args.window, args.rounds
        );
        println!("{:<46} {:>14}", "measurement", "events/s");
        println!(
            "{:<46} {:>14.0}",
            "raw JetStream publish (pipelined, msg ids)", raw
        );
        println!(
            "{:<46} {:>14.0}",
            "beacon-client Publisher::publish", with_client
        );
        println!("{:<46} {:>13.1}%", "client / raw ceiling", ratio * 100.0);
    }
    Ok(())
}

/// `Publisher::publish` of every event, `window` publishes awaiting their ack
/// at once, as a service handling many requests would; events/s.
async fn client_rate(
    publisher: &Publisher,
    events: &[Event],
    window: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut stored = 0usize;
    for event in events {
        in_flight.push(publisher.publish(event));
        if in_flight.len() >= window
            && let Some(done) = in_flight.next().await
        {
            stored += usize::from(matches!(done?, Published::Stored(_)));
        }
    }
    while let Some(done) = in_flight.next().await {
        stored += usize::from(matches!(done?, Published::Stored(_)));
    }
    if stored != events.len() {
        bail!(
            "only {stored} of {} publishes were acknowledged",
            events.len()
        );
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

async fn purge(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    js.get_stream(beacon_nats::INGEST_STREAM)
        .await?
        .purge()
        .await?;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Events as a backend service would publish them, each with its own id.
fn sample(n: usize) -> Vec<Event> {
    const PAGES: [&str; 4] = ["/", "/pricing", "/checkout", "/signup"];
    (0..n)
        .map(|i| {
            let name = ["pageview", "pageview", "click", "purchase"][i % 4];
            let event = Event::new(name)
                .user(format!("user-{}", i % 10_007))
                .prop("path", PAGES[i % PAGES.len()])
                .prop("plan", "pro");
            if name == "purchase" {
                event.revenue("19.99", "USD")
            } else {
                event
            }
        })
        .collect()
}
