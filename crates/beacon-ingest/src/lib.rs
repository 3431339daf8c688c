//! Beacon's ingest services. The HTTP collector and the NATS-native normalizer
//! share one [`pipeline::Pipeline`]: the same validation, the same dedupe ids,
//! the same rejects, so an event means the same whichever way it arrived.

pub mod collector;
pub mod enrich;
pub mod metrics;
pub mod normalizer;
pub mod ops;
pub mod pipeline;
pub mod serve;

pub use collector::{CollectorSettings, run as run_collector};
pub use enrich::EnrichSettings;
pub use normalizer::{NormalizerSettings, run as run_normalizer};
pub use pipeline::{ItemResult, Pipeline};
