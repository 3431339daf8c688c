//! A query node's local copy of segment files: a directory bounded in bytes,
//! least recently used files evicted first, each file fetched once from the
//! `BEACON_SEGMENTS` object store when a query first needs it. Files a running
//! query reads are pinned and never evicted under it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::manifest::SegmentMeta;

/// The `[query.segment_cache]` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Where segment files are kept; unset: `<data_dir>/segment-cache` under
    /// `beacon up` and `beacon query`, a temporary directory otherwise.
    pub dir: Option<PathBuf>,
    /// Bytes of segment files kept; the least recently used go first.
    pub max_bytes: u64,
    /// Fetch newly committed segments before a query asks for them, the
    /// newest first, into at most half of `max_bytes`.
    pub fetch_ahead: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            dir: None,
            max_bytes: 2 << 30,
            fetch_ahead: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The object store did not give the file: NATS away, or the bucket missing. Retryable.
    #[error("cannot fetch segment {name} from the object store: {reason}")]
    Fetch { name: String, reason: String },
    /// The local disk failed. Retryable once space is freed.
    #[error("cannot write segment {name} to the cache: {source}")]
    Disk {
        name: String,
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Entry {
    bytes: u64,
    /// Tick of the last use: the smallest is evicted first.
    used: u64,
    /// Queries reading it now.
    pins: usize,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, Entry>,
    bytes: u64,
    tick: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    fetch_ahead: bool,
    state: Mutex<State>,
    /// One fetch at a time: two queries needing the same file wait for one copy.
    fetching: tokio::sync::Mutex<()>,
    _temporary: Option<tempfile::TempDir>,
}

/// The segment cache of a node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SegmentCache {
    inner: Arc<Inner>,
}

/// Files held for one query; unpinned when dropped.
#[derive(Debug)]
pub struct Pinned {
    inner: Arc<Inner>,
    names: Vec<String>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        for name in &self.names {
            if let Some(entry) = state.files.get_mut(name) {
                entry.pins = entry.pins.saturating_sub(1);
            }
        }
        self.inner.evict(&mut state);
    }
}

/// Prefix of a file being fetched: never a cached segment's name (those start `s-`).
const PART_PREFIX: &str = "part-";

/// The file name a segment is cached under: its object name with every byte
/// outside `[A-Za-z0-9._-]` escaped, behind a prefix, so no name can reach
/// outside the directory (`..`, `/`) and two names never share a file.
fn file_name(name: &str) -> String {
    let mut out = String::from("s-");
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("~{byte:02x}"));
        }
    }
    out
}

fn object_name(file: &str) -> Option<String> {
    let escaped = file.strip_prefix("s-")?;
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'~' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(file_name(name))
    }

    /// Remove least recently used, unpinned files until within the bound.
    fn evict(&self, state: &mut State) {
        while state.bytes > self.max_bytes {
            let Some(victim) = state
                .files
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.used)
                .map(|(name, _)| name.clone())
            else {
                return; // everything left is being read; evicted once unpinned
            };
            if let Some(entry) = state.files.remove(&victim) {
                state.bytes -= entry.bytes;
                if let Err(e) = std::fs::remove_file(self.path(&victim)) {
                    tracing::warn!(segment = victim, error = %e, "cannot remove a cached segment");
                }
                tracing::debug!(segment = victim, "segment evicted from the cache");
            }
        }
    }
}

impl SegmentCache {
    /// Open the cache at `settings.dir` (or a temporary directory), keeping
    /// the files a previous run left there, oldest first in line for eviction.
    pub fn open(settings: &CacheSettings) -> std::io::Result<SegmentCache> {
        let (dir, temporary) = match &settings.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("beacon-segment-cache-")
                    .tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let meta = entry.metadata()?;
            if file.starts_with(PART_PREFIX) {
                // A fetch that a crash interrupted.
                std::fs::remove_file(entry.path())?;
                continue;
            }
            if let Some(name) = object_name(file).filter(|_| meta.is_file()) {
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((modified, name, meta.len()));
            }
        }
        found.sort();
        let mut state = State::default();
        for (_, name, bytes) in found {
            state.tick += 1;
            state.bytes += bytes;
            let used = state.tick;
            state.files.insert(
                name,
                Entry {
                    bytes,
                    used,
                    pins: 0,
                },
            );
        }
        let inner = Inner {
            dir,
            max_bytes: settings.max_bytes,
            fetch_ahead: settings.fetch_ahead,
            state: Mutex::new(state),
            fetching: tokio::sync::Mutex::new(()),
            _temporary: temporary,
        };
        inner.evict(&mut inner.lock());
        Ok(SegmentCache {
            inner: Arc::new(inner),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes of segment files held now.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Files held now.
    pub fn files(&self) -> usize {
        self.inner.lock().files.len()
    }

    /// Pin `segments` for a query, fetching those not cached from `bucket`;
    /// their local paths, in order. `bucket` is asked only for missing files.
    pub async fn pin<F, Fut>(
        &self,
        segments: &[SegmentMeta],
        bucket: F,
    ) -> Result<(Pinned, Vec<PathBuf>), CacheError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<ObjectStore, String>>,
    {
        let mut pinned = Pinned {
            inner: self.inner.clone(),
            names: Vec::with_capacity(segments.len()),
        };
        let mut paths = Vec::with_capacity(segments.len());
        let mut store = None;
        for segment in segments {
            let name = &segment.name;
            if !self.take(name) {
                self.fetch_once(name, |n| self.take(n), 1, &mut store, &bucket)
                    .await?;
            }
            pinned.names.push(name.clone());
            paths.push(self.inner.path(name));
        }
        Ok((pinned, paths))
    }

    /// Fetch the newest of `segments` (by their latest event) that are not
    /// held yet, as many as fit in half the bound together with the newer
    /// ones held already; the number fetched (none when `fetch_ahead` is
    /// off). Queries about the recent past then find their files on disk, and
    /// fetching ahead never takes more than half of the bound from the files
    /// queries brought in.
    pub async fn prefetch<F, Fut>(
        &self,
        segments: &[SegmentMeta],
        bucket: F,
    ) -> Result<usize, CacheError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<ObjectStore, String>>,
    {
        if !self.inner.fetch_ahead {
            return Ok(0);
        }
        let mut newest: Vec<&SegmentMeta> = segments.iter().collect();
        newest.sort_by_key(|s| std::cmp::Reverse(s.max_ts_ms));
        let mut room = self.inner.max_bytes / 2;
        let mut store = None;
        let mut fetched = 0;
        for segment in newest {
            let Some(left) = room.checked_sub(segment.bytes) else {
                break;
            };
            room = left;
            let name = &segment.name;
            if !self.holds(name)
                && self
                    .fetch_once(name, |n| self.holds(n), 0, &mut store, &bucket)
                    .await?
            {
                fetched += 1;
            }
        }
        Ok(fetched)
    }

    /// Fetch `name`, pinned `pins` times, unless `held` finds it once this
    /// is the one fetch running (another may have brought it meanwhile);
    /// `store` is opened from `bucket` on first need. Whether it fetched.
    async fn fetch_once<F, Fut>(
        &self,
        name: &str,
        held: impl Fn(&str) -> bool,
        pins: usize,
        store: &mut Option<ObjectStore>,
        bucket: &F,
    ) -> Result<bool, CacheError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<ObjectStore, String>>,
    {
        let _one = self.inner.fetching.lock().await;
        if held(name) {
            return Ok(false);
        }
        let store = match store {
            Some(store) => store,
            None => store.insert(bucket().await.map_err(|reason| CacheError::Fetch {
                name: name.to_owned(),
                reason,
            })?),
        };
        self.fetch(store, name, pins).await?;
        Ok(true)
    }

    /// Whether `name` is cached (its place in line untouched).
    pub fn holds(&self, name: &str) -> bool {
        self.inner.lock().files.contains_key(name)
    }

    /// Pin `name` if cached; whether it was.
    fn take(&self, name: &str) -> bool {
        let mut state = self.inner.lock();
        state.tick += 1;
        let tick = state.tick;
        match state.files.get_mut(name) {
            Some(entry) => {
                entry.used = tick;
                entry.pins += 1;
                true
            }
            None => false,
        }
    }

    /// Copy `name` from the object store into the cache, pinned `pins` times.
    async fn fetch(&self, store: &ObjectStore, name: &str, pins: usize) -> Result<(), CacheError> {
        let path = self.inner.path(name);
        let part = self
            .inner
            .dir
            .join(format!("{PART_PREFIX}{}", file_name(name)));
        let fetch_error = |reason: String| CacheError::Fetch {
            name: name.to_owned(),
            reason,
        };
        let disk_error = |source| CacheError::Disk {
            name: name.to_owned(),
            source,
        };
        let mut object = store
            .get(name)
            .await
            .map_err(|e| fetch_error(e.to_string()))?;
        let mut file = tokio::fs::File::create(&part).await.map_err(disk_error)?;
        let copied = tokio::io::copy(&mut object, &mut file).await;
        let bytes = match copied {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(fetch_error(e.to_string()));
            }
        };
        file.flush().await.map_err(disk_error)?;
        drop(file);
        tokio::fs::rename(&part, &path).await.map_err(disk_error)?;
        tracing::debug!(segment = name, bytes, "segment fetched into the cache");
        let mut state = self.inner.lock();
        state.tick += 1;
        let used = state.tick;
        state.bytes += bytes;
        state
            .files
            .insert(name.to_owned(), Entry { bytes, used, pins });
        self.inner.evict(&mut state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_inside_the_directory_and_round_trip() {
        for name in ["p3/0001-abc.parquet", "..", "a/../../etc", "ü~x", ""] {
            let file = file_name(name);
            assert!(!file.contains('/') && file.starts_with("s-"), "{file}");
            assert_eq!(object_name(&file).as_deref(), Some(name));
        }
        assert_ne!(file_name("a/b"), file_name("a_b"));
    }

    #[test]
    fn reopening_keeps_files_and_evicts_beyond_the_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, name) in ["p0/a", "p0/b", "p0/c"].iter().enumerate() {
            std::fs::write(dir.path().join(file_name(name)), vec![0u8; 100]).expect("write");
            // Distinct modification times make the eviction order certain.
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
            let file = std::fs::File::options()
                .write(true)
                .open(dir.path().join(file_name(name)))
                .expect("open");
            file.set_modified(time).expect("set time");
        }
        std::fs::write(dir.path().join("part-s-p0~2fd"), b"half").expect("write");
        let settings = CacheSettings {
            dir: Some(dir.path().to_owned()),
            max_bytes: 250,
            ..CacheSettings::default()
        };
        let cache = SegmentCache::open(&settings).expect("open");
        // The oldest file went to fit 250 bytes; the interrupted fetch is gone.
        assert_eq!((cache.files(), cache.bytes()), (2, 200));
        assert!(!dir.path().join(file_name("p0/a")).exists());
        assert!(!dir.path().join("part-s-p0~2fd").exists());
        assert!(cache.take("p0/b") && cache.take("p0/c"));
        assert!(!cache.take("p0/a"));
    }
}
