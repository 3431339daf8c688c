//! `beacon export`: one site's events of a time range, read from the event
//! store (segments and the stream's tail, as a query node reads them) and
//! written as Parquet, NDJSON or CSV to a file or standard output. It needs
//! NATS only, no running query node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use beacon_nats::{EVENTS_STREAM, check_server, connect};
use beacon_store::{CacheSettings, Engine, ExportFormat, SegmentCache, StoreView};
use clap::Args;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::config::Config;
use crate::up::NATS_URL_FILE;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The site whose events to export.
    #[arg(long)]
    pub site: String,
    /// Start of the range (RFC 3339, a date, `now` or `-7d`), inclusive.
    #[arg(long)]
    pub from: String,
    /// End of the range, exclusive (a date includes its day).
    #[arg(long)]
    pub to: String,
    /// parquet, ndjson or csv.
    #[arg(long, default_value = "ndjson")]
    pub format: String,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// How long the stream's tail may take to be read up to where it was at start.
const CATCH_UP: Duration = Duration::from_secs(300);

pub async fn run(mut config: Config, args: ExportArgs) -> anyhow::Result<()> {
    let Some(format) = ExportFormat::parse(&args.format) else {
        bail!(
            "--format {:?} is not one of {}",
            args.format,
            ExportFormat::NAMES
        );
    };
    if !config.sites.iter().any(|s| s.id == args.site) {
        bail!("no site {:?} in the config", args.site);
    }
    let span =
        beacon_query::engine::span(&args.from, &args.to, chrono::Utc::now().timestamp_millis())
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if config.nats.urls.is_empty() {
        let file = config.data_dir.join(NATS_URL_FILE);
        let url = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no NATS to export from: pass --nats-url, or run `beacon up` (it records its local server in {})",
                file.display()
            )
        })?;
        config.nats.urls = vec![url.trim().to_owned()];
    }
    let client = connect(&config.nats, "beacon-export").await?;
    check_server(&client).await?;
    let js = async_nats::jetstream::new(client);
    let last = js
        .get_stream(EVENTS_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    // A cache of its own: a running node's directory is that node's to evict.
    let cache = SegmentCache::open(&CacheSettings {
        dir: None,
        max_bytes: config.query.segment_cache.max_bytes,
        fetch_ahead: false,
    })?;
    let view = StoreView::default();
    let engine = Engine::new(js.clone(), view.clone(), cache, config.query.sql.clone());
    let (stop, shutdown) = watch::channel(false);
    let max_tail = config.query.tail_max_rows;
    let follower = tokio::spawn(beacon_store::follow::follow(
        js,
        view.clone(),
        config.streams.partitions,
        max_tail,
        shutdown,
    ));
    // Everything stored when the export started is in: segments or tail.
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while !(view.is_loaded() && view.read_seq() >= last) {
        if let Some(reason) = view.failure() {
            bail!("cannot read the event store: {reason}");
        }
        if view.tail_rows() >= max_tail {
            bail!(
                "more than query.tail_max_rows ({max_tail}) events are not in segments yet; \
                 export again once the segment writers have caught up"
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the event stream was not read up to sequence {last} within {CATCH_UP:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = Box::pin(
        engine
            .export(&args.site, span.from, span.to, format)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.output {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("export failed: {e}"))?;
        bytes += chunk.len() as u64;
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    let _ = stop.send(true);
    let _ = follower.await;
    if let Some(path) = &args.output {
        eprintln!("wrote {bytes} bytes to {}", path.display());
    }
    Ok(())
}
