//! Daily salts for cookieless visitor ids (the Plausible-compatible endpoint).
//!
//! Every collector must hash a visitor with the same salt on the same day, or
//! one visitor would count once per collector. Salts therefore live in the KV
//! bucket `BEACON_SALTS`, one key per UTC day: the first collector to need a
//! day's salt creates it (create-if-absent), every other one reads that value.
//! Salts expire after [`SALT_MAX_AGE`], after which no stored visitor id can be
//! tied back to an address and user agent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::NaiveDate;
use tokio::sync::OnceCell;

use crate::provision::EVENTS_STREAM;

/// The KV bucket holding one random salt per UTC day.
pub const SALTS_BUCKET: &str = "BEACON_SALTS";

/// How long a salt is kept: past the end of its day, with margin for
/// collectors whose clocks lag, and no longer.
pub const SALT_MAX_AGE: Duration = Duration::from_secs(30 * 3600);

/// Why a salt could not be had; the request is answered 503 and may be retried.
#[derive(Debug, thiserror::Error)]
pub enum SaltError {
    #[error("cannot open or create the {SALTS_BUCKET} bucket: {0}")]
    Bucket(String),
    #[error("cannot read or write the salt of {day}: {message}")]
    Salt { day: NaiveDate, message: String },
}

/// The salts this process has seen, backed by `BEACON_SALTS`.
#[derive(Debug)]
pub struct Salts {
    js: jetstream::Context,
    store: OnceCell<kv::Store>,
    /// The last day asked for and its salt: nearly every request wants today's.
    latest: Mutex<Option<(NaiveDate, Arc<[u8]>)>>,
}

impl Salts {
    pub fn new(js: jetstream::Context) -> Self {
        Salts {
            js,
            store: OnceCell::new(),
            latest: Mutex::new(None),
        }
    }

    /// The salt of `day`, created (32 random bytes) if no collector has yet.
    pub async fn for_day(&self, day: NaiveDate) -> Result<Arc<[u8]>, SaltError> {
        if let Ok(latest) = self.latest.lock()
            && let Some((cached, salt)) = latest.as_ref()
            && *cached == day
        {
            return Ok(salt.clone());
        }
        let store = self.store.get_or_try_init(|| open(&self.js)).await?;
        let failed = |message: String| SaltError::Salt { day, message };
        let key = day.format("%Y-%m-%d").to_string();
        let fresh: [u8; 32] = rand::random();
        let salt: Arc<[u8]> = match store.create(&key, Bytes::copy_from_slice(&fresh)).await {
            Ok(_) => Arc::from(&fresh[..]),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match store.get(&key).await.map_err(|e| failed(e.to_string()))? {
                    Some(value) if !value.is_empty() => Arc::from(&value[..]),
                    _ => return Err(failed("the stored salt is empty".to_owned())),
                }
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some((day, salt.clone()));
        }
        Ok(salt)
    }
}

/// Open the bucket, creating it with the same replica count as `BEACON_EVENTS`
/// (so it is as durable as the events whose visitors it names).
async fn open(js: &jetstream::Context) -> Result<kv::Store, SaltError> {
    if let Ok(store) = js.get_key_value(SALTS_BUCKET).await {
        return Ok(store);
    }
    let replicas = match js.get_stream(EVENTS_STREAM).await {
        Ok(mut stream) => stream
            .info()
            .await
            .map(|i| i.config.num_replicas)
            .unwrap_or(1),
        Err(_) => 1,
    };
    let config = kv::Config {
        bucket: SALTS_BUCKET.to_owned(),
        description: "Beacon: one random salt per UTC day for cookieless visitor ids".to_owned(),
        history: 1,
        max_age: SALT_MAX_AGE,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..kv::Config::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another collector may have created it meanwhile.
        Err(create) => js
            .get_key_value(SALTS_BUCKET)
            .await
            .map_err(|_| SaltError::Bucket(create.to_string())),
    }
}
