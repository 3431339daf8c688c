//! Beacon's domain: the canonical event, how raw input becomes one (validation,
//! enrichment), where it goes (partition, subject), and why input is refused.
//!
//! Nothing here does I/O, so every rule is unit- and property-tested without a
//! server, and every ingest path (HTTP, NATS, SDK-compatible endpoints) shares it.

pub mod bearer;
pub mod body;
pub mod compat;
pub mod encoding;
pub mod enrich;
pub mod event;
pub mod goal;
pub mod limits;
pub mod partition;
pub mod reject;
pub mod secret;
pub mod site;
pub mod subject;
pub mod validate;

pub use body::{Batch, BodyError, Item, parse_body, without_write_key};
pub use enrich::Enricher;
pub use event::{Context, ENGAGED_MS_PROP, ENGAGEMENT, Event, Revenue, SCROLL_DEPTH_PROP};
pub use goal::Goal;
pub use limits::Limits;
pub use partition::partition_of;
pub use reject::{Reason, Rejection};
pub use secret::Secret;
pub use site::{Site, site_problems};
pub use validate::{IdSource, Origin, normalize, normalize_with};
