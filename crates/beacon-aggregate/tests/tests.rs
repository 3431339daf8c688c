//! Integration tests of the aggregators against real nats-servers.

mod aggregate;
