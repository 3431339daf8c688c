//! What users define per site: goals (from the config file, read-only, and
//! from the API in the KV bucket `BEACON_GOALS`) and saved funnels (API only,
//! `BEACON_FUNNELS`). Records outlive the process, so each carries a version
//! (`{"v": 1, ...}`) and a reader for every released one.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use beacon_core::goal::key_part;
use beacon_core::{Goal, Secret, Site};
use beacon_nats::{FUNNELS_BUCKET, GOALS_BUCKET};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::QueryError;

/// The record format this code writes.
const RECORD_VERSION: u32 = 1;
/// Most goals or saved funnels a site may make through the API.
pub const MAX_PER_SITE: usize = 100;

/// A funnel saved under a name: its steps as written (`event:signup`,
/// `path:/pricing*`, `goal:Signup`) and its window (`1d`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedFunnel {
    pub name: String,
    pub steps: Vec<String>,
    #[serde(default = "default_window")]
    pub window: String,
}

pub fn default_window() -> String {
    "1d".to_owned()
}

/// One site's definitions from the config file.
#[derive(Debug, Clone, Default)]
pub struct Configured {
    pub goals: Vec<Goal>,
    pub manage_keys: Vec<Secret>,
}

/// Every site's configured definitions.
#[derive(Debug, Clone, Default)]
pub struct Config(BTreeMap<String, Configured>);

impl Config {
    pub fn new(sites: &[Site]) -> Config {
        Config(
            sites
                .iter()
                .map(|s| {
                    let configured = Configured {
                        goals: s.goals.clone(),
                        manage_keys: s.manage_keys.clone(),
                    };
                    (s.id.clone(), configured)
                })
                .collect(),
        )
    }

    pub fn site(&self, site: &str) -> Option<&Configured> {
        self.0.get(site)
    }
}

/// Which bucket a definition lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Goal,
    Funnel,
}

impl Kind {
    fn bucket(self) -> &'static str {
        match self {
            Kind::Goal => GOALS_BUCKET,
            Kind::Funnel => FUNNELS_BUCKET,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct GoalRecord {
    v: u32,
    goal: Goal,
}

#[derive(Debug, Serialize, Deserialize)]
struct FunnelRecord {
    v: u32,
    funnel: SavedFunnel,
}

#[derive(Deserialize)]
struct Version {
    v: u32,
}

fn too_new(v: u32) -> String {
    format!("record version {v} is newer than this Beacon reads ({RECORD_VERSION})")
}

/// A stored goal of any released version.
fn read_goal(bytes: &[u8]) -> Result<Goal, String> {
    let version: Version = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match version.v {
        1 => serde_json::from_slice::<GoalRecord>(bytes)
            .map(|r| r.goal)
            .map_err(|e| e.to_string()),
        v => Err(too_new(v)),
    }
}

/// A stored funnel of any released version.
fn read_funnel(bytes: &[u8]) -> Result<SavedFunnel, String> {
    let version: Version = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match version.v {
        1 => serde_json::from_slice::<FunnelRecord>(bytes)
            .map(|r| r.funnel)
            .map_err(|e| e.to_string()),
        v => Err(too_new(v)),
    }
}

fn unavailable(bucket: &str, e: impl std::fmt::Display) -> QueryError {
    QueryError::unavailable(format!("the bucket {bucket} cannot be read now: {e}"))
}

async fn bucket(js: &jetstream::Context, kind: Kind) -> Result<kv::Store, QueryError> {
    js.get_key_value(kind.bucket())
        .await
        .map_err(|e| unavailable(kind.bucket(), e))
}

/// The values stored under `<site>.*` in `kind`'s bucket, in key order.
async fn values(
    js: &jetstream::Context,
    kind: Kind,
    site: &str,
) -> Result<Vec<(String, bytes::Bytes)>, QueryError> {
    let store = bucket(js, kind).await?;
    let mut keys = store
        .keys()
        .await
        .map_err(|e| unavailable(kind.bucket(), e))?;
    let prefix = format!("{site}.");
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| unavailable(kind.bucket(), e))?;
        if !key.starts_with(&prefix) {
            continue;
        }
        if let Some(value) = store
            .get(&key)
            .await
            .map_err(|e| unavailable(kind.bucket(), e))?
        {
            out.push((key, value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The goals `site` made through the API. A record that cannot be read is
/// skipped with a warning, so one bad record does not hide the others.
pub async fn api_goals(js: &jetstream::Context, site: &str) -> Result<Vec<Goal>, QueryError> {
    let mut goals = Vec::new();
    for (key, bytes) in values(js, Kind::Goal, site).await? {
        match read_goal(&bytes) {
            Ok(goal) => goals.push(goal),
            Err(e) => tracing::warn!(%key, error = %e, "skipping a stored goal"),
        }
    }
    goals.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(goals)
}

/// The funnels `site` saved.
pub async fn funnels(js: &jetstream::Context, site: &str) -> Result<Vec<SavedFunnel>, QueryError> {
    let mut funnels = Vec::new();
    for (key, bytes) in values(js, Kind::Funnel, site).await? {
        match read_funnel(&bytes) {
            Ok(funnel) => funnels.push(funnel),
            Err(e) => tracing::warn!(%key, error = %e, "skipping a saved funnel"),
        }
    }
    funnels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(funnels)
}

fn key(site: &str, name: &str) -> String {
    format!("{site}.{}", key_part(name))
}

/// How many definitions of `kind` `site` has through the API.
pub async fn count(js: &jetstream::Context, kind: Kind, site: &str) -> Result<usize, QueryError> {
    Ok(values(js, kind, site).await?.len())
}

pub async fn put_goal(js: &jetstream::Context, site: &str, goal: &Goal) -> Result<(), QueryError> {
    let record = serde_json::to_vec(&GoalRecord {
        v: RECORD_VERSION,
        goal: goal.clone(),
    })
    .map_err(|e| QueryError::internal(e.to_string()))?;
    put(js, Kind::Goal, &key(site, &goal.name), record).await
}

pub async fn put_funnel(
    js: &jetstream::Context,
    site: &str,
    funnel: &SavedFunnel,
) -> Result<(), QueryError> {
    let record = serde_json::to_vec(&FunnelRecord {
        v: RECORD_VERSION,
        funnel: funnel.clone(),
    })
    .map_err(|e| QueryError::internal(e.to_string()))?;
    put(js, Kind::Funnel, &key(site, &funnel.name), record).await
}

async fn put(
    js: &jetstream::Context,
    kind: Kind,
    key: &str,
    record: Vec<u8>,
) -> Result<(), QueryError> {
    bucket(js, kind)
        .await?
        .put(key, record.into())
        .await
        .map_err(|e| unavailable(kind.bucket(), e))?;
    Ok(())
}

/// Whether `site` has `name` in `kind`'s bucket.
pub async fn exists(
    js: &jetstream::Context,
    kind: Kind,
    site: &str,
    name: &str,
) -> Result<bool, QueryError> {
    Ok(bucket(js, kind)
        .await?
        .get(key(site, name))
        .await
        .map_err(|e| unavailable(kind.bucket(), e))?
        .is_some())
}

/// Delete `name`; whether it existed.
pub async fn delete(
    js: &jetstream::Context,
    kind: Kind,
    site: &str,
    name: &str,
) -> Result<bool, QueryError> {
    if !exists(js, kind, site, name).await? {
        return Ok(false);
    }
    bucket(js, kind)
        .await?
        .delete(key(site, name))
        .await
        .map_err(|e| unavailable(kind.bucket(), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_formats_stay_readable_and_newer_ones_are_refused() {
        let goal = br#"{"v": 1, "goal": {"name": "Signup", "event": "signup"}}"#;
        assert_eq!(
            read_goal(goal).expect("reads").event.as_deref(),
            Some("signup")
        );
        let funnel = br#"{"v": 1, "funnel": {"name": "f", "steps": ["event:a", "event:b"], "window": "7d"}}"#;
        assert_eq!(read_funnel(funnel).expect("reads").window, "7d");
        assert!(read_goal(br#"{"v": 2, "goal": {}}"#).is_err());
        assert!(read_funnel(br#"{"v": 2}"#).is_err());
    }
}
