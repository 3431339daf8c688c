//! Beacon's aggregators. Each partition of `BEACON_EVENTS` has one owner at a
//! time among the running aggregators ([`lease`]); the owner applies its events
//! in stream order and commits every change together with the stream sequence
//! it reached ([`store`]), fenced so a stale owner cannot write after a new
//! one. A crash, restart, redelivery or change of owner therefore never counts
//! an event twice nor skips one.

pub mod lease;
pub mod metrics;
pub mod owner;
pub mod progress;
pub mod segments;
pub mod settings;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use beacon_nats::{EVENTS_STREAM, ROLLUPS_STREAM};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::progress::{Counted, Progress, Stored, progress, progress_of, stored, view};
pub use self::settings::AggregatorSettings;
pub use self::store::{
    CURRENT_SUBJECT, Current, RollupSubject, StoreError, header, load, rollup_subject,
};
use crate::lease::Lease;
use crate::owner::Shared;
pub use beacon_store::StoreSettings;

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("{0} does not exist; provision the streams first: {1}")]
    NoStream(&'static str, String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    #[error("the event store's buckets: {0}")]
    Segments(#[from] segments::WriteError),
}

/// A partition this process owns: its task, how to stop it, its lease, and
/// the generation of rollup logs it writes.
struct Owned {
    generation: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), StoreError>>,
    lease: Lease,
}

/// Run an aggregator until `shutdown` resolves: join the members, own the
/// partitions assigned to this member (counting their events into rollups
/// and, with `store.enabled`, writing them into segments), follow membership
/// changes, and on shutdown commit, release every partition and leave.
pub async fn run(
    client: async_nats::Client,
    settings: AggregatorSettings,
    store: StoreSettings,
    partitions: u32,
    replicas: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AggregateError> {
    let js = async_nats::jetstream::new(client);
    let stream = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_stream(name)
                .await
                .map_err(|e| AggregateError::NoStream(name, e.to_string()))
        }
    };
    let events = stream(EVENTS_STREAM).await?;
    let rollups = stream(ROLLUPS_STREAM).await?;
    let kv = lease::bucket(&js, settings.lease_ttl, replicas).await?;
    let segments = if store.enabled {
        Some(segments::Buckets::open(&js).await?)
    } else {
        None
    };
    let id = format!(
        "{}-{}",
        settings.name,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    tracing::info!(id, partitions, "aggregator starting");
    let tick_every = (settings.lease_ttl / 4).min(Duration::from_secs(1));
    let shared = Arc::new(Shared {
        js,
        events,
        rollups,
        settings,
        id: id.clone(),
        segments,
        store,
    });
    let mut owned: HashMap<u32, Owned> = HashMap::new();
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        reap(&kv, &mut owned).await;
        if let Err(e) = lease::heartbeat(&kv, &id).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        for (p, o) in owned.iter_mut() {
            if !o.lease.renew(&kv).await {
                tracing::warn!(partition = p, "lost the lease; stopping");
                let _ = o.stop.send(true);
            }
        }
        let mut members = match lease::members(&kv).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list members");
                continue;
            }
        };
        if !members.contains(&id) {
            members.push(id.clone());
            members.sort();
        }
        // After `beacon replay` switched generations, each owner stops and its
        // partition is taken again on the new generation's log: its takeover
        // marker fences the replay, and counting resumes where the replay
        // committed.
        let generation = match store::current(&shared.rollups).await {
            Ok(c) => c.generation,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the current rollup generation");
                continue;
            }
        };
        let targets = lease::assignment(&members, partitions, &id);
        for (p, o) in &owned {
            if !targets.contains(p) || o.generation != generation {
                let _ = o.stop.send(true);
            }
        }
        let mut taken = Vec::new();
        for p in targets {
            if owned.contains_key(&p) {
                continue;
            }
            if let Some(lease) = Lease::acquire(&kv, p, &id).await {
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(owner::own(shared.clone(), generation, p, stopped));
                owned.insert(
                    p,
                    Owned {
                        generation,
                        stop,
                        task,
                        lease,
                    },
                );
                taken.push(p);
            }
        }
        if !taken.is_empty() {
            tracing::info!(
                id,
                ?taken,
                owned = owned.len(),
                members = members.len(),
                "took partitions"
            );
        }
        ::metrics::gauge!(metrics::OWNED).set(owned.len() as f64);
    }
    tracing::info!(
        id,
        "aggregator stopping: committing and releasing partitions"
    );
    for o in owned.values() {
        let _ = o.stop.send(true);
    }
    for (p, o) in owned.drain() {
        finish(&kv, p, o).await;
    }
    if let Err(e) = lease::leave(&kv, &id).await {
        tracing::warn!(error = %e, "cannot leave the member list; it expires on its own");
    }
    ::metrics::gauge!(metrics::OWNED).set(0.0);
    Ok(())
}

/// Release the partitions whose owner task has ended.
async fn reap(kv: &Store, owned: &mut HashMap<u32, Owned>) {
    let done: Vec<u32> = owned
        .iter()
        .filter(|(_, o)| o.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for p in done {
        if let Some(o) = owned.remove(&p) {
            finish(kv, p, o).await;
        }
    }
}

async fn finish(kv: &Store, partition: u32, o: Owned) {
    match o.task.await {
        Ok(Ok(())) => {}
        Ok(Err(StoreError::Fenced(_))) => {
            ::metrics::counter!(metrics::FENCED).increment(1);
            tracing::warn!(
                partition,
                "fenced: another aggregator owns this partition now"
            );
        }
        Ok(Err(e)) => tracing::error!(partition, error = %e, "partition owner failed"),
        Err(e) => tracing::error!(partition, error = %e, "partition owner panicked"),
    }
    o.lease.release(kv).await;
}
