//! Rules made through the API, kept in the KV bucket `BEACON_ACTION_RULES`
//! (key `<site>.<rule id>`, value a versioned record), so every copy of the
//! service sees them and they survive restarts.

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::rule::RuleConfig;

pub const RULES_BUCKET: &str = "BEACON_ACTION_RULES";

/// The record format this code writes.
const RECORD_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    v: u32,
    rule: RuleConfig,
}

/// Why the rule store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the rule store {RULES_BUCKET}: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Open the bucket, creating it (with `replicas`) when missing.
pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, StoreError> {
    match js.get_key_value(RULES_BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: RULES_BUCKET.to_owned(),
                description: "Beacon action rules made through the API: <site>.<rule id>"
                    .to_owned(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(err),
    }
}

/// Read a stored rule record of any released version.
fn read(bytes: &[u8]) -> Result<RuleConfig, StoreError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let version: Version = serde_json::from_slice(bytes).map_err(err)?;
    match version.v {
        1 => Ok(serde_json::from_slice::<Record>(bytes).map_err(err)?.rule),
        newer => Err(StoreError(format!(
            "rule record version {newer} is newer than this Beacon reads ({RECORD_VERSION})"
        ))),
    }
}

/// Every stored rule. A record that cannot be read is skipped with a warning.
pub async fn all(store: &kv::Store) -> Result<Vec<RuleConfig>, StoreError> {
    let mut keys = store.keys().await.map_err(err)?;
    let mut rules = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(err)?;
        let Some(bytes) = store.get(&key).await.map_err(err)? else {
            continue;
        };
        match read(&bytes) {
            Ok(rule) => rules.push(rule),
            Err(e) => tracing::warn!(%key, error = %e, "skipping a stored rule"),
        }
    }
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rules)
}

pub async fn put(store: &kv::Store, rule: &RuleConfig) -> Result<(), StoreError> {
    let record = serde_json::to_vec(&Record {
        v: RECORD_VERSION,
        rule: rule.clone(),
    })
    .map_err(err)?;
    store
        .put(format!("{}.{}", rule.site, rule.id), record.into())
        .await
        .map_err(err)?;
    Ok(())
}

/// Delete a stored rule; whether it existed.
pub async fn delete(store: &kv::Store, site: &str, id: &str) -> Result<bool, StoreError> {
    let key = format!("{site}.{id}");
    let existed = store.get(&key).await.map_err(err)?.is_some();
    if existed {
        store.delete(&key).await.map_err(err)?;
    }
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_format_stays_readable_and_newer_ones_are_refused() {
        let v1 = br#"{"v": 1, "rule": {"id": "r", "site": "shop", "kind": "event", "event": "signup", "webhook": "https://x.example/h", "secret": "0123456789abcdef"}}"#;
        let rule = read(v1).expect("reads");
        assert_eq!(rule.id, "r");
        let v2 = br#"{"v": 2, "rule": {}}"#;
        assert!(read(v2).is_err());
    }
}
