//! Enrichment settings (`[enrich]` in the config) and loading them into the
//! pipeline's [`Enricher`]: the GeoIP database is read from disk once, at
//! start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use beacon_core::enrich::GeoDb;
use beacon_core::{Enricher, Site};
use serde::{Deserialize, Serialize};

/// Where the set-up scripts install the free country database, inside a
/// `tools/` folder (see `scripts/install-geoip.sh`).
pub const INSTALLED_DB: &str = "geoip/country.mmdb";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichSettings {
    /// A MaxMind-DB file (GeoLite2 / GeoIP2 / DB-IP Country or City, or an
    /// ip-location-db file). Unset: `tools/geoip/country.mmdb` when the
    /// set-up scripts installed it, else no GeoIP. Empty: no GeoIP.
    pub geoip_db: Option<PathBuf>,
    /// Look for bots (on by default). Off, no event is filtered traffic.
    pub bots: bool,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        EnrichSettings {
            geoip_db: None,
            bots: true,
        }
    }
}

/// The database to use: the configured one, else the installed one if any;
/// none when the setting is empty.
pub fn geoip_path(settings: &EnrichSettings) -> Option<PathBuf> {
    if settings
        .geoip_db
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return None;
    }
    settings.geoip_db.clone().or_else(|| {
        beacon_nats::server::tools_dirs()
            .into_iter()
            .map(|tools| tools.join(INSTALLED_DB))
            .find(|p| p.is_file())
    })
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GeoLoadError {
    #[error("cannot read the GeoIP database {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: beacon_core::enrich::GeoError,
    },
}

/// Open the GeoIP database at `path`.
pub fn open_geoip(path: &Path) -> Result<GeoDb, GeoLoadError> {
    let bytes = std::fs::read(path).map_err(|source| GeoLoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    GeoDb::from_bytes(bytes).map_err(|source| GeoLoadError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// The enricher for these settings and sites. A missing or unreadable
/// database is said once at start-up, clearly, and events are still
/// accepted: they get a country only when the sender names one.
pub fn load(settings: &EnrichSettings, sites: &[Site]) -> Enricher {
    let geo = match geoip_path(settings) {
        None if settings.geoip_db.is_some() => {
            tracing::info!("GeoIP is off (enrich.geoip_db is empty)");
            None
        }
        None => {
            tracing::warn!(
                "GeoIP is off: no database (set enrich.geoip_db, or run scripts/install-geoip.sh to \
                 install the free country database into tools/); events get a country only when \
                 the sender names one"
            );
            None
        }
        Some(path) => match open_geoip(&path) {
            Ok(db) => {
                tracing::info!("GeoIP: {} ({})", path.display(), db.kind());
                Some(Arc::new(db))
            }
            Err(e) => {
                tracing::warn!(
                    "GeoIP is off: {e}; events are still accepted, with a country only when the \
                     sender names one"
                );
                None
            }
        },
    };
    let keep_bots = sites.iter().filter(|s| s.keep_bots).map(|s| s.id.clone());
    Enricher::new(geo, keep_bots).detecting_bots(settings.bots)
}
