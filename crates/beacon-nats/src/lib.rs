//! Beacon's NATS layer: connecting with the credentials NATS users have, checking
//! the server is new enough, provisioning Beacon's streams, publishing events
//! exactly once, sharing the daily salts of cookieless visitor ids, and running a
//! local `nats-server` for single-machine setups.

pub mod connect;
pub mod provision;
pub mod publish;
pub mod salts;
pub mod server;
pub mod silence;

pub use connect::{
    ConnectError, MIN_SERVER_VERSION, NatsConfig, check_server, connect, connects, reconnected,
};
pub use provision::{
    EVENTS_STREAM, FUNNELS_BUCKET, GOALS_BUCKET, INGEST_STREAM, ProvisionError, ProvisionReport,
    REJECTS_STREAM, ROLLUPS_STREAM, StreamSettings, UNAUTH_REJECTS_STREAM, provision,
};
pub use publish::{Outgoing, PublishFailed, Publisher, RejectRecord, RetryPolicy, Stored};
pub use salts::{SALTS_BUCKET, SaltError, Salts};
pub use server::{ClusterOptions, LocalServer, ServerError, ServerOptions, find_server_binary};
pub use silence::{SILENCE, Silence};
