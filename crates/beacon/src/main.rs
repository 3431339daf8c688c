//! `beacon`: every Beacon service and tool in one binary. This file only parses
//! the command line and hands over; the work lives in the libraries.

mod bench;
mod cli;
mod config;
mod export;
mod replay;
mod send;
mod services;
mod simulate;
mod sites;
mod status;
mod up;
mod verify;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BEACON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
