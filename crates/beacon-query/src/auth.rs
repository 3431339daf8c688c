//! Read keys: which sites a key may read. Read keys are separate from write
//! keys; one read key may be listed on several sites (a team's dashboard key),
//! and a write key never reads.

use std::collections::{BTreeSet, HashMap, HashSet};

use beacon_core::{Secret, Site};

use crate::error::QueryError;

#[derive(Debug, Default)]
pub struct Keys {
    read: HashMap<Secret, BTreeSet<String>>,
    write: HashSet<Secret>,
    sites: HashSet<String>,
}

impl Keys {
    pub fn new(sites: &[Site]) -> Self {
        let mut keys = Keys::default();
        for site in sites {
            keys.sites.insert(site.id.clone());
            keys.write.extend(site.write_keys.iter().cloned());
            for key in &site.read_keys {
                keys.read
                    .entry(key.clone())
                    .or_default()
                    .insert(site.id.clone());
            }
        }
        keys
    }

    /// Every configured site, in order.
    pub fn sites(&self) -> Vec<String> {
        let mut sites: Vec<String> = self.sites.iter().cloned().collect();
        sites.sort_unstable();
        sites
    }

    /// The sites `key` may read; 401 without a key or with one that is not a read key.
    pub fn sites_of(&self, key: Option<&str>) -> Result<&BTreeSet<String>, QueryError> {
        let key = key.ok_or_else(|| {
            QueryError::unauthorized(
                "a read key is required: send it as Authorization: Bearer <read key>",
            )
        })?;
        if let Some(sites) = self.read.get(key) {
            return Ok(sites);
        }
        if self.write.contains(key) {
            return Err(QueryError::unauthorized(
                "that is a write key; reading numbers needs one of the site's read_keys",
            ));
        }
        Err(QueryError::unauthorized("unknown read key"))
    }

    /// Whether `key` reads every configured site: such a key (an operator's)
    /// sees the whole status; others see only what says how current their
    /// numbers are (see [`crate::status::Scope`]).
    pub fn reads_every_site(&self, key: Option<&str>) -> bool {
        self.sites_of(key)
            .is_ok_and(|readable| self.sites.iter().all(|s| readable.contains(s)))
    }

    /// 401 for a missing or unknown key, 404 for an unknown site, 403 for a
    /// key of another site.
    pub fn check(&self, key: Option<&str>, site: &str) -> Result<(), QueryError> {
        let readable = self.sites_of(key)?;
        if !self.sites.contains(site) {
            return Err(QueryError::not_found(format!("no site {site:?}")));
        }
        if !readable.contains(site) {
            return Err(QueryError::forbidden(format!(
                "this read key does not grant access to site {site:?}"
            )));
        }
        Ok(())
    }
}
