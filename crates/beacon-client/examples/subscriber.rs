//! Consume a site's events as an independent service: a durable subscriber
//! that resumes where it stopped, retries a failing handler with backoff and
//! sends an event it keeps failing on to a dead-letter subject.
//!
//! ```sh
//! cargo run -p beacon-client --example subscriber -- \
//!     --nats-url nats://127.0.0.1:4222 --site default --durable emails --events signup
//! ```
//!
//! Each handled event is printed as one JSON line. Stop it (Ctrl-C, or kill
//! it) and start it again: it goes on with the first event it had not finished.

use std::io::Write;
use std::time::Duration;

use beacon_client::{DeadLetter, Delivery, Subscriber, dead_letter_stream};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "BEACON_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value = "default")]
    site: String,
    /// The durable consumer's name: the place kept on the server.
    #[arg(long, default_value = "example-subscriber")]
    durable: String,
    /// Only new events, no place kept (instead of --durable).
    #[arg(long)]
    live: bool,
    /// Only events with this name (repeatable).
    #[arg(long = "events")]
    events: Vec<String>,
    /// Pretend each event takes this long to handle.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Fail every event of this name, to see retries and the dead letter.
    #[arg(long)]
    fail: Option<String>,
    /// Attempts before an event goes to the dead letter.
    #[arg(long, default_value_t = 3)]
    max_failures: u32,
    /// Seconds an event may stay unacked before it is delivered again (also
    /// how soon the event a killed subscriber held comes back).
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
    /// Dead-letter subject (a stream EXAMPLE_DEAD is created for it).
    #[arg(long, default_value = "example.dead")]
    dead_letter: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let nats = async_nats::connect(&args.nats_url).await?;
    dead_letter_stream(&nats, "EXAMPLE_DEAD", &args.dead_letter).await?;
    let subscriber = if args.live {
        Subscriber::live(nats, &args.site)
    } else {
        Subscriber::durable(nats, &args.site, &args.durable)
    };
    let subscriber = subscriber
        .events(args.events.clone())
        .max_failures(args.max_failures)
        .ack_wait(Duration::from_secs(args.ack_wait_secs))
        .retry_backoff(Duration::from_millis(200), Duration::from_secs(10))
        .dead_letter(DeadLetter::Subject(args.dead_letter.clone()));
    let work = Duration::from_millis(args.work_ms);
    let fail = args.fail.clone();
    let handler = move |d: Delivery| {
        let fail = fail.clone();
        async move {
            tokio::time::sleep(work).await;
            if fail.as_deref() == Some(d.event.name.as_str()) {
                return Err(format!("refusing {} on purpose", d.event.name));
            }
            // Printed before the ack: a line may repeat after a crash
            // (at least once), but no event goes missing.
            let line = serde_json::json!({
                "seq": d.stream_seq, "id": d.event.id, "name": d.event.name,
                "user": d.event.user_id, "attempt": d.attempt,
            });
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| e.to_string())
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    subscriber.run(handler, shutdown).await?;
    Ok(())
}
