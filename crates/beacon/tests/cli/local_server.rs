//! `beacon up` and its local nats-server when things go wrong: killed without
//! a chance to stop its server, started twice on one data directory. And what
//! its banner may show.

use std::path::Path;
use std::time::Duration;

use super::process::{beacon, sigterm, spawn_until};

/// Whether `pid` is a running nats-server (not a zombie, not a reused pid).
fn is_nats_server(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("nats-server"))
}

fn server_pid(data: &Path) -> i32 {
    std::fs::read_to_string(data.join("nats/nats-server.pid"))
        .expect("the local server's pid file")
        .trim()
        .parse()
        .expect("a pid")
}

#[tokio::test]
async fn a_killed_beacon_up_leaves_no_server_behind_for_the_next_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("beacon-data");
    let start = || {
        let mut up = beacon(dir.path());
        up.args(["up", "--listen", "127.0.0.1:0"]);
        up
    };
    let (mut first, banner) = spawn_until(start(), "collector  http://").await;
    assert!(banner.contains("collector"));
    let orphan = server_pid(&data);
    assert!(is_nats_server(orphan));

    first.start_kill().expect("SIGKILL beacon up");
    first.wait().await.expect("killed");

    let (mut second, _) = spawn_until(start(), "collector  http://").await;
    assert!(
        !is_nats_server(orphan),
        "the server left by the killed beacon up is still running"
    );
    let own = server_pid(&data);
    assert_ne!(own, orphan);
    assert!(is_nats_server(own));

    // A second `beacon up` on the same data directory is refused, and leaves
    // the running one's server alone.
    let third = tokio::time::timeout(Duration::from_secs(60), start().output())
        .await
        .expect("a refused start ends")
        .expect("runs");
    assert!(!third.status.success());
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(said.contains("in use"), "{said}");
    assert!(is_nats_server(own));

    sigterm(&second);
    let exit = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "beacon up exited with {exit}");
    assert!(!is_nats_server(own));
}

#[tokio::test]
async fn the_banner_shows_no_secret_in_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut up = beacon(dir.path());
    up.args(["up", "--listen", "127.0.0.1:0"]);
    let mut child = up
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("beacon starts");
    let stdout = child.stdout.take().expect("stdout");
    let banner = tokio::time::timeout(Duration::from_secs(120), async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut banner = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        banner
    })
    .await
    .expect("the banner is printed");
    let config = std::fs::read_to_string(dir.path().join("beacon-data/beacon.toml"))
        .expect("starter config");
    let keys: Vec<&str> = config
        .split('"')
        .filter(|s| s.starts_with("wk_") || s.starts_with("rk_"))
        .collect();
    assert_eq!(keys.len(), 2, "{config}");
    for key in keys {
        assert!(
            !banner.contains(key),
            "the banner holds a key in full:\n{banner}"
        );
        let short: String = key.chars().take(7).collect();
        assert!(banner.contains(&format!("{short}…")), "{banner}");
    }
    assert!(
        banner.contains("the full keys are in") && banner.contains("beacon.toml"),
        "{banner}"
    );
    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "beacon up exited with {exit}");
}
