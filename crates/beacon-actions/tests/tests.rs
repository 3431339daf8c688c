//! The actions service against a real nats-server, a local webhook receiver
//! and a local SMTP sink.

mod actions;
