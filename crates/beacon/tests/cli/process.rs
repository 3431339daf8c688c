//! Running `beacon` as a child process and reading what it prints.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const SHOP_KEY: &str = "wk_test_shop_000000000";

/// A `beacon` command with a clean environment and `dir` as working directory.
pub fn beacon(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_beacon"));
    command
        .current_dir(dir)
        .env(
            "BEACON_NATS__SERVER_BINARY",
            beacon_testing::server_binary(),
        )
        .env("BEACON_LOG", "warn")
        .env_remove("BEACON_NATS_URL")
        .env_remove("BEACON_CONFIG")
        .kill_on_drop(true);
    command
}

/// A config with one site, "shop", without a rate limit. Unacknowledged ingest
/// messages come back after 1 s, so redeliveries happen within a test.
/// Run `beacon ARGS` in `dir` to its end: whether it succeeded, and what it
/// printed (stdout, then stderr).
pub async fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = beacon(dir).args(args).output().await.expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("beacon.toml");
    std::fs::write(
        &path,
        format!("[[sites]]\nid = \"shop\"\nwrite_keys = [\"{SHOP_KEY}\"]\nread_keys = [\"rk_test_shop_000000000\"]\nrate_limit = 0\n[normalizer]\nack_wait = \"1s\"\n"),
    )
    .expect("write config");
    path
}

/// Start a long-running command and wait (bounded) for the stdout line containing
/// `marker`; returns the child and that line.
pub async fn spawn_until(mut command: Command, marker: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("beacon starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.contains(marker) {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("beacon never printed {marker:?}"));
    // Keep draining so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, found)
}

/// The first `http://…` address in a line.
pub fn url_in(line: &str) -> String {
    let start = line.find("http://").expect("a URL in the line");
    line[start..]
        .split_whitespace()
        .next()
        .expect("url")
        .trim_end_matches("/api/v1/events")
        .to_owned()
}

pub fn sigterm(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
}
