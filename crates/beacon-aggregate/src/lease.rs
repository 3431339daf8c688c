//! Who owns which partition. Aggregators announce themselves in the
//! `BEACON_AGGREGATORS` key-value bucket (`members.<id>`) and hold one lease per
//! owned partition (`leases.<partition>`). Both expire with the bucket's max
//! age unless renewed, so a dead aggregator's partitions free up within the
//! lease TTL; a clean stop deletes them at once. Partitions are spread evenly:
//! the sorted members take turns, `p mod members`.
//!
//! Leases decide who *should* work on a partition; they are not what keeps the
//! numbers right. That is the rollup log's fencing ([`crate::store`]): an owner
//! that lost its lease without noticing cannot append after its successor.

use std::time::Duration;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{self, Store};
use async_nats::jetstream::stream::StorageType;
use futures::TryStreamExt;

pub const AGGREGATORS_BUCKET: &str = "BEACON_AGGREGATORS";
const MEMBERS: &str = "members.";
const LEASES: &str = "leases.";

#[derive(Debug, thiserror::Error)]
#[error("aggregator membership unavailable: {0}")]
pub struct LeaseError(String);

fn err(e: impl std::fmt::Display) -> LeaseError {
    LeaseError(e.to_string())
}

/// The bucket, created with `ttl` as its max age when missing.
pub async fn bucket(js: &Context, ttl: Duration, replicas: usize) -> Result<Store, LeaseError> {
    if let Ok(store) = js.get_key_value(AGGREGATORS_BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: AGGREGATORS_BUCKET.to_owned(),
        description: "Beacon aggregators alive and the partitions they own".to_owned(),
        history: 1,
        max_age: ttl,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(err)
}

/// Announce `id` as alive (again).
pub async fn heartbeat(kv: &Store, id: &str) -> Result<(), LeaseError> {
    kv.put(
        format!("{MEMBERS}{id}"),
        chrono::Utc::now().to_rfc3339().into(),
    )
    .await
    .map(|_| ())
    .map_err(err)
}

/// Leave: others take over this member's partitions without waiting for expiry.
pub async fn leave(kv: &Store, id: &str) -> Result<(), LeaseError> {
    kv.delete(format!("{MEMBERS}{id}")).await.map_err(err)
}

/// Members alive now, sorted.
pub async fn members(kv: &Store) -> Result<Vec<String>, LeaseError> {
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(err)?
        .try_collect()
        .await
        .map_err(err)?;
    let mut members: Vec<String> = keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(MEMBERS).map(str::to_owned))
        .collect();
    members.sort();
    Ok(members)
}

/// The partitions `me` should own when `members` are alive.
pub fn assignment(members: &[String], partitions: u32, me: &str) -> Vec<u32> {
    let Some(index) = members.iter().position(|m| m == me) else {
        return Vec::new();
    };
    (0..partitions)
        .filter(|p| *p as usize % members.len() == index)
        .collect()
}

/// Current owner of each partition that has one.
pub async fn owners(kv: &Store, partitions: u32) -> Result<Vec<Option<String>>, LeaseError> {
    let mut owners = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let owner = kv.get(format!("{LEASES}{p}")).await.map_err(err)?;
        owners.push(owner.map(|v| String::from_utf8_lossy(&v).into_owned()));
    }
    Ok(owners)
}

/// A held lease on one partition.
#[derive(Debug)]
pub struct Lease {
    key: String,
    id: String,
    revision: u64,
}

impl Lease {
    /// Take `partition` if nobody holds it.
    pub async fn acquire(kv: &Store, partition: u32, id: &str) -> Option<Lease> {
        let key = format!("{LEASES}{partition}");
        let revision = kv.create(&key, id.to_owned().into()).await.ok()?;
        Some(Lease {
            key,
            id: id.to_owned(),
            revision,
        })
    }

    /// Extend the lease; `false` only when it is known to be lost (expired and
    /// taken by another, or gone). When NATS cannot tell, the lease is kept: the
    /// log's fencing, not the lease, is what protects the numbers.
    pub async fn renew(&mut self, kv: &Store) -> bool {
        if let Ok(revision) = kv
            .update(&self.key, self.id.clone().into(), self.revision)
            .await
        {
            self.revision = revision;
            return true;
        }
        // The update may have landed without an answer: the entry says whose it is.
        match kv.entry(&self.key).await {
            Ok(Some(entry))
                if entry.operation == kv::Operation::Put && entry.value == self.id.as_bytes() =>
            {
                self.revision = entry.revision;
                true
            }
            Ok(_) => false,
            Err(_) => true,
        }
    }

    /// Give the partition up (only if still ours).
    pub async fn release(self, kv: &Store) {
        if let Err(e) = kv
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::debug!(key = self.key, error = %e, "lease already gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_spread_evenly_and_completely() {
        let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let shares: Vec<Vec<u32>> = members
            .iter()
            .map(|m| assignment(&members, 16, m))
            .collect();
        assert_eq!(
            shares.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![6, 5, 5]
        );
        let mut all: Vec<u32> = shares.concat();
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<_>>());
        assert!(assignment(&members, 16, "stranger").is_empty());
    }
}
