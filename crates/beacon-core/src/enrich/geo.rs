//! GeoIP: an IP address → country, region and city, from any MaxMind-DB
//! (`.mmdb`) file: MaxMind GeoLite2 / GeoIP2 and DB-IP Country or City files,
//! and the `ip-location-db` country and city files, whose records are flat.
//!
//! The database's bytes are handed in by the caller (reading the file is I/O,
//! which this crate does not do); lookups are pure.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

/// Where an address is, as far as the database knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// ISO 3166-1 alpha-2, uppercase.
    pub country: Option<String>,
    /// ISO 3166-2 subdivision code (`US-CA`) where the database has one,
    /// otherwise the subdivision's name.
    pub region: Option<String>,
    /// The city's English name.
    pub city: Option<String>,
}

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("not a MaxMind DB (.mmdb) file: {0}")]
pub struct GeoError(#[from] maxminddb::MaxMindDbError);

/// An opened GeoIP database.
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("database_type", &self.reader.metadata().database_type)
            .finish()
    }
}

/// One record, in both shapes: GeoIP2's nested maps, or ip-location-db's
/// flat `country_code` / `state1` / `city` strings.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    country: Option<Country>,
    #[serde(default)]
    country_code: Option<String>,
    #[serde(default)]
    subdivisions: Vec<Subdivision>,
    #[serde(default)]
    state1: Option<String>,
    #[serde(default)]
    city: Option<City>,
}

#[derive(Deserialize)]
struct Country {
    #[serde(default)]
    iso_code: Option<String>,
}

#[derive(Deserialize)]
struct Subdivision {
    #[serde(default)]
    iso_code: Option<String>,
    #[serde(default)]
    names: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum City {
    Name(String),
    Named {
        #[serde(default)]
        names: HashMap<String, String>,
    },
}

impl GeoDb {
    /// Open a database from its file's bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoDb, GeoError> {
        Ok(GeoDb {
            reader: maxminddb::Reader::from_source(bytes)?,
        })
    }

    /// The database's own name for what it holds (`GeoLite2-City`, …).
    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Where `ip` is; an address the database does not hold (or a record it
    /// cannot decode) gives an empty place, never an error: a bad record must
    /// not cost an event.
    pub fn lookup(&self, ip: IpAddr) -> Place {
        let record: Option<Record> = self
            .reader
            .lookup(ip)
            .ok()
            .and_then(|found| found.decode().ok().flatten());
        let Some(r) = record else {
            return Place::default();
        };
        let country = r
            .country
            .and_then(|c| c.iso_code)
            .or(r.country_code)
            .filter(|c| c.len() == 2)
            .map(|c| c.to_ascii_uppercase());
        let region = match r.subdivisions.into_iter().next() {
            Some(s) => match (&country, s.iso_code) {
                (Some(country), Some(code)) => Some(format!("{country}-{code}")),
                (_, _) => s.names.get("en").cloned(),
            },
            None => r.state1,
        }
        .filter(|r| !r.is_empty());
        let city = match r.city {
            Some(City::Name(name)) => Some(name),
            Some(City::Named { mut names }) => names.remove("en"),
            None => None,
        }
        .filter(|c| !c.is_empty());
        Place {
            country,
            region,
            city,
        }
    }
}
