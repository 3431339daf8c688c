//! Sites and their keys: write keys send events, read keys read numbers.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::goal::{Goal, goals_problems};
use crate::secret::Secret;
use crate::subject::is_valid_site_id;

/// One site (or app) whose events Beacon counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Lowercase letters, digits, `-` and `_`; appears in subjects.
    pub id: String,
    /// Secrets that may send events for this site.
    pub write_keys: Vec<Secret>,
    /// Secrets that may read this site's numbers (never the same as a write key).
    #[serde(default)]
    pub read_keys: Vec<Secret>,
    /// Events per second each write key may send; 0 for no limit.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Events a key may send at once above the rate; 0 means twice the rate.
    #[serde(default)]
    pub rate_burst: u32,
    /// Host names whose events count for this site on the Plausible-compatible
    /// endpoint (its `domain` field), e.g. `shop.example.com`, and whose pages
    /// (and their subdomains') the tracker may send from. [`ANY_DOMAIN`] takes
    /// every domain no other site lists.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Count bots (crawlers, headless browsers, monitors) as ordinary traffic
    /// instead of filtering them out (off by default).
    #[serde(default)]
    pub keep_bots: bool,
    /// Secrets that may change this site's goals and saved funnels through the
    /// query API. None by default: such writes are refused until one is added.
    #[serde(default)]
    pub manage_keys: Vec<Secret>,
    /// Goals defined in the config file (`[[sites.goals]]`): read-only
    /// through the API.
    #[serde(default)]
    pub goals: Vec<Goal>,
}

/// The `domains` entry of a site that takes browser events from pages on any
/// domain (what the first start's site has, until a real domain is added).
pub const ANY_DOMAIN: &str = "*";

fn default_rate_limit() -> u32 {
    10_000
}

/// Shortest key Beacon accepts: keys are secrets, not names.
pub const MIN_KEY_CHARS: usize = 16;

/// Everything wrong with a list of sites, all at once.
pub fn site_problems(sites: &[Site]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids = HashSet::new();
    let mut write_keys = HashSet::new();
    let mut read_keys = Vec::new();
    let mut domains = HashSet::new();
    for site in sites {
        for domain in &site.domains {
            if domain.is_empty()
                || domain.len() > 253
                || domain.contains(',')
                || domain
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
            {
                problems.push(format!(
                    "sites.{}: {domain:?} is not a domain (lowercase, no spaces or commas)",
                    site.id
                ));
            }
            if !domains.insert(domain.as_str()) {
                problems.push(format!(
                    "sites.{}: domain {domain:?} belongs to two sites",
                    site.id
                ));
            }
        }
        if !is_valid_site_id(&site.id) {
            problems.push(format!(
                "sites: {:?} is not a valid site id (lowercase letters, digits, - and _, at most 64)",
                site.id
            ));
        }
        if !ids.insert(site.id.as_str()) {
            problems.push(format!("sites: {:?} is defined twice", site.id));
        }
        if site.write_keys.is_empty() {
            problems.push(format!("sites.{}: needs at least one write key", site.id));
        }
        problems.extend(goals_problems(&site.id, &site.goals));
        for key in site
            .write_keys
            .iter()
            .chain(&site.read_keys)
            .chain(&site.manage_keys)
        {
            let key = key.expose();
            if key.chars().count() < MIN_KEY_CHARS || !key.chars().all(|c| c.is_ascii_graphic()) {
                problems.push(format!(
                    "sites.{}: keys must be at least {MIN_KEY_CHARS} printable characters without spaces",
                    site.id
                ));
            }
        }
        for key in &site.write_keys {
            if !write_keys.insert(key.expose()) {
                problems.push(format!("sites.{}: a write key is used twice", site.id));
            }
        }
        let mut own_read = HashSet::new();
        for key in &site.read_keys {
            if !own_read.insert(key.expose()) {
                problems.push(format!("sites.{}: a read key is listed twice", site.id));
            }
            read_keys.push((site.id.as_str(), key.expose()));
        }
    }
    // A read key may serve several sites; a key never both writes and reads.
    for (site, key) in read_keys {
        if write_keys.contains(key) {
            problems.push(format!(
                "sites.{site}: a read key is also a write key (write and read keys must differ)"
            ));
        }
    }
    // A manage key changes definitions: it must not be a key that is handed out
    // to senders (write keys end up in pages and apps).
    for site in sites {
        if site
            .manage_keys
            .iter()
            .any(|k| write_keys.contains(k.expose()))
        {
            problems.push(format!(
                "sites.{}: a manage key is also a write key (they must differ)",
                site.id
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(id: &str, write: &str, read: &str) -> Site {
        Site {
            id: id.into(),
            write_keys: vec![write.into()],
            read_keys: vec![read.into()],
            rate_limit: 0,
            rate_burst: 0,
            domains: vec![],
            keep_bots: false,
            manage_keys: vec![],
            goals: vec![],
        }
    }

    #[test]
    fn good_sites_have_no_problems() {
        let sites = [site("shop", "wk_aaaaaaaaaaaaaaaa", "rk_aaaaaaaaaaaaaaaa")];
        assert!(site_problems(&sites).is_empty());
    }

    #[test]
    fn every_problem_is_reported() {
        let sites = [
            site("Shop!", "short", "rk_aaaaaaaaaaaaaaaa"),
            site("blog", "rk_aaaaaaaaaaaaaaaa", "rk_bbbbbbbbbbbbbbbb"),
            site("blog", "wk_cccccccccccccccc", "rk_dddddddddddddddd"),
        ];
        let problems = site_problems(&sites);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        let mut a = site("a", "wk_aaaaaaaaaaaaaaaa", "rk_aaaaaaaaaaaaaaaa");
        let mut b = site("b", "wk_bbbbbbbbbbbbbbbb", "rk_bbbbbbbbbbbbbbbb");
        a.domains = vec!["a.example".into(), "Bad Domain".into()];
        b.domains = vec!["a.example".into()];
        assert_eq!(site_problems(&[a, b]).len(), 2);
    }
}
