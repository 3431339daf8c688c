//! The `beacon` binary as users and operators run it: real processes, real
//! nats-servers, killed mid-stream.

mod cli;
