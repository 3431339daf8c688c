//! Integration tests of the ingest services against real nats-servers.

mod ingest;
