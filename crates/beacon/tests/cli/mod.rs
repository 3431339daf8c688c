mod actions;
mod bench;
mod chaos;
mod cluster;
mod crash;
mod local_server;
mod process;
mod query_docs;
mod replay;
mod simulate;
mod sites;
mod store;
// The event store's ground truth, shared with the aggregator's tests (which
// use some helpers this crate does not).
#[allow(dead_code)]
#[path = "../../../beacon-aggregate/tests/aggregate/stored.rs"]
mod stored;
mod up;
