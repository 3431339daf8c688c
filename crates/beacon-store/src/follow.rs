//! Keeping a [`StoreView`] current: the manifests through a watch of the
//! `BEACON_STORE` bucket, and the tail through an ordered consumer on
//! `BEACON_EVENTS` from just above the lowest committed sequence. Both feeds
//! reopen where they were after a reconnect or a silence with messages waiting
//! ([`beacon_nats::Silence`]); a bucket not provisioned yet is
//! waited for (the tail then holds every event, up to its bound).

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::{Context, GetStreamErrorKind};
use async_nats::jetstream::kv::{Operation, Store};
use beacon_core::Event;
use beacon_core::subject::EVENTS_PREFIX;
use beacon_nats::EVENTS_STREAM;
use futures::StreamExt;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::manifest::{MANIFEST_BUCKET, Manifest, ManifestError, partition_of_key};
use crate::view::StoreView;

/// How often a missing bucket or an unreachable server is looked at again.
const RETRY: Duration = Duration::from_secs(1);

/// Why a view stopped following: a manifest this build cannot read. Answering
/// from segments without it would silently leave rows out.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("manifest {key}: {source}")]
    Manifest { key: String, source: ManifestError },
}

/// Follow the manifests and the stream into `view` until `shutdown`.
/// `max_tail_rows` bounds the tail: at the bound, reading pauses until a
/// manifest moves (answers then lag; they are never wrong).
pub async fn follow(
    js: Context,
    view: StoreView,
    partitions: u32,
    max_tail_rows: usize,
    shutdown: watch::Receiver<bool>,
) -> Result<(), FollowError> {
    let result = async {
        let revision = load(&js, &view, shutdown.clone()).await?;
        view.set_loaded();
        tokio::try_join!(
            watch_manifests(&js, &view, revision, shutdown.clone()),
            async {
                tail(&js, &view, partitions, max_tail_rows, shutdown.clone()).await;
                Ok(())
            }
        )
        .map(drop)
    }
    .await;
    if let Err(e) = &result {
        view.fail(e.to_string());
    }
    result
}

fn install(view: &StoreView, key: &str, value: &[u8], revision: u64) -> Result<(), FollowError> {
    if partition_of_key(key).is_none() {
        return Ok(());
    }
    let manifest = Manifest::decode(value).map_err(|source| FollowError::Manifest {
        key: key.to_owned(),
        source,
    })?;
    view.set_manifest(manifest, revision);
    Ok(())
}

/// Read every manifest present now; the bucket's last revision read, or 0
/// when there is no bucket yet.
async fn load(
    js: &Context,
    view: &StoreView,
    mut shutdown: watch::Receiver<bool>,
) -> Result<u64, FollowError> {
    loop {
        match read_all(js, view).await {
            Ok(Some(revision)) => return Ok(revision),
            // Not provisioned (yet): start with no segments; the watch
            // picks the bucket up once it exists.
            Ok(None) => return Ok(0),
            Err(Load::Retry(Retry(e))) => {
                tracing::warn!(error = %e, "event store: cannot read the manifests; retrying");
            }
            Err(Load::Fatal(e)) => return Err(e),
        }
        if pause(&mut shutdown).await {
            return Ok(0);
        }
    }
}

/// A failure worth retrying.
struct Retry(String);

enum Load {
    Retry(Retry),
    Fatal(FollowError),
}

impl From<Retry> for Load {
    fn from(e: Retry) -> Self {
        Load::Retry(e)
    }
}

/// The manifest bucket, or `None` while it is not provisioned.
async fn bucket(js: &Context) -> Result<Option<Store>, Retry> {
    // Asked through its stream so "missing" is an error code, not a message.
    match js.get_stream(format!("KV_{MANIFEST_BUCKET}")).await {
        Ok(_) => {}
        Err(e) => {
            return match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(Retry(e.to_string())),
            };
        }
    }
    js.get_key_value(MANIFEST_BUCKET)
        .await
        .map(Some)
        .map_err(|e| Retry(e.to_string()))
}

async fn read_all(js: &Context, view: &StoreView) -> Result<Option<u64>, Load> {
    let Some(store) = bucket(js).await? else {
        return Ok(None);
    };
    // The revision before reading: whatever changes afterwards, the watch
    // from just above it delivers again.
    let status = store.status().await.map_err(|e| Retry(e.to_string()))?;
    let last = status.info.state.last_sequence;
    let mut keys = store.keys().await.map_err(|e| Retry(e.to_string()))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.map_err(|e| Retry(e.to_string()))?);
    }
    for key in names {
        if let Some(entry) = store
            .entry(key.clone())
            .await
            .map_err(|e| Retry(e.to_string()))?
            && entry.operation == Operation::Put
        {
            install(view, &key, &entry.value, entry.revision).map_err(Load::Fatal)?;
        }
    }
    Ok(Some(last))
}

/// Apply every manifest change after `revision` until shutdown.
async fn watch_manifests(
    js: &Context,
    view: &StoreView,
    mut revision: u64,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), FollowError> {
    let client = js.client();
    loop {
        let connected = beacon_nats::connects(&client);
        let store = match bucket(js).await {
            Ok(Some(store)) => store,
            Ok(None) => {
                if pause(&mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
            Err(Retry(e)) => {
                tracing::debug!(error = %e, "event store: cannot open the manifests; retrying");
                if pause(&mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        let filter = format!("{}>", store.prefix);
        let mut silence = beacon_nats::Silence::new(store.stream.clone(), filter, revision);
        let mut entries = match store.watch_all_from_revision(revision + 1).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "event store: cannot watch the manifests; retrying");
                if pause(&mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                e = entries.next() => e,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
                _ = beacon_nats::reconnected(&client, connected) => break,
                at = silence.stalled() => {
                    tracing::warn!(revision = at, "event store: the manifest watch went silent with changes waiting; reopening");
                    break;
                }
            };
            match next {
                Some(Ok(entry)) => {
                    silence.heard(entry.revision);
                    if entry.revision <= revision {
                        continue;
                    }
                    revision = entry.revision;
                    if entry.operation == Operation::Put {
                        install(view, &entry.key, &entry.value, entry.revision)?;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "event store: manifest watch broke; reopening");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Follow `BEACON_EVENTS` into the view's tail until shutdown.
async fn tail(
    js: &Context,
    view: &StoreView,
    partitions: u32,
    max_rows: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = js.client();
    let mut manifests = view.subscribe();
    let mut last = view.tail_start(partitions).saturating_sub(1);
    loop {
        let connected = beacon_nats::connects(&client);
        let (mut messages, mut silence) = match open(js, last + 1).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "event store: cannot read the stream tail; retrying");
                if pause(&mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        loop {
            // Full: wait for the writers to commit what is held.
            while view.tail_rows() >= max_rows {
                tokio::select! {
                    _ = manifests.changed() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                // Not reading is not the reader's silence.
                silence.heard(last);
            }
            let next = tokio::select! {
                m = messages.next() => m,
                _ = shutdown.wait_for(|s| *s) => return,
                _ = beacon_nats::reconnected(&client, connected) => break,
                at = silence.stalled() => {
                    tracing::warn!(seq = at, "event store: the stream tail went silent with events waiting; reopening");
                    break;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let Ok(info) = message.info() else { continue };
                    let seq = info.stream_sequence;
                    silence.heard(seq);
                    if seq <= last {
                        continue;
                    }
                    last = seq;
                    match serde_json::from_slice::<Event>(&message.payload) {
                        Ok(event) => view.push(seq, &event),
                        Err(e) => {
                            view.read_through(seq);
                            tracing::debug!(seq, error = %e, "event store: unreadable event");
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "event store: the tail broke; reopening");
                    break;
                }
                None => break,
            }
        }
    }
}

async fn open(
    js: &Context,
    from: u64,
) -> Result<
    (
        async_nats::jetstream::consumer::pull::Ordered,
        beacon_nats::Silence,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let deliver_policy = match from {
        0 | 1 => DeliverPolicy::All,
        seq => DeliverPolicy::ByStartSequence {
            start_sequence: seq,
        },
    };
    let stream = js.get_stream(EVENTS_STREAM).await?;
    let filter = format!("{EVENTS_PREFIX}.>");
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let silence = beacon_nats::Silence::new(stream, filter, from.saturating_sub(1));
    Ok((consumer.messages().await?, silence))
}

/// Keep the newest committed segments in `engine`'s cache
/// ([`Engine::prefetch`]), looking again after each manifest move (at most
/// once per [`RETRY`]) until shutdown, so the first question about the recent
/// past does not wait for its files. A failed fetch is tried again at the
/// next move; a query fetches whatever it lacks itself.
pub async fn fetch_ahead(engine: Engine, mut shutdown: watch::Receiver<bool>) {
    let mut moves = engine.view().subscribe();
    loop {
        match engine.prefetch().await {
            Ok(0) => {}
            Ok(segments) => tracing::debug!(segments, "segments fetched ahead into the cache"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch segments ahead; queries fetch what they need")
            }
        }
        tokio::select! {
            moved = moves.changed() => if moved.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if pause(&mut shutdown).await {
            return;
        }
    }
}

/// Wait a moment; true if shutdown came first.
async fn pause(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    }
}
