//! Integration tests of the client against real nats-servers and Beacon's services.

mod client;
