//! `beacon status`: the NATS server, Beacon's streams and their consumers, and
//! each partition's owner, how far its aggregation lags behind the stream, and
//! what the event store holds of it (segments, rows, bytes, its own lag).

use anyhow::Context as _;
use beacon_nats::{
    EVENTS_STREAM, INGEST_STREAM, REJECTS_STREAM, ROLLUPS_STREAM, UNAUTH_REJECTS_STREAM, connect,
};
use futures::TryStreamExt;
use serde_json::{Value, json};

use crate::config::Config;
use crate::up::NATS_URL_FILE;

/// Connect as a tool: to the configured NATS, else to the local server a
/// running `beacon up` recorded in the data directory.
async fn tool_client(config: &mut Config, name: &str) -> anyhow::Result<async_nats::Client> {
    if config.nats.urls.is_empty() {
        let file = config.data_dir.join(NATS_URL_FILE);
        let url = std::fs::read_to_string(&file).with_context(|| {
            format!("no NATS to ask: pass --nats-url, or run `beacon up` (it records its local server in {})", file.display())
        })?;
        config.nats.urls = vec![url.trim().to_owned()];
    }
    Ok(connect(&config.nats, name).await?)
}

/// `beacon actions replay-dead`: every dead letter back on the job queue.
pub async fn replay_dead(mut config: Config) -> anyhow::Result<()> {
    let client = tool_client(&mut config, "beacon-replay-dead").await?;
    let js = async_nats::jetstream::new(client);
    let moved = beacon_actions::replay_dead(&js)
        .await
        .map_err(|e| anyhow::anyhow!("cannot replay the dead letters: {e}"))?;
    println!("re-queued {moved} dead jobs");
    Ok(())
}

pub async fn run(mut config: Config, as_json: bool) -> anyhow::Result<()> {
    let client = tool_client(&mut config, "beacon-status").await?;
    let info = client.server_info();
    let js = async_nats::jetstream::new(client.clone());
    let mut streams = Vec::new();
    let mut partitions = None;
    for name in [
        EVENTS_STREAM,
        INGEST_STREAM,
        REJECTS_STREAM,
        UNAUTH_REJECTS_STREAM,
        ROLLUPS_STREAM,
        beacon_actions::ACTIONS_STREAM,
    ] {
        let Ok(mut stream) = js.get_stream(name).await else {
            streams.push(json!({"name": name, "exists": false}));
            continue;
        };
        let state = stream.info().await?.state.clone();
        let partitions_of = stream
            .cached_info()
            .config
            .metadata
            .get("beacon.partitions")
            .cloned();
        if name == EVENTS_STREAM {
            partitions = partitions_of.as_deref().and_then(|p| p.parse::<u32>().ok());
        }
        let all: Vec<_> = stream.consumers().try_collect().await.unwrap_or_default();
        // The aggregators' per-partition readers are summarised, not listed.
        let is_reader = |name: &str| name.starts_with(beacon_aggregate::owner::READER_PREFIX);
        let readers = all.iter().filter(|c| is_reader(&c.name)).count();
        let consumers: Vec<Value> = all
            .iter()
            .filter(|c| !is_reader(&c.name))
            .map(|c| json!({"name": c.name, "pending": c.num_pending, "ack_pending": c.num_ack_pending, "redelivered": c.num_redelivered}))
            .collect();
        streams.push(json!({
            "name": name, "exists": true, "messages": state.messages, "bytes": state.bytes,
            "first_seq": state.first_sequence, "last_seq": state.last_sequence,
            "partitions": partitions_of, "consumers": consumers, "aggregator_readers": readers,
        }));
    }
    let progress = match partitions {
        Some(p) => beacon_aggregate::progress(&js, p).await?,
        None => Vec::new(),
    };
    let stored = match partitions {
        Some(p) => beacon_aggregate::stored(&js, p).await?,
        None => Vec::new(),
    };
    let jobs = beacon_actions::counts(&js)
        .await
        .map_err(|e| anyhow::anyhow!("cannot count action jobs: {e}"))?;
    let report = json!({
        "actions": jobs,
        "server": {"version": info.version, "name": info.server_name, "url": beacon_nats::connect::printable_urls(&config.nats.urls), "jetstream": true},
        "streams": streams,
        "partitions": progress.iter().map(|p| {
            let store = stored.iter().find(|s| s.partition == p.partition).map(|s| json!({
                "segments": s.segments, "rows": s.rows, "bytes": s.bytes,
                "committed": s.committed, "lag": s.lag(),
            }));
            json!({
                "partition": p.partition, "owner": p.owner, "committed": p.committed,
                "last_event": p.last_event, "lag": p.lag(), "store": store,
            })
        }).collect::<Vec<_>>(),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "NATS {} (nats-server {}, {})",
        beacon_nats::connect::printable_urls(&config.nats.urls),
        info.version,
        info.server_name
    );
    println!(
        "\n{:<21} {:>12} {:>14} {:>12}  NOTES",
        "STREAM", "MESSAGES", "BYTES", "LAST SEQ"
    );
    for s in report["streams"].as_array().into_iter().flatten() {
        if s["exists"] == json!(false) {
            println!(
                "{:<21} {:>12} {:>14} {:>12}  not created yet",
                s["name"].as_str().unwrap_or(""),
                "-",
                "-",
                "-"
            );
            continue;
        }
        let notes = s["partitions"]
            .as_str()
            .map(|p| format!("{p} partitions"))
            .unwrap_or_default();
        println!(
            "{:<21} {:>12} {:>14} {:>12}  {}",
            s["name"].as_str().unwrap_or(""),
            s["messages"].to_string(),
            s["bytes"].to_string(),
            s["last_seq"].to_string(),
            notes
        );
        for c in s["consumers"].as_array().into_iter().flatten() {
            println!(
                "  consumer {:<20} pending {}  ack pending {}  redelivered {}",
                c["name"].as_str().unwrap_or(""),
                c["pending"],
                c["ack_pending"],
                c["redelivered"]
            );
        }
        if let Some(n) = s["aggregator_readers"].as_u64().filter(|n| *n > 0) {
            println!("  {n} aggregator readers (one per owned partition)");
        }
    }
    if let Some(jobs) = &jobs {
        println!(
            "\nACTIONS jobs pending {}  retrying {}  dead {}{}",
            jobs.pending,
            jobs.retrying,
            jobs.dead,
            if jobs.dead > 0 {
                "  (beacon actions replay-dead re-queues them)"
            } else {
                ""
            }
        );
    }
    if !progress.is_empty() {
        println!(
            "\n{:<10} {:<22} {:>12} {:>12} {:>8}  {:>9} {:>12} {:>12} {:>12} {:>9}",
            "PARTITION",
            "OWNER",
            "COMMITTED",
            "LAST EVENT",
            "LAG",
            "SEGMENTS",
            "ROWS",
            "BYTES",
            "STORED",
            "STORE LAG"
        );
        for p in &progress {
            let store = stored.iter().find(|s| s.partition == p.partition);
            let field =
                |f: fn(&beacon_aggregate::Stored) -> String| store.map_or("-".to_owned(), f);
            println!(
                "{:<10} {:<22} {:>12} {:>12} {:>8}  {:>9} {:>12} {:>12} {:>12} {:>9}",
                p.partition,
                p.owner.as_deref().unwrap_or("(none)"),
                p.committed,
                p.last_event,
                p.lag(),
                field(|s| s.segments.to_string()),
                field(|s| s.rows.to_string()),
                field(|s| s.bytes.to_string()),
                field(|s| s.committed.to_string()),
                field(|s| s.lag().to_string()),
            );
        }
    }
    Ok(())
}
