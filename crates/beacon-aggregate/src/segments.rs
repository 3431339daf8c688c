//! The event store's writer. A partition's owner turns the events it reads
//! into rows as well as rollups (one decode, two outputs), buffers them, and
//! writes them as a Parquet segment to the `BEACON_SEGMENTS` object store.
//! A segment counts only once the partition's manifest (`BEACON_STORE`, key
//! `p<N>`) names it, together with the stream sequence the store reaches:
//! both change in one compare-and-set on the key's revision. A new owner
//! rewrites the manifest when it takes the partition, so a stale writer's
//! commit is refused; a crash between upload and commit leaves an object no
//! manifest names, which the owner deletes after `store.orphan_grace`.
//!
//! The owner also keeps the partition's segments few and large: it merges
//! neighbouring segments (`beacon_store::compact`) in the background and
//! commits the merge as one compare-and-set that takes the inputs out and puts
//! the output in, and it drops whole segments older than `store.retention`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use beacon_core::Event;
use beacon_store::compact::{self, Merge};
use beacon_store::manifest::manifest_key;
use beacon_store::segment::{self, SegmentError};
use beacon_store::{
    MANIFEST_BUCKET, Manifest, ManifestError, Rows, SEGMENT_BUCKET, SegmentMeta, StoreSettings,
    StoredEvent,
};
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::metrics::{SEGMENT_BYTES, SEGMENT_ROWS, STORE_COMMITTED_SEQ, STORE_FLUSH_SECONDS};

/// Chunk size of segment uploads: fewer round trips than the client's
/// 128 KiB default, well under the server's 1 MiB message limit.
const CHUNK_BYTES: usize = 512 * 1024;

/// Objects taken out of the manifest (merged or expired) are deleted this
/// long after, so a reader that loaded the manifest just before can still
/// fetch them.
const RETIRED_KEEP: Duration = Duration::from_secs(120);

/// Look for merges, expired segments and retired objects at most this often.
const MAINTAIN_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another writer committed to the partition's manifest: this one lost it.
    #[error("partition {0}: another aggregator committed to its manifest (fenced)")]
    Fenced(u32),
    /// NATS did not answer or refused; retrying may help.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The stored manifest cannot be read by this build.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Rows or a segment file could not be built or read.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A merge's output does not hold exactly its inputs' rows.
    #[error("partition {partition}: merged segment {name} has {found} rows, its inputs {expected}")]
    MergeMismatch {
        partition: u32,
        name: String,
        found: u64,
        expected: u64,
    },
}

fn unavailable(e: impl std::fmt::Display) -> WriteError {
    WriteError::Unavailable(e.to_string())
}

/// The event store's two buckets, opened once per aggregator.
#[derive(Clone)]
pub struct Buckets {
    pub manifests: kv::Store,
    pub segments: ObjectStore,
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Buckets { BEACON_STORE, BEACON_SEGMENTS }")
    }
}

impl Buckets {
    /// Open both buckets (provisioning creates them).
    pub async fn open(js: &Context) -> Result<Buckets, WriteError> {
        Ok(Buckets {
            manifests: js
                .get_key_value(MANIFEST_BUCKET)
                .await
                .map_err(unavailable)?,
            segments: js
                .get_object_store(SEGMENT_BUCKET)
                .await
                .map_err(unavailable)?,
        })
    }
}

/// A partition's committed manifest and the revision of its key (0: no key yet).
pub async fn read_manifest(kv: &kv::Store, partition: u32) -> Result<(Manifest, u64), WriteError> {
    match kv
        .entry(manifest_key(partition))
        .await
        .map_err(unavailable)?
    {
        Some(e) if e.operation == Operation::Put => {
            let manifest = Manifest::decode(&e.value)?;
            if manifest.partition != partition {
                return Err(ManifestError::Inconsistent {
                    partition,
                    problem: format!("it names partition {}", manifest.partition),
                }
                .into());
            }
            Ok((manifest, e.revision))
        }
        Some(e) => Ok((Manifest::empty(partition), e.revision)),
        None => Ok((Manifest::empty(partition), 0)),
    }
}

/// The whole file of a segment object.
pub async fn download(segments: &ObjectStore, name: &str) -> Result<Bytes, WriteError> {
    let mut object = segments.get(name).await.map_err(unavailable)?;
    let mut bytes = Vec::with_capacity(object.info().size);
    object.read_to_end(&mut bytes).await.map_err(unavailable)?;
    Ok(bytes.into())
}

async fn upload(segments: &ObjectStore, name: &str, file: Bytes) -> Result<(), WriteError> {
    let meta = ObjectMetadata {
        name: name.to_owned(),
        chunk_size: Some(CHUNK_BYTES),
        ..ObjectMetadata::default()
    };
    segments
        .put(meta, &mut std::io::Cursor::new(file))
        .await
        .map(drop)
        .map_err(unavailable)
}

/// A fresh, never reused object name: partition, sequence range, and a
/// time-ordered unique id (two writers of one range never collide).
fn segment_name(partition: u32, first: u64, last: u64) -> String {
    format!(
        "p{partition}/{first:020}-{last:020}-{}.parquet",
        uuid::Uuid::now_v7().simple()
    )
}

/// Encode rows as a segment off the async threads (zstd is CPU work).
async fn encode(
    name: String,
    partition: u32,
    level: u8,
    build: impl FnOnce() -> Result<Vec<beacon_store::RecordBatch>, SegmentError> + Send + 'static,
) -> Result<(Bytes, SegmentMeta), WriteError> {
    tokio::task::spawn_blocking(move || segment::encode(&name, partition, level, &build()?))
        .await
        .map_err(|e| unavailable(format!("encoding task: {e}")))?
        .map_err(WriteError::from)
}

/// Rows cut from the buffer, on their way into a committed segment.
struct Pending {
    /// The file and its description; none when only the sequence moves
    /// (every event since the last flush was unreadable).
    file: Option<(Bytes, SegmentMeta)>,
    reached: u64,
    uploaded: bool,
}

/// A merge running in the background.
struct Merging {
    merge: Merge,
    task: JoinHandle<Result<SegmentMeta, WriteError>>,
}

/// One partition's writer, held by its owner.
pub struct Writer {
    buckets: Buckets,
    settings: StoreSettings,
    partition: u32,
    label: String,
    manifest: Manifest,
    revision: u64,
    rows: Rows,
    /// Sequence of the first row buffered.
    first: Option<u64>,
    /// The sequence the buffer reaches: every event of the partition up to it
    /// is committed or buffered.
    reached: u64,
    /// When the oldest buffered row came.
    oldest: Option<Instant>,
    last_flush: Instant,
    pending: Option<Pending>,
    merging: Option<Merging>,
    retired: Vec<(String, Instant)>,
    /// When upkeep last ran (none: not yet, so it runs on the first tick).
    maintained: Option<Instant>,
    swept: Option<Instant>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("partition", &self.partition)
            .field("through_seq", &self.manifest.through_seq)
            .field("reached", &self.reached)
            .field("rows", &self.rows.len())
            .finish()
    }
}

impl Writer {
    /// Load the partition's manifest and claim it: rewrite it under `writer`,
    /// so the revision any earlier writer holds is stale from here on.
    pub async fn take(
        buckets: Buckets,
        settings: StoreSettings,
        partition: u32,
        writer: &str,
    ) -> Result<Writer, WriteError> {
        let key = manifest_key(partition);
        let mut tries = 0;
        let (manifest, revision) = loop {
            let (mut manifest, revision) = read_manifest(&buckets.manifests, partition).await?;
            manifest.writer = writer.to_owned();
            match buckets
                .manifests
                .update(&key, manifest.encode().into(), revision)
                .await
            {
                Ok(revision) => break (manifest, revision),
                // A stale writer committed between the read and the claim (or
                // the read came from a replica behind): read again.
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision && tries < 3 => tries += 1,
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    return Err(WriteError::Fenced(partition));
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        let now = Instant::now();
        let writer = Writer {
            reached: manifest.through_seq,
            buckets,
            settings,
            partition,
            label: partition.to_string(),
            manifest,
            revision,
            rows: Rows::new(),
            first: None,
            oldest: None,
            last_flush: now,
            pending: None,
            merging: None,
            retired: Vec::new(),
            maintained: None,
            swept: None,
        };
        writer.publish_gauges();
        Ok(writer)
    }

    /// The manifest as last committed.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The sequence the buffer reaches.
    pub fn reached(&self) -> u64 {
        self.reached
    }

    /// Buffer `event`, stored at `seq`, as a row (`seq` beyond [`Writer::reached`]).
    pub fn push(&mut self, seq: u64, event: &Event, session_id: Option<u64>) {
        self.rows.push(StoredEvent {
            seq,
            event,
            session_id,
        });
        self.first.get_or_insert(seq);
        self.reached = self.reached.max(seq);
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Move past a message that holds no event.
    pub fn skip(&mut self, seq: u64) {
        self.reached = self.reached.max(seq);
    }

    /// Whether the buffer holds `store.flush_rows` rows.
    pub fn full(&self) -> bool {
        self.rows.len() >= self.settings.flush_rows
    }

    /// Whether a flush is due: a full buffer, rows waiting `store.flush_interval`,
    /// or a sequence to record after that long.
    pub fn due(&self) -> bool {
        let interval = self.settings.flush_interval;
        self.pending.is_some()
            || self.full()
            || self.oldest.is_some_and(|t| t.elapsed() >= interval)
            || (self.reached > self.manifest.through_seq && self.last_flush.elapsed() >= interval)
    }

    /// Write the buffered rows as a segment and commit it with the sequence
    /// they reach. After a failure, call again: the same rows are retried
    /// under the same name, and rows buffered meanwhile wait for the next flush.
    pub async fn flush(&mut self) -> Result<(), WriteError> {
        let started = Instant::now();
        if self.pending.is_none() {
            if self.reached <= self.manifest.through_seq {
                self.last_flush = Instant::now();
                return Ok(());
            }
            let file = match self.first.take() {
                Some(first) => {
                    let batch = self.rows.finish().map_err(SegmentError::from)?;
                    let name = segment_name(self.partition, first, self.reached);
                    Some(encode(name, self.partition, 0, move || Ok(vec![batch])).await?)
                }
                None => None,
            };
            self.pending = Some(Pending {
                file,
                reached: self.reached,
                uploaded: false,
            });
            self.oldest = None;
        }
        let Some(pending) = self.pending.as_mut() else {
            return Ok(());
        };
        if let Some((file, meta)) = &pending.file
            && !pending.uploaded
        {
            upload(&self.buckets.segments, &meta.name, file.clone()).await?;
            pending.uploaded = true;
        }
        let mut next = self.manifest.clone();
        next.through_seq = pending.reached;
        let meta = pending.file.as_ref().map(|(_, meta)| meta.clone());
        next.segments.extend(meta.clone());
        match self.commit(next).await {
            Ok(()) => {}
            Err(e @ WriteError::Fenced(_)) => {
                // Never committed: nobody reads it. The new owner's sweep
                // would delete it too; sooner is cheaper.
                if let Some(meta) = meta {
                    let _ = self.buckets.segments.delete(&meta.name).await;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.pending = None;
        self.last_flush = Instant::now();
        if let Some(meta) = meta {
            metrics::counter!(SEGMENT_ROWS).increment(meta.rows);
            metrics::counter!(SEGMENT_BYTES).increment(meta.bytes);
            metrics::histogram!(STORE_FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        }
        self.publish_gauges();
        Ok(())
    }

    /// Replace the manifest with `next`, fenced on the revision last seen.
    /// When the outcome is unknown, the key tells whether it landed.
    async fn commit(&mut self, next: Manifest) -> Result<(), WriteError> {
        next.check()?;
        let sent = self
            .buckets
            .manifests
            .update(
                manifest_key(self.partition),
                next.encode().into(),
                self.revision,
            )
            .await;
        let revision = match sent {
            Ok(revision) => revision,
            Err(e) => {
                let (now, revision) =
                    read_manifest(&self.buckets.manifests, self.partition).await?;
                if revision == self.revision {
                    return Err(unavailable(e));
                }
                // Only this writer's own document names its new segment.
                if now != next {
                    return Err(WriteError::Fenced(self.partition));
                }
                revision
            }
        };
        self.manifest = next;
        self.revision = revision;
        Ok(())
    }

    /// Compaction, retention and cleaning up, a step at a time: finish a merge
    /// that is done, drop expired segments, start the next merge, delete
    /// retired and orphaned objects. Cheap when there is nothing to do.
    pub async fn maintain(&mut self, now_ms: i64) -> Result<(), WriteError> {
        if self.pending.is_some()
            || self
                .maintained
                .is_some_and(|at| at.elapsed() < MAINTAIN_EVERY)
        {
            return Ok(());
        }
        self.maintained = Some(Instant::now());
        if self.merging.as_ref().is_some_and(|m| m.task.is_finished()) {
            self.finish_merge().await?;
        }
        if self.merging.is_none()
            && let Some(retention) = self.settings.retention
        {
            let before =
                now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            let expired = compact::expired(&self.manifest, before);
            if !expired.is_empty() {
                let gone: HashSet<&str> = expired.iter().map(|s| s.name.as_str()).collect();
                let mut next = self.manifest.clone();
                next.segments.retain(|s| !gone.contains(s.name.as_str()));
                self.commit(next).await?;
                tracing::info!(partition = %self.label, segments = expired.len(), "dropped segments past retention");
                self.retire(expired.into_iter().map(|s| s.name));
            }
        }
        if self.settings.compaction
            && self.merging.is_none()
            && let Some(merge) = compact::plan(
                &self.manifest,
                self.settings.compaction_fan_in,
                self.settings.compaction_max_rows,
            )
        {
            let task = tokio::spawn(run_merge(
                self.buckets.segments.clone(),
                self.partition,
                merge.clone(),
            ));
            self.merging = Some(Merging { merge, task });
        }
        self.delete_retired().await;
        if self
            .swept
            .is_none_or(|at| at.elapsed() >= self.settings.orphan_grace / 4)
        {
            self.swept = Some(Instant::now());
            self.sweep().await;
        }
        self.publish_gauges();
        Ok(())
    }

    /// Commit a finished merge: its inputs out, its output in, in one step.
    async fn finish_merge(&mut self) -> Result<(), WriteError> {
        let Some(Merging { merge, task }) = self.merging.take() else {
            return Ok(());
        };
        let output = match task.await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                tracing::warn!(partition = %self.label, error = %e, "merging segments failed; will try again");
                return Ok(());
            }
            Err(e) => {
                tracing::error!(partition = %self.label, error = %e, "merging segments panicked");
                return Ok(());
            }
        };
        let name = output.name.clone();
        let (first, last) = (
            merge.inputs.iter().map(|s| s.first_seq).min(),
            merge.inputs.iter().map(|s| s.last_seq).max(),
        );
        if output.rows != merge.rows()
            || Some(output.first_seq) < first
            || Some(output.last_seq) > last
        {
            self.retire([name.clone()]);
            return Err(WriteError::MergeMismatch {
                partition: self.partition,
                name,
                found: output.rows,
                expected: merge.rows(),
            });
        }
        let Some(next) = compact::apply_merge(&self.manifest, &merge, output) else {
            // An input left meanwhile (retention): the output is void.
            self.retire([name]);
            return Ok(());
        };
        match self.commit(next).await {
            Ok(()) => {
                tracing::debug!(partition = %self.label, inputs = merge.inputs.len(), level = merge.level, "merged segments");
                self.retire(merge.inputs.into_iter().map(|s| s.name));
                Ok(())
            }
            Err(e) => {
                let _ = self.buckets.segments.delete(&name).await;
                Err(e)
            }
        }
    }

    fn retire(&mut self, names: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        self.retired.extend(names.into_iter().map(|n| (n, now)));
    }

    async fn delete_retired(&mut self) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(_, at)| at.elapsed() >= RETIRED_KEEP);
        self.retired = keep;
        for (name, at) in due {
            if let Err(e) = self.buckets.segments.delete(&name).await {
                tracing::debug!(partition = %self.label, name, error = %e, "cannot delete a retired segment yet");
                self.retired.push((name, at));
            }
        }
    }

    /// Delete this partition's objects that no manifest names and that are
    /// older than `store.orphan_grace`: their writer died before committing.
    async fn sweep(&mut self) {
        let prefix = format!("p{}/", self.partition);
        let listed: Result<Vec<_>, _> = match self.buckets.segments.list().await {
            Ok(list) => list.try_collect().await,
            Err(e) => {
                tracing::debug!(partition = %self.label, error = %e, "cannot list segments");
                return;
            }
        };
        let Ok(objects) = listed else { return };
        let named: HashSet<&str> = self
            .manifest
            .segments
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.retired.iter().map(|(n, _)| n.as_str()))
            .collect();
        let grace = i64::try_from(self.settings.orphan_grace.as_secs()).unwrap_or(i64::MAX);
        let now = chrono::Utc::now().timestamp();
        let orphans: Vec<String> = objects
            .into_iter()
            .filter(|o| o.name.starts_with(&prefix) && !named.contains(o.name.as_str()))
            .filter(|o| {
                o.modified
                    .is_some_and(|m| now - m.unix_timestamp() >= grace)
            })
            .map(|o| o.name)
            .collect();
        for name in orphans {
            match self.buckets.segments.delete(&name).await {
                Ok(()) => {
                    tracing::info!(partition = %self.label, name, "deleted an uncommitted segment")
                }
                Err(e) => {
                    tracing::debug!(partition = %self.label, name, error = %e, "cannot delete an orphan")
                }
            }
        }
    }

    fn publish_gauges(&self) {
        metrics::gauge!(STORE_COMMITTED_SEQ, "partition" => self.label.clone())
            .set(self.manifest.through_seq as f64);
    }
}

/// Read a merge's inputs, merge their rows and write the output segment.
async fn run_merge(
    segments: ObjectStore,
    partition: u32,
    merge: Merge,
) -> Result<SegmentMeta, WriteError> {
    let mut files = Vec::with_capacity(merge.inputs.len());
    for input in &merge.inputs {
        files.push(download(&segments, &input.name).await?);
    }
    let first = merge.inputs.iter().map(|s| s.first_seq).min().unwrap_or(0);
    let last = merge.inputs.iter().map(|s| s.last_seq).max().unwrap_or(0);
    let name = segment_name(partition, first, last);
    let (file, meta) = encode(name, partition, merge.level, move || {
        let mut batches = Vec::new();
        for file in files {
            batches.extend(segment::decode(file)?);
        }
        Ok(batches)
    })
    .await?;
    upload(&segments, &meta.name, file).await?;
    Ok(meta)
}
