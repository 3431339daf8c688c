//! The exact ground truth of what a simulation sent, worked out from the events
//! themselves (no Beacon counting code): events by name and minute, events
//! per page, unique users, page views, revenue per currency, sessions and
//! bounces. `beacon verify` compares Beacon's answers with it.

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::traffic::SimEvent;

/// A session ends after this long without events from its user (Beacon's default).
pub const SESSION_TIMEOUT_MS: i64 = 30 * 60_000;

/// What `simulate --truth` writes: one truth per site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthFile {
    pub seed: u64,
    pub sites: Vec<GroundTruth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub site: String,
    /// First minute with events (RFC 3339, UTC).
    pub from: String,
    /// The minute after the last event.
    pub to: String,
    pub events: u64,
    pub pageviews: u64,
    pub unique_users: u64,
    pub sessions: u64,
    /// Sessions with exactly one page view.
    pub bounces: u64,
    /// Exact sums per ISO currency, as decimal strings.
    pub revenue: BTreeMap<String, String>,
    pub events_by_name: BTreeMap<String, u64>,
    /// Events per page (`path`).
    pub events_by_path: BTreeMap<String, u64>,
    /// Minute (RFC 3339, UTC) → event name → count.
    pub events_by_minute: BTreeMap<String, BTreeMap<String, u64>>,
}

/// `ms` as RFC 3339 in UTC, to the second: how truth files and the query API
/// name minutes.
pub fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn minute(ms: i64) -> String {
    utc(ms.div_euclid(60_000) * 60_000)
}

impl GroundTruth {
    /// The truth of `events` (those Beacon accepted for one site), taken in the order sent.
    pub fn of(site: &str, events: &[&SimEvent]) -> GroundTruth {
        let mut truth = GroundTruth {
            site: site.to_owned(),
            from: String::new(),
            to: String::new(),
            events: events.len() as u64,
            pageviews: 0,
            unique_users: 0,
            sessions: 0,
            bounces: 0,
            revenue: BTreeMap::new(),
            events_by_name: BTreeMap::new(),
            events_by_path: BTreeMap::new(),
            events_by_minute: BTreeMap::new(),
        };
        let mut users = HashSet::new();
        let mut revenue: BTreeMap<&str, Decimal> = BTreeMap::new();
        // Per user: (last event time, page views in the open session).
        let mut open: HashMap<&str, (i64, u64)> = HashMap::new();
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for e in events {
            first = first.min(e.ts_ms);
            last = last.max(e.ts_ms);
            users.insert(e.user.as_str());
            *truth.events_by_name.entry(e.name.to_owned()).or_default() += 1;
            *truth.events_by_path.entry(e.path.clone()).or_default() += 1;
            *truth
                .events_by_minute
                .entry(minute(e.ts_ms))
                .or_default()
                .entry(e.name.to_owned())
                .or_default() += 1;
            if let Some((amount, currency)) = &e.revenue {
                *revenue.entry(currency).or_default() += amount;
            }
            let pageview = e.name == "pageview";
            truth.pageviews += u64::from(pageview);
            match open.get_mut(e.user.as_str()) {
                Some((seen, views)) if e.ts_ms <= *seen + SESSION_TIMEOUT_MS => {
                    *seen = (*seen).max(e.ts_ms);
                    *views += u64::from(pageview);
                }
                previous => {
                    if let Some((_, 1)) = previous {
                        truth.bounces += 1;
                    }
                    truth.sessions += 1;
                    open.insert(e.user.as_str(), (e.ts_ms, u64::from(pageview)));
                }
            }
        }
        truth.bounces += open.values().filter(|(_, views)| *views == 1).count() as u64;
        truth.unique_users = users.len() as u64;
        truth.revenue = revenue
            .into_iter()
            .map(|(c, a)| (c.to_owned(), a.normalize().to_string()))
            .collect();
        if !events.is_empty() {
            truth.from = minute(first);
            truth.to = minute(last + 60_000);
        }
        truth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, name: &'static str, ts_ms: i64) -> SimEvent {
        SimEvent {
            site: 0,
            id: format!("{user}-{ts_ms}"),
            name,
            user: user.into(),
            ts_ms,
            path: "/".into(),
            props: vec![],
            revenue: (name == "purchase").then(|| (Decimal::new(1999, 2), "EUR")),
            referrer: None,
            user_agent: "",
            country: "DE",
        }
    }

    #[test]
    fn sessions_split_after_the_timeout_and_bounces_have_one_page_view() {
        let t = 1_790_000_000_000;
        let events = [
            event("a", "pageview", t),
            event("b", "pageview", t + 1_000),
            event("a", "pageview", t + 60_000),
            event("a", "purchase", t + 120_000),
            // A pause longer than the timeout: a new session, one page view.
            event("a", "pageview", t + 120_000 + SESSION_TIMEOUT_MS + 1),
            event("c", "signup", t + 120_000 + SESSION_TIMEOUT_MS + 2),
        ];
        let truth = GroundTruth::of("shop", &events.iter().collect::<Vec<_>>());
        assert_eq!(truth.sessions, 4);
        assert_eq!(truth.bounces, 2); // b, and a's second session; c viewed no page
        assert_eq!(truth.unique_users, 3);
        assert_eq!(truth.pageviews, 4);
        assert_eq!(truth.revenue["EUR"], "19.99");
        assert_eq!(
            truth
                .events_by_minute
                .values()
                .map(|m| m.values().sum::<u64>())
                .sum::<u64>(),
            6
        );
        assert_eq!(truth.from.len(), "2026-09-21T13:33:00Z".len());
    }
}
