//! SQL and exports over the event store: answers equal to a truth computed
//! from the generated events, read once each from segments and the tail
//! whatever the manifests say; one site's key never reaches another site's
//! rows; only reads run; runaway queries are cut at their limits while the
//! node keeps answering; exports read back to the same rows.
//!
//! Segments are written here through the writers' contract (rows →
//! `segment::encode` → object put → manifest compare-and-set), so these tests
//! do not depend on a writer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv;
use async_nats::jetstream::object_store;
use beacon_core::event::Event;
use beacon_query::QuerySettings;
use beacon_store::datafusion::arrow::array::AsArray;
use beacon_store::datafusion::arrow::ipc::reader::StreamReader;
use beacon_store::datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use beacon_store::manifest::manifest_key;
use beacon_store::{MANIFEST_BUCKET, Manifest, Rows, SEGMENT_BUCKET, StoredEvent};
use beacon_testing::TestServer;
use beacon_testing::truth::{Shape, generate, send};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::*;

/// Events published one by one, with the stream sequence each got.
async fn publish_with_seqs(js: &jetstream::Context, events: &[Event]) -> Vec<(u64, Event)> {
    let mut out = Vec::with_capacity(events.len());
    for chunk in events.chunks(2000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            acks.push((e.clone(), send(js, e).await.expect("publish")));
        }
        for (e, ack) in acks {
            out.push((ack.await.expect("stored").sequence, e));
        }
    }
    out
}

/// The store's buckets: the ones the services provisioned, or made here the
/// way provisioning makes them when no service has started yet.
async fn store_buckets(js: &jetstream::Context) -> (kv::Store, object_store::ObjectStore) {
    let manifests = match js.get_key_value(MANIFEST_BUCKET).await {
        Ok(bucket) => bucket,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: MANIFEST_BUCKET.into(),
                history: 1,
                ..Default::default()
            })
            .await
            .expect("manifest bucket"),
    };
    let segments = match js.get_object_store(SEGMENT_BUCKET).await {
        Ok(bucket) => bucket,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: SEGMENT_BUCKET.into(),
                ..Default::default()
            })
            .await
            .expect("segment bucket"),
    };
    (manifests, segments)
}

/// Commit `rows` of `partition` (ascending sequences) as one segment, with
/// the manifest reaching `through_seq`: object first, then the manifest CAS.
async fn commit_segment(
    manifests: &kv::Store,
    segments: &object_store::ObjectStore,
    partition: u32,
    rows: &[(u64, Event)],
    through_seq: u64,
) -> Option<beacon_store::manifest::SegmentMeta> {
    let entry = manifests
        .entry(manifest_key(partition))
        .await
        .expect("read manifest");
    let (mut manifest, revision) = match &entry {
        Some(e) => (Manifest::decode(&e.value).expect("manifest"), e.revision),
        None => (Manifest::empty(partition), 0),
    };
    let mut written = None;
    if !rows.is_empty() {
        let mut builder = Rows::new();
        for (seq, event) in rows {
            builder.push(StoredEvent {
                seq: *seq,
                event,
                session_id: Some(1),
            });
        }
        let batch = builder.finish().expect("batch");
        let name = format!("p{partition}/{:020}-{:020}.parquet", rows[0].0, through_seq);
        let (file, meta) =
            beacon_store::segment::encode(&name, partition, 0, &[batch]).expect("encode");
        segments
            .put(name.as_str(), &mut file.as_ref())
            .await
            .expect("put segment");
        manifest.segments.push(meta.clone());
        written = Some(meta);
    }
    manifest.through_seq = through_seq;
    manifest.writer = "test".into();
    if revision == 0 {
        manifests
            .create(manifest_key(partition), manifest.encode().into())
            .await
            .expect("create manifest");
    } else {
        manifests
            .update(manifest_key(partition), manifest.encode().into(), revision)
            .await
            .expect("update manifest");
    }
    written
}

/// Commit, per partition, the first `share` of its events as two segments.
async fn commit_share(js: &jetstream::Context, stored: &[(u64, Event)], share: f64) {
    let (manifests, segments) = store_buckets(js).await;
    for p in 0..PARTITIONS {
        let mine: Vec<(u64, Event)> = stored
            .iter()
            .filter(|(_, e)| e.partition == p)
            .cloned()
            .collect();
        let cut = (mine.len() as f64 * share) as usize;
        let half = cut / 2;
        for part in [&mine[..half], &mine[half..cut]] {
            let through = part.last().map_or(0, |(s, _)| *s);
            if through > 0 {
                commit_segment(&manifests, &segments, p, part, through).await;
            }
        }
    }
}

/// A server with streams, the store's buckets, and `n` events over three days.
async fn data(
    n: usize,
) -> (
    TestServer,
    async_nats::Client,
    jetstream::Context,
    Vec<(u64, Event)>,
) {
    let nats = TestServer::start().await;
    let (client, js) = nats.provisioned(PARTITIONS).await;
    store_buckets(&js).await;
    let events = generate(Shape {
        seed: 11,
        sites: 2,
        users: 300,
        events: n,
        days: 3,
        end_ms: end_ms(),
        partitions: PARTITIONS,
    });
    let stored = publish_with_seqs(&js, &events).await;
    (nats, client, js, stored)
}

/// A node with the event store set up as `settings` say (a temporary cache).
async fn store_node(client: &async_nats::Client, settings: QuerySettings) -> Node {
    let (stop, shutdown) = watch::channel(false);
    let node = beacon_query::QueryNode::new(client.clone(), &sites(), PARTITIONS, shutdown.clone())
        .with_store(&settings)
        .expect("segment cache");
    tokio::spawn(node.clone().run());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = beacon_query::http::router(node.clone());
    let mut down = shutdown;
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = down.wait_for(|s| *s).await;
            })
            .await
    });
    Node {
        node,
        addr,
        _stop: stop,
        http: reqwest::Client::new(),
    }
}

impl Node {
    /// POST `sql` for `site` with `key`: the status and JSON body.
    async fn sql_as(&self, key: &str, site: &str, sql: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}/api/v1/sites/{site}/sql", self.addr))
            .bearer_auth(key)
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Rows of a SQL answer that must succeed.
    async fn rows(&self, site: &str, sql: &str) -> Vec<Value> {
        let (status, body) = self.sql_as(READ_ALL, site, sql).await;
        assert_eq!(status, 200, "{sql}: {body}");
        body["rows"].as_array().expect("rows").clone()
    }

    /// Wait (bounded) until `sql`'s first row's first value is `want`.
    async fn until_count(&self, site: &str, sql: &str, want: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.sql_as(READ_ALL, site, sql).await;
            let got = body["rows"][0]["n"].as_i64();
            if status == 200 && got == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sql}: {status} {body}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    /// Wait (bounded) until every tail row is in a segment the node knows.
    async fn until_tail_empty(&self, why: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.node.store().expect("store").view().tail_rows() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "{why}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct SiteTruth {
    events: i64,
    by_name: BTreeMap<String, i64>,
    users: i64,
    revenue: BTreeMap<String, Decimal>,
}

fn truth(stored: &[(u64, Event)], site: &str) -> SiteTruth {
    let mine: Vec<&Event> = stored
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.site == site)
        .collect();
    let mut by_name = BTreeMap::new();
    let mut revenue: BTreeMap<String, Decimal> = BTreeMap::new();
    for e in &mine {
        *by_name.entry(e.name.clone()).or_insert(0) += 1;
        if let Some(r) = &e.revenue {
            *revenue.entry(r.currency.clone()).or_default() += r.amount;
        }
    }
    SiteTruth {
        events: mine.len() as i64,
        by_name,
        users: mine
            .iter()
            .map(|e| e.user_key())
            .collect::<HashSet<_>>()
            .len() as i64,
        revenue,
    }
}

/// Every figure the issue names, asked over HTTP, against the truth.
async fn assert_truth(node: &Node, site: &str, want: &SiteTruth) {
    let total = node.rows(site, "SELECT count(*) AS n FROM events").await;
    assert_eq!(total[0]["n"], want.events, "count(*)");
    let names = node
        .rows(
            site,
            "SELECT name, count(*) AS n FROM events GROUP BY name ORDER BY name",
        )
        .await;
    let got: BTreeMap<String, i64> = names
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("name").to_owned(),
                r["n"].as_i64().expect("n"),
            )
        })
        .collect();
    assert_eq!(got, want.by_name, "counts by name");
    let users = node
        .rows(site, "SELECT count(DISTINCT user_key) AS n FROM events")
        .await;
    assert_eq!(users[0]["n"], want.users, "users");
    let revenue = node
        .rows(
            site,
            "SELECT revenue_currency AS c, sum(revenue_amount) AS s FROM events \
             WHERE revenue_currency IS NOT NULL GROUP BY revenue_currency",
        )
        .await;
    let got: BTreeMap<String, Decimal> = revenue
        .iter()
        .map(|r| {
            let sum: Decimal = r["s"]
                .as_str()
                .expect("decimal as text")
                .parse()
                .expect("decimal");
            (r["c"].as_str().expect("currency").to_owned(), sum)
        })
        .collect();
    assert_eq!(got, want.revenue, "revenue per currency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_equals_the_truth_across_segments_and_tail_as_manifests_move() {
    let (_nats, client, js, stored) = data(12_000).await;
    // Half of each partition in segments, the rest only in the stream.
    commit_share(&js, &stored, 0.5).await;
    let node = store_node(&client, QuerySettings::default()).await;
    let want = truth(&stored, "site-0");
    node.until_count("site-0", "SELECT count(*) AS n FROM events", want.events)
        .await;
    assert_truth(&node, "site-0", &want).await;
    let status = node.node.store().expect("store").view().status();
    assert!(
        status.iter().all(|p| p.segments == 2 && p.tail_rows > 0),
        "{status:?}"
    );

    // The writers commit the rest: the tail empties, every row still counted once.
    let (manifests, segments) = store_buckets(&js).await;
    for p in 0..PARTITIONS {
        let rest: Vec<(u64, Event)> = stored
            .iter()
            .filter(|(_, e)| e.partition == p)
            .skip_while({
                let through = status
                    .iter()
                    .find(|s| s.partition == p)
                    .map_or(0, |s| s.through_seq);
                move |(seq, _)| *seq <= through
            })
            .cloned()
            .collect();
        let through = rest.last().map_or(0, |(s, _)| *s);
        commit_segment(&manifests, &segments, p, &rest, through).await;
    }
    node.until_tail_empty("the tail never emptied").await;
    assert_truth(&node, "site-0", &want).await;
    assert_truth(&node, "site-1", &truth(&stored, "site-1")).await;

    // The same over NATS, and as Arrow and CSV.
    let answer = ask_nats(
        &client,
        "sql",
        json!({"key": READ_ALL, "site": "site-0", "sql": "SELECT count(*) AS n FROM events"}),
    )
    .await
    .expect("NATS answers");
    assert_eq!(answer["rows"][0]["n"], want.events);
    let csv = node
        .http
        .post(format!(
            "http://{}/api/v1/sites/site-0/sql?format=csv",
            node.addr
        ))
        .bearer_auth(READ_ALL)
        .header("content-type", "text/plain")
        .body("SELECT count(*) AS n FROM events")
        .send()
        .await
        .expect("csv");
    assert_eq!(csv.status(), 200);
    assert_eq!(
        csv.text().await.expect("text"),
        format!("n\n{}\n", want.events)
    );
    let arrow = node
        .http
        .post(format!("http://{}/api/v1/sites/site-0/sql", node.addr))
        .bearer_auth(READ_ALL)
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"sql": "SELECT id FROM events"}))
        .send()
        .await
        .expect("arrow");
    assert_eq!(arrow.status(), 200);
    let bytes = arrow.bytes().await.expect("body");
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).expect("Arrow IPC");
    let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(rows, want.events as usize);
}

fn day_of(e: &Event) -> i64 {
    e.ts.timestamp_millis().div_euclid(86_400_000)
}

/// Commit one segment per partition and day, as compaction by day leaves
/// them: each one's rows by (partition, day), and what was written.
async fn commit_by_day(
    js: &jetstream::Context,
    stored: &[(u64, Event)],
) -> (
    BTreeMap<(u32, i64), Vec<(u64, Event)>>,
    Vec<beacon_store::manifest::SegmentMeta>,
) {
    let (manifests, segments) = store_buckets(js).await;
    let mut per_day: BTreeMap<(u32, i64), Vec<(u64, Event)>> = BTreeMap::new();
    for (seq, e) in stored {
        per_day
            .entry((e.partition, day_of(e)))
            .or_default()
            .push((*seq, e.clone()));
    }
    // The generator's time only moves forward, so each day is a run of sequences.
    let mut written = Vec::new();
    for ((p, _), rows) in &per_day {
        let through = rows.last().map_or(0, |(s, _)| *s);
        written.extend(commit_segment(&manifests, &segments, *p, rows, through).await);
    }
    (per_day, written)
}

/// Wait (bounded) for every partition's manifest, without a query that would
/// open a segment.
async fn until_manifests_loaded(node: &Node) {
    let view = node.node.store().expect("store").view().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(view.is_loaded() && view.status().len() == PARTITIONS as usize) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "manifests never loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Query settings with the segment cache as `cache` says, and no counting
/// of the dashboard's lists ahead: the cache then holds only what questions
/// and fetching ahead brought into it.
fn with_cache(cache: beacon_store::CacheSettings) -> QuerySettings {
    QuerySettings {
        segment_cache: cache,
        breakdown_count_ahead: false,
        ..QuerySettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_about_one_day_opens_only_that_days_segments() {
    let (_nats, client, js, stored) = data(6_000).await;
    let (per_day, _) = commit_by_day(&js, &stored).await;
    // Nothing fetched ahead: the files in the cache are the ones queries opened.
    let node = store_node(
        &client,
        with_cache(beacon_store::CacheSettings {
            fetch_ahead: false,
            ..Default::default()
        }),
    )
    .await;
    until_manifests_loaded(&node).await;
    let day = day_of(&stored[stored.len() / 2].1);
    let (from, to) = (day * 86_400_000, (day + 1) * 86_400_000);
    let want = stored
        .iter()
        .filter(|(_, e)| e.site == "site-0" && (from..to).contains(&e.ts.timestamp_millis()))
        .count() as i64;
    let cache = node.node.store().expect("store").cache().clone();
    assert_eq!(cache.files(), 0);
    let sql = format!(
        "SELECT count(*) AS n FROM events WHERE ts >= to_timestamp_millis({from}) \
         AND ts < to_timestamp_millis({to})"
    );
    node.until_count("site-0", &sql, want).await;
    // Only that day's segments (one per partition holding it) were fetched.
    let that_day = per_day.keys().filter(|(_, d)| *d == day).count();
    assert_eq!(cache.files(), that_day, "{} segments in all", per_day.len());
    // Their statistics were read once and kept for the next queries.
    let engine = node.node.store().expect("store");
    assert_eq!(engine.kept_file_statistics(), that_day);
    // A range before any data opens none.
    let empty = node
        .rows(
            "site-0",
            "SELECT count(*) AS n FROM events WHERE ts < '2001-01-01T00:00:00Z'",
        )
        .await;
    assert_eq!(empty[0]["n"], 0);
    assert_eq!(cache.files(), that_day, "no segment was fetched for 2001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_segments_are_fetched_before_any_question_within_half_the_bound() {
    let (_nats, client, js, stored) = data(6_000).await;
    let (_, mut written) = commit_by_day(&js, &stored).await;
    // A bound whose half holds the newest half of the segments, not more.
    written.sort_by_key(|s| std::cmp::Reverse(s.max_ts_ms));
    let newest = written.len() / 2;
    assert!(newest >= 2, "{} segments", written.len());
    let half: u64 = written[..newest].iter().map(|s| s.bytes).sum();
    let node = store_node(
        &client,
        with_cache(beacon_store::CacheSettings {
            max_bytes: half * 2,
            ..Default::default()
        }),
    )
    .await;
    let cache = node.node.store().expect("store").cache().clone();
    // No question is asked: the node fetches them as the manifests arrive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cache.files() < newest {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {newest} segments fetched ahead",
            cache.files()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a wrong fetch beyond half the bound the time to happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cache.files(), newest);
    assert!(cache.bytes() <= half, "{} bytes of {half}", cache.bytes());
    let held = |s: &&beacon_store::manifest::SegmentMeta| cache.holds(&s.name);
    let oldest_held = written.iter().filter(held).map(|s| s.max_ts_ms).min();
    let newest_left = written
        .iter()
        .filter(|s| !cache.holds(&s.name))
        .map(|s| s.max_ts_ms)
        .max();
    assert!(
        oldest_held >= newest_left,
        "{oldest_held:?} < {newest_left:?}"
    );
    // A question about the last day finds its files there and fetches nothing.
    let last = stored.last().map(|(_, e)| day_of(e)).expect("events");
    let (from, to) = (last * 86_400_000, (last + 1) * 86_400_000);
    let want = stored
        .iter()
        .filter(|(_, e)| e.site == "site-0" && (from..to).contains(&e.ts.timestamp_millis()))
        .count() as i64;
    let sql = format!(
        "SELECT count(*) AS n FROM events WHERE ts >= to_timestamp_millis({from}) \
         AND ts < to_timestamp_millis({to})"
    );
    node.until_count("site-0", &sql, want).await;
    assert_eq!(cache.files(), newest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sites_key_never_reaches_another_sites_rows() {
    let (_nats, client, js, stored) = data(3_000).await;
    commit_share(&js, &stored, 0.5).await;
    let node = store_node(&client, QuerySettings::default()).await;
    let mine = truth(&stored, "site-1");
    node.until_count("site-1", "SELECT count(*) AS n FROM events", mine.events)
        .await;

    // The key of site-1 is refused for site-0 outright.
    let (status, _) = node
        .sql_as(READ_ONE, "site-0", "SELECT count(*) AS n FROM events")
        .await;
    assert_eq!(status, 403);
    let (status, _) = node
        .sql_as(WRITE, "site-0", "SELECT count(*) AS n FROM events")
        .await;
    assert_eq!(status, 401, "a write key does not read");

    // Whatever the SQL, only site-1's rows exist under its view.
    for sql in [
        "SELECT count(*) AS n FROM events WHERE site = 'site-0'",
        "SELECT count(*) AS n FROM (SELECT * FROM events WHERE site <> 'site-1') t",
        "SELECT count(*) AS n FROM (SELECT site FROM events UNION ALL SELECT site FROM events) t WHERE site <> 'site-1'",
        "SELECT count(*) AS n FROM events a JOIN events b ON a.id = b.id WHERE b.site = 'site-0'",
        "SELECT count(*) AS n FROM datafusion.public.events WHERE site = 'site-0'",
    ] {
        let rows = node.rows("site-1", sql).await;
        assert_eq!(rows[0]["n"], 0, "{sql}");
    }
    let sites = node
        .rows("site-1", "SELECT DISTINCT site FROM events")
        .await;
    assert_eq!(sites, vec![json!({"site": "site-1"})]);

    // No other table, no file, no catalog, no URL table: refused as invalid.
    for sql in [
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM datafusion.information_schema.columns",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'file:///etc/hosts'",
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM segments",
        "SELECT * FROM tail",
        "SHOW TABLES",
    ] {
        let (status, body) = node.sql_as(READ_ALL, "site-1", sql).await;
        assert!(status == 400 || status == 403, "{sql}: {status} {body}");
        assert!(body["error"].is_string(), "{sql}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_write_or_define_are_refused_clearly() {
    let (_nats, client, _js, stored) = data(500).await;
    let node = store_node(&client, QuerySettings::default()).await;
    let n = truth(&stored, "site-0").events;
    node.until_count("site-0", "SELECT count(*) AS n FROM events", n)
        .await;
    for sql in [
        "CREATE TABLE t AS SELECT * FROM events",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "CREATE VIEW v AS SELECT 1",
        "DROP TABLE events",
        "DROP VIEW events",
        "INSERT INTO events (id) VALUES ('x')",
        "DELETE FROM events",
        "UPDATE events SET name = 'x'",
        "COPY (SELECT * FROM events) TO '/tmp/beacon-copy.csv'",
        "SET datafusion.catalog.information_schema = true",
        "SELECT 1; DROP TABLE events",
    ] {
        let (status, body) = node.sql_as(READ_ALL, "site-0", sql).await;
        assert!(status == 403 || status == 400, "{sql}: {status} {body}");
        if status == 403 {
            assert_eq!(body["kind"], "read_only", "{sql}: {body}");
        }
    }
    let (status, body) = node.sql_as(READ_ALL, "site-0", "DROP TABLE events").await;
    assert_eq!((status, body["kind"].as_str()), (403, Some("read_only")));
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("read-only")),
        "{body}"
    );
    assert!(!std::path::Path::new("/tmp/beacon-copy.csv").exists());
    // Nothing changed: the view still holds every row.
    let rows = node
        .rows("site-0", "SELECT count(*) AS n FROM events")
        .await;
    assert_eq!(rows[0]["n"], n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_queries_are_cut_at_each_limit_and_the_node_keeps_answering() {
    let (_nats, client, _js, stored) = data(2_000).await;
    let n = truth(&stored, "site-0").events;
    let limited = |f: fn(&mut beacon_store::SqlLimits)| {
        let mut settings = QuerySettings::default();
        settings.sql.timeout = Duration::from_secs(120);
        f(&mut settings.sql);
        settings
    };
    let cases: [(QuerySettings, &str, u16, &str); 3] = [
        (
            limited(|l| l.max_rows = 10),
            "SELECT id FROM events",
            413,
            "row_limit",
        ),
        (
            limited(|l| l.timeout = Duration::from_millis(300)),
            "SELECT count(*) AS n FROM generate_series(1, 100000000000) a",
            408,
            "time_limit",
        ),
        (
            limited(|l| l.memory_bytes = 2 << 20),
            "SELECT value % 5000000 AS k, count(*) AS c FROM generate_series(1, 20000000) GROUP BY value % 5000000 ORDER BY c DESC LIMIT 1",
            422,
            "memory_limit",
        ),
    ];
    for (settings, sql, status, kind) in cases {
        let node = store_node(&client, settings).await;
        node.until_count("site-0", "SELECT count(*) AS n FROM events", n)
            .await;
        let (got, body) = node.sql_as(READ_ALL, "site-0", sql).await;
        assert_eq!(
            (got, body["kind"].as_str()),
            (status, Some(kind)),
            "{sql}: {body}"
        );
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        // The node answers the next question, and its other routes too.
        let rows = node
            .rows("site-0", "SELECT count(*) AS n FROM events")
            .await;
        assert_eq!(rows[0]["n"], n);
        let (status, _) = node.get("/api/v1/sites", Some(READ_ALL)).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_read_back_to_the_same_rows() {
    let (_nats, client, js, stored) = data(4_000).await;
    commit_share(&js, &stored, 0.7).await;
    let node = store_node(&client, QuerySettings::default()).await;
    let all = truth(&stored, "site-0").events;
    node.until_count("site-0", "SELECT count(*) AS n FROM events", all)
        .await;
    let (from, to) = (end_ms() - 2 * 86_400_000, end_ms() - 86_400_000 / 2);
    let want: BTreeMap<String, (String, Option<Decimal>)> = stored
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.site == "site-0" && (from..to).contains(&e.ts.timestamp_millis()))
        .map(|e| {
            (
                e.id.clone(),
                (e.name.clone(), e.revenue.as_ref().map(|r| r.amount)),
            )
        })
        .collect();
    assert!(want.len() > 100);
    let rfc = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let get = |format: &str| {
        node.http
            .get(format!(
                "http://{}/api/v1/sites/site-0/export?from={}&to={}&format={format}",
                node.addr,
                rfc(from),
                rfc(to)
            ))
            .bearer_auth(READ_ALL)
            .send()
    };

    let ndjson = get("ndjson").await.expect("ndjson");
    assert_eq!(ndjson.status(), 200);
    let text = ndjson.text().await.expect("body");
    let got: BTreeMap<String, (String, Option<Decimal>)> = text
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).expect("a JSON line");
            let revenue = row["revenue_amount"]
                .as_str()
                .map(|s| s.parse::<Decimal>().expect("decimal").normalize());
            (
                row["id"].as_str().expect("id").to_owned(),
                (row["name"].as_str().expect("name").to_owned(), revenue),
            )
        })
        .collect();
    assert_eq!(text.lines().count(), want.len(), "no row twice");
    let normalized: BTreeMap<_, _> = want
        .iter()
        .map(|(k, (n, r))| (k.clone(), (n.clone(), r.map(|d| d.normalize()))))
        .collect();
    assert_eq!(got, normalized);

    let parquet = get("parquet").await.expect("parquet");
    assert_eq!(parquet.status(), 200);
    let file = parquet.bytes().await.expect("body");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("a Parquet file")
        .build()
        .expect("reader");
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let column = batch.column_by_name("id").expect("id column");
        ids.extend(
            column
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_owned),
        );
    }
    assert_eq!(ids.len(), want.len(), "no row twice");
    assert_eq!(
        ids.into_iter().collect::<HashSet<_>>(),
        want.keys().cloned().collect::<HashSet<_>>()
    );

    let csv = get("csv").await.expect("csv");
    assert_eq!(csv.status(), 200);
    let text = csv.text().await.expect("body");
    assert!(text.starts_with("seq,partition,ts,"));
    assert_eq!(text.lines().count(), want.len() + 1);

    // Bad requests are told what is wrong.
    let (status, body) = node
        .get(
            "/api/v1/sites/site-0/export?from=2026-01-01&to=2026-01-02&format=xlsx",
            Some(READ_ALL),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = node
        .get(
            "/api/v1/sites/site-0/export?from=2026-01-01&to=2026-01-02",
            Some(READ_ONE),
        )
        .await;
    assert_eq!(status, 403);
}

/// An engine over `stored` held in its tail alone (no segments, no follower).
fn tail_engine(
    js: &jetstream::Context,
    stored: &[(u64, Event)],
    limits: beacon_store::SqlLimits,
) -> beacon_store::Engine {
    let view = beacon_store::StoreView::default();
    for (seq, e) in stored {
        view.push(*seq, e);
    }
    view.set_loaded();
    let cache = beacon_store::SegmentCache::open(&beacon_store::CacheSettings {
        dir: None,
        max_bytes: 1 << 20,
        fetch_ahead: false,
    })
    .expect("cache");
    beacon_store::Engine::new(js.clone(), view, cache, limits)
}

fn step(name: &str, sql: &str) -> beacon_store::Step {
    beacon_store::Step {
        name: name.to_owned(),
        sql: sql.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_steps_are_tables_of_one_run_and_keep_every_limit() {
    use beacon_store::{SqlErrorKind, SqlFormat, SqlLimits};
    let (_nats, _client, js, stored) = data(2_000).await;
    let want = truth(&stored, "site-0");
    let pageview_users = stored
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.site == "site-0" && e.name == "pageview")
        .map(|e| e.user_key())
        .collect::<HashSet<_>>()
        .len() as i64;
    let engine = tail_engine(&js, &stored, SqlLimits::default());
    let steps = [
        step(
            "pages",
            "SELECT user_key, name FROM events WHERE name = 'pageview'",
        ),
        // A later step reads an earlier one.
        step("readers", "SELECT DISTINCT user_key FROM pages"),
    ];
    let queries = [
        "SELECT count(*) AS n FROM pages".to_owned(),
        "SELECT count(*) AS n FROM readers".to_owned(),
        "SELECT count(*) AS n FROM events".to_owned(),
    ];
    let answers = engine
        .staged("site-0", &steps, &queries, SqlFormat::Json)
        .await
        .expect("staged");
    let n = |a: &beacon_store::Answer| -> Value {
        serde_json::from_slice::<Value>(&a.body).expect("json")["rows"][0]["n"].clone()
    };
    assert_eq!(n(&answers[0]), json!(want.by_name["pageview"]));
    assert_eq!(n(&answers[1]), json!(pageview_users));
    assert_eq!(n(&answers[2]), json!(want.events));

    // The steps' tables live for their run only: a later query cannot see them.
    let err = engine
        .sql("site-0", "SELECT count(*) FROM pages", SqlFormat::Json)
        .await
        .expect_err("no table");
    assert_eq!(err.kind, SqlErrorKind::Invalid, "{err}");
    // Steps and queries only read, and a step cannot hide `events`.
    let count = ["SELECT count(*) AS n FROM events".to_owned()];
    for (bad, kind) in [
        (
            step("copy", "CREATE TABLE x AS SELECT * FROM events"),
            SqlErrorKind::ReadOnly,
        ),
        (
            step("events", "SELECT * FROM events WHERE name = 'signup'"),
            SqlErrorKind::Invalid,
        ),
    ] {
        let err = engine
            .staged("site-0", &[bad], &count, SqlFormat::Json)
            .await
            .expect_err("refused");
        assert_eq!(err.kind, kind, "{err}");
    }
    let err = engine
        .staged(
            "site-0",
            &[],
            &["DROP TABLE events".to_owned()],
            SqlFormat::Json,
        )
        .await
        .expect_err("refused");
    assert_eq!(err.kind, SqlErrorKind::ReadOnly, "{err}");

    // Each answer keeps the row limit; the steps' rows count against memory.
    let few_rows = tail_engine(
        &js,
        &stored,
        SqlLimits {
            max_rows: 10,
            ..SqlLimits::default()
        },
    );
    let err = few_rows
        .staged(
            "site-0",
            &steps,
            &["SELECT * FROM pages".to_owned()],
            SqlFormat::Json,
        )
        .await
        .expect_err("too many rows");
    assert_eq!(err.kind, SqlErrorKind::RowLimit, "{err}");
    let little_memory = tail_engine(
        &js,
        &stored,
        SqlLimits {
            memory_bytes: 16 << 10,
            ..SqlLimits::default()
        },
    );
    let err = little_memory
        .staged(
            "site-0",
            &[step("everything", "SELECT * FROM events")],
            &count,
            SqlFormat::Json,
        )
        .await
        .expect_err("too much memory");
    assert_eq!(err.kind, SqlErrorKind::MemoryLimit, "{err}");
}

/// Users who reached each step of pageview → signup → purchase, each step
/// after the previous one's first time (as the SQL below counts them).
fn funnel_truth(stored: &[(u64, Event)], site: &str) -> [i64; 3] {
    let mut first: HashMap<&str, [Option<i64>; 3]> = HashMap::new();
    let mut events: Vec<&Event> = stored
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.site == site)
        .collect();
    events.sort_by_key(|e| e.ts);
    for step in 0..3 {
        let name = ["pageview", "signup", "purchase"][step];
        for e in &events {
            let at = e.ts.timestamp_millis();
            let reached = first.entry(e.user_key()).or_default();
            let after_previous = step == 0 || reached[step - 1].is_some_and(|t| at > t);
            if e.name == name && after_previous && reached[step].is_none() {
                reached[step] = Some(at);
            }
        }
    }
    [0, 1, 2].map(|step| first.values().filter(|r| r[step].is_some()).count() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tables_named_twice_answer_as_written_within_every_limit() {
    use beacon_store::{SqlFormat, SqlLimits};
    let (_nats, _client, js, stored) = data(3_000).await;
    let want = funnel_truth(&stored, "site-0");
    assert!(want[2] > 0, "the data reaches the last step: {want:?}");
    // `d` is named by three steps, `s1` and `s2` twice each: each is kept
    // as a table of the query's own, `s3` stays inline.
    let funnel = "WITH d AS (SELECT user_key, name, ts FROM events), \
         s1 AS (SELECT user_key, min(ts) AS t FROM d WHERE name = 'pageview' GROUP BY user_key), \
         S2 (user_key, t) AS (SELECT d.user_key, min(d.ts) FROM d JOIN s1 ON d.user_key = s1.user_key \
                AND d.ts > s1.t WHERE d.name = 'signup' GROUP BY d.user_key), \
         s3 AS (SELECT d.user_key, min(d.ts) AS t FROM d JOIN s2 ON d.user_key = s2.user_key \
                AND d.ts > s2.t WHERE d.name = 'purchase' GROUP BY d.user_key) \
         SELECT (SELECT count(*) FROM s1) AS step1, (SELECT count(*) FROM s2) AS step2, \
                (SELECT count(*) FROM s3) AS step3";
    let steps = |engine: beacon_store::Engine| async move {
        let answer = engine
            .sql("site-0", funnel, SqlFormat::Json)
            .await
            .expect("funnel");
        let rows = serde_json::from_slice::<Value>(&answer.body).expect("json")["rows"].clone();
        ["step1", "step2", "step3"].map(|s| rows[0][s].as_i64().expect("count"))
    };
    assert_eq!(
        steps(tail_engine(&js, &stored, SqlLimits::default())).await,
        want
    );
    // Too little memory to keep `everything`, enough to count it where it
    // is named: the query runs as written rather than failing.
    let totals = truth(&stored, "site-0");
    let engine = tail_engine(
        &js,
        &stored,
        SqlLimits {
            memory_bytes: 16 << 10,
            ..SqlLimits::default()
        },
    );
    let kept = engine
        .staged(
            "site-0",
            &[step("everything", "SELECT * FROM events")],
            &[],
            SqlFormat::Json,
        )
        .await;
    assert!(kept.is_err(), "`everything` does not fit in the limit");
    let answer = engine
        .sql(
            "site-0",
            "WITH everything AS (SELECT * FROM events) \
             SELECT (SELECT count(*) FROM everything) AS n, \
                    (SELECT count(*) FROM everything WHERE name = 'pageview') AS pageviews",
            SqlFormat::Json,
        )
        .await
        .expect("counted as written");
    let rows = serde_json::from_slice::<Value>(&answer.body).expect("json")["rows"].clone();
    assert_eq!(rows[0]["n"], totals.events);
    assert_eq!(rows[0]["pageviews"], totals.by_name["pageview"]);
}

/// Feeds the server stops while it still answers their heartbeats (paused
/// here) look idle to the client. The node must notice that the stream and
/// the manifests hold what its feeds have not brought, and read on: new
/// events are counted from the tail, and once they are in segments the tail
/// lets them go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_and_a_manifest_watch_gone_silent_are_reopened() {
    let (_nats, client, js, mut stored) = data(2_000).await;
    let node = store_node(&client, QuerySettings::default()).await;
    let count = "SELECT count(*) AS n FROM events";
    node.until_count("site-0", count, truth(&stored, "site-0").events)
        .await;

    let feeds = beacon_testing::pause_consumers(&js, beacon_nats::EVENTS_STREAM, "").await;
    assert!(
        feeds.len() >= 2,
        "the store's tail and the live feed: {feeds:?}"
    );
    let watches = beacon_testing::pause_consumers(&js, "KV_BEACON_STORE", "").await;
    assert!(!watches.is_empty(), "the manifest watch");

    let more = generate(Shape {
        seed: 12,
        sites: 2,
        users: 300,
        events: 500,
        days: 1,
        end_ms: end_ms(),
        partitions: PARTITIONS,
    });
    stored.extend(publish_with_seqs(&js, &more).await);
    let want = truth(&stored, "site-0");
    node.until_count("site-0", count, want.events).await;

    commit_share(&js, &stored, 1.0).await;
    node.until_tail_empty("the manifests never reached the node")
        .await;
    assert_truth(&node, "site-0", &want).await;
}
