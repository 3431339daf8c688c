//! Per-event CPU cost of the ingest path without I/O: parse a batch body,
//! validate and enrich each event, serialize the canonical form.

use std::hint::black_box;

use beacon_core::{IdSource, Limits, Origin, normalize, parse_body};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn batch_body(n: usize) -> Vec<u8> {
    let events: Vec<_> = (0..n)
        .map(|i| {
            json!({"id": format!("e-{i}"), "name": "pageview", "user_id": format!("user-{i}"),
                "props": {"path": "/pricing", "plan": "pro"},
                "context": {"user_agent": AGENT, "referrer": "https://www.google.com/", "url": "https://shop.example/pricing"}})
        })
        .collect();
    serde_json::to_vec(&events).expect("serializes")
}

fn ingest(c: &mut Criterion) {
    let body = batch_body(100);
    let limits = Limits::default();
    let origin = Origin {
        site: "shop",
        received_at: chrono::Utc::now(),
        user_agent: None,
        ip: None,
        id_source: IdSource::Random,
        partitions: 16,
    };
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(100));
    group.bench_function("parse_body/100", |b| {
        b.iter(|| parse_body(black_box(&body), false, &limits).expect("parses"))
    });
    group.bench_function("parse_normalize_serialize/100", |b| {
        b.iter(|| {
            let batch = parse_body(black_box(&body), false, &limits).expect("parses");
            for (i, item) in batch.items.into_iter().enumerate() {
                let event =
                    normalize(item.value.expect("valid json"), i, &origin, &limits).expect("valid");
                black_box(serde_json::to_vec(&event).expect("serializes"));
            }
        })
    });
    group.bench_function("user_agent/1", |b| {
        b.iter(|| {
            beacon_core::enrich::enrich(
                &beacon_core::enrich::Clues {
                    user_agent: Some(black_box(AGENT)),
                    ..Default::default()
                },
                false,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
