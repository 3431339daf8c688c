//! Prometheus metrics of the ingest services: one recorder per process, shared
//! by every service in it and rendered at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const ACCEPTED: &str = "beacon_events_accepted_total";
pub const DUPLICATES: &str = "beacon_events_duplicate_total";
pub const REJECTED: &str = "beacon_events_rejected_total";
pub const PUBLISH_SECONDS: &str = "beacon_publish_seconds";
pub const IN_FLIGHT: &str = "beacon_events_in_flight";
pub const UNAVAILABLE: &str = "beacon_ingest_unavailable_total";
pub const RATE_LIMITED: &str = "beacon_ingest_rate_limited_total";
/// Requests whose handling panicked (each answered 500 `internal_error`).
pub const PANICS: &str = "beacon_request_panics_total";

/// The process's Prometheus handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".to_owned()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            )
            .expect("bucket list is not empty");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is already installed (e.g. by an embedding program):
            // keep a private one so /metrics still renders.
            Err(_) => builder_fallback(),
        }
    })
}

fn builder_fallback() -> PrometheusHandle {
    PrometheusBuilder::new().build_recorder().handle()
}

/// Render the current metrics in Prometheus text format.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}
