//! `beacon bench aggregate --quick` measures every figure it reports (no speed
//! is asserted: that is for people to read, not for tests to judge).

use super::process::beacon;

#[tokio::test]
async fn the_aggregation_benchmark_measures_every_figure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = beacon(dir.path())
        .env("PATH", path_with_nats())
        .args(["bench", "aggregate", "--quick", "--json"])
        .output()
        .await
        .expect("bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    for figure in [
        "aggregate_events_per_sec",
        "aggregate_events_per_cpu_sec",
        "cpu_seconds_per_million_events",
        "peak_rss_mb",
        "commit_seconds_p50_at_most",
        "commit_seconds_p99_at_most",
    ] {
        assert!(
            report[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure} was not measured: {report}"
        );
    }
    assert_eq!(report["events"], 50_000);
    assert_eq!(report["unique_users_exact"], 5_000);
    assert!(
        report["unique_users_error_pct"]
            .as_f64()
            .is_some_and(|e| e < 2.0)
    );
}

/// The bench finds nats-server like `beacon up` does: put the test's binary first on PATH.
fn path_with_nats() -> String {
    let server = beacon_testing::server_binary();
    let dir = server.parent().expect("a folder").display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}
