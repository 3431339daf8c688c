//! Creating and updating Beacon's streams, idempotently: a second run with the
//! same settings changes nothing, a changed setting is applied where JetStream
//! allows it and refused with a clear reason where it does not.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use beacon_core::subject::{
    EVENTS_PREFIX, INGEST_PREFIX, MANIFEST_BUCKET, REJECTS_PREFIX, ROLLUPS_PREFIX, SEGMENT_BUCKET,
    UNAUTH_REJECTS_PREFIX,
};
use serde::{Deserialize, Serialize};

pub const EVENTS_STREAM: &str = "BEACON_EVENTS";
pub const INGEST_STREAM: &str = "BEACON_INGEST";
pub const REJECTS_STREAM: &str = "BEACON_REJECTS";
pub const UNAUTH_REJECTS_STREAM: &str = "BEACON_REJECTS_UNAUTH";
pub const ROLLUPS_STREAM: &str = "BEACON_ROLLUPS";
/// Goals made through the query API: key `<site>.<goal name, key-encoded>`.
pub const GOALS_BUCKET: &str = "BEACON_GOALS";
/// Funnels saved through the query API: key `<site>.<funnel name, key-encoded>`.
pub const FUNNELS_BUCKET: &str = "BEACON_FUNNELS";

/// Stream metadata key recording the partition count fixed at creation.
const PARTITIONS_KEY: &str = "beacon.partitions";

/// Stream settings operators choose; defaults as documented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Partitions P of `BEACON_EVENTS`; fixed once the stream exists.
    pub partitions: u32,
    /// Replicas of every stream: 1, or 3 on a cluster.
    pub replicas: usize,
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
    /// Largest `BEACON_EVENTS` may grow, in bytes; -1 for no limit.
    pub events_max_bytes: i64,
    /// How long a retried publish (same site and event id) is recognised as a duplicate.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    #[serde(with = "humantime_serde")]
    pub ingest_max_age: Duration,
    #[serde(with = "humantime_serde")]
    pub rejects_max_age: Duration,
    pub rejects_max_bytes: i64,
    /// Largest `BEACON_REJECTS_UNAUTH` may grow, in bytes (oldest dropped first).
    pub unauth_rejects_max_bytes: i64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        StreamSettings {
            partitions: 16,
            replicas: 1,
            events_max_age: Duration::from_secs(30 * DAY),
            events_max_bytes: -1,
            duplicate_window: Duration::from_secs(10 * 60),
            ingest_max_age: Duration::from_secs(7 * DAY),
            rejects_max_age: Duration::from_secs(30 * DAY),
            rejects_max_bytes: 1 << 30,
            unauth_rejects_max_bytes: 64 << 20,
        }
    }
}

impl StreamSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=1024).contains(&self.partitions) {
            problems.push(format!(
                "streams.partitions must be 1 to 1024, not {}",
                self.partitions
            ));
        }
        if self.replicas != 1 && self.replicas != 3 && self.replicas != 5 {
            problems.push(format!(
                "streams.replicas must be 1, 3 or 5, not {}",
                self.replicas
            ));
        }
        if self.duplicate_window.is_zero() {
            problems.push(
                "streams.duplicate_window must be positive: it is what makes retries safe"
                    .to_owned(),
            );
        }
        if !self.events_max_age.is_zero() && self.duplicate_window > self.events_max_age {
            problems
                .push("streams.duplicate_window cannot exceed streams.events_max_age".to_owned());
        }
        problems
    }

    /// The stream configurations these settings describe.
    pub fn stream_configs(&self) -> [stream::Config; 5] {
        let events = stream::Config {
            name: EVENTS_STREAM.to_owned(),
            description: Some(
                "Beacon canonical events: beacon.events.<partition>.<site>.<event>".to_owned(),
            ),
            subjects: vec![format!("{EVENTS_PREFIX}.*.*.*")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.events_max_age,
            max_bytes: self.events_max_bytes,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            metadata: HashMap::from([(PARTITIONS_KEY.to_owned(), self.partitions.to_string())]),
            ..Default::default()
        };
        let ingest = stream::Config {
            name: INGEST_STREAM.to_owned(),
            description: Some("Beacon raw NATS-native input: beacon.ingest.<site>".to_owned()),
            subjects: vec![format!("{INGEST_PREFIX}.*")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: self.ingest_max_age,
            max_bytes: -1,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            ..Default::default()
        };
        let rejects = stream::Config {
            name: REJECTS_STREAM.to_owned(),
            description: Some(
                "Beacon rejected input with its reason: beacon.rejects.<source>".to_owned(),
            ),
            subjects: vec![format!("{REJECTS_PREFIX}.*")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.rejects_max_age,
            max_bytes: self.rejects_max_bytes,
            num_replicas: self.replicas,
            ..Default::default()
        };
        // Anyone can send what lands here, so it is small and fills on its own.
        let unauth_rejects = stream::Config {
            name: UNAUTH_REJECTS_STREAM.to_owned(),
            description: Some(
                "Beacon rejected input no configured site vouches for: beacon.rejects.unauth.<source>"
                    .to_owned(),
            ),
            subjects: vec![format!("{UNAUTH_REJECTS_PREFIX}.*")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.rejects_max_age,
            max_bytes: self.unauth_rejects_max_bytes,
            num_replicas: self.replicas,
            ..Default::default()
        };
        // The aggregators' committed state: never expires, replicated like the
        // events, since it is the only copy of what was counted.
        let rollups = stream::Config {
            name: ROLLUPS_STREAM.to_owned(),
            description: Some(
                "Beacon rollup logs: beacon.rollups.<partition> and beacon.rollups.g<generation>.<partition> (deltas and snapshots with the event sequence they reach), and beacon.rollups.current (which generation counts)"
                    .to_owned(),
            ),
            // `>`: generations after a replay add a token (`beacon.rollups.g1.3`).
            subjects: vec![format!("{ROLLUPS_PREFIX}.>")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_bytes: -1,
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        };
        [events, ingest, rejects, unauth_rejects, rollups]
    }
}

/// What provisioning did, stream by stream, for people to read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProvisionReport {
    pub lines: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "{EVENTS_STREAM} was created with {existing} partitions and the config asks for {wanted}; \
         the partition count cannot change on an existing stream (set streams.partitions = {existing}, \
         or delete the stream and replay)"
    )]
    PartitionsChanged { existing: String, wanted: u32 },
    #[error(
        "{stream}: {setting} cannot change on an existing stream (it is {existing}, the config asks for {wanted})"
    )]
    Immutable {
        stream: String,
        setting: &'static str,
        existing: String,
        wanted: String,
    },
    #[error("{stream}: {action} failed: {message}")]
    Api {
        stream: String,
        action: &'static str,
        message: String,
    },
}

/// Create missing streams and buckets and bring existing ones in line with `settings`.
pub async fn provision(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<ProvisionReport, ProvisionError> {
    let mut report = ProvisionReport::default();
    for wanted in settings.stream_configs() {
        let line = ensure_stream(js, wanted).await?;
        report.lines.push(line);
    }
    for bucket in Bucket::ALL {
        let line = ensure_bucket(js, bucket, settings.replicas).await?;
        report.lines.push(line);
    }
    Ok(report)
}

/// The key-value and object store buckets: the event store's, and the
/// definitions users make through the API (goals, saved funnels), of which
/// they are the only copy. Their streams' layout is the client library's;
/// Beacon manages only their replicas.
#[derive(Debug, Clone, Copy)]
enum Bucket {
    /// `BEACON_STORE`: one manifest per partition.
    Manifests,
    /// `BEACON_SEGMENTS`: the segment files.
    Segments,
    /// `BEACON_GOALS`: goals made through the API, `<site>.<goal name>`.
    Goals,
    /// `BEACON_FUNNELS`: funnels saved through the API, `<site>.<funnel name>`.
    Funnels,
}

impl Bucket {
    const ALL: [Bucket; 4] = [
        Bucket::Manifests,
        Bucket::Segments,
        Bucket::Goals,
        Bucket::Funnels,
    ];

    fn stream(self) -> String {
        match self {
            Bucket::Segments => format!("OBJ_{SEGMENT_BUCKET}"),
            kv => format!("KV_{}", kv.key_value().map_or("", |(name, _)| name)),
        }
    }

    /// A key-value bucket's name and description.
    fn key_value(self) -> Option<(&'static str, &'static str)> {
        match self {
            Bucket::Manifests => Some((
                MANIFEST_BUCKET,
                "Beacon event store: the segments of each partition (p<N>)",
            )),
            Bucket::Segments => None,
            Bucket::Goals => Some((
                GOALS_BUCKET,
                "Beacon goals made through the API: <site>.<goal name>",
            )),
            Bucket::Funnels => Some((
                FUNNELS_BUCKET,
                "Beacon funnels saved through the API: <site>.<funnel name>",
            )),
        }
    }

    async fn create(self, js: &jetstream::Context, replicas: usize) -> Result<(), String> {
        match self.key_value() {
            Some((bucket, description)) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    description: description.to_owned(),
                    history: 1,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            None => js
                .create_object_store(object_store::Config {
                    bucket: SEGMENT_BUCKET.to_owned(),
                    description: Some(
                        "Beacon event store: Parquet segments, p<N>/<first>-<last>-<id>.parquet"
                            .to_owned(),
                    ),
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Create a missing store bucket, or bring an existing one's replicas in line.
async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: Bucket,
    replicas: usize,
) -> Result<String, ProvisionError> {
    let name = bucket.stream();
    let api = |action: &'static str, message: String| ProvisionError::Api {
        stream: name.clone(),
        action,
        message,
    };
    let mut failed = String::new();
    // A lost create race (another service provisioning) shows on the next look.
    for _ in 0..3 {
        match js.get_stream(&name).await {
            Ok(mut existing) => {
                let current = existing
                    .info()
                    .await
                    .map_err(|e| api("reading", e.to_string()))?
                    .config
                    .clone();
                if current.storage != stream::StorageType::File {
                    return Err(ProvisionError::Immutable {
                        stream: name.clone(),
                        setting: "storage",
                        existing: format!("{:?}", current.storage),
                        wanted: format!("{:?}", stream::StorageType::File),
                    });
                }
                if current.num_replicas == replicas {
                    return Ok(format!("{name}: up to date"));
                }
                let from = current.num_replicas;
                js.update_stream(stream::Config {
                    num_replicas: replicas,
                    ..current
                })
                .await
                .map_err(|e| api("updating", e.to_string()))?;
                return Ok(format!("{name}: updated replicas {from} → {replicas}"));
            }
            Err(e) if is_not_found(&e) => match bucket.create(js, replicas).await {
                Ok(()) => return Ok(format!("{name}: created")),
                Err(e) => failed = e,
            },
            Err(e) => return Err(api("reading", e.to_string())),
        }
    }
    Err(api("creating", failed))
}

/// Create `wanted` if it is missing, else bring it in line (refusing what
/// JetStream cannot change); returns the line `provision` reports.
pub async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> Result<String, ProvisionError> {
    let name = wanted.name.clone();
    let api = |action: &'static str, message: String| ProvisionError::Api {
        stream: name.clone(),
        action,
        message,
    };
    // Two services may provision at once: a lost create race is followed by a compare.
    for _ in 0..3 {
        match js.get_stream(&name).await {
            Ok(mut existing) => {
                let current = existing
                    .info()
                    .await
                    .map_err(|e| api("reading", e.to_string()))?
                    .config
                    .clone();
                let changes = differences(&current, &wanted)?;
                if changes.is_empty() {
                    return Ok(format!("{name}: up to date"));
                }
                let mut updated = wanted.clone();
                // Keep what Beacon does not manage as the operator left it.
                updated.metadata = current.metadata.clone();
                updated.metadata.extend(wanted.metadata.clone());
                js.update_stream(updated)
                    .await
                    .map_err(|e| api("updating", e.to_string()))?;
                return Ok(format!("{name}: updated {}", changes.join(", ")));
            }
            Err(e) if is_not_found(&e) => match js.create_stream(wanted.clone()).await {
                Ok(_) => return Ok(format!("{name}: created")),
                Err(e) if e.to_string().contains("already in use") => continue,
                Err(e) => return Err(api("creating", e.to_string())),
            },
            Err(e) => return Err(api("reading", e.to_string())),
        }
    }
    Err(api(
        "creating",
        "it keeps appearing and disappearing".to_owned(),
    ))
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The settings that differ, refusing those JetStream cannot change in place.
fn differences(
    current: &stream::Config,
    wanted: &stream::Config,
) -> Result<Vec<String>, ProvisionError> {
    if let Some(p) = wanted.metadata.get(PARTITIONS_KEY) {
        let existing = current
            .metadata
            .get(PARTITIONS_KEY)
            .cloned()
            .unwrap_or_else(|| "an unknown number of".to_owned());
        if existing != *p {
            return Err(ProvisionError::PartitionsChanged {
                existing,
                wanted: p.parse().unwrap_or_default(),
            });
        }
    }
    let immutable = |setting: &'static str, existing: String, wanted_value: String| {
        if existing == wanted_value {
            Ok(())
        } else {
            Err(ProvisionError::Immutable {
                stream: wanted.name.clone(),
                setting,
                existing,
                wanted: wanted_value,
            })
        }
    };
    immutable(
        "storage",
        format!("{:?}", current.storage),
        format!("{:?}", wanted.storage),
    )?;
    immutable(
        "retention",
        format!("{:?}", current.retention),
        format!("{:?}", wanted.retention),
    )?;

    let mut changes = Vec::new();
    let mut note = |setting: &str, from: String, to: String| {
        if from != to {
            changes.push(format!("{setting} {from} → {to}"));
        }
    };
    let human = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
    note("max_age", human(current.max_age), human(wanted.max_age));
    note(
        "max_bytes",
        current.max_bytes.to_string(),
        wanted.max_bytes.to_string(),
    );
    note(
        "replicas",
        current.num_replicas.to_string(),
        wanted.num_replicas.to_string(),
    );
    if wanted.duplicate_window > Duration::ZERO {
        note(
            "duplicate_window",
            human(current.duplicate_window),
            human(wanted.duplicate_window),
        );
    }
    note(
        "subjects",
        current.subjects.join(","),
        wanted.subjects.join(","),
    );
    Ok(changes)
}
