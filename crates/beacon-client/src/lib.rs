//! A Rust client for [Beacon](https://github.com/beacon-analytics/beacon), the
//! self-hosted event analytics platform on NATS JetStream: publish events,
//! consume them, and ask for the numbers.
//!
//! - **Publish** ([`Publisher`] over NATS, [`HttpPublisher`] over HTTP), one
//!   event or a batch. Every [`Event`] gets an id when it is built, so a retry
//!   (after a lost acknowledgement, a timeout, a NATS restart) is stored once.
//!   Retries back off exponentially with jitter under one deadline
//!   ([`RetryPolicy`]); errors say whether trying again can help
//!   ([`PublishError::is_retryable`]). While NATS is unreachable, events can
//!   wait in a bounded local buffer ([`PublisherBuilder::buffer`]).
//! - **Subscribe** ([`Subscriber`]) to a site's canonical events with a
//!   durable JetStream consumer that resumes where it stopped, acks each event
//!   only after the handler succeeded, retries a failing handler with backoff
//!   and sends an event it keeps failing on to a [`DeadLetter`]. A live mode
//!   sees only new events.
//! - **Query** ([`QueryClient`]): typed request-reply calls to the
//!   `beacon-query` NATS service.
//!
//! ```no_run
//! use beacon_client::{Event, Publisher};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let publisher = Publisher::builder(nats, "default").build()?;
//! let purchase = Event::new("purchase").user("u-123").revenue("19.99", "USD");
//! publisher.publish(&purchase).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The crate depends on none of Beacon's server crates. docs/CLIENT.md in
//! Beacon's repository walks through the examples.

pub use chrono;

pub mod error;
pub mod event;
pub mod http;
pub mod publish;
pub mod query;
pub mod retry;
pub mod subscribe;

pub use self::error::{
    PublishError, PublishErrorKind, QueryError, QueryErrorKind, SubscribeError, SubscribeErrorKind,
};
pub use self::event::{Context, Event, Revenue, StoredContext, StoredEvent, new_id};
pub use self::http::{EventResult, EventStatus, HttpPublisher, HttpReceipt};
pub use self::publish::{Published, Publisher, PublisherBuilder, Receipt};
pub use self::query::{Params, QueryClient};
pub use self::retry::RetryPolicy;
pub use self::subscribe::{DeadLetter, Delivery, Failure, Subscriber, dead_letter_stream};
