//! `beacon replay`: rebuild every partition's rollups from `BEACON_EVENTS` into
//! a new generation of rollup logs while live ingest and aggregation go on,
//! switch query nodes and aggregators over to it once it has caught up with
//! the live generation, and remove the old generation. A replay that dies
//! part-way is resumed by running it again: its committed logs are its
//! checkpoint, loaded and fenced like any owner's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::stream::Stream;
use beacon_aggregate::owner::{self, Shared};
use beacon_aggregate::store::{self, Current};
use beacon_nats::{EVENTS_STREAM, ROLLUPS_STREAM, check_server, connect, provision};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::up::NATS_URL_FILE;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// How long to wait, after the switch, for the aggregators to take the
    /// new logs over before the old generation is removed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub handover: Duration,
    /// Replay even though BEACON_EVENTS no longer holds its oldest events
    /// (expired after streams.events_max_age): their rollups are lost.
    #[arg(long)]
    pub drop_expired: bool,
    /// Rebuild only this site's rollups (repeatable); every other site's
    /// figures are carried over from the live generation unchanged.
    #[arg(long = "site", value_name = "SITE")]
    pub sites: Vec<String>,
}

/// How often the replay compares its positions with the live generation's.
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub async fn run(mut config: Config, args: ReplayArgs) -> anyhow::Result<()> {
    if config.nats.urls.is_empty() {
        let file = config.data_dir.join(NATS_URL_FILE);
        let url = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no NATS to replay on: pass --nats-url, or run `beacon up` (it records its local server in {})",
                file.display()
            )
        })?;
        config.nats.urls = vec![url.trim().to_owned()];
    }
    let client = connect(&config.nats, "beacon-replay").await?;
    check_server(&client).await?;
    let js = async_nats::jetstream::new(client);
    // The rollup stream must take generation subjects (`beacon.rollups.>`).
    provision(&js, &config.streams).await?;
    let mut events = js.get_stream(EVENTS_STREAM).await?;
    // Rollups outlive the events (day buckets are kept two years, events 30
    // days by default): a replay can only rebuild what the stream still holds.
    let first = events.info().await?.state.first_sequence;
    if first > 1 && !args.drop_expired {
        bail!(
            "{EVENTS_STREAM} no longer holds the events before sequence {first} (expired after \
             streams.events_max_age); a replay would lose what the rollups counted of them. \
             Pass --drop-expired to replay anyway"
        );
    }
    let rollups = js.get_stream(ROLLUPS_STREAM).await?;
    let partitions = config.streams.partitions;
    let from = store::current(&rollups).await?;
    let generation = from.generation + 1;
    let mut resumed = false;
    for p in 0..partitions {
        resumed |= store::committed_seq(&rollups, generation, p)
            .await?
            .is_some();
    }
    eprintln!(
        "{} generation {generation} of the rollups from {EVENTS_STREAM} (generation {} counts now)",
        if resumed { "resuming" } else { "building" },
        from.generation
    );

    let id = format!("replay-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let shared = Arc::new(Shared {
        js: js.clone(),
        events,
        rollups: rollups.clone(),
        settings: config.aggregator.clone(),
        id: id.clone(),
        // A replay rebuilds rollups only: the segments already hold every event.
        segments: None,
        store: config.store.clone(),
    });
    let started = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let mut owners = JoinSet::new();
    if !args.sites.is_empty() {
        let sites: Arc<[String]> = args.sites.clone().into();
        for p in 0..partitions {
            owners.spawn(owner::replay_sites(
                shared.clone(),
                generation,
                p,
                from.generation,
                sites.clone(),
                stopped.clone(),
            ));
        }
        // Each owner ends with its partition merged at the live position.
        let bar = progress_bar(args.quiet);
        let mut left = partitions;
        while left > 0 {
            tokio::select! {
                ended = owners.join_next() => {
                    let Some(ended) = ended else { break };
                    ended
                        .context("a replaying partition owner panicked")?
                        .context("a replaying partition owner failed; run the same `beacon replay` again to resume")?;
                    left -= 1;
                }
                _ = tokio::time::sleep(CHECK_EVERY) => {
                    let (live, mine, _) = positions(&rollups, from.generation, generation, partitions).await?;
                    bar.set_length(live);
                    bar.set_position(mine);
                }
            }
        }
        bar.finish_and_clear();
        drop(stop);
        return finish(
            &js, &rollups, from, generation, partitions, &id, &args, started,
        )
        .await;
    }
    for p in 0..partitions {
        owners.spawn(owner::own(shared.clone(), generation, p, stopped.clone()));
    }

    let bar = progress_bar(args.quiet);
    // Caught up when every partition of the new generation has committed at
    // least as far as the live one had: from then on, the new generation
    // counts every event the old one does.
    loop {
        tokio::select! {
            ended = owners.join_next() => {
                let failed = match ended {
                    Some(Ok(Err(e))) => e.to_string(),
                    Some(Err(e)) => format!("panicked: {e}"),
                    Some(Ok(Ok(()))) | None => "stopped".to_owned(),
                };
                bar.abandon();
                bail!("a replaying partition owner ended early: {failed}; run `beacon replay` again to resume");
            }
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let (live, mine, behind) =
            positions(&rollups, from.generation, generation, partitions).await?;
        bar.set_length(live);
        bar.set_position(mine);
        if behind == 0 {
            break;
        }
    }
    // Commit what each owner holds, then switch.
    let _ = stop.send(true);
    while let Some(ended) = owners.join_next().await {
        ended
            .context("a replaying partition owner panicked")?
            .context("a replaying partition owner failed; run `beacon replay` again to resume")?;
    }
    bar.finish_and_clear();
    finish(
        &js, &rollups, from, generation, partitions, &id, &args, started,
    )
    .await
}

/// A bar of the events counted in the new generation against the live one's
/// committed positions (hidden with `--quiet`).
fn progress_bar(quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent}% of the live positions  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Summed over the partitions: the live generation's committed positions,
/// how far the new one has reached of them, and how many partitions it trails.
async fn positions(
    rollups: &Stream,
    live_generation: u64,
    generation: u64,
    partitions: u32,
) -> anyhow::Result<(u64, u64, usize)> {
    let (mut live, mut mine, mut behind) = (0u64, 0u64, 0usize);
    for p in 0..partitions {
        let l = store::committed_seq(rollups, live_generation, p)
            .await?
            .unwrap_or(0);
        let m = store::committed_seq(rollups, generation, p)
            .await?
            .unwrap_or(0);
        live += l;
        mine += m.min(l);
        behind += usize::from(m < l);
    }
    Ok((live, mine, behind))
}

/// Switch to the new generation, wait for the aggregators to take it over,
/// and remove the old one.
#[allow(clippy::too_many_arguments)]
async fn finish(
    js: &async_nats::jetstream::Context,
    rollups: &async_nats::jetstream::stream::Stream,
    from: Current,
    generation: u64,
    partitions: u32,
    id: &str,
    args: &ReplayArgs,
    started: Instant,
) -> anyhow::Result<()> {
    store::switch(js, from, generation)
        .await
        .context("cannot switch the rollups to the new generation")?;
    eprintln!(
        "switched: generation {generation} counts now (caught up in {:.1} s)",
        started.elapsed().as_secs_f64()
    );

    handover(rollups, generation, partitions, id, args.handover).await?;
    remove(rollups, from, partitions).await?;
    let what = if args.sites.is_empty() {
        String::new()
    } else {
        format!(" (sites {})", args.sites.join(", "))
    };
    println!(
        "replayed {partitions} partitions{what} into generation {generation}; generation {} removed",
        from.generation
    );
    Ok(())
}

/// Wait (bounded) until an aggregator has taken over every partition's new
/// log, so nobody writes the old generation any more when it is removed. A
/// write that still comes later is fenced by the removal and ignored by
/// query nodes, which follow the new generation only.
async fn handover(
    rollups: &async_nats::jetstream::stream::Stream,
    generation: u64,
    partitions: u32,
    replay: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut waiting = 0;
        for p in 0..partitions {
            let owner = store::last_owner(rollups, generation, p).await?;
            waiting += usize::from(owner.is_none_or(|o| o == replay));
        }
        if waiting == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "{waiting} partitions not yet taken over by an aggregator after {wait:?} (none running?); removing the old generation anyway"
            );
            return Ok(());
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Purge the old generation's logs.
async fn remove(
    rollups: &async_nats::jetstream::stream::Stream,
    old: Current,
    partitions: u32,
) -> anyhow::Result<()> {
    let filters: Vec<String> = if old.generation == 0 {
        // Generation 0's subjects share their prefix with the switch subject.
        (0..partitions)
            .map(|p| store::rollup_subject(0, p))
            .collect()
    } else {
        vec![format!(
            "{}.g{}.>",
            beacon_core::subject::ROLLUPS_PREFIX,
            old.generation
        )]
    };
    for filter in filters {
        rollups
            .purge()
            .filter(&filter)
            .await
            .with_context(|| format!("cannot remove the old generation's {filter}"))?;
    }
    Ok(())
}
