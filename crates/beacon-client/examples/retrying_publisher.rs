//! Publish with retries and careful error handling: each order's event has an
//! id derived from the order, so however often it is sent (a retry after a lost
//! ack, a NATS restart, this program run twice), Beacon counts it once. While
//! NATS is unreachable, events wait in a bounded buffer.
//!
//! ```sh
//! cargo run -p beacon-client --example retrying_publisher -- \
//!     --nats-url nats://127.0.0.1:4222 --site default --orders 50
//! ```

use std::time::Duration;

use beacon_client::{Event, Published, Publisher, RetryPolicy};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "BEACON_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value = "default")]
    site: String,
    /// Orders to report as purchases, numbered from 1.
    #[arg(long, default_value_t = 20)]
    orders: u32,
    /// Events kept in memory while NATS is unreachable.
    #[arg(long, default_value_t = 10_000)]
    buffer: usize,
    /// How long one publish may keep retrying, in seconds.
    #[arg(long, default_value_t = 10)]
    deadline: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // Start even if NATS is not up yet: events wait in the buffer.
    let nats = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(&args.nats_url)
        .await?;
    // Give the first connection a moment; publishes made before it is up go
    // straight to the buffer.
    for _ in 0..40 {
        if nats.connection_state() == async_nats::connection::State::Connected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publisher = Publisher::builder(nats, &args.site)
        .retry(RetryPolicy {
            deadline: Duration::from_secs(args.deadline),
            ..RetryPolicy::default()
        })
        .buffer(args.buffer)
        .build()?;

    let (mut stored, mut duplicates, mut buffered, mut later) = (0, 0, 0, Vec::new());
    for order in 1..=args.orders {
        let event = Event::new("purchase")
            .with_id(format!("order-{order}-paid"))
            .user(format!("customer-{}", order % 7))
            .revenue(format!("{}.99", 10 + order % 40), "USD");
        match publisher.publish(&event).await {
            Ok(Published::Stored(receipt)) if receipt.duplicate => duplicates += 1,
            Ok(Published::Stored(_)) => stored += 1,
            Ok(Published::Buffered) => buffered += 1,
            // Safe to send again later: the same id is stored once.
            Err(e) if e.is_retryable() => later.push(event),
            // Sending it again cannot help: report it and go on.
            Err(e) => eprintln!("order {order} not sent: {e}"),
        }
    }
    publisher.flush(Duration::from_secs(60)).await?;
    let mut failed = 0;
    for event in &later {
        if let Err(e) = publisher.publish(event).await {
            eprintln!("{} not sent: {e}", event.id);
            failed += 1;
        } else {
            stored += 1;
        }
    }
    publisher.flush(Duration::from_secs(60)).await?;
    println!(
        "orders {}: stored {stored}, already stored {duplicates}, sent from the buffer {buffered}, dropped {}, failed {failed}",
        args.orders,
        publisher.dropped()
    );
    Ok(())
}
