//! The stall an ordered reader cannot see by itself: the server stops feeding
//! its consumer (paused, or left behind by a leader change) while it still
//! answers the client's heartbeats, so the client waits forever. A reader
//! tells its [`Silence`] what it brought; after [`SILENCE`] without anything
//! the stream is asked for its last message on the reader's subjects. A newer
//! one than the reader brought, at two looks in a row, means it is stuck (one
//! look could follow a moment the reader was not being read, such as a
//! commit retried while NATS was away).

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use tokio::time::Instant;

/// How long a reader may bring nothing before its stream is asked.
pub const SILENCE: Duration = Duration::from_secs(5);

/// One ordered reader's watch: what it brought last, and when.
#[derive(Debug)]
pub struct Silence {
    stream: Stream,
    filter: String,
    through: u64,
    heard: Instant,
    /// The last look found messages the reader had not brought.
    suspect: bool,
}

impl Silence {
    /// Watch a reader of `filter` (wildcards allowed) on `stream` that
    /// starts after sequence `through`.
    pub fn new(stream: Stream, filter: impl Into<String>, through: u64) -> Silence {
        Silence {
            stream,
            filter: filter.into(),
            through,
            heard: Instant::now(),
            suspect: false,
        }
    }

    /// The reader brought the message at `seq`.
    pub fn heard(&mut self, seq: u64) {
        self.through = seq;
        self.heard = Instant::now();
        self.suspect = false;
    }

    /// Resolves, with the last sequence the reader brought, once two looks
    /// [`SILENCE`] apart found the stream holding a message on its subjects
    /// past that one. Cancel-safe: a `select!` arm beside the reader. A look
    /// that fails (NATS away) counts as nothing waiting.
    pub async fn stalled(&mut self) -> u64 {
        loop {
            tokio::time::sleep_until(self.heard + SILENCE).await;
            let last = self.stream.get_last_raw_message_by_subject(&self.filter);
            let waiting = match last.await {
                Ok(last) => last.sequence > self.through,
                Err(e) => {
                    tracing::debug!(filter = %self.filter, error = %e, "cannot look at the stream's last message");
                    false
                }
            };
            if waiting && self.suspect {
                return self.through;
            }
            self.suspect = waiting;
            self.heard = Instant::now();
        }
    }
}
