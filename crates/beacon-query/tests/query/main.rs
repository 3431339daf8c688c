//! Query nodes against a real nats-server: answers equal to a ground truth and
//! identical over HTTP, over NATS and from two replicas; live updates; every
//! bad parameter and key; loading before ready; the OpenAPI document.

mod analysis;
mod answers;
mod enriched;
mod errors;
mod hardening;
mod live;
mod params;
mod planner;
mod resilience;
mod sql;
mod support;
mod upgrade;
