//! `beacon bench aggregate --quick` measures every figure it reports (no speed
//! is asserted: that is for people to read, not for tests to judge).

use super::process::beacon;

#[tokio::test]
async fn the_aggregation_benchmark_measures_every_figure() {
    let report = quick_report("aggregate").await;
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
    // The same events with a fifth arriving late: measured beside them.
    let late = &report["out_of_order"];
    for figure in [
        "aggregate_events_per_sec",
        "peak_rss_mb",
        "commit_seconds_p99_at_most",
    ] {
        assert!(
            late[figure].as_f64().is_some_and(|v| v > 0.0),
            "out of order {figure} was not measured: {report}"
        );
    }
    assert!(
        report["out_of_order_throughput_ratio"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{report}"
    );
    assert!(
        report["sessions"].as_i64().is_some_and(|n| n > 5_000),
        "{report}"
    );
    assert_eq!(report["events"], 50_000);
    assert_eq!(report["unique_users_exact"], 5_000);
    assert!(
        report["unique_users_error_pct"]
            .as_f64()
            .is_some_and(|e| e < 2.0)
    );
}

#[tokio::test]
async fn the_ingest_benchmark_measures_the_collectors_cpu_with_and_without_enrichment() {
    let report = quick_report("ingest").await;
    let cpu = &report["collector_cpu_seconds_per_million_events"];
    for figure in ["enrichment_off", "geoip_and_bots_on"] {
        assert!(
            cpu[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure} was not measured: {report}"
        );
    }
    assert!(cpu["increase"].as_f64().is_some(), "{report}");
    assert!(
        report["collector_events_per_sec"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{report}"
    );
}

#[tokio::test]
async fn the_query_benchmark_measures_every_figure() {
    let report = quick_report("query").await;
    let measured = |v: &serde_json::Value| v.as_f64().is_some_and(|v| v > 0.0 && v.is_finite());
    for figure in [
        "queryable_after_seconds",
        "live_caught_up_after_seconds",
        "query_p50_ms",
        "query_p99_ms",
        "load_events_per_sec",
        "freshness_markers",
        "freshness_p50_ms",
        "freshness_p99_ms",
    ] {
        assert!(
            measured(&report[figure]),
            "{figure} was not measured: {report}"
        );
    }
    let kinds = report["by_request"]
        .as_object()
        .expect("figures per request");
    assert_eq!(kinds.len(), 11, "{report}");
    // The dashboard's list by visitors, the filtered questions, a funnel and
    // a retention table, answered from the event store, beside the rollups'.
    for kind in [
        "breakdown_path_by_visitors",
        "breakdown_path_by_visitors_scanned",
        "summary_two_filters_every_metric",
        "breakdown_property",
        "funnel_three_steps",
        "retention_by_day",
    ] {
        assert!(kinds.contains_key(kind), "{kind}: {report}");
    }
    for (kind, figures) in kinds {
        for figure in ["requests", "p50_ms", "p99_ms", "response_bytes"] {
            assert!(
                measured(&figures[figure]),
                "{kind} {figure} was not measured: {report}"
            );
        }
    }
    assert!(report["freshness_misses"].is_u64(), "{report}");
    assert_eq!(report["requests"], 200);
}

#[tokio::test]
async fn the_actions_benchmark_measures_every_figure() {
    let report = quick_report("actions").await;
    let measured = |v: &serde_json::Value| v.as_f64().is_some_and(|v| v > 0.0 && v.is_finite());
    for figure in ["jobs_per_s", "delivery_p50_ms", "delivery_p99_ms"] {
        assert!(
            measured(&report[figure]),
            "{figure} was not measured: {report}"
        );
    }
    assert_eq!(report["jobs"], 1_000);
    assert_eq!(report["latency_jobs"], 100);
}

#[tokio::test]
async fn the_whole_pipeline_benchmark_measures_every_figure() {
    let report = quick_report("").await;
    let measured = |v: &serde_json::Value| v.as_f64().is_some_and(|v| v > 0.0 && v.is_finite());
    for figure in [
        "raw_jetstream_events_per_sec",
        "collector_events_per_sec",
        "collector_ratio_to_raw",
        "normalizer_events_per_sec",
        "normalizer_ratio_to_raw",
        "aggregator_events_per_sec",
        "end_to_end_events_per_sec",
        "freshness_load_events_per_sec",
        "freshness_p50_ms",
        "freshness_p99_ms",
        "query_p50_ms",
        "query_p99_ms",
    ] {
        assert!(measured(&report[figure]), "{figure}: {report}");
    }
    let services = report["services"].as_array().expect("services");
    let names: Vec<&str> = services
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(names, ["collector", "normalizer", "query", "aggregator"]);
    for s in services {
        for figure in [
            "peak_rss_mb",
            "cpu_seconds",
            "cpu_seconds_per_million_events",
        ] {
            assert!(measured(&s[figure]), "{figure}: {s}");
        }
    }
    assert!(report["freshness_markers"].as_u64() > Some(0), "{report}");
}

#[tokio::test]
async fn the_client_benchmark_measures_both_rates() {
    let report = quick_report("client").await;
    for figure in [
        "raw_jetstream_events_per_sec",
        "client_events_per_sec",
        "client_to_raw_ratio",
    ] {
        assert!(
            report[figure]
                .as_f64()
                .is_some_and(|v| v > 0.0 && v.is_finite()),
            "{figure} was not measured: {report}"
        );
    }
    assert_eq!(report["events"], 20_000);
}

/// The JSON report of `beacon bench [<stage>] --quick --json`, which must succeed.
#[tokio::test]
async fn the_store_benchmark_times_every_question_and_sizes_the_segments() {
    let (report, stderr) = quick_run("store", &["--explain"]).await;
    assert_eq!(report["events"], 60_000, "{report}");
    // Where the bytes go: every column's share, together the file's size but the footers.
    let columns = report["column_bytes_per_event"]
        .as_array()
        .expect("bytes per column");
    let names: Vec<&str> = columns
        .iter()
        .filter_map(|c| c["column"].as_str())
        .collect();
    assert!(
        names.contains(&"user_key") && names.contains(&"ts"),
        "{report}"
    );
    let sum: f64 = columns
        .iter()
        .filter_map(|c| c["bytes_per_event"].as_f64())
        .sum();
    let total = report["bytes_per_event"].as_f64().unwrap_or(0.0);
    assert!(sum > 0.0 && sum <= total, "{sum} of {total}: {report}");
    // `--explain` shows how each question ran, operator by operator.
    assert_eq!(stderr.matches("Plan with Metrics").count(), 4, "{stderr}");
    assert!(
        report["bytes_per_event"]
            .as_f64()
            .is_some_and(|b| b > 0.0 && b < 200.0),
        "{report}"
    );
    let questions = report["questions"].as_array().expect("questions");
    assert_eq!(questions.len(), 4, "{report}");
    for q in questions {
        for figure in ["beacon_cold_ms", "beacon_p50_ms", "beacon_p99_ms"] {
            assert!(
                q[figure].as_f64().is_some_and(|v| v > 0.0),
                "{figure} was not measured: {q}"
            );
        }
        // Each question has an answer: rows the data set must produce.
        assert!(
            q["answer"].as_array().is_some_and(|rows| !rows.is_empty()),
            "{q}"
        );
    }
}

async fn quick_report(stage: &str) -> serde_json::Value {
    quick_run(stage, &[]).await.0
}

/// The JSON report and the standard error of `beacon bench [<stage>] --quick --json [extra…]`.
/// Its nats-server is the one the configuration names (`BEACON_NATS__SERVER_BINARY`, set by
/// [`beacon`]), as for `beacon up`: none is on PATH or in a tools/ folder near the test.
async fn quick_run(stage: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = beacon(dir.path())
        .args(
            ["bench", stage, "--quick", "--json"]
                .into_iter()
                .chain(extra.iter().copied())
                .filter(|a| !a.is_empty()),
        )
        .output()
        .await
        .expect("bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        serde_json::from_slice(&out.stdout).expect("JSON report"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
