//! `beacon bench store`: the event store's questions, timed in Beacon and in
//! DuckDB over the same Parquet files.
//!
//! Days of events are written straight into segments (rows → Parquet →
//! `BEACON_SEGMENTS`, a manifest per partition in `BEACON_STORE`) on a scratch
//! nats-server, as the segment writers would write them; the same files are
//! also written to a directory. Then four questions are asked, each several
//! times: of Beacon's engine (segments fetched into its cache on the first
//! run, read from it after), and of DuckDB (the PyPI package `duckdb`, run by
//! `--duckdb-python`, see scripts/bench-store.sh) reading the directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{kv, object_store};
use beacon_core::event::{Context, Event, Revenue};
use beacon_store::manifest::manifest_key;
use beacon_store::{
    CacheSettings, Engine, MANIFEST_BUCKET, Manifest, Rows, SEGMENT_BUCKET, SegmentCache,
    SqlFormat, SqlLimits, StoreView, StoredEvent,
};
use chrono::{TimeZone, Utc};
use clap::Args;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::query::quantile_ms;
use super::{BenchNats, Target};

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Days of events.
    #[arg(long, default_value_t = 30)]
    pub days: usize,
    /// Events per day.
    #[arg(long, default_value_t = 1_000_000)]
    pub events_per_day: usize,
    /// Distinct users per day.
    #[arg(long, default_value_t = 100_000)]
    pub users_per_day: usize,
    /// Timed runs of each question (after one untimed run that fills the cache).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Python with the `duckdb` package; without it DuckDB is skipped.
    #[arg(long)]
    pub duckdb_python: Option<std::path::PathBuf>,
    /// A short run (3 days of 20,000 events, 3 runs) that checks every figure can be measured.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also print how Beacon's engine runs each question (`EXPLAIN ANALYZE`), to stderr.
    #[arg(long)]
    pub explain: bool,
}

/// Partitions the events are spread over, as a small deployment has.
const PARTITIONS: u32 = 4;
const SITE: &str = "bench";
/// The goals the figures are reported against (issue 14).
const P99_GOAL_MS: f64 = 1000.0;
const DUCKDB_RATIO_GOAL: f64 = 1.5;
const BYTES_PER_EVENT_GOAL: f64 = 20.0;

/// The four questions, in Beacon's SQL and DuckDB's; `{day}` and `{next}`
/// are the funnel's day.
const QUESTIONS: [(&str, &str, &str); 4] = [
    (
        "users_per_day_two_filters",
        "SELECT date_trunc('day', ts) AS day, count(DISTINCT user_key) AS users FROM events \
         WHERE country = 'DE' AND device = 'mobile' GROUP BY 1 ORDER BY 1",
        "SELECT date_trunc('day', ts) AS day, count(DISTINCT user_key) AS users FROM events \
         WHERE country = 'DE' AND device = 'mobile' GROUP BY 1 ORDER BY 1",
    ),
    (
        "property_breakdown_users_revenue",
        "SELECT props['plan'] AS plan, count(DISTINCT user_key) AS users, \
         sum(revenue_amount) AS revenue FROM events GROUP BY 1 ORDER BY users DESC LIMIT 20",
        "SELECT props['plan'] AS plan, count(DISTINCT user_key) AS users, \
         sum(revenue_amount) AS revenue FROM events GROUP BY 1 ORDER BY users DESC LIMIT 20",
    ),
    (
        "top_pages_by_visitors_filtered",
        "SELECT path, count(DISTINCT user_key) AS visitors FROM events \
         WHERE name = 'pageview' AND referrer_source = 'Google' GROUP BY path \
         ORDER BY visitors DESC LIMIT 10",
        "SELECT path, count(DISTINCT user_key) AS visitors FROM events \
         WHERE name = 'pageview' AND referrer_source = 'Google' GROUP BY path \
         ORDER BY visitors DESC LIMIT 10",
    ),
    ("three_step_funnel_in_a_day", FUNNEL, FUNNEL),
];

const FUNNEL: &str = "WITH d AS (SELECT user_key, name, ts FROM events \
     WHERE ts >= '{day}' AND ts < '{next}'), \
     s1 AS (SELECT user_key, min(ts) AS t FROM d WHERE name = 'pageview' GROUP BY user_key), \
     s2 AS (SELECT d.user_key, min(d.ts) AS t FROM d JOIN s1 ON d.user_key = s1.user_key \
            AND d.ts > s1.t WHERE d.name = 'signup' GROUP BY d.user_key), \
     s3 AS (SELECT d.user_key, min(d.ts) AS t FROM d JOIN s2 ON d.user_key = s2.user_key \
            AND d.ts > s2.t WHERE d.name = 'purchase' GROUP BY d.user_key) \
     SELECT (SELECT count(*) FROM s1) AS step1, (SELECT count(*) FROM s2) AS step2, \
            (SELECT count(*) FROM s3) AS step3";

/// SplitMix64: the same data on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// One event of day `day` (midnight `day_ms`).
fn event(rng: &mut Rng, i: usize, day: usize, day_ms: i64, args: &StoreArgs) -> Event {
    // Each day's users are half yesterday's, half new.
    let user = day * args.users_per_day / 2 + rng.below(args.users_per_day);
    let name = match rng.below(100) {
        0..70 => "pageview",
        70..85 => "click",
        85..93 => "signup",
        _ => "purchase",
    };
    let ts = day_ms + (i as i64 * 86_400_000) / args.events_per_day as i64;
    let time = Utc.timestamp_millis_opt(ts).single().unwrap_or_default();
    let mut props = serde_json::Map::new();
    if user.is_multiple_of(2) {
        let plan = ["free", "pro", "team"][user % 3];
        props.insert("plan".into(), Value::String(plan.into()));
    }
    Event {
        id: format!("b{day}-{i}"),
        site: SITE.into(),
        name: name.into(),
        user_id: Some(format!("u{user}")),
        anonymous_id: None,
        ts: time,
        received_at: time,
        partition: (user % PARTITIONS as usize) as u32,
        props,
        revenue: (name == "purchase").then(|| Revenue {
            amount: Decimal::new(rng.below(20_000) as i64 + 100, 2),
            currency: ["USD", "EUR"][user % 2].into(),
        }),
        context: Context {
            path: Some(format!("/page/{}", rng.below(50))),
            referrer_source: Some(
                rng.pick(&["Google", "Direct", "twitter.com", "newsletter"])
                    .into(),
            ),
            browser: Some(rng.pick(&["Chrome", "Firefox", "Safari", "Edge"]).into()),
            os: Some(["Windows", "Mac OSX", "Linux", "Android", "iOS"][user % 5].into()),
            device: Some(["desktop", "mobile", "tablet"][user % 3].into()),
            country: Some(["DE", "US", "FR", "JP", "GB"][user % 5].into()),
            ..Context::default()
        },
    }
}

/// What was written.
struct Written {
    events: u64,
    bytes: u64,
    segments: usize,
    seconds: f64,
    first_day_ms: i64,
    /// Compressed bytes per column, summed over the segments.
    columns: Vec<(String, u64)>,
}

/// Write the days into segments: one per day and partition, in the object
/// store and in `dir`, and each partition's manifest.
async fn write(
    args: &StoreArgs,
    js: &async_nats::jetstream::Context,
    dir: &Path,
    view: &StoreView,
) -> anyhow::Result<Written> {
    let manifests = js
        .create_key_value(kv::Config {
            bucket: MANIFEST_BUCKET.into(),
            ..Default::default()
        })
        .await?;
    let objects = js
        .create_object_store(object_store::Config {
            bucket: SEGMENT_BUCKET.into(),
            ..Default::default()
        })
        .await?;
    let today = Utc::now().timestamp_millis().div_euclid(86_400_000) * 86_400_000;
    let first_day_ms = today - args.days as i64 * 86_400_000;
    let mut rng = Rng(14);
    let mut seq = [0u64; PARTITIONS as usize];
    let mut metas: Vec<Manifest> = (0..PARTITIONS).map(Manifest::empty).collect();
    let started = Instant::now();
    let mut written = Written {
        events: 0,
        bytes: 0,
        segments: 0,
        seconds: 0.0,
        first_day_ms,
        columns: Vec::new(),
    };
    for day in 0..args.days {
        let day_ms = first_day_ms + day as i64 * 86_400_000;
        let mut rows: Vec<Rows> = (0..PARTITIONS).map(|_| Rows::new()).collect();
        for i in 0..args.events_per_day {
            let e = event(&mut rng, i, day, day_ms, args);
            let p = e.partition as usize;
            // Sequences interleave across partitions as in the shared stream.
            seq[p] = seq.iter().max().copied().unwrap_or(0) + 1;
            rows[p].push(StoredEvent {
                seq: seq[p],
                event: &e,
                session_id: None,
            });
        }
        for (p, rows) in rows.iter_mut().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let batch = rows.finish()?;
            let name = format!("p{p}/day{day:03}.parquet");
            let (file, meta) = beacon_store::segment::encode(&name, p as u32, 1, &[batch])?;
            std::fs::write(dir.join(format!("p{p}-day{day:03}.parquet")), &file)?;
            objects
                .put(name.as_str(), &mut file.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("put {name}: {e}"))?;
            written.events += meta.rows;
            written.bytes += meta.bytes;
            let columns = beacon_store::segment::column_bytes(file.clone())?;
            if written.columns.is_empty() {
                written.columns = columns;
            } else {
                for (sum, (_, bytes)) in written.columns.iter_mut().zip(columns) {
                    sum.1 += bytes;
                }
            }
            written.segments += 1;
            metas[p].through_seq = meta.last_seq;
            metas[p].segments.push(meta);
        }
        eprintln!("day {}/{} written", day + 1, args.days);
    }
    written.seconds = started.elapsed().as_secs_f64();
    for manifest in metas {
        let revision = manifests
            .create(manifest_key(manifest.partition), manifest.encode().into())
            .await
            .map_err(|e| anyhow::anyhow!("manifest: {e}"))?;
        view.set_manifest(manifest, revision);
    }
    view.set_loaded();
    Ok(written)
}

fn questions(first_day_ms: i64, days: usize) -> Vec<(&'static str, String, String)> {
    let day = first_day_ms + (days as i64 / 2) * 86_400_000;
    let text = |ms: i64| {
        Utc.timestamp_millis_opt(ms)
            .single()
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let fill = |sql: &str| {
        sql.replace("{day}", &text(day))
            .replace("{next}", &text(day + 86_400_000))
    };
    QUESTIONS
        .iter()
        .map(|(name, beacon, duck)| (*name, fill(beacon), fill(duck)))
        .collect()
}

/// Per question: the first (cold) run and the sorted timed runs.
type Timings = Vec<(Duration, Vec<Duration>)>;

async fn time_beacon(
    engine: &Engine,
    questions: &[(&'static str, String, String)],
    runs: usize,
) -> anyhow::Result<(Timings, Vec<String>)> {
    let mut out = Vec::new();
    let mut answers = Vec::new();
    for (name, sql, _) in questions {
        let started = Instant::now();
        let answer = engine
            .sql(SITE, sql, SqlFormat::Json)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let cold = started.elapsed();
        answers.push(String::from_utf8_lossy(&answer.body).into_owned());
        let mut timed = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            engine
                .sql(SITE, sql, SqlFormat::Json)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            timed.push(started.elapsed());
        }
        timed.sort();
        out.push((cold, timed));
    }
    Ok((out, answers))
}

/// Run the questions in DuckDB over `dir`: per question, the sorted timed runs.
async fn time_duckdb(
    python: &Path,
    dir: &Path,
    questions: &[(&'static str, String, String)],
    runs: usize,
) -> anyhow::Result<Vec<Vec<Duration>>> {
    let script = dir.join("bench_store_duckdb.py");
    std::fs::write(&script, include_str!("store_duckdb.py"))?;
    let input = json!({
        "glob": dir.join("*.parquet").to_string_lossy(),
        "runs": runs,
        "questions": questions.iter().map(|(_, _, duck)| duck).collect::<Vec<_>>(),
    });
    let mut child = tokio::process::Command::new(python)
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(input.to_string().as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!("the DuckDB script failed ({})", output.status);
    }
    let result: Vec<Vec<f64>> =
        serde_json::from_slice(&output.stdout).context("the DuckDB script printed no timings")?;
    Ok(result
        .into_iter()
        .map(|ms| {
            let mut d: Vec<Duration> = ms
                .into_iter()
                .map(|m| Duration::from_secs_f64(m / 1000.0))
                .collect();
            d.sort();
            d
        })
        .collect())
}

pub async fn run(mut args: StoreArgs, target: &Target) -> anyhow::Result<()> {
    if args.quick {
        args.days = args.days.min(3);
        args.events_per_day = args.events_per_day.min(20_000);
        args.users_per_day = args.users_per_day.min(2_000);
        args.runs = args.runs.min(3);
    }
    if args.days == 0 || args.events_per_day == 0 || args.users_per_day == 0 || args.runs == 0 {
        bail!("--days, --events-per-day, --users-per-day and --runs must be positive");
    }
    let nats = BenchNats::own(target, "store").await?;
    let result = measure(&args, &nats).await;
    nats.stop().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(())
}

async fn measure(args: &StoreArgs, nats: &BenchNats) -> anyhow::Result<Value> {
    let client = async_nats::connect(nats.urls.clone()).await?;
    let js = async_nats::jetstream::new(client);
    let dir = tempfile::Builder::new()
        .prefix("beacon-bench-store-")
        .tempdir()?;
    let view = StoreView::default();
    let written = write(args, &js, dir.path(), &view).await?;
    let cache = SegmentCache::open(&CacheSettings {
        dir: None,
        max_bytes: written.bytes * 2,
        // The first run of each question is the cold one, fetching its files.
        fetch_ahead: false,
    })?;
    let limits = SqlLimits {
        timeout: Duration::from_secs(600),
        memory_bytes: 4 << 30,
        ..SqlLimits::default()
    };
    let engine = Engine::new(js, view, cache, limits);
    let questions = questions(written.first_day_ms, args.days);
    let (beacon, answers) = time_beacon(&engine, &questions, args.runs).await?;
    if args.explain {
        for (name, sql, _) in &questions {
            let plan = engine
                .explain(SITE, sql)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            eprintln!("== {name}\n{plan}");
        }
    }
    let duck = match &args.duckdb_python {
        Some(python) => Some(time_duckdb(python, dir.path(), &questions, args.runs).await?),
        None => None,
    };
    let mut rows = Vec::new();
    for (i, (name, sql, _)) in questions.iter().enumerate() {
        let (cold, timed) = &beacon[i];
        let p50 = quantile_ms(timed, 0.5);
        let p99 = quantile_ms(timed, 0.99);
        let duck_p50 = duck.as_ref().and_then(|d| quantile_ms(&d[i], 0.5));
        let duck_p99 = duck.as_ref().and_then(|d| quantile_ms(&d[i], 0.99));
        rows.push(json!({
            "question": name,
            "sql": sql,
            "beacon_cold_ms": cold.as_secs_f64() * 1000.0,
            "beacon_p50_ms": p50,
            "beacon_p99_ms": p99,
            "duckdb_p50_ms": duck_p50,
            "duckdb_p99_ms": duck_p99,
            "ratio_p50": p50.zip(duck_p50).map(|(b, d)| b / d),
            "answer": serde_json::from_str::<Value>(&answers[i]).unwrap_or(Value::Null)["rows"].clone(),
        }));
    }
    Ok(json!({
        "days": args.days,
        "events_per_day": args.events_per_day,
        "users_per_day": args.users_per_day,
        "events": written.events,
        "segments": written.segments,
        "segment_bytes": written.bytes,
        "bytes_per_event": written.bytes as f64 / written.events.max(1) as f64,
        "column_bytes_per_event": column_shares(&written),
        "write_seconds": written.seconds,
        "write_cpu_seconds_per_million": written.seconds * 1e6 / written.events.max(1) as f64,
        "runs": args.runs,
        "questions": rows,
    }))
}

/// Bytes per event of each column, largest first (those under 0.05 left out).
fn column_shares(written: &Written) -> Value {
    let mut columns: Vec<(&str, f64)> = written
        .columns
        .iter()
        .map(|(name, bytes)| (name.as_str(), *bytes as f64 / written.events.max(1) as f64))
        .filter(|(_, b)| *b >= 0.05)
        .collect();
    columns.sort_by(|a, b| b.1.total_cmp(&a.1));
    Value::Array(
        columns
            .into_iter()
            .map(
                |(name, b)| json!({"column": name, "bytes_per_event": (b * 100.0).round() / 100.0}),
            )
            .collect(),
    )
}

fn print(report: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    println!(
        "{} events ({} days × {}), {} segments, {:.1} bytes/event (goal < {BYTES_PER_EVENT_GOAL}), \
         written in {:.1} s ({:.2} s per million events, generation included)",
        report["events"],
        report["days"],
        report["events_per_day"],
        report["segments"],
        report["bytes_per_event"].as_f64().unwrap_or(0.0),
        report["write_seconds"].as_f64().unwrap_or(0.0),
        report["write_cpu_seconds_per_million"]
            .as_f64()
            .unwrap_or(0.0),
    );
    let columns: Vec<String> = report["column_bytes_per_event"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {:.2}",
                c["column"].as_str().unwrap_or(""),
                c["bytes_per_event"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    println!("bytes/event by column: {}", columns.join(", "));
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "question (ms)", "cold", "p50", "p99", "duck p50", "duck p99", "ratio"
    );
    for q in report["questions"].as_array().into_iter().flatten() {
        println!(
            "{:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            q["question"].as_str().unwrap_or(""),
            f(&q["beacon_cold_ms"]),
            f(&q["beacon_p50_ms"]),
            f(&q["beacon_p99_ms"]),
            f(&q["duckdb_p50_ms"]),
            f(&q["duckdb_p99_ms"]),
            q["ratio_p50"]
                .as_f64()
                .map_or("-".to_owned(), |r| format!("{r:.2}")),
        );
    }
    println!(
        "goals: every p99 < {P99_GOAL_MS} ms on 2 cores, ratio ≤ {DUCKDB_RATIO_GOAL} (Beacon p50 / DuckDB p50)"
    );
}
