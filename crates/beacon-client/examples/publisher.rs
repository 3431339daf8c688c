//! Publish events to Beacon over NATS: the producer side of the article.
//!
//! ```sh
//! cargo run -p beacon-client --example publisher -- \
//!     --nats-url nats://127.0.0.1:4222 --site default --count 100 --batch
//! ```

use beacon_client::{Event, Published, Publisher};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The NATS server Beacon runs on (`beacon up` prints it).
    #[arg(long, env = "BEACON_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value = "default")]
    site: String,
    /// Events to publish.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Event name.
    #[arg(long, default_value = "pageview")]
    name: String,
    /// Send them in as few messages as possible instead of one each.
    #[arg(long)]
    batch: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let nats = async_nats::connect(&args.nats_url).await?;
    let publisher = Publisher::builder(nats, &args.site).build()?;
    let paths = ["/", "/pricing", "/docs", "/signup"];
    let events: Vec<Event> = (0..args.count)
        .map(|i| {
            Event::new(&args.name)
                .user(format!("user-{}", i % 25))
                .prop("path", paths[i % paths.len()])
        })
        .collect();
    let results = if args.batch {
        publisher.publish_batch(&events).await?
    } else {
        let mut results = Vec::new();
        for event in &events {
            results.push(publisher.publish(event).await?);
        }
        results
    };
    let duplicates = results
        .iter()
        .filter(|r| matches!(r, Published::Stored(receipt) if receipt.duplicate))
        .count();
    println!(
        "published {} events in {} messages ({duplicates} already stored)",
        events.len(),
        results.len()
    );
    Ok(())
}
