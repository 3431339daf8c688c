//! Following the rollup store: one ordered consumer over every partition's log
//! in `BEACON_ROLLUPS` pushes each record as the aggregators commit it (no
//! polling). The node first reads what is there into its [`View`] and reports
//! ready only then; afterwards each record changes just the cells it touches.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::Context;
use beacon_aggregate::{StoreError, header};
use beacon_core::subject::ROLLUPS_PREFIX;
use beacon_nats::ROLLUPS_STREAM;
use beacon_rollup::record::{Assembler, Change, FORMAT_HEADER, RECORD_HEADER};
use beacon_rollup::{PartitionState, View};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;

/// The view and what is known about how current it is.
#[derive(Debug, Default)]
pub struct Followed {
    pub view: View,
    /// Every record present at start-up has been read.
    pub ready: bool,
    /// The newest record applied.
    pub newest: Option<Applied>,
    /// `BEACON_ROLLUPS` sequence read up to.
    pub seq: u64,
}

/// When the newest counted event became queryable here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// `received_at` (Unix ms) of the newest event the view counts.
    pub newest_received_ms: i64,
    /// When this node applied the record that counted it (Unix ms).
    pub applied_ms: i64,
}

/// A query node's shared view: read by every answer, written by the follower.
#[derive(Debug, Clone)]
pub struct Rollups {
    inner: Arc<RwLock<Followed>>,
    /// Bumped on every change; live streams wait on it.
    changed: watch::Sender<u64>,
}

impl Default for Rollups {
    fn default() -> Self {
        Rollups {
            inner: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Rollups {
    /// Read the view.
    pub fn read<T>(&self, f: impl FnOnce(&Followed) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    fn write(&self, f: impl FnOnce(&mut Followed)) {
        {
            let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
            f(&mut guard);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn is_ready(&self) -> bool {
        self.read(|f| f.ready)
    }

    /// A receiver that sees each change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Per partition, the record being put together.
#[derive(Default)]
struct Reader {
    assemblers: HashMap<u32, Assembler>,
}

impl Reader {
    /// The change a message completes, if any.
    fn push(
        &mut self,
        subject: &str,
        seq: u64,
        message: &async_nats::Message,
    ) -> Result<Option<(u32, Change)>, StoreError> {
        let Some(partition) = subject
            .strip_prefix(ROLLUPS_PREFIX)
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return Ok(None);
        };
        match self.assemblers.entry(partition).or_default().push(
            header(message, RECORD_HEADER),
            header(message, FORMAT_HEADER),
            &message.payload,
        ) {
            Some(record) => match record.decode() {
                Ok(change) => Ok(Some((partition, change))),
                Err(reason) => Err(StoreError::Corrupt {
                    partition,
                    seq,
                    reason,
                }),
            },
            None => Ok(None),
        }
    }
}

/// Follow `BEACON_ROLLUPS` into `rollups` until `shutdown`. Retries on its
/// own while NATS is away. A record it cannot decode (a format this release
/// does not read) ends it with that error: answering without the record would
/// be a silent hole in the numbers.
pub async fn follow(
    js: Context,
    rollups: Rollups,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let stream = loop {
        match js.get_stream(ROLLUPS_STREAM).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for {ROLLUPS_STREAM}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                }
            }
        }
    };
    let mut info_stream = stream.clone();
    let end_at_start = info_stream
        .info()
        .await
        .map_err(unavailable)?
        .state
        .last_sequence;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{ROLLUPS_PREFIX}.>"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    let mut reader = Reader::default();
    // Until ready, states are folded alone and merged once at the end.
    let mut loading: Option<Vec<PartitionState>> = Some(Vec::new());
    let mut seq = 0;
    if end_at_start == 0 {
        finish_loading(&rollups, &mut loading, 0);
    }
    loop {
        let message = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        let Some(message) = message else {
            return Err(StoreError::Unavailable("the rollup feed ended".into()));
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading rollups; the feed resumes by itself");
                continue;
            }
        };
        let Ok(info) = message.info() else { continue };
        let at = info.stream_sequence;
        if at <= seq {
            continue; // a recreated feed repeats what was read
        }
        seq = at;
        let change = match reader.push(message.subject.as_str(), at, &message) {
            Ok(change) => change,
            Err(e) => {
                metrics::counter!("beacon_query_records_unreadable_total").increment(1);
                return Err(e);
            }
        };
        match (&mut loading, change) {
            (Some(states), Some((p, change))) => {
                let i = p as usize;
                if states.len() <= i {
                    states.resize_with(i + 1, PartitionState::default);
                }
                match change {
                    Change::Takeover => {}
                    // The view keeps no remembered sessions; neither does loading.
                    Change::Delta(d) => states[i].apply_figures(&d),
                    Change::Snapshot(mut s) => {
                        s.users = Default::default();
                        states[i] = s;
                    }
                }
            }
            (None, Some((p, change))) => {
                let now = chrono::Utc::now().timestamp_millis();
                rollups.write(|f| {
                    let newest = match change {
                        Change::Takeover => None,
                        Change::Delta(d) => {
                            let newest = d.newest_received_ms;
                            f.view.apply_delta(p, &d);
                            (d.applied > 0).then_some(newest)
                        }
                        Change::Snapshot(s) => {
                            f.view.replace(p, s);
                            None
                        }
                    };
                    if let Some(newest) = newest {
                        f.newest = Some(Applied {
                            newest_received_ms: newest,
                            applied_ms: now,
                        });
                    }
                    f.seq = at;
                });
                metrics::counter!("beacon_query_records_applied_total").increment(1);
            }
            (_, None) => {}
        }
        if loading.is_some() && at >= end_at_start {
            finish_loading(&rollups, &mut loading, at);
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn finish_loading(rollups: &Rollups, loading: &mut Option<Vec<PartitionState>>, seq: u64) {
    let states = loading.take().unwrap_or_default();
    let view = View::new(states);
    let now = chrono::Utc::now().timestamp_millis();
    let newest = view
        .partitions()
        .iter()
        .map(|s| s.newest_received_ms)
        .max()
        .filter(|ms| *ms > 0);
    tracing::info!(cells = view.len(), "rollups loaded; query node ready");
    rollups.write(|f| {
        f.view = view;
        f.ready = true;
        f.seq = seq;
        f.newest = newest.map(|n| Applied {
            newest_received_ms: n,
            applied_ms: now,
        });
    });
    metrics::gauge!("beacon_query_ready").set(1.0);
}
